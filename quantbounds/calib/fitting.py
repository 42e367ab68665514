"""Robust least squares of Theorem 3.1's two terms: models, Jacobians, single and batched fits.

    quantization term  Δ(r, b) = C2·r^β·ρ^(−b)          θ = (ln C2, β, ln ρ), X = (r, b)
    generalization     L_16(r, N) = L∞ + C1·r^a·N^(−c)   θ = (L∞, ln C1, a, c), X = (r, N)

A fit minimises Σᵢ wᵢ·c²·ρ_L((resᵢ/c)²) over the free parameters (fixed ones stay at their
theory value), with scipy's robust losses ρ_L (soft-L1: 2(√(1+z) − 1)) and scale c, first by
``scipy.optimize.least_squares`` (:func:`fit_robust`, :func:`two_stage_fit`: an ordinary fit,
then the robust loss with c = 1.4826·MAD of its residuals), and for thousands of weighted refits at
once (bootstrap, leave-one-out) by a batched IRLS solver (:func:`batched_fit`, tested against
least_squares). :func:`wald_se` gives √diag(σ̂²(JᵀJ)⁻¹). Used by
:mod:`quantbounds.calib.calibration`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

# ----------------------------------------------------------------------------- models
@dataclass(frozen=True)
class Term:
    names: tuple[str, ...]
    theory: tuple[float, ...]      # values in the fitted parameterisation
    identify: tuple[str | None, ...]  # which design column must vary for each parameter


# θ = (ln C2, β, ln ρ); X columns (r, b)
QUANT = Term(("log_C2", "exponent_r", "log_per_bit_factor"), (0.0, 1.0, math.log(4.0)),
              (None, "rank", "bits"))
# θ = (L∞, ln C1, a, c); X columns (r, N)
GEN = Term(("L_inf", "log_C1", "exponent_r_gen", "exponent_N"), (0.0, 0.0, 0.5, 0.5),
            (None, None, "rank", "n_train"))


def quant_model(theta, r, b):
    """Δ = C2·r^β·ρ^(−b) with θ = (ln C2, β, ln ρ); r, b arrays of one shape."""
    return np.exp(theta[0] + theta[1] * np.log(r) - theta[2] * b)


def gen_model(theta, r, N):
    """L16 = L∞ + C1·r^a·N^(−c) with θ = (L∞, ln C1, a, c)."""
    return theta[0] + np.exp(theta[1] + theta[2] * np.log(r) - theta[3] * np.log(N))


def _quant_jac(theta, r, b):
    f = quant_model(theta, r, b)
    return np.stack(np.broadcast_arrays(f, f * np.log(r), -b * f), axis=-1)


def _gen_jac(theta, r, N):
    e = np.exp(theta[1] + theta[2] * np.log(r) - theta[3] * np.log(N))
    return np.stack(np.broadcast_arrays(np.ones_like(e), e, e * np.log(r), -e * np.log(N)), axis=-1)


# analytic Jacobians (tested by finite differences)
JACOBIANS = {quant_model: _quant_jac, gen_model: _gen_jac}


def free_mask(term: Term, cols: dict[str, np.ndarray]) -> np.ndarray:
    return np.array([k is None or np.unique(cols[k]).size >= 2 for k in term.identify])


# ----------------------------------------------------------------------------- robust fitting
def fit_robust(model, theta0, free, X, y, *, f_scale: float | None, loss: str):
    """Robust least squares over the free parameters; fixed ones stay at theta0."""
    theta0 = np.asarray(theta0, float)

    def full(p):
        th = theta0.copy()
        th[free] = p
        return th

    kw = {} if f_scale is None else dict(loss=loss, f_scale=f_scale)
    sol = least_squares(lambda p: model(full(p), *X) - y, theta0[free],
                        jac=lambda p: JACOBIANS[model](full(p), *X)[:, free], method="trf",
                        max_nfev=2000, **kw)
    return full(sol.x)


# ρ(z) and ρ′(z) of scipy's robust losses (z = (residual/f_scale)²), as least_squares defines them
ROBUST_LOSSES = {
    "linear": (lambda z: z, lambda z: np.ones_like(z)),
    "soft_l1": (lambda z: 2 * (np.sqrt(1 + z) - 1), lambda z: 1 / np.sqrt(1 + z)),
    "huber": (lambda z: np.where(z <= 1, z, 2 * np.sqrt(z) - 1),
              lambda z: np.where(z <= 1, 1.0, 1 / np.sqrt(np.maximum(z, 1)))),
    "cauchy": (np.log1p, lambda z: 1 / (1 + z)),
    "arctan": (np.arctan, lambda z: 1 / (1 + z ** 2)),
}


def batched_fit(model, theta0, free, X, y, W, *, f_scale: float | None, loss: str,
                 max_iter: int = 100) -> np.ndarray:
    """Many weighted robust fits at once: row k of W (K, n) weights the n observations.

    Minimises Σ_i W_ki·c²·ρ((res_i/c)²) for each k by damped iteratively-reweighted
    Gauss–Newton (weights ρ′), whose fixed points are the stationary points least_squares finds.
    Hand-written because a bootstrap or leave-one-out needs thousands of 3–4-parameter fits
    and scipy's per-call overhead (≈ 9 ms) dominates; tested against least_squares.
    Returns θ (K, p); fixed parameters stay at theta0.
    """
    rho, drho = ROBUST_LOSSES["linear" if f_scale is None else loss]
    c2 = 1.0 if f_scale is None else f_scale ** 2
    K = W.shape[0]
    th = np.tile(np.asarray(theta0, float), (K, 1))

    def cost(t, Wa):
        res = model(t.T[..., None], *X) - y
        return np.sum(Wa * c2 * rho(res ** 2 / c2), axis=1)

    cur = cost(th, W)
    active = np.arange(K)                                         # rows not yet converged
    for _ in range(max_iter):
        t_a, W_a = th[active], W[active]
        res = model(t_a.T[..., None], *X) - y                    # (k, n)
        J = JACOBIANS[model](t_a.T[..., None], *X)[..., free]         # (k, n, q)
        w = W_a * drho(res ** 2 / c2)
        A = np.einsum("kn,knp,knq->kpq", w, J, J)
        g = np.einsum("kn,knp,kn->kp", w, J, res)
        # a replicate whose normal equations overflowed takes no step (it keeps its last θ)
        broken = ~(np.isfinite(A).all(axis=(1, 2)) & np.isfinite(g).all(axis=1))
        A[broken], g[broken] = np.eye(A.shape[1]), 0.0
        A += 1e-12 * np.trace(A, axis1=1, axis2=2)[:, None, None] * np.eye(A.shape[1])
        try:
            step = -np.linalg.solve(A, g[..., None])[..., 0]
        except np.linalg.LinAlgError:  # a rank-deficient replicate: minimum-norm step
            step = -(np.linalg.pinv(A) @ g[..., None])[..., 0]
        t = np.ones(len(active))
        new = t_a.copy()
        for _h in range(30):  # step halving where the robust cost would rise
            new[:, free] = t_a[:, free] + t[:, None] * step
            c = cost(new, W_a)
            bad = ~(c <= cur[active] * (1 + 1e-14))
            if not bad.any():
                break
            t = np.where(bad, t / 2, t)
        ok = c <= cur[active] * (1 + 1e-14)
        new[~ok] = t_a[~ok]
        th[active] = new
        cur[active] = np.where(ok, c, cur[active])
        moved = np.max(np.abs(new - t_a), axis=1) > 1e-10 * (1 + np.max(np.abs(t_a), axis=1))
        active = active[ok & moved]
        if not active.size:
            break
    return th


def two_stage_fit(model, theta0, free, X, y, *, loss: str):
    """Ordinary fit, then the robust loss with f_scale = 1.4826·MAD of its residuals."""
    th = fit_robust(model, theta0, free, X, y, f_scale=None, loss="linear")
    res = model(th, *X) - y
    scale = 1.4826 * float(np.median(np.abs(res - np.median(res))))
    if loss == "linear" or not scale > 0:
        return th, None
    return fit_robust(model, th, free, X, y, f_scale=scale, loss=loss), scale


def quant_start(r, b, y) -> np.ndarray:
    """Start from ln Δ = ln C2 + β ln r − b ln ρ fitted by ordinary LS on positive excess."""
    pos = y > 0
    th = np.array(QUANT.theory)
    th[0] = math.log(max(float(np.mean(np.abs(y))), 1e-12))
    if pos.sum() >= 4 and np.unique(b[pos]).size >= 2:
        M = np.column_stack([np.ones(pos.sum()), np.log(r[pos]), -b[pos]])
        coef, *_ = np.linalg.lstsq(M, np.log(y[pos]), rcond=None)
        if np.all(np.isfinite(coef)) and coef[2] > 0:
            th = coef
    return th


def r_squared(y, yhat) -> float:
    ss = float(np.sum((y - y.mean()) ** 2))
    return float(1 - np.sum((y - yhat) ** 2) / ss) if ss > 0 else float("nan")


def wald_se(model, theta, free, X, y) -> np.ndarray:
    """Asymptotic standard errors √diag(σ²·(JᵀJ)⁻¹) of the free parameters (NaN for fixed or
    when JᵀJ is singular), σ² = Σres²/(n − p). Pairs sharing a baseline make this too narrow;
    a flat direction (e.g. L∞ vs C1 when the loss barely depends on r) makes it wide."""
    se = np.full(len(theta), np.nan)
    J = JACOBIANS[model](np.asarray(theta), *X)[:, free]
    res = model(np.asarray(theta), *X) - y
    dof = len(y) - int(free.sum())
    if dof <= 0:
        return se
    with np.errstate(all="ignore"):
        try:
            cov = np.linalg.inv(J.T @ J) * float(res @ res) / dof
        except np.linalg.LinAlgError:
            return se
    se[free] = np.sqrt(np.clip(np.diag(cov), 0, np.inf))
    return se
