"""real_runs.fakequant: the torch port agrees with quantbounds.quant.quantizers bit for bit (float32)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
jnp = pytest.importorskip("jax.numpy")
from hypothesis import given, settings, strategies as st  # noqa: E402

from quantbounds.quant import quantizers as qz  # noqa: E402
from real_runs import fakequant as fq  # noqa: E402


def _bits_equal(a, b) -> bool:
    """Identical float32 bit patterns (so −0.0 ≠ +0.0 and NaN payloads count)."""
    a = np.ascontiguousarray(np.asarray(a, dtype=np.float32))
    b = np.ascontiguousarray(np.asarray(b, dtype=np.float32))
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def _core_exact_at(bits: int) -> bool:
    """Does the JAX core produce the exact power-of-two step Δ = 2^{1−b}·R at this b?

    Probe: x = [−1, −2^{1−b}] has R = 1, so the second element is exactly the level −Δ
    (k = −1 ≥ −2^{b−1}) and must come back unchanged. (jnp.exp2 in float32 is inexact at
    some b: reported to the lead.)
    """
    x = np.array([-1.0, -(2.0 ** (1 - bits))], dtype=np.float32)
    got = float(np.asarray(qz.quantize_uniform(jnp.asarray(x), bits=bits))[1])
    return got == -(2.0 ** (1 - bits))


def _bits_params():
    out = []
    for b in range(1, 17):
        marks = []
        if not _core_exact_at(b):
            marks = [
                pytest.mark.xfail(
                    strict=True,
                    reason=(
                        f"quantbounds.quant.quantizers: jnp.exp2 is inexact in float32 at b={b}, so the core's "
                        "Δ is not the documented exact power of two; the torch port uses the exact one"
                    ),
                )
            ]
        out.append(pytest.param(b, marks=marks))
    return out


def _inputs(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((6, 64)).astype(np.float32)
    x[0, :5] = 0.0  # zeros
    x[1, 3] = -np.abs(x).max() * 2  # a negative absmax element (−R is a level of the "paper" grid)
    x[2] = 0.0  # an all-zero row / block: R = 0 → x̂ = 0
    return x


def _assert_uniform_parity(x, u, **kw):
    """torch port == JAX quantize_uniform bit for bit (u=None: nearest; else stochastic with u)."""
    ref = qz.quantize_uniform(jnp.asarray(x), u=None if u is None else jnp.asarray(u), **kw)
    got = fq.quantize_uniform(
        torch.from_numpy(x), u=None if u is None else torch.from_numpy(u), **kw
    )
    assert _bits_equal(ref, got.numpy()), (kw, u is None)


@pytest.mark.parametrize("bits", _bits_params())
@pytest.mark.parametrize("grouping", [{}, {"block_size": 32}])
def test_uniform_paper_bit_exact(bits, grouping):
    x = _inputs(bits)
    u = np.random.default_rng(100 + bits).random(x.shape).astype(np.float32)
    for uu in (None, u):
        _assert_uniform_parity(x, uu, bits=bits, step="paper", **grouping)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_uniform_ties_round_half_even(bits):
    # R = 1 → Δ = 2^{1−b}; x = (k + ½)·Δ are exact ties: round half to even on both sides
    d = 2.0 ** (1 - bits)
    h = 2 ** (bits - 1)
    ks = np.arange(-h, h - 1)
    x = np.concatenate([[1.0], (ks + 0.5) * d]).astype(np.float32)
    got = fq.quantize_uniform(torch.from_numpy(x), bits=bits).numpy()
    expect = np.concatenate([[(h - 1) * d], np.round(ks + 0.5) * d])  # +R clips to R − Δ
    np.testing.assert_array_equal(got, expect.astype(np.float32))
    assert _bits_equal(qz.quantize_uniform(jnp.asarray(x), bits=bits), got)


def test_uniform_hand_case_two_bits():
    # b = 2, R = 1: Δ = ½, levels {−1, −½, 0, ½}; +1 clips to ½; −1 exact
    x = torch.tensor([1.0, -1.0, 0.3, -0.3, 0.0, 0.74, 0.76])
    got = fq.quantize_uniform(x, bits=2)
    np.testing.assert_array_equal(got.numpy(), np.float32([0.5, -1.0, 0.5, -0.5, 0.0, 0.5, 0.5]))


@pytest.mark.parametrize("bits", [2, 3, 4, 8, 16])
def test_uniform_midtread_bit_exact(bits):
    x = _inputs(50 + bits)
    u = np.random.default_rng(bits).random(x.shape).astype(np.float32)
    for kw in ({}, {"axis": 0}, {"block_size": 64}):
        for uu in (None, u):
            _assert_uniform_parity(x, uu, bits=bits, step="midtread", **kw)
    # ±R are levels of the midtread grid: the absmax element is reproduced exactly
    got = fq.quantize_uniform(torch.from_numpy(x), bits=bits, step="midtread").numpy()
    i = np.unravel_index(np.abs(x).argmax(), x.shape)
    assert got[i] == x[i]


def test_uniform_per_channel_matches_core():
    x = _inputs(7)
    for axis in (0, 1):
        ref = qz.quantize_uniform(jnp.asarray(x), bits=3, axis=axis)
        got = fq.quantize_uniform(torch.from_numpy(x), bits=3, axis=axis)
        assert _bits_equal(ref, got.numpy())


@pytest.mark.parametrize("code", ["nf4", "fp4"])
@pytest.mark.parametrize("n", [512, 500, 64 * 3 + 1])
def test_codebook_bit_exact(code, n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal(n).astype(np.float32)
    x[:64] = 0.0  # an all-zero block
    x[70] = 1e-4  # near zero: FP4's −0 code
    x[130:140] = x[128]  # repeated values
    ref = qz.quantize(jnp.asarray(x), code)
    got = fq.quantize_code(torch.from_numpy(x), code=code)
    assert _bits_equal(ref, got.numpy())


@pytest.mark.parametrize("code", ["nf4", "fp4"])
def test_codebook_midpoint_ties_go_to_lower_code(code):
    deq, order, mids = fq._code_tables(code)
    table = np.sort(deq[order])
    # one block of 64 scaled by absmax 1 (the element 1.0): each midpoint maps to the lower code
    vals = np.concatenate([[1.0], mids[:63]]).astype(np.float32)
    got = fq.quantize_code(torch.from_numpy(vals), code=code).numpy()
    lower = np.searchsorted(mids, mids[:63], side="left")
    np.testing.assert_array_equal(np.abs(got[1:]), np.abs(table[lower]))
    assert _bits_equal(qz.quantize(jnp.asarray(vals), code), got)


@settings(deadline=None, max_examples=25)
@given(
    seed=st.integers(0, 2**31 - 1),
    bits=st.sampled_from([1, 2, 3, 4, 5, 8, 12]),
    scale=st.floats(1e-3, 1e3),
    rows=st.integers(1, 4),
)
def test_uniform_parity_property(seed, bits, scale, rows):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, 64)) * scale).astype(np.float32)
    u = rng.random(x.shape).astype(np.float32)
    for kw in ({}, {"block_size": 64}):
        ref = qz.quantize_uniform(jnp.asarray(x), bits=bits, u=jnp.asarray(u), **kw)
        got = fq.quantize_uniform(torch.from_numpy(x), bits=bits, u=torch.from_numpy(u), **kw)
        assert _bits_equal(ref, got.numpy())


def test_ste_passes_gradient_and_keeps_forward_value():
    x = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    q = fq.quantize_uniform(x.detach(), bits=2)
    y = fq.ste(x, q)
    assert torch.equal(y.detach(), q)
    c = torch.randn(5, 7, dtype=torch.float64)
    (c * y).sum().backward()
    assert torch.equal(x.grad, c)  # ∂Q/∂x := I


def test_uniform_noise_variance_matches_delta2_over_12():
    # ε ~ U(−Δ/2, Δ/2): E ε² = Δ²/12, Var ε² = E ε⁴ − (Δ²/12)² = Δ⁴/80 − Δ⁴/144 = Δ⁴/180
    g = torch.Generator().manual_seed(0)
    n, bits = 200_000, 3
    x = torch.randn(n, dtype=torch.float64, generator=g)
    R = float(x.abs().max())
    delta = 2.0 ** (1 - bits) * R
    eps = fq.uniform_noise(x, bits=bits, generator=g) - x
    assert float(eps.abs().max()) <= delta / 2
    m2 = float((eps**2).mean())
    assert abs(m2 - delta**2 / 12) <= 5 * np.sqrt(delta**4 / 180 / n)
    assert abs(float(eps.mean())) <= 5 * np.sqrt(delta**2 / 12 / n)


def test_stochastic_rounding_unbiased_with_bernoulli_variance():
    # x between two levels: x̂ ∈ {kΔ, (k+1)Δ} with P = p, so mean x and variance Δ²p(1−p)
    g = torch.Generator().manual_seed(1)
    n = 100_000
    x = torch.tensor([1.0, 0.3], dtype=torch.float64)  # R = 1, b = 3: Δ = ¼, 0.3 = 1.2·Δ, p = 0.2
    draws = torch.stack(
        [
            fq.quantize(x, "uniform", bits=3, rounding="stochastic", generator=g)[1]
            for _ in range(2000)
        ]
    )
    delta, p = 0.25, 0.2
    sd = np.sqrt(delta**2 * p * (1 - p))
    assert abs(float(draws.mean()) - 0.3) <= 5 * sd / np.sqrt(draws.numel())
    assert set(np.unique(draws.numpy())) <= {0.25, 0.5}
    del n


def test_bad_inputs():
    x = torch.randn(4, 16)
    with pytest.raises(ValueError, match="bits"):
        fq.quantize_uniform(x, bits=0)
    with pytest.raises(ValueError, match="bits"):
        fq.quantize_uniform(x, bits=17)
    with pytest.raises(ValueError, match="block_size"):
        fq.quantize_uniform(x, bits=4, block_size=5)
    with pytest.raises(ValueError, match="u must have"):
        fq.quantize_uniform(x, bits=4, u=torch.rand(3))
    with pytest.raises(ValueError, match="step"):
        fq.quantize_uniform(x, bits=4, step="other")
    with pytest.raises(ValueError, match="midtread"):
        fq.quantize_uniform(x, bits=1, step="midtread")
    with pytest.raises(TypeError, match="floating"):
        fq.quantize_uniform(torch.ones(3, dtype=torch.int64), bits=4)
    with pytest.raises(ValueError, match="code"):
        fq.quantize_code(x, code="int4")
