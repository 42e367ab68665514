"""Fits of the teacher–student grid that the audit's verdicts rest on.

Every fit is a least-squares regression (numpy lstsq) with fixed effects for the nuisance
axes, on seed-averaged cells. Their confidence intervals come from
:func:`quantbounds.verdicts.intervals.seed_bootstrap` (a 95 % normal-theory bootstrap over
seeds, the independent replicates: data, initialisation and quantization noise) and the
verdicts from :mod:`quantbounds.verdicts.standard` (through :mod:`simulations.audit_grid`).
"""

from __future__ import annotations

import numpy as np


def fe_slope(y, x, groups):
    """Common slope β of y = a_g + β·x (one intercept per group), by least squares.

    y, x, groups: 1-D arrays of equal length; groups are integer labels. Computed by the
    within-group transformation (Frisch–Waugh–Lovell: regressing on the group dummies is
    demeaning within each group), β = Σ (x − x̄_g)(y − ȳ_g) / Σ (x − x̄_g)² — the same least
    squares as the dummy-variable regression, without its design matrix. NaN when x does not
    vary within any group.
    """
    y, x, groups = map(np.ravel, (y, x, groups))
    ok = np.isfinite(y) & np.isfinite(x)
    y, x, groups = np.asarray(y[ok], float), np.asarray(x[ok], float), groups[ok]
    _, g = np.unique(groups, return_inverse=True)
    count = np.bincount(g)
    xd = x - (np.bincount(g, weights=x) / count)[g]
    yd = y - (np.bincount(g, weights=y) / count)[g]
    sxx = float(np.dot(xd, xd))
    return float(np.dot(xd, yd) / sxx) if sxx > 0 else float("nan")


def _cell_groups(shape) -> np.ndarray:
    """One fixed-effect label per cell of every axis but the last, broadcast to ``shape``."""
    return np.broadcast_to(np.arange(int(np.prod(shape[:-1]))).reshape(shape[:-1] + (1,)), shape)


def log_slope(E, axis_values, axis: int, *, log=np.log):
    """Slope of log E against log(axis value) with fixed effects for every other cell.

    E: seed-averaged array (no seed axis). axis_values: values along ``axis``; ``log`` is
    applied to both E and the axis values (use np.log2 with bits already linear — see
    :func:`bit_slope`).
    """
    E = np.moveaxis(np.asarray(E, float), axis, -1)
    x = np.broadcast_to(log(np.asarray(axis_values, float)), E.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        return fe_slope(log(E), x, _cell_groups(E.shape))


def bit_slope(E, bits, axis: int):
    """Slope of log₂E against b (fixed effects elsewhere); the factor per bit is 2^(−slope)."""
    E = np.moveaxis(np.asarray(E, float), axis, -1)
    x = np.broadcast_to(np.asarray(bits, float), E.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        return fe_slope(np.log2(E), x, _cell_groups(E.shape))


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
    """Continuous b at which the quantization excess falls to tol·base (the relative reading of
    b*): :func:`crossing_bits` with target tol·base."""
    return crossing_bits(qexcess, tol * np.asarray(base, float), bits)


def crossing_bits(qexcess, target, bits):
    """Continuous b at which the quantization excess first falls to ``target``, interpolating
    log₂(qexcess) linearly in b between grid bit-widths. qexcess: (..., len(bits)) decreasing
    in b; target: (...) > 0 (tol × the fp excess, or a fixed absolute target).

    Returns NaN where the crossing lies outside the grid (never reached or already below).
    """
    log_q = np.log2(np.asarray(qexcess, float))
    log_target = np.log2(np.asarray(target, float))[..., None]
    bits = np.asarray(bits, float)
    out = np.full(log_q.shape[:-1], np.nan)
    gap = log_q - log_target  # positive while the quantization term is too large
    for i in range(len(bits) - 1):
        cross = (gap[..., i] > 0) & (gap[..., i + 1] <= 0) & np.isnan(out)
        frac = gap[..., i] / np.where(cross, gap[..., i] - gap[..., i + 1], 1.0)
        out = np.where(cross, bits[i] + frac * (bits[i + 1] - bits[i]), out)
    return out
