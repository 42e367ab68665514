"""Widrow diagnostics against exact conditional integrals (truncated Gaussian given the absmax).

Given the absmax R of n i.i.d. N(0,1) weights, the other n − 1 are i.i.d. N(0,1) truncated to
[−R, R], so E[ε²] and E[ε·w] for a fixed grid are one-dimensional integrals (scipy quad here,
independent of quantbounds.quant.noise). Tolerances are 5·sd/√n with sd from the sample.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from quantbounds.quant.noise import codebook_noise_variance
from quantbounds.quant.quantizers import quantize_codes
from quantbounds.quant.widrow import _local_steps_4bit, widrow_diagnostics


def grid(bits: int, step: str, R: float):
    """(levels, Δ) of the uniform grid in x units."""
    h = 2 ** (bits - 1)
    if step == "paper":
        d = R * 2.0 ** (1 - bits)
        k = np.arange(-h, h)
    else:
        d = R / (h - 1)
        k = np.arange(-(h - 1), h)
    return k * d, d


def truncated_moments(levels: np.ndarray, R: float):
    """E[ε²], E[ε·w] for w ~ N(0,1) | |w| ≤ R and ε = nearest level − w."""
    t = np.concatenate([[-np.inf], (levels[:-1] + levels[1:]) / 2, [np.inf]])
    Z = stats.norm.cdf(R) - stats.norm.cdf(-R)
    e2 = ew = 0.0
    for c, a, b in zip(levels, np.maximum(t[:-1], -R), np.minimum(t[1:], R)):
        if b <= a:
            continue
        e2 += integrate.quad(lambda x: (c - x) ** 2 * stats.norm.pdf(x), a, b, epsabs=1e-13)[0]
        ew += integrate.quad(lambda x: (c - x) * x * stats.norm.pdf(x), a, b, epsabs=1e-13)[0]
    return e2 / Z, ew / Z


def weights(seed: int, shape=(1024, 16)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


@pytest.mark.parametrize(
    "bits,step",
    [(2, "midtread"), (2, "paper"), (3, "paper"), (4, "paper"), (3, "midtread"), (4, "midtread")],
)
def test_rtn_per_tensor_matches_exact_conditional_moments(bits, step):
    w = weights(bits * 10 + (step == "paper"))
    x = w.reshape(-1)
    n = x.size
    R = float(np.abs(x).max())
    levels, d = grid(bits, step, R)
    e2_t, ew_t = truncated_moments(levels, R)
    # the absmax element: exact on the midtread grid; on the paper grid −R is exact, +R → R − Δ
    i = int(np.argmax(np.abs(x)))
    e_max = 0.0 if (step == "midtread" or x[i] < 0) else -d
    pred_mse = ((n - 1) * e2_t + e_max**2) / n
    pred_cov = ((n - 1) * ew_t + e_max * x[i]) / n
    e = np.asarray(quantize_codes(x, "uniform", bits=bits, step=step).dequantize()) - x
    assert abs(np.mean(e * e) - pred_mse) <= 5 * np.std(e * e) / math.sqrt(n)
    assert abs(np.mean(e * x) - pred_cov) <= 5 * np.std(e * x) / math.sqrt(n)
    diag = widrow_diagnostics(w, bits=bits, step=step)
    pred_ratio = pred_mse / (d * d / 12)
    assert diag.variance_ratio == pytest.approx(np.mean(e * e) / (d * d / 12), rel=1e-12)
    assert abs(diag.variance_ratio - pred_ratio) <= 5 * np.std(e * e) / math.sqrt(n) / (d * d / 12)
    if bits == 2 and step == "midtread":
        # DESIGN.md §2: "RTN at b = 2 … error variance ≈ 0.63·Δ²/12, correlation ≈ −0.6". It holds
        # for the 3-level grid {−R, 0, R} (Δ = R ≈ 4σ here): exact prediction 0.64 for this R
        assert 0.55 < pred_ratio < 0.72 and diag.correlation < -0.5
        assert diag.ks_pvalue < 1e-10  # the error is far from uniform
    else:
        # b ≥ 3 (and the paper grid at b = 2, Δ = R/2 ≈ 2σ): the additive model within 2–3 %
        assert abs(pred_ratio - 1) < (0.03 if bits == 2 else 0.02)
        assert abs(diag.correlation) < 0.05


def test_characteristic_function_matches_gaussian():
    """|φ̂(2π/Δ)| vs exp(−2π²/Δ²) for N(0,1); the estimator's sd is ≤ 1/√n (|e^{iuw}| = 1)."""
    w = weights(7)
    n = w.size
    R = float(np.abs(w).max())
    for bits, step in ((2, "midtread"), (2, "paper"), (3, "paper")):
        _, d = grid(bits, step, R)
        diag = widrow_diagnostics(w, bits=bits, step=step)
        assert abs(diag.char_fn - math.exp(-2 * math.pi**2 / d**2)) <= 5 / math.sqrt(n)
    # the coarse grid's CF is far from 0 (Widrow's condition fails), the fine one's is not
    assert widrow_diagnostics(w, bits=2, step="midtread").char_fn > 0.2


