"""The noise model: the paper's additive uniform noise, and the codebook-aware variance.

Additive uniform model (seed paper eq. 2–3, DESIGN.md §2): Q(X) = X + ε, ε i.i.d.
U(−Δ/2, Δ/2) with Δ = 2^{1−b}·R, so Var[ε] = σ² = Δ²/12 = R²·4^{−b}/3.

Codebook-aware variance (DESIGN.md §2, "non-uniform codes") of a nearest-code quantizer
Q(x) = c_i for x in cell i = (t_{i−1}, t_i], t_i = (c_i + c_{i+1})/2, t_0 = −∞, t_K = +∞:
    exact             D = Σ_i ∫_{cell i} (x − c_i)² p(x) dx
    high_resolution   D ≈ Σ_i p_i·Δ_i²/12,   p_i = ∫_{cell i} p,  Δ_i = the cell's width
Densities: "gaussian" N(0, scale²) and "uniform" U(−√3·scale, √3·scale) (unit variance × scale),
both with closed-form partial moments, so "exact" needs numerical integration only over the
block absmax. With block_size=k the quantizer is blockwise absmax (NF4/FP4/int-k style): blocks
of k i.i.d. draws are divided by their absmax M, quantized with ``code`` (in [−1, 1]) and scaled
back; conditional on M the other k−1 draws are i.i.d. from p truncated to [−M, M] and the
absmax element itself is exact (it maps to ±1, a code value), so per element
    D = (k−1)/k · E_M[ Σ_i ∫_{M·cell_i ∩ [−M, M]} (x − M·c_i)² p(x | |x| ≤ M) dx ]
      = (k−1) · ∫_0^∞ g(m)·G(m)^{k−2} · h(m) dm,
with G(m) = P(|x| ≤ m), g = G', h(m) = Σ_i ∫_{m·cell_i ∩ [−m,m]} (x − m·c_i)² p(x) dx.
(The absmax element is exact only if ±1 are codes; true for NF4, FP4 and int-k grids k/(2^{b−1}−1),
not for the "paper" grid k/2^{b−1}, whose +1 is not a level: see ``absmax_exact``.)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy import integrate, special

from quantbounds._checks import (
    _is_traced,
    check_bits_array,
    check_choice,
    check_int_range,
    check_positive,
)

DENSITIES = ("gaussian", "uniform")
METHODS = ("exact", "high_resolution")
_SQRT3 = math.sqrt(3.0)


def _bits_checked(bits):
    if _is_traced(bits):
        return bits
    return check_bits_array(bits, "bits")


def uniform_step(bits, R):
    """Δ = 2^{1−b}·R (seed paper eq. 2), elementwise over broadcast bits and R ≥ 0.

    bits: 1…16, may be arrays, traced, or non-integer (the formula is continuous in b, e.g. for
    an optimal b* = 5.7). Integer b gives an exact power-of-two scaling (ldexp; jnp.exp2 is not
    exact on CPU); non-integer b uses exp2. R: same dtype as the result (float).
    """
    _bits_checked(bits)
    check_positive(R, "R", allow_zero=True)
    R = jnp.asarray(R)
    # R's float dtype; integer R → the default float (float64 under jax_enable_x64)
    dt = R.dtype if jnp.issubdtype(R.dtype, jnp.floating) else jnp.result_type(float)
    R = R.astype(dt)
    b = jnp.asarray(bits, dt)
    b_int = jnp.round(b)
    exact = jnp.ldexp(R, (1 - b_int).astype(jnp.int32))
    return jnp.where(b == b_int, exact, R * jnp.exp2(1 - b))


def step_ratio(bits, step: str = "paper", dtype=np.float64):
    """Δ/R of the uniform grids: 2^{1−b} ("paper", seed eq. 2) or 1/(2^{b−1} − 1) ("midtread",
    b ≥ 2; the int8 grid), elementwise over bits.

    numpy (float64) for concrete bits; jnp in ``dtype`` for traced bits (the Monte Carlo
    engine multiplies its ranges by it: Δ = (Δ/R)·R). Computed with exp2, which under XLA is
    not exact at every integer b (float32: b = 14, 16 are off by one ulp; float64: several b
    by 1–3 ulps), unlike :func:`uniform_step`'s ldexp; the engine's committed results use
    this arithmetic, so it is kept as it is.
    """
    xp = jnp if isinstance(bits, jax.core.Tracer) else np
    b = xp.asarray(bits, dtype)
    return xp.exp2(1 - b) if step == "paper" else 1 / (xp.exp2(b - 1) - 1)


def uniform_noise_variance(bits, R):
    """σ² = Δ²/12 = R²·4^{−b}/3 (variance of U(−Δ/2, Δ/2)), elementwise, bits may be arrays."""
    d = uniform_step(bits, R)
    return d * d / 12


def sample_uniform_noise(key, shape, *, bits, R, dtype=jnp.float32):
    """i.i.d. ε ~ U(−Δ/2, Δ/2), Δ = 2^{1−b}·R; ``shape`` the output shape, R and bits broadcast
    to it.

    Drawn as ε = (u − ½)·Δ with u = jax.random.uniform (a float on the 2^{−23} (float32) or
    2^{−52} (float64) grid in [0, 1)): u − ½ is exact, so ε's only error is the final product's
    rounding; the support is [−Δ/2, Δ/2).
    """
    d = jnp.asarray(uniform_step(bits, R), dtype)
    u = jax.random.uniform(key, shape, dtype=dtype)
    return (u - jnp.asarray(0.5, dtype)) * d


# --------------------------------------------------------------------------------------------
# densities with closed-form partial moments: F(x) = ∫_{−∞}^x p, M1(x) = ∫ t p, M2(x) = ∫ t² p
# (unit variance; ``scale`` is applied by rescaling the code)


def _partials(density: str):
    if density == "gaussian":

        def F(x):
            return special.ndtr(x)

        def M1(x):  # ∫_{−∞}^x t φ(t) dt = −φ(x)
            return -np.exp(-0.5 * np.square(x)) / math.sqrt(2 * math.pi)

        def M2(x):  # ∫_{−∞}^x t² φ(t) dt = Φ(x) − x·φ(x)
            x = np.asarray(x, dtype=float)
            phi = np.exp(-0.5 * np.square(x)) / math.sqrt(2 * math.pi)
            xphi = np.where(np.isfinite(x), x, 0.0) * phi  # x·φ(x) → 0 at ±∞
            return special.ndtr(x) - xphi

        def pdf(x):
            return np.exp(-0.5 * np.square(x)) / math.sqrt(2 * math.pi)

        return F, M1, M2, pdf, math.inf
    # uniform on [−√3, √3]: unit variance
    a = _SQRT3

    def F(x):
        return np.clip((np.asarray(x, float) + a) / (2 * a), 0.0, 1.0)

    def M1(x):
        x = np.clip(np.asarray(x, float), -a, a)
        return (x * x - a * a) / (4 * a)

    def M2(x):
        x = np.clip(np.asarray(x, float), -a, a)
        return (x**3 + a**3) / (6 * a)

    def pdf(x):
        x = np.asarray(x, float)
        return np.where(np.abs(x) <= a, 1 / (2 * a), 0.0)

    return F, M1, M2, pdf, a


def _mass(f, lo, hi):
    """f(hi) − f(lo) for f = F or M2 of a symmetric density, without cancellation in the
    upper tail: there f(hi) − f(lo) = f(−lo) − f(−hi) (F(x) + F(−x) = 1, M2(x) + M2(−x) = E[x²])."""
    lo = np.asarray(lo, dtype=float)
    hi = np.asarray(hi, dtype=float)
    return np.where(lo >= 0, f(-lo) - f(-hi), f(hi) - f(lo))


def _cells(code: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct codes and cell edges t (len K+1, t_0 = −∞, t_K = +∞)."""
    c = np.unique(np.asarray(code, dtype=float))
    t = np.concatenate([[-np.inf], (c[:-1] + c[1:]) / 2, [np.inf]])
    return c, t


