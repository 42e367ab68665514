"""Monte Carlo engine (quantbounds.epsba.montecarlo and the layers below: units, noise_draws, gram).

References: dense ‖Q(B)Q(A) − BA‖_F² in float64 per sample, a Python loop over samples,
float-error bounds derived from the summation depth (Higham, Accuracy and Stability of
Numerical Algorithms, §3.1: |fl(xᵀy) − xᵀy| ≤ γ_K·|x|ᵀ|y|, γ_K = K·u/(1 − K·u)), exact moments
(quantbounds.epsba.moments) with tolerance 5·σ/√n (σ the sample standard deviation), the analytic
moments of the uniform grid.
"""

import dataclasses
import math

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from quantbounds.epsba.moments import EpsBAMoments, eps_ba_moments
from quantbounds.epsba.montecarlo import (
    EpsBASimulation,
    eps_ba_terms,
    ranges,
    simulate_eps_ba,
    simulate_grid,
)
from quantbounds._prng import hash_counters as random_words
from quantbounds.epsba.gram import gram_terms
from quantbounds.epsba.noise_draws import uniform_grid
from quantbounds.epsba.units import run_additive
from quantbounds.quant.noise import step_ratio as step_factor


def _dense_terms(B, A, eB, eA):
    """The four squared norms with the m×n matrices formed, in float64."""
    B, A, eB, eA = (np.asarray(x, np.float64) for x in (B, A, eB, eA))
    return np.array(
        [
            np.sum((B @ eA) ** 2),
            np.sum((eB @ A) ** 2),
            np.sum((eB @ eA) ** 2),
            np.sum(((B + eB) @ (A + eA) - B @ A) ** 2),
        ]
    )


def _factors(seed, m, r, n):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(m, r)), rng.normal(size=(r, n)), rng


@settings(deadline=None, max_examples=6)
@given(st.tuples(st.integers(1, 9), st.integers(1, 5), st.integers(1, 8)), st.integers(0, 10**6))
def test_gram_form_equals_dense_float64(shape, seed):
    m, r, n = shape
    B, A, rng = _factors(seed, m, r, n)
    eB, eA = rng.normal(size=(m, r)) * 0.3, rng.normal(size=(r, n)) * 0.2
    got = np.array([float(x) for x in eps_ba_terms(B, A, eB, eA)])
    np.testing.assert_allclose(got, _dense_terms(B, A, eB, eA), rtol=1e-10, atol=1e-12)


def test_gram_form_float32_at_16_bits_within_derived_rounding_bound():
    """float32, b = 16 (ε ≈ 2^{-16}·R): no cancellation, error within γ_K·(absolute sums).

    With X = [B, ε_B], Y = [ε_A; A + ε_A] every term is Σ over r×r Gram entries, each a dot of
    length ≤ max(m, n), so |fl(t) − t| ≤ γ_K·Σ(|X|ᵀ|X|)∘(|Y||Y|ᵀ) with K = max(m, n) + 2r² + 8
    (dot length, the final r×r sums and the seven-term combination). The cancelling form
    ‖(B+ε_B)(A+ε_A) − BA‖² would be off by ≈ u·‖B‖²‖A‖², about 2^{32} times this bound.
    """
    m, r, n = 512, 16, 384
    B, A, rng = _factors(0, m, r, n)
    d = 2.0 ** (1 - 16)
    eB = rng.uniform(-0.5, 0.5, (m, r)) * d * np.abs(B).max()
    eA = rng.uniform(-0.5, 0.5, (r, n)) * d * np.abs(A).max()
    B32, A32, eB32, eA32 = (x.astype(np.float32) for x in (B, A, eB, eA))
    got = np.array([float(x) for x in eps_ba_terms(B32, A32, eB32, eA32)])
    want = _dense_terms(B32, A32, eB32, eA32)  # the same float32 inputs, exact-ish in f64
    u = 2.0**-24
    K = max(m, n) + 2 * r * r + 8
    gamma = K * u / (1 - K * u)
    aB, aA, aeB, aeA = (np.abs(x.astype(np.float64)) for x in (B32, A32, eB32, eA32))
    X, Y = np.hstack([aB, aeB]), np.vstack([aeA, aA + aeA])
    bounds = gamma * np.array(
        [
            np.sum((aB.T @ aB) * (aeA @ aeA.T)),
            np.sum((aeB.T @ aeB) * (aA @ aA.T)),
            np.sum((aeB.T @ aeB) * (aeA @ aeA.T)),
            np.sum((X.T @ X) * (Y @ Y.T)),
        ]
    )
    assert np.all(np.abs(got - want) <= bounds), (got - want, bounds)
    assert np.all(bounds / want < 1e-2)  # the bound itself is informative