def test_int8_block64_ratio_is_63_over_64():
    """DESIGN.md §2: int8 absmax at block 64 matches (63/64)·Δ²/12 (the absmax element is exact)."""
    w = np.asarray(jax.random.normal(jax.random.key(3), (2**14 * 64,), dtype=jnp.float64))
    qt = quantize_codes(w, "int8")
    e = np.asarray(qt.dequantize()) - w
    d = np.repeat(np.asarray(qt.steps), 64)
    ratio_blocks = (e * e / (d * d / 12)).reshape(-1, 64).mean(axis=1)  # i.i.d. over blocks
    se = ratio_blocks.std(ddof=1) / math.sqrt(ratio_blocks.size)
    assert abs(ratio_blocks.mean() - 63 / 64) <= 5 * se
    diag = widrow_diagnostics(w, scheme="int8")
    assert diag.group_size == 64 and diag.absmax_factor == 63 / 64 and diag.absmax_exact
    assert diag.zero_error_fraction >= 1 / 64
    assert abs(diag.correlation) <= 5 / math.sqrt(w.size)  # additive model: uncorrelated


def test_per_channel_midtread_ratio_is_one_minus_one_over_channel_size():
    """axis=0 on (512, 64): 512 channels of 64; 8-bit midtread → (63/64)·Δ²/12 (absmax exact)."""
    w = np.random.default_rng(12).standard_normal((512, 64))
    qt = quantize_codes(w, "uniform", bits=8, step="midtread", axis=0)
    e = np.asarray(qt.dequantize()) - w
    d = np.asarray(qt.steps)[:, None]
    ratio_rows = (e * e / (d * d / 12)).mean(axis=1)  # i.i.d. over channels
    se = ratio_rows.std(ddof=1) / math.sqrt(ratio_rows.size)
    assert abs(ratio_rows.mean() - 63 / 64) <= 5 * se
    diag = widrow_diagnostics(w, bits=8, step="midtread", axis=0)
    assert diag.group_size == 64 and diag.absmax_factor == 63 / 64
    assert diag.variance_ratio == pytest.approx(
        np.mean(e * e) / np.mean(d * d / 12 * np.ones_like(e)), rel=1e-12
    )


def test_stochastic_rounding_variance_ratio_two_and_uncorrelated():
    """SR: E[ε | w] = 0 and Var = Δ²p(1−p); with p ≈ U(0,1) (fine grid) E[Δ²p(1−p)] = Δ²/6,
    i.e. variance_ratio = 2, and cov(ε, w) = 0 exactly."""
    w = weights(9, (2048, 16)).reshape(-1)
    bits = 6
    R = float(np.abs(w).max())
    d = R * 2.0 ** (1 - bits)
    qt = quantize_codes(w, "uniform", bits=bits, rounding="stochastic", key=jax.random.key(4))
    e = np.asarray(qt.dequantize()) - w
    top = w > R - d  # the clipped top cell is biased; leave it out
    e_in, w_in = e[~top], w[~top]
    r = e_in * e_in / (d * d / 12)
    assert abs(r.mean() - 2.0) <= 5 * r.std() / math.sqrt(r.size)
    assert abs(np.mean(e_in * w_in)) <= 5 * np.std(e_in * w_in) / math.sqrt(r.size)
    diag = widrow_diagnostics(w, bits=bits, rounding="stochastic", key=jax.random.key(4))
    assert diag.variance_ratio == pytest.approx(np.mean(e * e) / (d * d / 12), rel=1e-12)
    assert diag.ks_pvalue < 1e-10  # SR error lies in (−Δ, Δ), not U(−Δ/2, Δ/2)


@pytest.mark.parametrize("scheme", ["nf4", "fp4"])
def test_codebook_local_steps_match_high_resolution_integral(scheme):
    """mean Δ_i²/12 over Gaussian weights = the high-resolution codebook variance (block 64)."""
    n_blocks = 2**13
    w = jax.random.normal(jax.random.key(5), (n_blocks * 64,), dtype=jnp.float32)
    qt = quantize_codes(w, scheme)
    d = _local_steps_4bit(qt)
    from quantbounds.quant.quantizers import fp4_code, nf4_code

    code = np.asarray(nf4_code() if scheme == "nf4" else fp4_code(), float)
    hr = codebook_noise_variance(code, block_size=64, method="high_resolution")
    # the integral counts the 63 non-absmax elements of a block (the absmax one is exact), per
    # element of the block: Σ_{non-max} Δ_i²/12 / 64; blocks are i.i.d.
    v = (d * d / 12).reshape(n_blocks, 64)
    amax = np.argmax(np.abs(np.asarray(w, np.float64)).reshape(n_blocks, 64), axis=1)
    v[np.arange(n_blocks), amax] = 0.0
    per_block = v.sum(axis=1) / 64
    se = per_block.std(ddof=1) / math.sqrt(n_blocks)
    assert abs(per_block.mean() - hr) <= 5 * se
    diag = widrow_diagnostics(w, scheme=scheme)
    assert diag.group_size == 64 and diag.absmax_exact
    assert diag.reference_variance == pytest.approx(float(np.mean(d * d / 12)), rel=1e-9)


def test_bad_inputs():
    with pytest.raises(ValueError, match="scheme"):
        widrow_diagnostics(np.ones(8), scheme="int3", bits=3)
    with pytest.raises(ValueError, match="nonzero range"):
        widrow_diagnostics(np.zeros(64), bits=3)
    with pytest.raises(ValueError, match="x must be finite"):
        widrow_diagnostics(np.array([1.0, np.nan]), bits=3)
