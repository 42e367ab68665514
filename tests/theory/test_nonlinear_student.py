"""Nonlinear teacher–student (quantbounds.theory.nonlinear_student) against references that could
disagree: Gauss–Hermite quadrature, Monte Carlo with derived tolerances, the project's quantizer,
a Python loop, full-precision training."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quantbounds.theory.nl_grid import run_nonlinear_grid, run_nonlinear_loop
from quantbounds.theory.nonlinear_student import (
    NonlinearConfig,
    draw_uniforms,
    erf_kernel,
    evaluate_nonlinear,
    excess_risk_from_labels,
    function_distance_erf,
    function_distance_mc,
    make_nonlinear_problem,
    quantize_factor,
    sample_nonlinear,
    train_nonlinear,
)
from quantbounds.conventions import KIND_INDEX
from quantbounds.theory.teacher_student import fake_quant

TINY = dict(
    n=4,
    h=5,
    m=2,
    r_star=1,
    ranks=(1, 3),
    bits=(2, 4),
    train_bits=(3,),
    Ns=(16, 24),
    seeds=2,
    steps=15,
    n_test=64,
    arms=("fp", "ste_rtn", "ste_sr", "additive"),
)


def test_quantize_factor_is_the_projects_quantizer_bit_for_bit():
    x = jax.random.normal(jax.random.PRNGKey(0), (7, 3))
    u = jax.random.uniform(jax.random.PRNGKey(1), (7, 3))
    ours = jax.jit(quantize_factor)
    theirs = {
        name: jax.jit(lambda x, b, u, name=name: fake_quant(x, kind=name, bits=b, u=u))
        for name in ("rtn", "sr", "additive")
    }
    for b in (1.0, 2.0, 3.0, 8.0, 16.0):
        for name in ("rtn", "sr", "additive"):
            kind = KIND_INDEX[name]  # traced under jit: the select path
            np.testing.assert_array_equal(
                np.asarray(ours(x, kind, b, u)), np.asarray(theirs[name](x, b, u))
            )
        np.testing.assert_array_equal(np.asarray(ours(x, 0, b, u)), np.asarray(x))
    z = jnp.zeros((2, 3))
    for kind in (0, 1, 2, 4):  # none, rtn, sr, additive; R = 0: the tensor stays zero, no NaN
        np.testing.assert_array_equal(np.asarray(quantize_factor(z, kind, 3, u[:2])), 0.0)


def _gauss_hermite_erf_pair(C, order=80):
    """E[erf(s1)·erf(s2)] for (s1, s2) ~ N(0, C) by tensor Gauss–Hermite quadrature (scipy)."""
    from scipy.special import erf

    z, w = np.polynomial.hermite_e.hermegauss(order)  # weight exp(−z²/2)
    w = w / math.sqrt(2 * math.pi)
    L = np.linalg.cholesky(C)
    Z1, Z2 = np.meshgrid(z, z, indexing="ij")
    s1 = L[0, 0] * Z1
    s2 = L[1, 0] * Z1 + L[1, 1] * Z2
    return float(np.sum(w[:, None] * w[None, :] * erf(s1) * erf(s2)))


def test_erf_kernel_against_quadrature_and_closed_special_case():
    rng = np.random.default_rng(0)
    G = rng.normal(size=(3, 3))
    Sigma = G @ G.T / 3 + 0.2 * np.eye(3)
    U, V = rng.normal(size=(2, 3)) * 0.8, rng.normal(size=(3, 3)) * 0.8
    K = np.asarray(erf_kernel(jnp.asarray(U), jnp.asarray(V), jnp.asarray(Sigma)))
    for i in range(2):
        for j in range(3):
            C = np.array(
                [
                    [U[i] @ Sigma @ U[i], U[i] @ Sigma @ V[j]],
                    [V[j] @ Sigma @ U[i], V[j] @ Sigma @ V[j]],
                ]
            )
            assert K[i, j] == pytest.approx(_gauss_hermite_erf_pair(C), abs=1e-10)
    # 1-d: E[erf(a·z)²] = (2/π)·arcsin(2a²/(1 + 2a²)), by scipy quad
    from scipy.integrate import quad
    from scipy.special import erf

    a = 1.3
    ref = quad(lambda z: erf(a * z) ** 2 * math.exp(-z * z / 2) / math.sqrt(2 * math.pi), -12, 12)[
        0
    ]
    assert float(erf_kernel(jnp.array([[a]]), jnp.array([[a]]), jnp.eye(1))[0, 0]) == pytest.approx(
        ref, abs=1e-10
    )


def test_exact_distance_against_monte_carlo_and_its_standard_error():
    cfg = NonlinearConfig(n=5, h=6, m=3, r_star=2, ranks=(2,), Ns=(8,), label_noise=0.4)
    p = make_nonlinear_problem(cfg)
    W1 = p.W1_star + 0.3 * jax.random.normal(jax.random.PRNGKey(2), p.W1_star.shape)
    exact = float(function_distance_erf(W1, p.W2, p.W1_star, p.W2, p.Sigma))
    assert float(function_distance_erf(W1, p.W2, W1, p.W2, p.Sigma)) == pytest.approx(
        0.0, abs=1e-12
    )
    # one large test set: |estimate − exact| ≤ 5·SE (a 5-sigma event under the CLT)
    X, Y = sample_nonlinear(jax.random.PRNGKey(3), p, 100_000)
    est, se = function_distance_mc(W1, p.W2, p.W1_star, p.W2, X)
    assert abs(float(est) - exact) <= 5 * float(se)
    # from labels: test risk − m·σ²; the label noise adds variance, so its SE is larger
    est_y, se_y = excess_risk_from_labels(W1, p, X, Y)
    assert abs(float(est_y) - exact) <= 5 * float(se_y) and float(se_y) > float(se)
    # the SE is calibrated: K independent estimates of n points each have spread ≈ the reported SE.
    # The estimates are ≈ normal (means of n = 256), so the relative SE of their sample sd is
    # 1/√(2(K−1)) ≈ 0.041 at K = 300: tolerance 5 of those.
    K, n = 300, 256
    keys = jax.random.split(jax.random.PRNGKey(4), K)
    ests, ses = jax.vmap(
        lambda k: function_distance_mc(W1, p.W2, p.W1_star, p.W2, sample_nonlinear(k, p, n)[0])
    )(keys)
    ests, ses = np.asarray(ests), np.asarray(ses)
    assert np.std(ests, ddof=1) / np.mean(ses) == pytest.approx(1.0, abs=5 / math.sqrt(2 * (K - 1)))
    assert abs(np.mean(ests) - exact) <= 5 * np.std(ests, ddof=1) / math.sqrt(K)


def _flat(grid_arr, arm_axes, Ni):
    """A grid array (rank, [bits,] N, seed, ...) at N index Ni, flattened in the loop's order."""
    ax = [a for a, _ in arm_axes].index("N")
    v = np.take(grid_arr, Ni, axis=ax)
    nlead = len(arm_axes) - 1
    return v.reshape((-1,) + v.shape[nlead:])


