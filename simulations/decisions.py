"""Moved: the decision rules are :mod:`quantbounds.verdicts.decisions`, the interval statistics
:mod:`quantbounds.verdicts.intervals`. This re-export exists only until every committed
``simulations`` module imports them from there; it defines nothing of its own."""

from quantbounds.verdicts.decisions import (ALPHA, critical_z, decide_cells,  # noqa: F401
                                            decide_identity, decide_interval, decide_reference,
                                            decide_slope, decide_zscores, quote_halfunit)
from quantbounds.verdicts.decisions import decide_upper_bound_cells as decide_upper_bound  # noqa: F401
from quantbounds.verdicts.intervals import fit_loglinear, mean_ci  # noqa: F401
