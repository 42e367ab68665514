"""Uniform and int8 quantizers: hand cases, a numpy re-implementation, SR statistics, jit/vmap,
and bad input. (NF4/FP4 against bitsandbytes: tests/test_bnb_parity.py.)"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantbounds.quant.quantizers import (
    QuantizedTensor,
    quantize,
    quantize_codes,
    quantize_uniform,
)


# ------------------------------------------------------------------ numpy reference (independent)
def np_uniform(x, bits, *, step="paper", axis=None, block_size=None, u=None):
    """Straight numpy: R per group, Δ, round-half-even (np.round) or floor(t+u), clip, q·Δ."""
    x = np.asarray(x)
    if block_size is not None:
        g = x.reshape(-1, block_size)
        R = np.abs(g).max(axis=1, keepdims=True)
    elif axis is not None:
        g = x
        R = np.abs(x).max(axis=tuple(i for i in range(x.ndim) if i != axis), keepdims=True)
    else:
        g = x
        R = np.abs(x).max()
    h = 2 ** (bits - 1)
    if step == "paper":
        d = R * x.dtype.type(2.0 ** (1 - bits))
        lo, hi = -h, h - 1
    else:
        d = R / x.dtype.type(h - 1)
        lo, hi = -(h - 1), h - 1
    with np.errstate(divide="ignore", invalid="ignore"):
        t = g / d
        q = np.round(t) if u is None else np.floor(t + np.asarray(u).reshape(g.shape))
        q = np.clip(q, lo, hi)
        xh = q * d if step == "paper" else R * (q / x.dtype.type(h - 1))
        out = np.where(R > 0, xh, 0.0).astype(x.dtype)
    return out.reshape(x.shape)


# ------------------------------------------------------------------ exact hand cases
def test_paper_step_b2_hand_case_ties_clipping_zero_absmax():
    # R = 1, Δ = 2^{1−2} = 0.5, levels k·Δ, k ∈ {−2, −1, 0, 1}
    x = jnp.array([-1.0, -0.75, -0.5, -0.25, 0.0, 0.125, 0.375, 0.6, 1.0])
    want = [
        -1.0,  # −R = −2Δ is a level: exact
        -1.0,  # t = −1.5 tie → −2 (even)
        -0.5,
        0.0,  # t = −0.5 tie → 0 (even)
        0.0,  # zero is a level
        0.0,  # t = 0.25
        0.5,  # t = 0.75
        0.5,  # t = 1.2
        0.5,
    ]  # +R: t = 2 clips to k = 1 → R − Δ
    np.testing.assert_array_equal(quantize(x, "uniform", bits=2), want)


def test_paper_step_ties_go_to_even():
    # b = 3, R = 1 (the last element), Δ = 0.25: ties at t = k + ½
    x = jnp.array([0.125, 0.375, -0.375, 0.625, -0.625, 1.0])
    np.testing.assert_array_equal(quantize(x, "uniform", bits=3), [0.0, 0.5, -0.5, 0.5, -0.5, 0.75])


def test_one_bit_paper_levels_are_minus_R_and_zero():
    x = jnp.array([-1.0, -0.5, -0.4, 0.3, 1.0])  # Δ = R = 1, k ∈ {−1, 0}
    np.testing.assert_array_equal(quantize(x, "uniform", bits=1), [-1.0, 0.0, 0.0, 0.0, 0.0])


def test_midtread_step_hand_case():
    # b = 2: Δ = R/(2−1) = R = 2, levels {−2, 0, 2}; ±R exact
    x = jnp.array([-2.0, -1.0, 1.0, 1.2, 2.0, 0.0])
    np.testing.assert_array_equal(
        quantize(x, "uniform", bits=2, step="midtread"), [-2.0, 0.0, 0.0, 2.0, 2.0, 0.0]
    )
    # b = 3: Δ = 3/3 = 1, levels −3…3; ties 0.5 → 0, 1.5 → 2, 2.5 → 2
    x = jnp.array([0.5, 1.5, 2.5, -2.5, 3.0, -3.0])
    np.testing.assert_array_equal(
        quantize(x, "uniform", bits=3, step="midtread"), [0.0, 2.0, 2.0, -2.0, 3.0, -3.0]
    )


def test_granularities_hand_case():
    x = jnp.array([[1.0, 0.5, 0.25, -0.25], [4.0, -3.0, 2.0, 1.0]])
    # per tensor: R = 4, b = 3 → Δ = 1: levels −4…3
    np.testing.assert_array_equal(quantize(x, "uniform", bits=3), [[1, 0, 0, 0], [3, -3, 2, 1]])
    # per channel axis=0 (one R per row): row 0 R = 1, Δ = .25; row 1 R = 4, Δ = 1
    np.testing.assert_array_equal(
        quantize(x, "uniform", bits=3, axis=0), [[0.75, 0.5, 0.25, -0.25], [3, -3, 2, 1]]
    )
    # per channel axis=1 (one R per column): R = 4, 3, 2, 1 → Δ = 1, .75, .5, .25
    np.testing.assert_array_equal(
        quantize(x, "uniform", bits=3, axis=1), [[1, 0.75, 0.0, -0.25], [3, -3, 1.5, 0.75]]
    )
    # per block of 2 (flattened C order): R = 1, .25, 4, 2 → Δ = .25, .0625, 1, .5
    np.testing.assert_array_equal(
        quantize(x, "uniform", bits=3, block_size=2),
        [[0.75, 0.5, 0.1875, -0.25], [3, -3, 1.5, 1.0]],
    )


def test_zero_range_gives_zeros_not_nan():
    x = jnp.zeros((4, 8))
    for kw in ({}, {"axis": 0}, {"block_size": 4}):
        for step in ("paper", "midtread"):
            y = quantize(x, "uniform", bits=4, step=step, **kw)
            assert np.all(np.asarray(y) == 0.0)
    # one all-zero block among nonzero ones, also with SR
    x = jnp.concatenate([jnp.zeros(4), jnp.array([1.0, -0.3, 0.2, 0.7])])
    y = quantize(x, "uniform", bits=4, block_size=4, rounding="stochastic", key=jax.random.key(0))
    assert np.all(np.isfinite(np.asarray(y))) and np.all(np.asarray(y)[:4] == 0.0)
    assert np.all(np.asarray(quantize(jnp.zeros(64), "int8")) == 0.0)


def test_absmax_element():
    x = jnp.array([0.3, -0.7, 0.1, 0.9, -0.2, 0.4, -0.9, 0.05])
    # midtread: ±R exact for every b
    for b in range(2, 17):
        y = np.asarray(quantize(x, "uniform", bits=b, step="midtread"))
        assert y[3] == 0.9 and y[6] == -0.9
    # paper: −R exact, +R clips to R − Δ
    for b in range(1, 17):
        y = np.asarray(quantize(x, "uniform", bits=b))
        assert y[6] == -0.9
        assert y[3] == pytest.approx(0.9 - 0.9 * 2.0 ** (1 - b), rel=1e-15)


def test_int8_is_midtread_b8_and_integers_round_trip():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal(256).astype(np.float32))
    a = quantize(x, "int8")
    b = quantize(x, "uniform", bits=8, step="midtread", block_size=64)
    np.testing.assert_array_equal(np.asarray(a).view(np.int32), np.asarray(b).view(np.int32))
    assert a.dtype == jnp.float32
    # a block whose absmax is 127: Δ = 1, so the codes are the integers themselves, ±127 and 0
    # dequantize exactly, the rest to within one rounding of R·(q/127) (≤ 1 ulp of q)
    ints = np.concatenate([[127.0, -127.0, 0.0], rng.integers(-127, 128, 61)])
    qt = quantize_codes(jnp.asarray(ints), "int8")
    np.testing.assert_array_equal(qt.codes, ints.astype(np.int32))
    y = np.asarray(qt.dequantize())
    np.testing.assert_array_equal(y[:3], ints[:3])
    assert np.all(np.abs(y - ints) <= np.spacing(np.abs(ints)))
    # per channel (LLM.int8 row-wise absmax)
    m = jnp.asarray(rng.standard_normal((3, 10)))
    np.testing.assert_array_equal(
        quantize(m, "int8", axis=0), np_uniform(np.asarray(m), 8, step="midtread", axis=0)
    )


# ------------------------------------------------------------------ numpy re-implementation
@settings(deadline=None, max_examples=12)
@given(
    bits=st.integers(1, 16),
    step=st.sampled_from(["paper", "midtread"]),
    gran=st.sampled_from(["tensor", "axis0", "axis1", "block"]),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 2**31 - 1),
    scale=st.sampled_from([1e-3, 1.0, 250.0]),
)
def test_matches_numpy_reference(bits, step, gran, dtype, seed, scale):
    if step == "midtread" and bits == 1:
        bits = 2
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((6, 8)) * scale).astype(dtype)
    x[0, :4] = 0.0  # a zero-range block / part of a channel
    kw = {"tensor": {}, "axis0": {"axis": 0}, "axis1": {"axis": 1}, "block": {"block_size": 4}}[
        gran
    ]
    y = np.asarray(quantize(jnp.asarray(x), "uniform", bits=bits, step=step, **kw))
    ref = np_uniform(x, bits, step=step, **kw)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, ref)
    # stochastic path, fed the same u
    u = rng.random(x.shape).astype(dtype)
    ys = np.asarray(quantize_uniform(jnp.asarray(x), bits=bits, step=step, u=jnp.asarray(u), **kw))
    np.testing.assert_array_equal(ys, np_uniform(x, bits, step=step, u=u, **kw))
    # codes: integers in range, and dequantize() reproduces quantize()
    qt = quantize_codes(jnp.asarray(x), "uniform", bits=bits, step=step, **kw)
    h = 2 ** (bits - 1)
    lo = -h if step == "paper" else -(h - 1)
    c = np.asarray(qt.codes)
    assert c.min() >= lo and c.max() <= h - 1
    np.testing.assert_array_equal(np.asarray(qt.dequantize()), y)


@settings(deadline=None, max_examples=25)
@given(bits=st.integers(2, 16), seed=st.integers(0, 2**31 - 1))
def test_error_bounded_by_half_step_inside_range(bits, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(64)
    R = np.abs(x).max()
    ulp = 2 * np.spacing(R)  # x̂ is formed with ≤ 2 roundings of numbers ≤ R
    # midtread: |ε| ≤ Δ/2 everywhere
    d = R / (2 ** (bits - 1) - 1)
    e = np.asarray(quantize(jnp.asarray(x), "uniform", bits=bits, step="midtread")) - x
    assert np.all(np.abs(e) <= d / 2 + ulp)
    # paper: |ε| ≤ Δ/2 except in the clipped top cell (x > R − Δ/2), where |ε| ≤ Δ
    d = R * 2.0 ** (1 - bits)
    e = np.asarray(quantize(jnp.asarray(x), "uniform", bits=bits)) - x
    inside = x <= R - d / 2
    assert np.all(np.abs(e[inside]) <= d / 2 + ulp)
    assert np.all(np.abs(e[~inside]) <= d + ulp)


# ------------------------------------------------------------------ stochastic rounding
def test_stochastic_rounding_unbiased_with_variance_delta2_p_1mp():
    # b = 4, R = 1 (first element), Δ = 1/8; fractional positions p = t − ⌊t⌋ spread over [0, 1)
    d = 2.0 ** (1 - 4)
    t = np.array([8.0 * 0 - 8, 0.0, 0.1, 0.25, 0.5, 0.73, 0.999, -3.3, -5.5, 6.02, 2.5])
    x = t * d
    x[0] = -1.0  # −R: exact level
    n = 4000
    keys = jax.random.split(jax.random.key(7), n)
    f = jax.jit(
        jax.vmap(
            lambda k: quantize(jnp.asarray(x), "uniform", bits=4, rounding="stochastic", key=k)
        )
    )
    y = np.asarray(f(keys))
    p = t - np.floor(t)
    var = d * d * p * (1 - p)
    # only the two neighbouring levels occur
    assert np.all((np.isclose(y, np.floor(t) * d)) | (np.isclose(y, np.ceil(t) * d)))
    # |mean − x| ≤ 5σ/√n, σ² = Δ²p(1−p) (analytic); exact where p = 0
    mean = y.mean(axis=0)
    assert np.all(np.abs(mean - x) <= 5 * np.sqrt(var / n) + 1e-15)
    # sample variance vs Δ²p(1−p): Var[s²] = (μ4 − σ⁴·(n−3)/(n−1))/n exactly, with the
    # two-point (Bernoulli) central fourth moment μ4 = Δ⁴·p(1−p)·(1 − 3p(1−p))
    mu4 = d**4 * p * (1 - p) * (1 - 3 * p * (1 - p))
    sd_s2 = np.sqrt(np.maximum(mu4 - var**2 * (n - 3) / (n - 1), 0) / n)
    sv = y.var(axis=0, ddof=1)
    assert np.all(np.abs(sv - var) <= 5 * sd_s2 + 1e-15)


def test_stochastic_needs_key_and_is_reproducible():
    x = jnp.linspace(-1, 1, 16)
    with pytest.raises(ValueError, match="key"):
        quantize(x, "uniform", bits=3, rounding="stochastic")
    k = jax.random.key(3)
    a = quantize(x, "uniform", bits=3, rounding="stochastic", key=k)
    b = quantize(x, "uniform", bits=3, rounding="stochastic", key=k)
    np.testing.assert_array_equal(a, b)
    qt = quantize_codes(x, "uniform", bits=3, rounding="stochastic", key=k)
    np.testing.assert_array_equal(qt.dequantize(), a)


# ------------------------------------------------------------------ jit / vmap vs Python loops
def test_vmap_over_traced_bits_matches_python_loop():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((8, 16)))
    bits = jnp.arange(1, 17)
    for step, bl, kw in (
        ("paper", bits, {}),
        ("paper", bits, {"block_size": 16}),
        ("midtread", bits[1:], {"axis": 1}),
    ):
        f = jax.jit(jax.vmap(lambda b: quantize(x, "uniform", bits=b, step=step, **kw)))
        out = np.asarray(f(bl))
        for i, b in enumerate(np.asarray(bl)):
            np.testing.assert_array_equal(
                out[i], quantize(x, "uniform", bits=int(b), step=step, **kw)
            )
    # float32 (the Monte Carlo engine's dtype), SR with a traced key as well
    x32 = x.astype(jnp.float32)
    keys = jax.random.split(jax.random.key(0), 16)
    f = jax.jit(
        jax.vmap(lambda b, k: quantize(x32, "uniform", bits=b, rounding="stochastic", key=k))
    )
    out = np.asarray(f(bits, keys))
    for i in range(16):
        want = quantize(x32, "uniform", bits=i + 1, rounding="stochastic", key=keys[i])
        np.testing.assert_array_equal(out[i].view(np.int32), np.asarray(want).view(np.int32))


def test_vmap_over_inputs_and_jit_match_eager():
    rng = np.random.default_rng(3)
    xs = jnp.asarray(rng.standard_normal((5, 4, 32)).astype(np.float32))
    for scheme, kw in (
        ("uniform", {"bits": 3, "block_size": 8}),
        ("int8", {}),
        ("nf4", {}),
        ("fp4", {"block_size": 32}),
    ):
        g = jax.jit(jax.vmap(lambda x: quantize(x, scheme, **kw)))
        out = np.asarray(g(xs))
        for i in range(xs.shape[0]):
            np.testing.assert_array_equal(
                out[i].view(np.int32), np.asarray(quantize(xs[i], scheme, **kw)).view(np.int32)
            )


# ------------------------------------------------------------------ dtypes and codes
def test_dtype_and_shape_preserved():
    x64 = jnp.asarray(np.random.default_rng(4).standard_normal((2, 64)))
    for scheme, kw in (("uniform", {"bits": 5}), ("int8", {}), ("nf4", {}), ("fp4", {})):
        for x in (x64, x64.astype(jnp.float32)):
            y = quantize(x, scheme, **kw)
            assert y.shape == x.shape and y.dtype == x.dtype
            qt = quantize_codes(x, scheme, **kw)
            assert isinstance(qt, QuantizedTensor) and qt.codes.shape == x.shape
            np.testing.assert_array_equal(np.asarray(qt.dequantize()), np.asarray(y))


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("bits", [0, 17, -3])
def test_bits_out_of_range(bits):
    with pytest.raises(ValueError, match="bits"):
        quantize(jnp.ones(4), "uniform", bits=bits)


def test_bad_inputs_name_the_argument():
    x = jnp.linspace(-1, 1, 12)
    with pytest.raises(TypeError, match="bits"):
        quantize(x, "uniform", bits=2.5)
    with pytest.raises(ValueError, match="bits"):
        quantize(x, "uniform")
    with pytest.raises(ValueError, match="bits"):
        quantize(x, "uniform", bits=1, step="midtread")
    with pytest.raises(ValueError, match="block_size"):
        quantize(x, "uniform", bits=4, block_size=5)
    with pytest.raises(ValueError, match="block_size"):
        quantize(x, "uniform", bits=4, block_size=0)
    with pytest.raises(ValueError, match="scheme"):
        quantize(x, "int4", bits=4)
    with pytest.raises(ValueError, match="step"):
        quantize(x, "uniform", bits=4, step="midrise")
    with pytest.raises(ValueError, match="rounding"):
        quantize(x, "uniform", bits=4, rounding="up")
    with pytest.raises(ValueError, match="x must be finite"):
        quantize(x.at[3].set(jnp.nan), "uniform", bits=4)
    with pytest.raises(ValueError, match="x must be finite"):
        quantize(x.at[0].set(jnp.inf), "nf4")
    with pytest.raises(ValueError, match="axis"):
        quantize(x, "uniform", bits=4, axis=0, block_size=4)
    with pytest.raises(ValueError, match="axis"):
        quantize(x, "uniform", bits=4, axis=2)
    with pytest.raises(TypeError, match="x"):
        quantize(jnp.arange(12), "uniform", bits=4)
    with pytest.raises(ValueError, match="bits"):
        quantize(x, "nf4", bits=3)
    with pytest.raises(ValueError, match="bits"):
        quantize(x, "int8", bits=4)
    with pytest.raises(ValueError, match="axis"):
        quantize(x, "fp4", axis=0)
    with pytest.raises(ValueError, match="rounding"):
        quantize(x, "nf4", rounding="stochastic", key=jax.random.key(0))
    with pytest.raises(ValueError, match="u"):
        quantize_uniform(x, bits=3, u=jnp.full(12, 1.0))
    with pytest.raises(ValueError, match="u"):
        quantize_uniform(x, bits=3, u=jnp.zeros(5))
    with pytest.raises(ValueError, match="bits"):
        quantize(x, "uniform", bits=jnp.int32(17))  # a concrete array is validated too