def test_vmapped_grid_equals_python_loop():
    cfg = NonlinearConfig(**TINY)
    p = make_nonlinear_problem(cfg, seeds=cfg.seeds)
    assert not np.allclose(p.W1_star[0], p.W1_star[1])  # a teacher per seed
    grid = run_nonlinear_grid(cfg, problems=p)
    # the loop at the second N only (each N is one more compilation): it checks the N offsets
    loop = run_nonlinear_loop(cfg, problems=p, N_indices=(1,))
    assert set(grid) == set(cfg.arms) | {"fp_adam"}  # the early-stopped reading of fp too
    for arm in grid:
        g = grid[arm]
        assert g["excess_latent"].shape == tuple(len(v) for _, v in g["axes"])
        assert g["ptq_qexcess"].shape == g["excess_latent"].shape + (len(cfg.bits),)
        for Ni, N in [(1, cfg.Ns[1])]:
            rows = loop[(arm, N)]
            for key in rows[0]:
                ref = np.stack([np.asarray(r[key]) for r in rows])
                np.testing.assert_allclose(_flat(g[key], g["axes"], Ni), ref, rtol=1e-9, atol=1e-12)
    # the arms differ from each other (the quantizer is really in the forward pass)
    assert not np.allclose(grid["ste_rtn"]["excess_latent"][:, 0], grid["fp"]["excess_latent"])