def _cell_sq_error(c, lo, hi, partials):
    """Σ_i ∫_{lo_i}^{hi_i} (x − c_i)² p(x) dx via partial moments (vectorised)."""
    F, M1, M2, _, _ = partials
    p = _mass(F, lo, hi)
    m1 = M1(hi) - M1(lo)
    m2 = _mass(M2, lo, hi)
    return np.sum(m2 - 2 * c * m1 + c * c * p)


def _fixed_scale(c, t, partials, method):
    """Nearest-code quantizer of the unit-variance density (no absmax normalisation)."""
    F = partials[0]
    if method == "exact":
        return float(_cell_sq_error(c, t[:-1], t[1:], partials))
    # high resolution: outer cells get width 2·(distance from the code to its inner edge)
    w = np.diff(t)
    if len(c) > 1:
        w[0] = 2 * (t[1] - c[0])
        w[-1] = 2 * (c[-1] - t[-2])
    p = _mass(F, t[:-1], t[1:])
    return float(np.sum(p * w * w / 12))


def _blockwise(c, t, partials, method, k):
    """Absmax-normalised blocks of k i.i.d. draws (module docstring for the formula)."""
    F, _, _, pdf, top = partials
    lo_n = np.clip(t[:-1], -1.0, 1.0)
    hi_n = np.clip(t[1:], -1.0, 1.0)

    def h(m):
        if method == "exact":
            return _cell_sq_error(m * c, m * lo_n, m * hi_n, partials)
        p = _mass(F, m * lo_n, m * hi_n)
        w = m * (hi_n - lo_n)
        return np.sum(p * w * w / 12)

    def integrand(m):
        G = F(m) - F(-m)
        g = 2 * pdf(m)
        return (k - 1) * g * G ** (k - 2) * h(m) if k >= 2 else 0.0

    upper = top if math.isfinite(top) else 12.0  # P(|x| > 12) < 1e−32 for the unit Gaussian
    brk = [1.0, 2.0, 3.0, 4.0] if not math.isfinite(top) else None
    val, _ = integrate.quad(
        integrand, 0.0, upper, points=brk, limit=400, epsabs=1e-14, epsrel=1e-10
    )
    return float(val)


