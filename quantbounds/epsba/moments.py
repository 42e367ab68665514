"""Exact second moments of the LoRA quantization error ε_BA (DESIGN.md §2).

Quantizing the LoRA factors B ∈ ℝ^{m×r} and A ∈ ℝ^{r×n} as Q(B) = B + ε_B, Q(A) = A + ε_A
gives the algebraic identity (seed paper eq. 4–6)

    ε_BA = Q(B)·Q(A) − B·A = B·ε_A + ε_B·A + ε_B·ε_A.

Assumption for every function here: the entries of ε_A and ε_B are independent, zero-mean,
and independent of each other (the additive model of seed eq. 2–3 satisfies this; real
round-to-nearest at low bit-widths does not — see ``quantbounds.epsba.montecarlo``). Under it all
cross terms vanish in expectation and, with scalar variances σ_A², σ_B²,

    E‖B·ε_A‖_F²   = n·σ_A²·‖B‖_F²
    E‖ε_B·A‖_F²   = m·σ_B²·‖A‖_F²
    E‖ε_B·ε_A‖_F² = m·n·r·σ_A²·σ_B²
    E‖ε_BA‖_F²    = the sum of the three.

The functions also accept per-entry variances (an array broadcastable to A's or B's shape,
e.g. from per-channel or per-block ranges); then, with V_A = [Var (ε_A)_kj], V_B = [Var (ε_B)_ik]
and 1 a vector of ones, E‖B·ε_A‖² = Σ_k ‖B_:,k‖²·(V_A·1)_k, E‖ε_B·A‖² = Σ_k (1ᵀV_B)_k·‖A_k,:‖²,
E‖ε_B·ε_A‖² = 1ᵀ·V_B·V_A·1, which reduce to the scalar formulas above. With a LoRA scale s
(W = W0 + s·B·A, see ``quantbounds.conventions``) every second moment is multiplied by s².
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from quantbounds._checks import (
    check_bits_array,
    check_finite,
    check_int_range,
    check_lora_factors,
    check_positive,
    check_rank,
)


class EpsBAMoments(NamedTuple):
    """Expected squared Frobenius norms of the three terms of ε_BA and of ε_BA itself.

    b_epsA:    E‖B·ε_A‖_F²
    epsB_A:    E‖ε_B·A‖_F²
    epsB_epsA: E‖ε_B·ε_A‖_F²
    total:     E‖ε_BA‖_F² (= the sum of the three under independent zero-mean noise)
    """

    b_epsA: Any
    epsB_A: Any
    epsB_epsA: Any
    total: Any


def _check_scale(scale: Any) -> Any:
    """The LoRA scale s: a finite number (traced values pass through)."""
    check_finite(scale, "scale")
    return scale


def _variance(var: Any, shape: tuple[int, int], name: str, dtype) -> jnp.ndarray:
    """Per-entry variance array of the given shape (broadcast from a scalar/row/column)."""
    check_positive(var, name, allow_zero=True)
    v = jnp.asarray(var, dtype=dtype)
    try:
        return jnp.broadcast_to(v, shape)
    except ValueError:
        raise ValueError(
            f"{name} must be a scalar or broadcastable to shape {shape}, got shape {jnp.shape(v)}"
        ) from None


def _factors(B: Any, A: Any):
    m, r, n = check_lora_factors(B, A)
    dtype = jnp.result_type(jnp.asarray(B).dtype, jnp.asarray(A).dtype, jnp.float32)
    return jnp.asarray(B, dtype), jnp.asarray(A, dtype), m, r, n, dtype


def eps_ba_moments(B: Any, A: Any, var_A: Any, var_B: Any, *, scale: Any = 1.0) -> EpsBAMoments:
    """The three terms of E‖ε_BA‖_F² and their sum, exact for independent zero-mean noise.

        E‖ε_BA‖_F² = s²·(n·σ_A²·‖B‖_F² + m·σ_B²·‖A‖_F² + m·n·r·σ_A²·σ_B²)

    B: (m, r); A: (r, n); var_A = σ_A² (scalar, or per-entry, broadcastable to (r, n));
    var_B = σ_B² (scalar, or broadcastable to (m, r)); scale: the LoRA scale s.
    Returns an :class:`EpsBAMoments` of 0-d arrays (in B and A's floating dtype, ≥ float32).
    For the additive uniform model σ² = Δ²/12 = R²·4^{−b}/3 (``noise.uniform_noise_variance``).
    """
    B, A, m, r, n, dtype = _factors(B, A)
    _check_scale(scale)
    VA = _variance(var_A, (r, n), "var_A", dtype)
    VB = _variance(var_B, (m, r), "var_B", dtype)
    return EpsBAMoments(*_moments_core(B, A, VA, VB, jnp.asarray(scale, dtype)))


@jax.jit
def _moments_core(B, A, VA, VB, s):
    s2 = s * s
    b_col2 = jnp.sum(B * B, axis=0)  # ‖B_:,k‖², shape (r,)
    a_row2 = jnp.sum(A * A, axis=1)  # ‖A_k,:‖², shape (r,)
    va_row = jnp.sum(VA, axis=1)  # (V_A·1)_k = Σ_j Var(ε_A)_kj
    vb_col = jnp.sum(VB, axis=0)  # (1ᵀV_B)_k = Σ_i Var(ε_B)_ik
    t1 = s2 * jnp.dot(b_col2, va_row)
    t2 = s2 * jnp.dot(vb_col, a_row2)
    t3 = s2 * jnp.dot(vb_col, va_row)
    return t1, t2, t3, t1 + t2 + t3


def eps_ba_moments_per_tensor(
    B: Any, A: Any, var_A: Any, var_B: Any, *, scale: Any = 1.0
) -> EpsBAMoments:
    """The scalar-variance form of :func:`eps_ba_moments`, on the host in float64 (numpy):

        E‖B·ε_A‖² = s²·n·σ_A²·‖B‖_F²,  E‖ε_B·A‖² = s²·m·σ_B²·‖A‖_F²,
        E‖ε_B·ε_A‖² = s²·m·n·r·σ_A²·σ_B²,  E‖ε_BA‖² = their sum,

    exact for independent zero-mean noise with one variance per factor (per-tensor ranges).
    B: (m, r); A: (r, n); var_A = σ_A², var_B = σ_B²: scalars or arrays of equal shape (e.g.
    one per bit-width), the result's shape. For analysis code that works in float64 numpy;
    :func:`eps_ba_moments` is the jitted, per-entry form (equal up to rounding).
    """
    B, A = np.asarray(B, np.float64), np.asarray(A, np.float64)
    m, r, n = check_lora_factors(B, A)
    var_A, var_B = np.asarray(var_A, np.float64), np.asarray(var_B, np.float64)
    check_positive(var_A, "var_A", allow_zero=True)
    check_positive(var_B, "var_B", allow_zero=True)
    s2 = float(_check_scale(scale)) ** 2
    t1 = n * var_A * np.sum(B * B)
    t2 = m * var_B * np.sum(A * A)
    t3 = m * n * r * var_A * var_B
    return EpsBAMoments(s2 * t1, s2 * t2, s2 * t3, s2 * (t1 + t2 + t3))


def eps_ba_entry_variance(
    B: Any, A: Any, var_A: Any, var_B: Any, *, scale: Any = 1.0
) -> jnp.ndarray:
    """Per-entry variance of ε_BA, exact for independent zero-mean noise.

        Var[(ε_BA)_ij] = s²·(σ_A²·‖B_i,:‖² + σ_B²·‖A_:,j‖² + r·σ_A²·σ_B²)

    (per-entry variances: s²·((B∘B)·V_A + V_B·(A∘A) + V_B·V_A)_ij, ∘ the entrywise product).
    B: (m, r); A: (r, n); var_A, var_B as in :func:`eps_ba_moments`. Returns an (m, n) array;
    its sum is ``eps_ba_moments(...).total``.
    """
    B, A, m, r, n, dtype = _factors(B, A)
    _check_scale(scale)
    VA = _variance(var_A, (r, n), "var_A", dtype)
    VB = _variance(var_B, (m, r), "var_B", dtype)
    return _entry_core(B, A, VA, VB, jnp.asarray(scale, dtype))


@jax.jit
def _entry_core(B, A, VA, VB, s):
    return s * s * ((B * B) @ VA + VB @ (A * A) + VB @ VA)


def eps_ba_output_moment(
    B: Any, A: Any, x: Any, var_A: Any, var_B: Any, *, scale: Any = 1.0
) -> jnp.ndarray:
    """Second moment of the output error for an input x, exact for independent zero-mean noise.

        E‖ε_BA·x‖² = s²·(σ_A²·‖x‖²·‖B‖_F² + m·σ_B²·‖A·x‖² + m·r·σ_A²·σ_B²·‖x‖²)

    (per-entry variances: s²·(Σ_k ‖B_:,k‖²·(V_A·x²)_k + Σ_k (1ᵀV_B)_k·(A·x)_k²
    + Σ_k (1ᵀV_B)_k·(V_A·x²)_k), x² entrywise).
    B: (m, r); A: (r, n); x: (n,) or (n, k) (a batch of k inputs as columns; the result is
    then E‖ε_BA·X‖_F², the sum over columns). Returns a 0-d array.
    """
    B, A, m, r, n, dtype = _factors(B, A)
    _check_scale(scale)
    x = jnp.asarray(x, dtype)
    if x.ndim not in (1, 2) or x.shape[0] != n:
        raise ValueError(
            f"x must have shape ({n},) or ({n}, k) to multiply A ({r}×{n}), got shape {x.shape}"
        )
    check_finite(x, "x")
    VA = _variance(var_A, (r, n), "var_A", dtype)
    VB = _variance(var_B, (m, r), "var_B", dtype)
    return _output_core(B, A, x, VA, VB, jnp.asarray(scale, dtype))


@jax.jit
def _output_core(B, A, x, VA, VB, s):
    x2 = x * x if x.ndim == 1 else jnp.sum(x * x, axis=1)  # Σ over the batch of x_j²
    ax = A @ x
    ax2 = ax * ax if ax.ndim == 1 else jnp.sum(ax * ax, axis=1)  # (A·x)_k², summed over the batch
    va_x = VA @ x2  # (V_A·x²)_k = Var((ε_A·x)_k)
    b_col2 = jnp.sum(B * B, axis=0)
    vb_col = jnp.sum(VB, axis=0)
    return s * s * (jnp.dot(b_col2, va_x) + jnp.dot(vb_col, ax2) + jnp.dot(vb_col, va_x))


def eps_ba_covariance_moment(B, A, Sigma, var_A, var_B, *, scale=1.0, rank=None):
    """E‖s·ε_BA·x‖² for x with E[x] = 0, E[x·xᵀ] = Σ, scalar σ_A², σ_B² (per-tensor ranges):

        s²·(σ_A²·‖B‖_F²·tr Σ + m·σ_B²·tr(A·Σ·Aᵀ) + m·r·σ_A²·σ_B²·tr Σ)

    (:func:`eps_ba_output_moment` averaged over x; ε_BA·Σ^{1/2} for the teacher–student
    excess risk), exact for independent zero-mean noise. B: (m, r_w); A: (r_w, n); Sigma:
    (n, n); rank: the r of the formula, the number of components that carry noise (default
    r_w; a rank-masked student passes its rank, its padded components being zero). Pure JAX,
    no validation: every argument may be traced. Returns a 0-d array.
    """
    r = B.shape[1] if rank is None else rank
    m = B.shape[0]
    trace_sigma = jnp.trace(Sigma)
    return scale**2 * (
        var_A * jnp.sum(B * B) * trace_sigma
        + m * var_B * jnp.sum(A * (A @ Sigma))
        + m * r * var_A * var_B * trace_sigma
    )


def eps_ba_variance_bound(
    m: int, n: int, r: int, bits: Any, R_A: Any, R_B: Any, *, scale: Any = 1.0
) -> Any:
    """Absmax variance bound: E‖ε_BA‖_F² ≤ s²·m·n·r·R_A²·R_B²·(⅔·4^{−b} + ⅑·16^{−b}).

    Derivation (additive uniform model, per-tensor ranges R_A = max|A|, R_B = max|B|):
    σ_A² = R_A²·4^{−b}/3 and σ_B² = R_B²·4^{−b}/3 (Δ = 2^{1−b}·R, σ² = Δ²/12); every entry
    is at most the absmax, so ‖B‖_F² ≤ m·r·R_B² and ‖A‖_F² ≤ r·n·R_A². Substituting into
    :func:`eps_ba_moments`:
        n·σ_A²·‖B‖_F² ≤ n·(R_A²·4^{−b}/3)·m·r·R_B² = ⅓·m·n·r·R_A²R_B²·4^{−b}
        m·σ_B²·‖A‖_F² ≤ ⅓·m·n·r·R_A²R_B²·4^{−b}        (the same)
        m·n·r·σ_A²σ_B² = m·n·r·R_A²R_B²·16^{−b}/9
    and the sum is the bound. It is attained when every entry of B and A is ±absmax.
    Linear in r, a factor 4 per bit for large b.

    m, n, r: layer shape and rank (integers ≥ 1); bits: b in 1…16 (scalar or array, real b
    allowed since the formula is continuous); R_A, R_B: ranges ≥ 0. Returns a float (numpy
    array if bits or ranges are arrays).
    """
    m = check_int_range(m, "m", 1)
    n = check_int_range(n, "n", 1)
    r = check_rank(r, "r")
    b = np.asarray(check_bits_array(bits, "bits"), dtype=float)
    check_positive(R_A, "R_A", allow_zero=True)
    check_positive(R_B, "R_B", allow_zero=True)
    _check_scale(scale)
    s2 = np.asarray(scale, dtype=float) ** 2
    out = (
        s2
        * m
        * n
        * r
        * np.asarray(R_A, float) ** 2
        * np.asarray(R_B, float) ** 2
        * (2.0 / 3.0 * 4.0 ** (-b) + 1.0 / 9.0 * 16.0 ** (-b))
    )
    return float(out) if np.ndim(out) == 0 else out


def eps_ba_curvature_moment(
    B: Any, A: Any, Sigma_x: Any, G: Any, var_A: Any, var_B: Any, *, scale: Any = 1.0
) -> EpsBAMoments:
    """Curvature-weighted second moment E tr(ε_BA·Σ_x·ε_BAᵀ·G), exact for independent zero-mean
    noise.

    The loss cost of quantizing B, A to second order under a K-FAC Hessian H ≈ Σ_x ⊗ G
    (DESIGN.md §2): E[ΔL] ≈ ½·s²·E tr(ε_BA·Σ_x·ε_BAᵀ·G), with the three terms

        E tr(B·ε_A·Σ_x·ε_Aᵀ·Bᵀ·G)      = σ_A²·tr(Σ_x)·tr(Bᵀ·G·B)
        E tr(ε_B·A·Σ_x·Aᵀ·ε_Bᵀ·G)      = σ_B²·tr(A·Σ_x·Aᵀ)·tr(G)
        E tr(ε_B·ε_A·Σ_x·ε_Aᵀ·ε_Bᵀ·G)  = r·σ_A²·σ_B²·tr(Σ_x)·tr(G)

    (cross terms vanish). With per-entry variances V_A (r×n), V_B (m×r):
    Σ_kj V_A[k,j]·Σ_x[j,j]·(BᵀGB)[k,k], Σ_ik V_B[i,k]·G[i,i]·(AΣ_xAᵀ)[k,k] and
    Σ_ikj V_B[i,k]·V_A[k,j]·G[i,i]·Σ_x[j,j], which reduce to the scalar forms. G = I_m gives
    E‖ε_BA·x‖² for Σ_x = x·xᵀ (``eps_ba_output_moment``).

    B: (m, r); A: (r, n); Sigma_x: (n, n) input second moment E[x·xᵀ]; G: (m, m) output-gradient
    second moment; both symmetric positive semi-definite (not checked beyond shape and
    finiteness). Orientation: ε_BA maps inputs (n) to outputs (m) — for GPT-2's Conv1D, whose
    weight is stored (n_in, n_out), B·A is the transpose of the stored delta. Returns an
    :class:`EpsBAMoments` (terms and total, each multiplied by s²).
    """
    B, A, m, r, n, dtype = _factors(B, A)
    _check_scale(scale)
    Sx = jnp.asarray(Sigma_x, dtype)
    Gm = jnp.asarray(G, dtype)
    if Sx.shape != (n, n):
        raise ValueError(f"Sigma_x must have shape ({n}, {n}) (A is {r}×{n}), got {Sx.shape}")
    if Gm.shape != (m, m):
        raise ValueError(f"G must have shape ({m}, {m}) (B is {m}×{r}), got {Gm.shape}")
    check_finite(Sx, "Sigma_x")
    check_finite(Gm, "G")
    VA = _variance(var_A, (r, n), "var_A", dtype)
    VB = _variance(var_B, (m, r), "var_B", dtype)
    return EpsBAMoments(*_curvature_core(B, A, Sx, Gm, VA, VB, jnp.asarray(scale, dtype)))


@jax.jit
def _curvature_core(B, A, Sx, G, VA, VB, s):
    s2 = s * s
    sx_d = jnp.diagonal(Sx)  # Σ_x[j, j], (n,)
    g_d = jnp.diagonal(G)  # G[i, i], (m,)
    btgb = jnp.sum(B * (G @ B), axis=0)  # (BᵀGB)[k, k], (r,)
    asa = jnp.sum((A @ Sx) * A, axis=1)  # (AΣ_xAᵀ)[k, k], (r,)
    va_s = VA @ sx_d  # Σ_j V_A[k, j]·Σ_x[j, j], (r,)
    vb_g = g_d @ VB  # Σ_i G[i, i]·V_B[i, k], (r,)
    t1 = s2 * jnp.dot(btgb, va_s)
    t2 = s2 * jnp.dot(vb_g, asa)
    t3 = s2 * jnp.dot(vb_g, va_s)
    return t1, t2, t3, t1 + t2 + t3