def _train_many(cfg, p, X, Y, r, kind, bits, seed=0):
    """train_nonlinear vmapped over (r, kind, bits) arrays, one compilation; same keys for all."""
    f = jax.jit(
        jax.vmap(
            lambda r_, k_, b_: train_nonlinear(
                p,
                X,
                Y,
                r_,
                k_,
                b_,
                jax.random.PRNGKey(seed),
                jax.random.PRNGKey(seed + 100),
                cfg=cfg,
            )
        )
    )
    return f(jnp.asarray(r), jnp.asarray(kind), jnp.asarray(bits, X.dtype))


def _excess_many(cfg, p, params, r, X_test):
    u = draw_uniforms(jax.random.PRNGKey(9), cfg.h, cfg.r_max, cfg.n)
    f = jax.vmap(
        lambda q, r_: evaluate_nonlinear(p, q, r_, 0, 16, u, X_test, cfg=cfg)["excess_latent"]
    )
    return np.asarray(jax.jit(f)(params, jnp.asarray(r)))


def test_fp_student_learns_a_representable_teacher_and_not_an_unrepresentable_one():
    cfg = NonlinearConfig(
        n=6,
        h=8,
        m=3,
        r_star=2,
        ranks=(1, 2, 4),
        bits=(8,),
        Ns=(1024,),
        label_noise=0.1,
        steps=400,
        lr=0.03,
        arms=("fp",),
    )
    N = 1024
    p = make_nonlinear_problem(cfg)
    X, Y = sample_nonlinear(jax.random.PRNGKey(5), p, N)
    Xt = sample_nonlinear(jax.random.PRNGKey(6), p, 64)[0]
    start = float(function_distance_erf(p.W1_0, p.W2, p.W1_star, p.W2, p.Sigma))  # B = 0
    ranks = [1, 2, 4]
    ex = dict(
        zip(
            ranks,
            _excess_many(cfg, p, _train_many(cfg, p, X, Y, ranks, [0] * 3, [16.0] * 3), ranks, Xt),
        )
    )
    # r ≥ r*: the excess falls to the estimation error, which least squares puts at σ²·d/N with
    # d = r(h + n − r) free parameters at most: a factor ≥ 3 above that would be an
    # optimisation failure
    for r in (2, 4):
        assert ex[r] <= 3 * cfg.label_noise**2 * r * (cfg.h + cfg.n - r) / N
        assert ex[r] <= 0.01 * start
    assert ex[1] >= 10 * ex[2]  # r < r*: an approximation error remains


def test_ste_at_16_bits_equals_full_precision():
    cfg = NonlinearConfig(n=5, h=6, m=2, r_star=1, ranks=(2,), bits=(16,), Ns=(64,), steps=60)
    p = make_nonlinear_problem(cfg)
    X, Y = sample_nonlinear(jax.random.PRNGKey(7), p, 64)
    Xt = sample_nonlinear(jax.random.PRNGKey(8), p, 64)[0]
    kinds = [KIND_INDEX[k] for k in ("none", "rtn", "sr", "additive", "rtn")]
    bits = [16.0, 16.0, 16.0, 16.0, 2.0]
    P = _train_many(cfg, p, X, Y, [2] * 5, kinds, bits)
    e = _excess_many(cfg, p, P, [2] * 5, Xt)
    # a 16-bit grid moves each entry by ≤ Δ/2 = 2^{−16}·R ≈ 1.5e−5·R per forward pass; over 60
    # Adam steps (step size ≤ lr per entry) this stays far below 1e−3 relative
    for i in (1, 2, 3):
        for k in ("A", "B"):
            np.testing.assert_allclose(
                np.asarray(P[k][i]),
                np.asarray(P[k][0]),
                rtol=1e-3,
                atol=1e-3 * float(np.max(np.abs(P[k][0]))),
            )
        assert e[i] == pytest.approx(e[0], rel=1e-3)
    # and it is not vacuous: 2 bits change the result
    assert abs(e[4] - e[0]) > 1e-2 * e[0]


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(ranks=(7,)), "ranks"),
        (dict(r_star=0), "r_star"),
        (dict(bits=(0,)), "bits"),
        (dict(train_bits=(17,)), "bits"),
        (dict(Ns=(0,)), "N"),
        (dict(Ns=()), "non-empty"),
        (dict(activation="relu"), "activation"),
        (dict(arms=("nf4",)), "arms"),
        (dict(cond=0.5), "cond"),
        (dict(n_test=1), "n_test"),
        (dict(label_noise=-1.0), "label_noise"),
        (dict(seeds=0), "seeds"),
    ],
)
def test_bad_config_raises_clear_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        NonlinearConfig(**{**dict(n=6, h=8, ranks=(1, 2)), **kw})


