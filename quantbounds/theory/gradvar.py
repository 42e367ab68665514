"""Gradient variance of the LoRA student at fixed parameters (Theorem 3.3's two sources).

The gradient is g(B, A) = ∇_{(B,A)} (1/k)·Σ_{i≤k} ‖y_i − W_q·x_i‖², W_q = W0 + s·Q(B)·Q(A), with
a straight-through Q (identity gradient). Its "variance" is the total variance — the trace of
the covariance of the flattened (∇_B, ∇_A) — measured at fixed (B, A) three ways:

- across mini-batches (fresh (x, y) each draw, no quantization): Var[∇L];
- across quantization-noise draws on one fixed batch (SR or the additive model): the part
  that quantization adds;
- jointly (fresh batch and fresh noise): Var[∇L_q], the left side of Theorem 3.3.

The randomness is drawn once up front (:func:`draw_gradvar`), so the measurement itself has
no random-number generation inside its compiled graph (XLA compiles RNG slowly on CPU) and
configurations that share the draws are compared with common random numbers.
For Gaussian x the mini-batch variance is known in closed form (:func:`analytic_batch_variance`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from quantbounds.conventions import KIND_INDEX
from quantbounds.theory.teacher_student import Problem, fake_quant_indexed, ste


class GradDraws(NamedTuple):
    """Pre-drawn randomness: Zb (D, k, n), Xib (D, k, m) standard normals of D fresh batches;
    Z0 (k, n), Xi0 (k, m) of the fixed batch; UB (D, m, r), UA (D, r, n) uniforms in [0, 1)
    for the quantization noise of B and A."""

    Zb: jnp.ndarray
    Xib: jnp.ndarray
    Z0: jnp.ndarray
    Xi0: jnp.ndarray
    UB: jnp.ndarray
    UA: jnp.ndarray


def draw_gradvar(
    key, *, n_draws: int, batch_size: int, m: int, n: int, r: int, dtype=None
) -> GradDraws:
    """One normal and one uniform draw, split into the GradDraws fields."""
    dtype = dtype or jnp.result_type(float)
    kz, ku = jax.random.split(key)
    D, k = n_draws, batch_size
    Z = jax.random.normal(kz, ((D + 1) * k * (n + m),), dtype)
    U = jax.random.uniform(ku, (D * (m * r + r * n),), dtype)
    Zb = Z[: D * k * n].reshape(D, k, n)
    Xib = Z[D * k * n : D * k * (n + m)].reshape(D, k, m)
    rest = Z[D * k * (n + m) :]
    return GradDraws(
        Zb,
        Xib,
        rest[: k * n].reshape(k, n),
        rest[k * n :].reshape(k, m),
        U[: D * m * r].reshape(D, m, r),
        U[D * m * r :].reshape(D, r, n),
    )


def _batch(problem: Problem, Z, Xi):
    """x = Σ^{1/2}·z, y = W*·x + σ·ξ for rows z, ξ (same law as teacher_student.sample_data)."""
    X = Z @ problem.Sigma_half
    return X, X @ problem.Wstar.T + problem.label_noise * Xi


def _weight(problem, B, A, s, kind, bits, uB, uA, granularity, mask):
    # kind: None, a name in conventions.KINDS, or a (traced) index into it
    if kind is not None:
        idx = KIND_INDEX[kind] if isinstance(kind, str) else kind
        axB, axA = (None, None) if granularity == "tensor" else (1, 0)
        key = jax.random.PRNGKey(0)  # unused: the uniforms are given
        b = jnp.asarray(4 if bits is None else bits, B.dtype)
        B = ste(B, fake_quant_indexed(B, idx, b, key, axB, u=uB))
        A = ste(A, fake_quant_indexed(A, idx, b, key, axA, u=uA))
        if mask is not None:  # padded rank components stay exactly zero (no additive noise)
            B, A = B * mask[None, :], A * mask[:, None]
    return problem.W0 + s * (B @ A)


def lora_grad(
    problem: Problem,
    B,
    A,
    s,
    X,
    Y,
    *,
    kind=None,
    bits=None,
    uB=None,
    uA=None,
    granularity: str = "tensor",
    mask=None,
):
    """Flattened (∇_B, ∇_A) of the batch loss (1/k)·Σ‖y_i − W_q·x_i‖², and the loss.

    B: (m, r), A: (r, n) (already masked), X: (k, n), Y: (k, m); uB, uA: uniforms of the
    quantization noise (shapes of B, A) for kind "sr"/"additive"; mask: 0/1 vector over the
    r columns of B (rows of A) marking padded components, None = all real. Returns (vector of length
    m·r + r·n, scalar).
    """

    def loss(BA):
        W = _weight(problem, BA[0], BA[1], s, kind, bits, uB, uA, granularity, mask)
        E = Y - X @ W.T
        return jnp.mean(jnp.sum(E * E, axis=1))

    val, (gB, gA) = jax.value_and_grad(loss)((B, A))
    return jnp.concatenate([gB.ravel(), gA.ravel()]), val


def _total_var(G):
    """Σ_j unbiased sample variance of column j of G (draws × coordinates)."""
    return jnp.sum(jnp.var(G, axis=0, ddof=1))


def measure_grad_variance(
    problem: Problem,
    B,
    A,
    s,
    draws: GradDraws,
    *,
    kind,
    bits,
    granularity: str = "tensor",
    rank=None,
) -> dict:
    """Gradient variance three ways at fixed (B, A) (padded to r ≤ the draws' r, the first
    ``rank`` components real, the rest zero; rank=None: all r real).

    Returns var_batch, var_noise, var_joint (total variances over D draws), var_noise_B and
    var_noise_A (var_noise's ∇_B and ∇_A parts, var_noise = var_noise_B + var_noise_A), loss
    (mean full-precision batch loss over the draws), x_norm2 (mean ‖x‖²), R_B = max|B|,
    R_A = max|A| and R = max(R_B, R_A).

    Refactorisation: for a per-tensor (or per-rank-component) absmax quantizer with the same
    uniforms, Q(c·B) = c·Q(B) and Q(A/c) = Q(A)/c (the step scales with the range), so the
    quantized weight is unchanged while ∇_{cB} = ∇_B/c and ∇_{A/c} = c·∇_A:
    :func:`rescaled_noise_variance` gives the measurement at (c·B, A/c) exactly.
    kind: "sr" or "additive" (a quantizer with randomness; RTN has no noise to draw), or its
    (possibly traced) index in KIND_INDEX.
    """
    r = B.shape[1]
    UB, UA = draws.UB[:, :, :r], draws.UA[:, :r, :]
    mask = None if rank is None else (jnp.arange(r) < rank).astype(B.dtype)

    def fp_draw(Z, Xi):
        X, Y = _batch(problem, Z, Xi)
        g, val = lora_grad(problem, B, A, s, X, Y)
        return g, val, jnp.mean(jnp.sum(X * X, axis=1))

    Gb, losses, xn = jax.vmap(fp_draw)(draws.Zb, draws.Xib)
    X0, Y0 = _batch(problem, draws.Z0, draws.Xi0)
    def q(X, Y, uB, uA):
        return lora_grad(problem, B, A, s, X, Y, kind=kind, bits=bits, uB=uB, uA=uA,
                         granularity=granularity, mask=mask)[0]

    Gn = jax.vmap(lambda uB, uA: q(X0, Y0, uB, uA))(UB, UA)
    # joint: batch d with the noise of draw d+1 (cyclic), so batch and noise are independent
    Gj = jax.vmap(lambda Z, Xi, uB, uA: q(*_batch(problem, Z, Xi), uB, uA))(
        draws.Zb, draws.Xib, jnp.roll(UB, 1, axis=0), jnp.roll(UA, 1, axis=0)
    )
    nB = B.size  # ∇_B comes first in lora_grad's flattened vector
    var_B, var_A = _total_var(Gn[:, :nB]), _total_var(Gn[:, nB:])
    R_B, R_A = jnp.max(jnp.abs(B)), jnp.max(jnp.abs(A))
    return {
        "var_batch": _total_var(Gb),
        "var_noise": var_B + var_A,
        "var_noise_B": var_B,
        "var_noise_A": var_A,
        "var_joint": _total_var(Gj),
        "loss": jnp.mean(losses),
        "x_norm2": jnp.mean(xn),
        "R_B": R_B,
        "R_A": R_A,
        "R": jnp.maximum(R_B, R_A),
    }


def rescaled_noise_variance(var_noise_B, var_noise_A, R_B, R_A, c):
    """The quantization-noise gradient variance and the range R of the same W = s·B·A written
    as (c·B, A/c), c > 0, from the measurement at c = 1 (see :func:`measure_grad_variance`):

        var_noise(c) = var_noise_B/c² + c²·var_noise_A,   R(c) = max(c·R_B, R_A/c).

    Exact for absmax quantizers with shared uniforms (Q(c·x) = c·Q(x)); numpy or jax arrays,
    broadcast. Theorem 3.3's right-hand side L²·‖x‖²·r·4^{−b}·R² is not invariant under c."""
    if not (np.all(np.asarray(c) > 0) and np.all(np.isfinite(np.asarray(c)))):
        raise ValueError(f"c must be finite and > 0, got {c!r}")
    return (var_noise_B / c**2 + c**2 * var_noise_A,
            np.maximum(c * np.asarray(R_B), np.asarray(R_A) / c))


def analytic_batch_variance(problem: Problem, B, A, s, batch_size):
    """Exact total variance of the full-precision batch gradient for x ~ N(0, Σ).

    Per sample g_W = 2·e·xᵀ with e = W·x − y = D·x − σ·ξ, D = W − W*. With C = Cov(x, e) = Σ·Dᵀ
    and S = Cov(e) = D·Σ·Dᵀ + σ²·I, Isserlis' theorem gives
    Cov(g_ji, g_lk) = 4·(S_jl·Σ_ik + C_kj·C_il),
    hence for ∇_B = s·g_W·Aᵀ and ∇_A = s·Bᵀ·g_W:

        tr Cov(∇_B) = 4s²·(tr S·tr(A·Σ·Aᵀ) + ‖A·C‖_F²)
        tr Cov(∇_A) = 4s²·(tr Σ·tr(Bᵀ·S·B) + ‖C·B‖_F²)

    divided by the batch size k (independent samples). B: (m, r), A: (r, n), masked.
    """
    W = problem.W0 + s * (B @ A)
    D = W - problem.Wstar
    Sig = problem.Sigma
    C = Sig @ D.T
    S = D @ Sig @ D.T + problem.label_noise**2 * jnp.eye(D.shape[0], dtype=D.dtype)
    vB = jnp.trace(S) * jnp.trace(A @ Sig @ A.T) + jnp.sum((A @ C) ** 2)
    vA = jnp.trace(Sig) * jnp.trace(B.T @ S @ B) + jnp.sum((C @ B) ** 2)
    return 4.0 * s**2 * (vB + vA) / batch_size
