"""Fits of the teacher–student grid and the decision rules that turn them into verdicts.

Every fit is a least-squares regression (numpy lstsq) with fixed effects for the nuisance
axes, on seed-averaged cells; every confidence interval is a 95 % normal-theory bootstrap over
seeds (t quantile, see :func:`bootstrap`) (the seeds are the independent replicates: data, initialisation and quantization noise).
The decision functions take numbers and return "holds" / "fails" / "conditional"; they are
tested on numbers that disagree with the claim.
"""

from __future__ import annotations

import math

import numpy as np

N_BOOT = 1000  # bootstrap replicates: the Monte Carlo error of sd* is ≈ 1/√(2·N_BOOT) ≈ 2 %


def bootstrap(stat, arrays, *, n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95):
    """Point estimate of stat(*arrays) and its CI, resampling the LAST axis (the S seeds).

    CI = est ± t_{S−1}·sd*·√(S/(S−1)), sd* the standard deviation of the bootstrap replicates:
    the normal-theory bootstrap interval with Student's t quantile and the S/(S−1) correction
    (the plug-in bootstrap variance is biased low by (S−1)/S, and with S ≈ 8 seeds a percentile
    interval under-covers; Efron & Tibshirani 1993, §5.6 and ch. 13). Replicates that give
    non-finite values are dropped.
    """
    from scipy.stats import t as student_t

    est = float(stat(*arrays))
    S = arrays[0].shape[-1]
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(n_boot):
        idx = rng.integers(0, S, S)
        v = float(stat(*[a[..., idx] for a in arrays]))
        if np.isfinite(v):
            reps.append(v)
    if len(reps) < 2 or S < 2 or not np.isfinite(est):
        return est, (float("nan"), float("nan"))
    half = float(student_t.ppf(0.5 + level / 2, S - 1)) * float(np.std(reps, ddof=1)) * math.sqrt(S / (S - 1))
    return est, (est - half, est + half)


def fe_slope(y, x, groups):
    """Common slope β of y = a_g + β·x (one intercept per group), by least squares.

    y, x, groups: 1-D arrays of equal length; groups are integer labels.
    """
    y, x, groups = map(np.ravel, (y, x, groups))
    ok = np.isfinite(y) & np.isfinite(x)
    y, x, groups = y[ok], x[ok], groups[ok]
    labels = np.unique(groups)
    Dm = (groups[:, None] == labels[None, :]).astype(float)
    M = np.column_stack([Dm, x])
    coef, *_ = np.linalg.lstsq(M, y, rcond=None)
    return float(coef[-1])