def test_bad_sample_size_raises_and_teacher_stacks():
    cfg = NonlinearConfig(n=3, h=4, m=2, r_star=1, ranks=(1,), teacher_per_seed=False)
    p = make_nonlinear_problem(cfg)
    with pytest.raises(ValueError, match="N"):
        sample_nonlinear(jax.random.PRNGKey(0), p, 0)
    with pytest.raises(TypeError, match="teacher_per_seed"):
        NonlinearConfig(n=3, h=4, m=2, r_star=1, ranks=(1,), teacher_per_seed=1)
    # one shared teacher: the stack repeats make_nonlinear_problem's teacher (Σ to rounding: a
    # batched QR differs from an unbatched one in the last bit)
    st = make_nonlinear_problem(cfg, seeds=3)
    np.testing.assert_array_equal(np.asarray(st.W2), np.asarray(p.W2))
    for f in ("W1_0", "W1_star", "Sigma", "Sigma_half"):
        for j in range(3):
            np.testing.assert_allclose(
                np.asarray(getattr(st, f)[j]), np.asarray(getattr(p, f)), rtol=1e-13, atol=1e-15
            )


def test_tanh_excess_is_the_test_set_mean_and_ptq_is_rtn_of_both_factors():
    cfg = NonlinearConfig(
        n=4, h=5, m=2, r_star=1, ranks=(2,), bits=(3, 16), Ns=(8,), activation="tanh"
    )
    p = make_nonlinear_problem(cfg)
    rng = np.random.default_rng(3)
    params = {"B": jnp.asarray(rng.normal(size=(5, 2))), "A": jnp.asarray(rng.normal(size=(2, 4)))}
    Xt = sample_nonlinear(jax.random.PRNGKey(1), p, 500, activation="tanh")[0]
    u = draw_uniforms(jax.random.PRNGKey(2), cfg.h, cfg.r_max, cfg.n)
    out = jax.jit(lambda q: evaluate_nonlinear(p, q, 2, 1, 3.0, u, Xt, cfg=cfg))(params)
    X, W2 = np.asarray(Xt), np.asarray(p.W2)
    f = lambda W1: np.tanh(X @ W1.T) @ W2.T  # noqa: E731
    W1 = np.asarray(p.W1_0) + np.asarray(params["B"]) @ np.asarray(params["A"])

    def rtn3(x):  # 3-bit "paper" grid by hand: Δ = R/4, levels k·Δ, k ∈ {−4, …, 3}
        d = np.max(np.abs(x)) / 4
        return np.clip(np.round(x / d), -4, 3) * d

    W1q = np.asarray(p.W1_0) + rtn3(np.asarray(params["B"])) @ rtn3(np.asarray(params["A"]))
    dist = lambda a, b: np.mean(np.sum((f(a) - f(b)) ** 2, axis=1))  # noqa: E731
    Ws = np.asarray(p.W1_star)
    assert float(out["excess_latent"]) == pytest.approx(dist(W1, Ws), rel=1e-12)
    assert float(out["excess_latent_mc"]) == pytest.approx(dist(W1, Ws), rel=1e-12)
    assert float(out["excess_deployed"]) == pytest.approx(dist(W1q, Ws), rel=1e-12)
    assert float(out["ptq_excess"][0]) == pytest.approx(dist(W1q, Ws), rel=1e-12)
    assert float(out["ptq_qexcess"][0]) == pytest.approx(dist(W1q, W1), rel=1e-12)
    assert float(out["ptq_qexcess"][1]) < 1e-6 * float(
        out["ptq_qexcess"][0]
    )  # 16 bits: ≈ no change