def test_vmap_over_samples_equals_python_loop():
    m, r, n, S = 11, 3, 7, 5
    B, A, rng = _factors(1, m, r, n)
    eB, eA = rng.normal(size=(S, m, r)), rng.normal(size=(S, r, n))
    batched = np.asarray(gram_terms(B, A, B.T @ B, A @ A.T, np.swapaxes(eB, 1, 2), eA))
    loop = np.array([[float(x) for x in eps_ba_terms(B, A, eB[s], eA[s])] for s in range(S)])
    np.testing.assert_allclose(batched, loop, rtol=1e-12)


def test_step_factor_and_ranges_hand_cases():
    assert step_factor(1, "paper") == 1.0 and step_factor(3, "paper") == 0.25
    assert step_factor(8, "midtread") == 1 / 127 and step_factor(2, "midtread") == 1.0
    x = np.array([[1.0, -4.0, 0.0], [2.0, 0.5, -3.0]])  # absmax −4 (a negative entry), a zero
    assert ranges(x).item() == 4.0
    np.testing.assert_array_equal(ranges(x, axis=0), [[4.0], [3.0]])  # one R per row
    np.testing.assert_array_equal(ranges(x, axis=1), [[2.0, 4.0, 3.0]])  # one R per column
    np.testing.assert_array_equal(
        ranges(x, block_size=2),  # row-major blocks
        [[4.0, 4.0, 2.0], [2.0, 3.0, 3.0]],
    )
    np.testing.assert_array_equal(ranges(np.zeros((2, 2))), [[0.0]])


@pytest.mark.parametrize("grouping", [{}, {"axis": 0}, {"axis": 1}, {"block_size": 4}])
def test_ranges_agree_with_the_quantizer_groups(grouping):
    from quantbounds.quant.quantizers import quantize_codes

    x = np.random.default_rng(1).normal(size=(6, 8))
    qt = quantize_codes(jnp.asarray(x), "uniform", bits=4, **grouping)
    R = np.asarray(qt.scales)
    got = ranges(x, **grouping)
    if "block_size" in grouping:
        got = got.reshape(-1, 4)[:, 0]
    np.testing.assert_array_equal(got.ravel(), R.ravel())


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_engine_samples_equal_dense_recomputation_of_its_noise(dtype):
    """Redraw each sample's noise (fold_in(fold_in(key, cell), t)), form ε_BA densely in
    float64 in a Python loop: the engine's per-sample terms must agree to rounding. m, n are
    not multiples of the noise blocks (4 in float32, 2 in float64): the padding must vanish."""
    m, r, n, N, S, bits = 10, 3, 7, 7, 3, 5
    B, A, _ = _factors(2, m, r, n)
    B, A = B.astype(dtype), A.astype(dtype)
    key = jax.random.key(11)
    kd = np.asarray(jax.random.key_data(key))
    RBt, RA = ranges(B).T, ranges(A)
    out = run_additive(
        kd,
        "threefry2x32",
        [bits],
        B[None],
        A[None],
        RBt[None],
        RA[None],
        n_samples=N,
        step="paper",
        dtype=dtype,
        chunk_size=S,
    )[0, 0]
    # every sample has its own key: another chunking gives the same samples
    out1 = run_additive(
        kd,
        "threefry2x32",
        [bits],
        B[None],
        A[None],
        RBt[None],
        RA[None],
        n_samples=N,
        step="paper",
        dtype=dtype,
        chunk_size=1,
    )[0, 0]
    np.testing.assert_allclose(out1, out, rtol=1e-12 if dtype == "float64" else 1e-5)
    d = 2.0 ** (1 - bits)
    ref = []
    for t in range(N):  # sample t of cell 0: its own key
        kt = jax.random.fold_in(jax.random.fold_in(key, 0), t)
        vB = np.asarray(uniform_grid(jax.random.fold_in(kt, 0)[None], r, m, dtype), np.float64)
        vA = np.asarray(uniform_grid(jax.random.fold_in(kt, 1)[None], r, n, dtype), np.float64)
        eB = (vB[0] * d * np.abs(B).max()).T
        eA = vA[0] * d * np.abs(A).max()
        ref.append(_dense_terms(B, A, eB, eA))
    rtol = 1e-10 if dtype == "float64" else 2e-5
    np.testing.assert_allclose(out, np.array(ref)[:N], rtol=rtol)