def log_slope(E, axis_values, axis: int, *, log=np.log):
    """Slope of log E against log(axis value) with fixed effects for every other cell.

    E: seed-averaged array (no seed axis). axis_values: values along ``axis``; ``log`` is
    applied to both E and the axis values (use np.log2 with bits already linear — see
    :func:`bit_slope`).
    """
    E = np.moveaxis(np.asarray(E, float), axis, -1)
    x = np.broadcast_to(log(np.asarray(axis_values, float)), E.shape)
    groups = np.broadcast_to(np.arange(int(np.prod(E.shape[:-1]))).reshape(E.shape[:-1] + (1,)), E.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        return fe_slope(log(E), x, groups)


def bit_slope(E, bits, axis: int):
    """Slope of log₂E against b (fixed effects elsewhere); the factor per bit is 2^(−slope)."""
    E = np.moveaxis(np.asarray(E, float), axis, -1)
    x = np.broadcast_to(np.asarray(bits, float), E.shape)
    groups = np.broadcast_to(np.arange(int(np.prod(E.shape[:-1]))).reshape(E.shape[:-1] + (1,)), E.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        return fe_slope(np.log2(E), x, groups)


def fit_envelope(a, q, y):
    """Smallest-looseness constants (C1, C2) ≥ 0 with C1·a_i + C2·q_i ≥ y_i for every cell.

    Linear program (scipy.optimize.linprog, HiGHS): minimise Σ_i (C1·a_i + C2·q_i)/y_i subject
    to the bound holding at every cell. a = √(r/N), q = r·4^{−b} (σ_g² absorbed into C2).
    """
    from scipy.optimize import linprog

    a, q, y = (np.ravel(np.asarray(v, float)) for v in (a, q, y))
    c = np.array([np.sum(a / y), np.sum(q / y)])
    res = linprog(c, A_ub=-np.column_stack([a, q]), b_ub=-y, bounds=[(0, None), (0, None)],
                  method="highs")
    if not res.success:  # pragma: no cover - the LP is always feasible for a, q > 0
        raise RuntimeError(f"envelope LP failed: {res.message}")
    return float(res.x[0]), float(res.x[1])


def threshold_bits(qexcess, base, bits, *, tol: float):
    """Continuous b at which the quantization excess falls to tol·base, interpolating log₂(qexcess)
    linearly in b between grid bit-widths. qexcess: (..., len(bits)) decreasing in b; base: (...).

    Returns NaN where the crossing lies outside the grid (never reached or already below).
    """
    q = np.log2(np.asarray(qexcess, float))
    t = np.log2(tol * np.asarray(base, float))[..., None]
    bits = np.asarray(bits, float)
    out = np.full(q.shape[:-1], np.nan)
    d = q - t  # positive while the quantization term is too large
    for i in range(len(bits) - 1):
        cross = (d[..., i] > 0) & (d[..., i + 1] <= 0) & np.isnan(out)
        frac = d[..., i] / np.where(cross, d[..., i] - d[..., i + 1], 1.0)
        out = np.where(cross, bits[i] + frac * (bits[i + 1] - bits[i]), out)
    return out


# ---- decision rules -------------------------------------------------------------------------

def decide_value(predicted: float, ci) -> str:
    """A point claim: holds iff the predicted value lies in the measured CI."""
    lo, hi = ci
    return "holds" if lo <= predicted <= hi else "fails"


def decide_all_values(predicted, cis) -> str:
    """Several point claims made together: holds iff every prediction lies in its CI."""
    return "holds" if all(decide_value(p, c) == "holds" for p, c in zip(predicted, cis)) else "fails"


def decide_upper_bound(ratio_ci) -> str:
    """A bound, judged by max(measured/bound): holds if the CI lies ≤ 1, fails if it lies > 1,
    conditional if it straddles 1."""
    lo, hi = ratio_ci
    if hi <= 1.0:
        return "holds"
    if lo > 1.0:
        return "fails"
    return "conditional"


def decide_sign(ci, *, claimed_positive: bool = True) -> str:
    """A direction claim ("increases with"): holds if the CI excludes 0 on the claimed side,
    fails if it excludes 0 on the other side, conditional if it contains 0."""
    lo, hi = ci
    if lo > 0:
        return "holds" if claimed_positive else "fails"
    if hi < 0:
        return "fails" if claimed_positive else "holds"
    return "conditional"


def decide_at_most(measured_ci, limit: float) -> str:
    """A tolerance claim ("< 5 % degradation"): holds if the CI lies below the limit, fails if
    above, conditional if it straddles it."""
    lo, hi = measured_ci
    if hi < limit:
        return "holds"
    if lo >= limit:
        return "fails"
    return "conditional"


def decide_exponential(factor_ci, dominated_fraction: float) -> str:
    """"Performance degrades exponentially with reduced precision": the quantization part must
    grow by a constant factor > 1 per bit removed (factor CI above 1), and the total loss follows
    it only where the quantization term dominates. Fails if the factor CI reaches 1; holds if the
    quantization term dominates at every grid cell; otherwise conditional on that."""
    if factor_ci[0] <= 1.0:
        return "fails"
    return "holds" if dominated_fraction >= 1.0 else "conditional"