def absmax_exact(code) -> bool:
    """True when ±1 are code values, so the absmax element of a block is quantized exactly."""
    c = np.asarray(code, dtype=float)
    return bool(np.any(c == 1.0) and np.any(c == -1.0))


def codebook_noise_variance(
    code, *, density="gaussian", scale=1.0, block_size=None, method="exact"
) -> float:
    """Mean squared error per element of nearest-code quantization of a density.

    code: 1-D levels (any order, duplicates ignored). density: "gaussian" = N(0, scale²),
    "uniform" = U(−√3·scale, √3·scale) (both variance scale²).
    block_size=None: Q(x) = nearest level of ``code`` in x's units (fixed scale).
    block_size=k ≥ 1: blockwise absmax — each block of k i.i.d. draws is divided by its absmax,
        rounded to the nearest level of ``code`` (which should lie in [−1, 1]) and scaled back;
        this is what NF4/FP4/int-b absmax quantizers do to Gaussian weights (block 64 default
        in bnb). The formula assumes the absmax element is exact (see :func:`absmax_exact`);
        for a code without ±1 it under-counts that element's error (≤ 1/k of the total).
    method: "exact" = Σ_i ∫_{cell i} (x − c_i)² p(x) dx (closed-form partial moments; one
        numerical integral over the block absmax when block_size is given);
        "high_resolution" = Σ_i p_i·Δ_i²/12 (cell widths Δ_i; outer fixed-scale cells get width
        2·(code − inner edge); absmax-normalised cells are clipped to [−1, 1]).
    Returns a Python float (variance in x's units², i.e. × scale²).
    """
    check_choice(density, "density", DENSITIES)
    check_choice(method, "method", METHODS)
    check_positive(scale, "scale")
    c = np.asarray(code, dtype=float).ravel()
    if c.size < 1 or not np.all(np.isfinite(c)):
        raise ValueError(f"code must be a non-empty 1-D array of finite levels, got {code!r}")
    c, t = _cells(c)
    partials = _partials(density)
    if block_size is None:
        d = _fixed_scale(c / scale, t / scale, partials, method)
    else:
        k = check_int_range(block_size, "block_size", 1, None)
        if np.max(np.abs(c)) > 1.0 + 1e-12:
            raise ValueError(
                "with block_size the code must lie in [−1, 1] (absmax-normalised), "
                f"got max |code| = {np.max(np.abs(c))}"
            )
        d = _blockwise(c, t, partials, method, k)
    return float(d * scale * scale)