def test_threefry_matches_jax_and_random123_known_answers():
    """The unrolled Threefry-2x32-20 equals jax.extend.random.threefry_2x32 (which takes the
    counters' first words, then their second words, and returns both output words likewise)
    and Random123's published known-answer vectors (kat_vectors, threefry2x32 20 rounds)."""
    from jax.extend.random import threefry_2x32
    from quantbounds._prng import threefry2x32 as _threefry2x32

    kat = [
        ((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6B200159, 0x99BA4EFE)),
        ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
        ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
    ]
    for (k1, k2), (x0, x1), want in kat:
        got = _threefry2x32(np.uint32(k1), np.uint32(k2), jnp.uint32(x0), jnp.uint32(x1))
        assert (int(got[0]), int(got[1])) == want
    keys = jax.random.split(jax.random.key(123), 3)
    b0, b1 = random_words(keys, 4, 37)
    idx = np.arange(4 * 37, dtype=np.uint32)  # counters (0, i), i row-major in (r, W)
    for s, k in enumerate(keys):
        ref = np.asarray(
            threefry_2x32(jax.random.key_data(k), jnp.concatenate([jnp.zeros_like(idx), idx]))
        )
        np.testing.assert_array_equal(np.asarray(b0[s]), ref[: idx.size].reshape(4, 37))
        np.testing.assert_array_equal(np.asarray(b1[s]), ref[idx.size :].reshape(4, 37))
    # another PRNG implementation is hashed to a threefry key first, deterministically
    k2 = jax.random.split(jax.random.key(5, impl="rbg"), 2)
    np.testing.assert_array_equal(
        np.asarray(random_words(k2, 2, 8)[0]), np.asarray(random_words(k2, 2, 8)[0])
    )


def test_uniform_blocks_are_the_words_halves():
    """float32 block i holds the 16-bit halves (lo b0, hi b0, lo b1, hi b1) of the same
    counters, float64 block i the word b_i; uniform_grid lays the blocks side by side."""
    from quantbounds.epsba.noise_draws import uniform_blocks

    key = jax.random.split(jax.random.key(9), 2)
    r, cols = 3, 10  # q = 3 (float32): 12 draws, 2 cut off
    b0, b1 = (np.asarray(w, np.int64) for w in random_words(key, r, 3))
    blocks = [np.asarray(x, np.float64) for x in uniform_blocks(key, r, cols, "float32")]
    for x, j in zip(blocks, (b0 & 0xFFFF, b0 >> 16, b1 & 0xFFFF, b1 >> 16)):
        np.testing.assert_array_equal(x, (j + 0.5) / 2**16 - 0.5)
    grid = np.asarray(uniform_grid(key, r, cols, "float32"), np.float64)
    np.testing.assert_array_equal(grid, np.concatenate(blocks, axis=-1)[..., :cols])
    b0, b1 = (np.asarray(w, np.float64) for w in random_words(key, r, 5))
    blocks = [np.asarray(x) for x in uniform_blocks(key, r, cols, "float64")]
    for x, j in zip(blocks, (b0, b1)):
        np.testing.assert_array_equal(x, (j + 0.5) / 2**32 - 0.5)


@pytest.mark.parametrize("dtype,k", [("float32", 16), ("float64", 32)])
def test_uniform_grid_values_and_moments(dtype, k):
    S, r, cols = 16, 8, 1001
    keys = jax.random.split(jax.random.key(5), S)
    u = np.asarray(uniform_grid(keys, r, cols, dtype), np.float64)
    assert u.shape == (S, r, cols) and u.dtype == np.float64
    j = (u + 0.5) * 2.0**k - 0.5  # must be an integer in 0…2^k − 1
    np.testing.assert_array_equal(j, np.round(j))
    assert j.min() >= 0 and j.max() <= 2.0**k - 1
    N = u.size
    # E u = 0 (σ_u = 1/√12); E u² = (1 − 4^{−k})/12 with Var u² = 1/80 − 1/144 = 1/180
    assert abs(u.mean()) <= 5 / math.sqrt(12 * N)
    assert abs(np.mean(u**2) - (1 - 4.0**-k) / 12) <= 5 * math.sqrt(1 / 180 / N)
    # a row's draws do not depend on the number of rows: a taller draw holds the shorter one
    taller = np.asarray(uniform_grid(keys, r + 3, cols, dtype), np.float64)
    np.testing.assert_array_equal(taller[:, :r], u)


