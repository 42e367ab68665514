"""The one bootstrap resampler, and the percentile interval, below every layer that uses them.

Resample k of n units is ``idx[k] = (U_k1, …, U_kn)``, U i.i.d. uniform on {0, …, n−1}, drawn
in the order resample 0, 1, … (:func:`resample_indices`); the cluster bootstrap's weights over
baseline groups are counts of such draws (:func:`group_resample_counts`); the percentile interval
of replicates θ* is [q_{(1−c)/2}(θ*), q_{(1+c)/2}(θ*)] (:func:`percentile_interval`). A leaf
module (numpy only, like ``_checks``) so that the calibration fits (``calib``) and the interval
statistics built on it (:mod:`quantbounds.verdicts.intervals`, which re-exports these names)
share one resampler without calib importing a layer above it.
"""

from __future__ import annotations

import numpy as np


def resample_indices(n_units: int, *, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap resamples of n_units units: an (n_boot, n_units) int array whose row k holds
    n_units draws with replacement from {0, …, n_units − 1}."""
    return rng.integers(0, n_units, size=(n_boot, n_units))


def percentile_interval(x, ci: float) -> np.ndarray:
    """[q_{(1−ci)/2}, q_{1−(1−ci)/2}] of the 1-D sample x: a percentile bootstrap interval."""
    return np.quantile(x, [(1 - ci) / 2, 1 - (1 - ci) / 2])


def group_resample_counts(groups, *, n_boot: int, rng: np.random.Generator,
                          minlength: int) -> np.ndarray:
    """Cluster-bootstrap weights over baseline groups.

    Resample k draws len(groups) ids with replacement from ``groups`` (1-D array of group
    ids < ``minlength``); counts[k, g] = how often id g was drawn. Returns (n_boot, minlength),
    or (0, minlength) when n_boot = 0 or there are no groups.
    """
    groups = np.asarray(groups)
    if not n_boot or not groups.size:
        return np.zeros((0, minlength))
    drawn = groups[resample_indices(groups.size, n_boot=n_boot, rng=rng)]
    return np.stack([np.bincount(row, minlength=minlength) for row in drawn])
