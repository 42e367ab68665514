"""Verdicts from post-training quantization (PTQ) of trained adapters (``quantbounds.ptq/1``).

Two toolkit claims (registry entries in :mod:`quantbounds.verdicts._claims_table`), each decided
by :mod:`quantbounds.verdicts.standard`:

``toolkit.curvature.loss_prediction``  per cell (scheme, r, b) whose measured paired excess is
    distinguishable from 0 (:func:`quantbounds.calib.ptq_pairs.measured_interval` of its
    records excludes 0):
    θ = ln(Σ measured ÷ Σ predicted) = −ln R, with R and its se from
    :func:`quantbounds.calib.ptq_pairs.ratio_interval` (se_ln = se_R / R, t with G − 1 dof over
    the G trained adapters; normal for G = 1; the eval-token error paired over the records'
    eval groups, so the first-order term, measured on those tokens, shares it), TOST within
    ±ln(1.25); a cell whose R ≤ 0 (the
    prediction has the wrong sign) fails when R's one-sided upper limit is below 0.8. Cells
    combined by :func:`quantbounds.verdicts.standard.over_cells`; readings (``READINGS``): the
    K-FAC second-order prediction alone (as DESIGN.md §2 states it) and with the first-order
    term, and — in the cells whose records carry ``pred_hessian_moment`` (the sweep's
    ``ptq_hessian_bits``) — the full Hessian's expected second-order term under the noise model
    (random perturbations of known variance, no quantized model evaluated) with the
    first-order term.
``toolkit.ptq.prediction_vs_form``  per scheme: D = R²_pred − R²_LOCO, the held-out R² of the
    zero-constant prediction (first + second order) minus the leave-one-(r, b, N)-out R² of the
    fitted Thm 3.1 form, over the pairs the LOCO check predicted; se from the delete-one-adapter
    jackknife of D with the held-out predictions fixed,

        se_J² = (G − 1)/G · Σ_k (D_(−k) − D̄)²,

    decided by :func:`quantbounds.verdicts.standard.comparison` (t, G − 1 dof); schemes combined
    by ``over_cells``.

Torch-free. Public: :func:`prediction_verdict`, :func:`form_verdict`.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
from scipy import stats

from quantbounds.calib.ptq_pairs import (
    PREDICTION_GROUPS,
    PREDICTIONS,
    PtqPairs,
    adapter_of,
    measured_interval,
    ratio_interval,
)
from quantbounds.verdicts import standard
from quantbounds.verdicts.registry import registry
from quantbounds.verdicts.results import Verdict

__all__ = ["form_verdict", "prediction_verdict", "r2_difference", "r2_difference_decision"]

PRED_ID = "toolkit.curvature.loss_prediction"
# the readings of PRED_ID: K-FAC's second-order term of the cell's own ε_BA, alone and with the
# measured first-order term; and, where the records carry it (the sweep's ptq_hessian_bits),
# the full Hessian's expected second-order term under the noise model with the first-order term
READINGS = ("second", "first+2nd", "first+E_Hessian")
MAX_BITS = 15  # cells judged: b ≤ 15, as the fits (ptq_pairs' max_bits)
FORM_ID = "toolkit.ptq.prediction_vs_form"
_SOURCE = "DESIGN.md §2 (curvature-weighted moment); real_runs.ptq records"


def _cell_decision(
    recs: list[dict], name: str, margin: float
) -> tuple[standard.Decision, dict] | None:
    """The decision of one (scheme, r, b) cell, or None when its excess is not above noise."""
    lo, hi = measured_interval(recs)
    fn = PREDICTIONS[name]
    if lo <= 0 <= hi or any(fn(r) is None for r in recs):
        return None
    R, a, b, g = ratio_interval(recs, fn, pred_groups=PREDICTION_GROUPS[name])
    if not math.isfinite(R) or a is None:
        return None
    dof = g - 1 if g >= 2 else None
    q = float(stats.t.ppf(0.975, dof)) if dof else float(stats.norm.ppf(0.975))
    se_r = (b - a) / (2 * q)
    info = {"ratio": R, "ci": [a, b], "n_adapters": g, "n_records": len(recs)}
    if se_r <= 0:
        return None
    if R <= 0:
        sf = stats.t.sf if dof else stats.norm.sf
        args = (dof,) if dof else ()
        p_fails = float(sf((0.8 - R) / se_r, *args))
        return standard.Decision(verdict="fails" if p_fails < standard.ALPHA else "inconclusive",
                                 p_holds=1.0, p_fails=p_fails,
                                 reason=f"R = {R:.3g} ≤ 0: the prediction has the wrong sign"), info
    d = standard.no_effect(-math.log(R), se_r / R, margin=math.log(1 + margin), dof=dof)
    return d, info


def prediction_verdict(ptq_records: list[dict], *, margin: float | None = None) -> Verdict | None:
    """``toolkit.curvature.loss_prediction`` over every (scheme, r, b) cell above noise (module
    docstring), under the readings "second order" and "first + second order"; None when no
    cell is above noise."""
    margin = registry()[PRED_ID].test.margin if margin is None else margin
    groups = defaultdict(list)
    for r in ptq_records:
        # b = 16 is the baseline's own precision: its cost (~1e-9 nats) sits at the float32
        # rounding floor of the merged weights and of the per-token losses, which no paired
        # interval over tokens contains, so it is no test of a quantization-cost prediction
        if r["bits"] <= MAX_BITS:
            groups[(r["ptq_scheme"], r["rank"], r["bits"])].append(r)
    readings, cells_info = {}, {}
    for name in READINGS:
        cells = {}
        for (scheme, rank, bits), recs in sorted(groups.items()):
            out = _cell_decision(recs, name, margin)
            if out is not None:
                label = f"{scheme} r={rank} b={bits}"
                cells[label] = out[0]
                cells_info.setdefault(name, {})[label] = out[1]
        if cells:
            readings[name] = standard.over_cells(cells)
    if not readings:
        return None
    d = standard.under_readings(readings)
    n_adapters = len({adapter_of(r) for r in ptq_records})
    return Verdict.from_decision(
        PRED_ID, d,
        claim="the loss cost of quantizing trained B, A is predicted to second order by the exact "
              "moments of ε_BA and a curvature measured on the full-precision model, with no "
              "fitted constant (measured ÷ predicted within [0.8, 1.25])",
        predicted="ratio 1 (within ×/÷ 1.25)",
        measured=None, ci=None, source=_SOURCE,
        conditions=f"post-training quantization of {n_adapters} trained adapters; cells "
                   f"(scheme, r, b ≤ {MAX_BITS}) whose paired interval of Σ ΔL excludes 0; t "
                   f"over adapters plus the common eval-token error (paired over eval groups "
                   f"where the records carry them, so the first-order term's share cancels); "
                   f"readings: second order (K-FAC), first + second (K-FAC), and where the "
                   f"records carry it first + the full Hessian's expected second-order term",
        details={"cells": cells_info, "margin": margin})


def r2_difference(y, pred, loco, adapter) -> tuple[float, float, int, int]:
    """(D, se_J, G, n): D = R²(pred) − R²(loco) over the pairs where ``loco`` is finite, and
    its delete-one-adapter jackknife se over the G adapters (``adapter``: one label per pair);
    n pairs used. R² = 1 − Σ(y − ŷ)²/Σ(y − ȳ)² on the same pairs for both."""
    y, pred, loco, adapter = map(np.asarray, (y, pred, loco, adapter))
    m = np.isfinite(loco) & np.isfinite(pred)
    y, pred, loco, adapter = y[m], pred[m], loco[m], adapter[m]

    def d_of(keep):
        yy = y[keep]
        sst = float(((yy - yy.mean()) ** 2).sum())
        if sst <= 0:
            return math.nan
        return (float(((yy - loco[keep]) ** 2).sum()) - float(((yy - pred[keep]) ** 2).sum())) / sst

    full = d_of(np.ones(y.size, bool))
    labels = np.unique(adapter)
    G = labels.size
    if G < 2:
        return full, math.nan, int(G), int(y.size)
    loo = np.array([d_of(adapter != g) for g in labels])
    se = math.sqrt((G - 1) / G * float(((loo - loo.mean()) ** 2).sum()))
    return full, se, int(G), int(y.size)


def r2_difference_decision(y, pred, loco, groups) -> tuple[standard.Decision, dict] | None:
    """The one-sided comparison D = R²(pred) − R²(loco) > 0 of :func:`r2_difference` (t with
    G − 1 dof, :func:`quantbounds.verdicts.standard.comparison`, margin 0) and {D, se, G, n};
    None when D or its jackknife se is not finite and positive."""
    D, se, G, n = r2_difference(y, pred, loco, groups)
    if not (math.isfinite(D) and math.isfinite(se) and se > 0):
        return None
    return (standard.comparison(D, se, direction=1, margin=0.0, dof=G - 1),
            {"D": D, "se": se, "G": G, "n": n})


def form_verdict(fits: dict[str, tuple[PtqPairs, object]]) -> Verdict | None:
    """``toolkit.ptq.prediction_vs_form`` over schemes: ``fits`` = {scheme: (PtqPairs, its
    Calibration from :func:`quantbounds.calib.calibration.calibrate_pairs`)}; schemes whose fit
    has no held-out predictions are left out (named in ``details``)."""
    cells, info, skipped = {}, {}, []
    for scheme, (pp, cal) in sorted(fits.items()):
        if cal is None or cal.quant is None or cal.quant.loco is None:
            skipped.append(scheme)
            continue
        loco = np.asarray(cal.quant.loco.predictions, float)
        out = r2_difference_decision(pp.pairs.excess, pp.pred, loco, np.asarray(pp.pairs.group))
        if out is None:
            skipped.append(scheme)
            continue
        cells[scheme], x = out
        info[scheme] = {"r2_pred_minus_r2_loco": x["D"], "se": x["se"], "n_adapters": x["G"],
                        "n_pairs": x["n"], "r2_loco_form": cal.quant.loco.r2}
    if not cells:
        return None
    d = standard.over_cells(cells)
    return Verdict.from_decision(
        FORM_ID, d,
        claim="the zero-constant curvature prediction predicts the PTQ loss cost of held-out "
              "(r, b) configurations better than Thm 3.1's quantization term C2·r^β·ρ^(−b) "
              "fitted to the other configurations",
        predicted="R²_pred − R²_LOCO > 0", measured=None, ci=None, source=_SOURCE,
        conditions="per PTQ scheme; delete-one-adapter jackknife (held-out predictions fixed), "
                   "t with G − 1 dof; schemes combined (intersection–union / Bonferroni)",
        details={"schemes": info, "skipped": skipped})