@pytest.mark.parametrize(
    "opts,dtype",
    [
        ({}, "float64"),
        ({}, "float32"),
        ({"axis": 0}, "float64"),
        ({"axis": 1}, "float64"),
        ({"block_size": 8}, "float64"),
        ({"step": "midtread"}, "float64"),
    ],
)
def test_additive_mode_matches_exact_moments(opts, dtype):
    m, r, n, N, bits = 24, 4, 16, 3000, 3
    B, A, _ = _factors(3, m, r, n)
    s = 0.7
    sim = simulate_eps_ba(
        jax.random.key(4), B, A, bits=bits, n_samples=N, scale=s, dtype=dtype, **opts
    )
    assert isinstance(sim, EpsBASimulation) and sim.n_samples == N
    gk = {k: v for k, v in opts.items() if k != "step"}
    fac = float(step_factor(bits, opts.get("step", "paper")))
    exact = eps_ba_moments(
        B, A, (fac * ranges(A, **gk)) ** 2 / 12, (fac * ranges(B, **gk)) ** 2 / 12, scale=s
    )
    for name in EpsBAMoments._fields:
        mu, se, want = (float(getattr(x, name)) for x in (sim.mean, sim.stderr, exact))
        assert abs(mu - want) <= 5 * se, (name, mu, want, se)


def test_real_rtn_is_one_exact_draw_equal_to_dense():
    from quantbounds.quant.quantizers import quantize

    m, r, n = 32, 4, 16
    B, A, _ = _factors(5, m, r, n)
    for opts in [
        dict(scheme="uniform", bits=2),
        dict(scheme="uniform", bits=3, block_size=16),
        dict(scheme="nf4", bits=4),
    ]:
        sim = simulate_eps_ba(
            jax.random.key(0), B, A, n_samples=50, mode="real", dtype="float64", **opts
        )
        assert sim.n_samples == 1 and all(float(x) == 0.0 for x in sim.stderr)
        qb = dict(
            bits=opts["bits"] if opts["scheme"] == "uniform" else None,
            block_size=opts.get("block_size"),
        )
        QB = np.asarray(quantize(jnp.asarray(B), opts["scheme"], **qb), np.float64)
        QA = np.asarray(quantize(jnp.asarray(A), opts["scheme"], **qb), np.float64)
        np.testing.assert_allclose(
            [float(x) for x in sim.mean], _dense_terms(B, A, QB - B, QA - A), rtol=1e-10
        )


def test_real_stochastic_rounding_matches_exact_moments_with_its_variance():
    """Midtread SR is unbiased for |x| ≤ R with Var = Δ²·p(1−p), p = x/Δ − ⌊x/Δ⌋, independent
    per entry: eps_ba_moments with those per-entry variances is exact for it."""
    m, r, n, N, bits = 16, 3, 12, 3000, 3
    B, A, _ = _factors(6, m, r, n)
    sim = simulate_eps_ba(
        jax.random.key(8),
        B,
        A,
        bits=bits,
        n_samples=N,
        mode="real",
        rounding="stochastic",
        step="midtread",
        dtype="float64",
    )

    def sr_var(x):
        delta = np.abs(x).max() / (2 ** (bits - 1) - 1)
        t = x / delta
        p = t - np.floor(t)
        return delta**2 * p * (1 - p)

    exact = eps_ba_moments(B, A, sr_var(A), sr_var(B))
    for name in EpsBAMoments._fields:
        mu, se, want = (float(getattr(x, name)) for x in (sim.mean, sim.stderr, exact))
        assert abs(mu - want) <= 5 * se, (name, mu, want, se)


def test_keys_reproduce_and_differ():
    B, A, _ = _factors(7, 12, 2, 9)
    a = simulate_eps_ba(jax.random.key(1), B, A, bits=4, n_samples=20, dtype="float64")
    b = simulate_eps_ba(jax.random.key(1), B, A, bits=4, n_samples=20, dtype="float64")
    c = simulate_eps_ba(jax.random.key(2), B, A, bits=4, n_samples=20, dtype="float64")
    legacy = simulate_eps_ba(jax.random.PRNGKey(1), B, A, bits=4, n_samples=20, dtype="float64")
    assert a == b and legacy == a
    assert a.mean.total != c.mean.total


def test_zero_B_gives_exact_zeros_not_nan():
    """PEFT's zero-initialised B: B·ε_A = 0, and with R_B = 0 the additive ε_B is 0 too."""
    A = np.random.default_rng(0).uniform(-0.1, 0.1, size=(3, 10))
    sim = simulate_eps_ba(
        jax.random.key(0), np.zeros((8, 3)), A, bits=4, n_samples=8, dtype="float64"
    )
    assert all(float(x) == 0.0 for x in sim.mean)
    g = simulate_grid(
        jax.random.key(0),
        m=8,
        n=10,
        ranks=[1, 3],
        bits=[2, 8],
        n_samples=4,
        factors="peft",
        dtype="float64",
        pad="max",
    )
    assert np.all(np.asarray(g.mean) == 0) and np.all(np.asarray(g.predicted) == 0)
    assert np.all(g.range_B == 0) and np.all(g.range_A <= 1 / math.sqrt(10))


