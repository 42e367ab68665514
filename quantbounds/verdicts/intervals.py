"""Interval statistics: the one bootstrap resampler and the intervals built on it.

Every bootstrap of the toolkit resamples *units* (seeds of the audit grid, pairs of runs,
baseline groups of the calibration) with replacement, through one function,
:func:`resample_indices`: resample k is ``idx[k] = (U_k1, …, U_kn)``, U i.i.d. uniform on
{0, …, n−1}, drawn in the order resample 0, 1, … (so one ``rng`` state gives one fixed set of
resamples, and the three uses below draw the same streams as the code they replaced). It is
defined, with :func:`group_resample_counts` and :func:`percentile_interval`, in the leaf module
:mod:`quantbounds._bootstrap` (so that the calibration fits, a layer below, use the same one)
and re-exported here.
From the replicates θ*_1 … θ*_K of a statistic θ̂:

* percentile interval   [q_{(1−c)/2}(θ*), q_{(1+c)/2}(θ*)]            (:func:`percentile_interval`)
* normal-theory t       θ̂ ± t_{S−1, (1+c)/2}·sd(θ*)·√(S/(S−1))        (:func:`seed_bootstrap`)

and for one sample x_1 … x_n without resampling, the Student-t interval of the mean
x̄ ± t_{n−1, 1−α/2}·s/√n (:func:`mean_ci`), and a weighted log-linear fit's slope interval
(:func:`fit_loglinear`). Users: :func:`seed_bootstrap` (the audit, over the S seeds),
:func:`bootstrap_mean` (the claims on paired runs, over pairs), :func:`group_resample_counts`
(the calibration fits and the correlation claim, over baseline groups).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize, stats

from quantbounds._bootstrap import group_resample_counts, percentile_interval, resample_indices

__all__ = ["N_BOOT", "bootstrap_mean", "cluster_mean", "fit_loglinear", "group_resample_counts",
           "grouped_total", "mean_ci", "percentile_interval", "resample_indices", "seed_bootstrap"]

N_BOOT = 1000  # audit replicates: the Monte Carlo error of sd* is ≈ 1/√(2·N_BOOT) ≈ 2 %


def seed_bootstrap(stat, arrays, *, n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95):
    """Point estimate of stat(*arrays) and its CI, resampling the LAST axis (the S seeds).

    CI = est ± t_{S−1}·sd*·√(S/(S−1)), sd* the standard deviation of the bootstrap replicates:
    the normal-theory bootstrap interval with Student's t quantile and the S/(S−1) correction
    (the plug-in bootstrap variance is biased low by (S−1)/S, and with S ≈ 8 seeds a percentile
    interval under-covers; Efron & Tibshirani 1993, §5.6 and ch. 13). Replicates that give
    non-finite values are dropped. Returns (estimate, (lo, hi)); (nan, nan) when S < 2 or
    fewer than 2 replicates are finite.
    """
    est = float(stat(*arrays))
    n_seeds = arrays[0].shape[-1]
    resamples = resample_indices(n_seeds, n_boot=n_boot, rng=np.random.default_rng(seed))
    replicates = []
    for idx in resamples:
        value = float(stat(*[a[..., idx] for a in arrays]))
        if np.isfinite(value):
            replicates.append(value)
    if len(replicates) < 2 or n_seeds < 2 or not np.isfinite(est):
        return est, (float("nan"), float("nan"))
    t_quantile = float(stats.t.ppf(0.5 + level / 2, n_seeds - 1))
    half = t_quantile * float(np.std(replicates, ddof=1)) * math.sqrt(n_seeds / (n_seeds - 1))
    return est, (est - half, est + half)


def bootstrap_mean(d, *, n_boot: int = 2000, seed: int = 0, ci: float = 0.95, strata=None) -> dict:
    """Mean of per-pair values d (1-D) with a percentile bootstrap interval over pairs.

    Resampling whole pairs is the paired bootstrap: the between-pair spread of the
    baselines cancels in d. ``strata`` (same length) resamples within each stratum.
    Returns {"estimate": d̄, "ci": [lo, hi], "n": len(d)}.
    """
    d = np.asarray(d, float)
    if d.ndim != 1 or d.size == 0:
        raise ValueError(f"d must be a non-empty 1-D array, got shape {d.shape}")
    rng = np.random.default_rng(seed)
    if strata is None:
        idx = resample_indices(d.size, n_boot=n_boot, rng=rng)
    else:
        strata = np.asarray(strata)
        members = [np.flatnonzero(strata == s) for s in np.unique(strata)]
        idx = np.concatenate([m[resample_indices(m.size, n_boot=n_boot, rng=rng)] for m in members],
                             axis=1)
    lo, hi = percentile_interval(d[idx].mean(axis=1), ci)
    return {"estimate": float(d.mean()), "ci": [float(lo), float(hi)], "n": int(d.size)}


def mean_ci(samples, *, alpha: float = 0.05) -> tuple[float, float, tuple[float, float]]:
    """Sample mean x̄, its standard error s/√n and the (1 − α) Student-t interval
    x̄ ± t_{n−1, 1−α/2}·s/√n (NaN se and interval for n < 2)."""
    x = np.asarray(samples, dtype=float).ravel()
    n = x.size
    mean = float(x.mean())
    if n < 2:
        return mean, float("nan"), (float("nan"), float("nan"))
    se = float(x.std(ddof=1) / math.sqrt(n))
    half = float(stats.t.ppf(1 - alpha / 2, n - 1)) * se
    return mean, se, (mean - half, mean + half)


def cluster_mean(values, clusters=None, *, alpha: float = 0.05) -> dict:
    """Mean of per-unit values with a Student-t interval clustered over the units that share
    randomness (seeds, baselines, teachers): the values of each cluster are averaged first and
    the interval is x̄_G ± t_{G−1, 1−α/2}·s_G/√G over the G cluster means (each cluster one
    independent draw). This is the interval the decision standard reads (estimate, se, dof):
    with 4–6 pairs a percentile bootstrap covers 79–86 %, this one its nominal level when the
    cluster means are near normal (checked by simulation in tests/verdicts/test_intervals.py).

    values: (n,) floats; clusters: (n,) labels or None (every value its own cluster).
    Returns {"estimate", "se", "dof", "ci": [lo, hi], "n", "clusters"}; se, dof and ci are NaN
    when fewer than 2 clusters.
    """
    x = np.asarray(values, dtype=float).ravel()
    if x.size == 0 or not np.all(np.isfinite(x)):
        raise ValueError(f"values must be a non-empty array of finite floats, got {x.size} values")
    if clusters is None:
        means = x
    else:
        lab = np.asarray(clusters).ravel()
        if lab.size != x.size:
            raise ValueError(f"clusters must have one label per value ({x.size}), got {lab.size}")
        _, inv = np.unique(lab, return_inverse=True)
        means = np.bincount(inv, weights=x) / np.bincount(inv)
    g = means.size
    est = float(means.mean())
    if g < 2:
        nan = float("nan")
        return {"estimate": est, "se": nan, "dof": nan, "ci": [nan, nan], "n": int(x.size),
                "clusters": int(g)}
    se = float(means.std(ddof=1) / math.sqrt(g))
    half = float(stats.t.ppf(1 - alpha / 2, g - 1)) * se
    return {"estimate": est, "se": se, "dof": float(g - 1), "ci": [est - half, est + half],
            "n": int(x.size), "clusters": int(g)}


def grouped_total(values, sizes, *, level: float = 0.95) -> dict:
    """A total over K independent groups of units, with its cluster-robust (CR1) interval.

    The groups partition the units (held-out windows, grouped by dialogue) of a mean over
    units, and values[k] is group k's contribution to that mean, so the estimate is
    U = Σ_k u_k. With n_k units in group k of n = Σ_k n_k,

        SE² = K/(K−1) · Σ_k (u_k − (n_k/n)·U)²,       U ± t_{K−1}·SE,

    which is the sandwich (CR1) standard error of a per-unit mean clustered by group,
    SE² = K/(K−1)·Σ_k (S_k − n_k·x̄)²/n², written for u_k = S_k/n (the same number as
    ``real_runs.data.clustered_mean_ci`` on the per-unit values: tests/verdicts/test_intervals.py).
    Because it is linear in the u_k, a difference of two quantities measured on the same
    groups (ΔL − first-order term) gets its paired interval by passing u_k = a_k − b_k.

    values, sizes: (K,) floats / positive counts. Returns {"estimate", "se", "dof", "ci",
    "groups"}; se, dof and ci are NaN when K < 2.
    """
    u = np.asarray(values, dtype=float).ravel()
    n = np.asarray(sizes, dtype=float).ravel()
    if u.size == 0 or not np.all(np.isfinite(u)):
        raise ValueError(f"values must be a non-empty array of finite floats, got {u.size} values")
    if n.size != u.size or not np.all(n > 0):
        raise ValueError(
            f"sizes must be {u.size} positive counts (one per group), got {n.tolist()}"
        )
    k = u.size
    total = float(u.sum())
    if k < 2:
        nan = float("nan")
        return {"estimate": total, "se": nan, "dof": nan, "ci": [nan, nan], "groups": k}
    se = math.sqrt(k / (k - 1) * float(((u - n / n.sum() * total) ** 2).sum()))
    half = float(stats.t.ppf(0.5 + level / 2, k - 1)) * se
    return {"estimate": total, "se": se, "dof": float(k - 1), "ci": [total - half, total + half],
            "groups": k}


def fit_loglinear(x, y, y_se=None, *, base: float = 2.0, alpha: float = 0.05) -> dict:
    """Weighted least-squares fit log_base(y) = c + k·x, with a (1 − α) CI for k.

    The per-point log-space error is y_se / (y·ln base) (delta method). The parameter
    covariance is scaled by max(χ²_red, 1): points scattering more than their MC errors
    (model misfit, factor-draw variation) widen the interval, and it never shrinks below
    what the MC errors alone allow. scipy.optimize.curve_fit does the fit.
    Returns dict(slope, slope_se, ci, intercept, chi2_red, n).
    """
    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    if x.size != y.size or x.size < 3:
        raise ValueError(f"fit_loglinear needs ≥ 3 matching points, got {x.size} and {y.size}")
    if np.any(y <= 0) or not np.all(np.isfinite(y)):
        raise ValueError("fit_loglinear needs finite positive y")
    log_y = np.log(y) / math.log(base)
    if y_se is None:
        sigma = None
    else:
        sigma = np.maximum(np.asarray(y_se, float).ravel() / (y * math.log(base)), 1e-300)
    popt, pcov = optimize.curve_fit(lambda t, c, k: c + k * t, x, log_y, sigma=sigma,
                                    absolute_sigma=sigma is not None)
    resid = log_y - (popt[0] + popt[1] * x)
    dof = x.size - 2
    weights = 1.0 / sigma ** 2 if sigma is not None else np.ones_like(x)
    chi2_red = float(np.sum(weights * resid ** 2) / dof)
    if sigma is not None:
        pcov = pcov * max(chi2_red, 1.0)
    se = float(math.sqrt(max(pcov[1, 1], 0.0)))
    half = float(stats.t.ppf(1 - alpha / 2, dof)) * se
    slope = float(popt[1])
    return {"slope": slope, "slope_se": se, "ci": (slope - half, slope + half),
            "intercept": float(popt[0]), "chi2_red": chi2_red, "n": int(x.size)}