def test_grid_matches_exact_moments_and_scale_conventions():
    g = simulate_grid(
        jax.random.key(3),
        m=20,
        n=12,
        ranks=[1, 2, 5],
        bits=[2, 6],
        n_samples=1500,
        dtype="float64",
        scale="rslora",
        lora_alpha=4.0,
        pad="max",
    )
    np.testing.assert_allclose(g.scale, 4.0 / np.sqrt([1, 2, 5]))
    mean, se, pred = (np.asarray(x) for x in (g.mean, g.stderr, g.predicted))
    assert mean.shape == (4, 3, 2)
    assert np.all(np.abs(mean - pred) <= 5 * se)
    # the rank-r prediction is the moments of the rank-r factors (first r columns of B, rows of A)
    assert g.n_samples == 1500


def test_bad_inputs_name_the_argument():
    B, A, _ = _factors(0, 8, 2, 6)
    key = jax.random.key(0)
    cases = [
        (dict(B=B, A=A[:1]), "do not multiply"),
        (dict(B=np.zeros((8, 0)), A=np.zeros((0, 6))), "rank"),
        (dict(bits=0), "bits"),
        (dict(bits=17), "bits"),
        (dict(B=np.where(B > 0, np.inf, B)), "B must be finite"),
        (dict(n_samples=1), "n_samples"),
        (dict(mode="dense"), "mode"),
        (dict(scheme="nf4"), "additive"),
        (dict(block_size=5), "block_size"),
        (dict(block_size=4, axis=0), "at most one"),
        (dict(chunk_size=0), "chunk_size"),
        (dict(dtype=jnp.float16), "dtype"),
        (dict(step="midtread", bits=1), "midtread"),
    ]
    for kw, msg in cases:
        args = dict(B=B, A=A, bits=4, n_samples=4) | kw
        with pytest.raises((ValueError, TypeError), match=msg):
            simulate_eps_ba(key, args.pop("B"), args.pop("A"), **args)
    with pytest.raises(TypeError, match="key"):
        simulate_eps_ba(np.zeros(3), B, A, bits=4, n_samples=4)
    with pytest.raises(ValueError, match="ranks"):
        simulate_grid(key, m=8, n=6, ranks=[0, 2], bits=[4], n_samples=4)
    with pytest.raises(ValueError, match="ranks"):
        simulate_grid(key, m=8, n=6, ranks=[7], bits=[4], n_samples=4)
    with pytest.raises(ValueError, match="factors"):
        simulate_grid(key, m=8, n=6, ranks=[2], bits=[4], n_samples=4, factors="lognormal")
    with pytest.raises(ValueError, match="scale"):
        simulate_grid(key, m=8, n=6, ranks=[2], bits=[4], n_samples=4, scale="alpha")


def test_grid_config_validates_itself_and_is_what_the_keywords_build():
    from quantbounds.epsba.montecarlo import GridConfig

    base = dict(m=8, n=6, ranks=[1, 2], bits=[3, 4], n_samples=3)
    cfg = GridConfig(**base)
    assert cfg.ranks == (1, 2) and cfg.bits == (3, 4) and cfg.dtype == "float32"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.m = 9
    with pytest.raises(TypeError):
        GridConfig(8, 6, [1], [3], 3)  # keyword-only
    for kw, msg in [
        (dict(n_samples=1), "n_samples must be in ≥ 2"),
        (dict(pad="min"), "pad"),
        (dict(bits=[0]), "bits must be in 1…16"),
        (dict(ranks=[]), "non-empty"),
        (dict(step="midtread", bits=[1, 4]), "midtread"),
        (dict(m=0), "m must be"),
    ]:
        with pytest.raises(ValueError, match=msg):
            GridConfig(**(base | kw))
    key = jax.random.key(4)
    by_kw = simulate_grid(key, **base)
    by_cfg = simulate_grid(key, cfg)
    replaced = simulate_grid(key, GridConfig(**(base | dict(n_samples=5))), n_samples=3)
    for other in (by_cfg, replaced):
        for a, b in zip(by_kw.mean, other.mean):
            np.testing.assert_array_equal(a, b)
