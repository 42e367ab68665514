"""Teacher–student experiment (quantbounds.theory.teacher_student; the grid and the gradient
variance have their own files) against references
that could disagree: closed forms, Monte Carlo with derived tolerances, finite differences,
a Python loop, least squares."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from quantbounds.theory.teacher_student import (
    ARMS,
    KIND_INDEX,
    LoRAStudent,
    TeacherStudentConfig,
    _ARM_KIND,
    _quant_fn,
    additive_prediction,
    empirical_risk,
    excess_risk,
    fake_quant,
    make_problem,
    make_problems,
    problem_at,
    rank_r_floor,
    sample_data,
    scale_value,
    student_weight,
    sufficient_stats,
    train_student,
    uniform_at,
)

SMALL = dict(
    m=4,
    n=6,
    r_star=1,
    ranks=(1, 3),
    bits=(2, 4),
    Ns=(20, 40),
    seeds=2,
    steps=30,
    lr=0.05,
    label_noise=0.3,
    cond=5.0,
    teacher_norm=1.0,
)


def test_fake_quant_hand_cases():
    x = jnp.array([1.0, 0.3, -0.26, 0.25, 0.0, -1.0, 0.74])
    # b = 2, R = 1: Δ = 0.5, levels {−1, −0.5, 0, 0.5}; +R clips to R − Δ; 0.25 is a tie → 0 (even)
    q = fake_quant(x, kind="rtn", bits=2)
    np.testing.assert_array_equal(np.asarray(q), [0.5, 0.5, -0.5, 0.0, 0.0, -1.0, 0.5])
    # all-zero tensor: stays zero (no NaN from R = 0), for every kind
    z = jnp.zeros((3, 2))
    for kind in ("rtn", "sr", "nf4", "additive"):
        out = fake_quant(z, kind=kind, bits=3, key=jax.random.PRNGKey(0))
        np.testing.assert_array_equal(np.asarray(out), 0.0)
    # NF4 with one block: nearest code value times the absmax (brute force over the table)
    from quantbounds.quant.quantizers import nf4_code

    y = jnp.array([[0.9, -0.1, 0.05, -2.0], [0.33, 1.2, -0.7, 0.0]])
    code = np.asarray(nf4_code(), float)
    R = 2.0
    ref = code[np.argmin(np.abs(np.asarray(y)[..., None] / R - code), axis=-1)] * R
    np.testing.assert_allclose(np.asarray(fake_quant(y, kind="nf4")), ref, rtol=1e-6)
    # per-channel ranges (axis=1: one R per column)
    B = jnp.array([[1.0, 0.1], [0.5, -0.2]])
    qc = fake_quant(B, kind="rtn", bits=3, axis=1)  # Δ = R/4: col 0 Δ = 0.25, col 1 Δ = 0.05
    np.testing.assert_allclose(np.asarray(qc), [[0.75, 0.1], [0.5, -0.2]], atol=1e-15)


def test_sr_unbiased_and_additive_moments():
    # SR: E[Q(x)] = x inside [−R, R − Δ]; Var = Δ²p(1−p). Additive: mean x, Var Δ²/12.
    x = jnp.array([1.0, 0.3, -0.62, 0.1])  # R = 1, b = 3, Δ = 0.25
    n = 20000
    keys = jax.random.split(jax.random.PRNGKey(1), n)
    delta = 0.25
    for kind in ("sr", "additive"):
        Q = np.asarray(jax.vmap(lambda k: fake_quant(x, kind=kind, bits=3, key=k))(keys))
        for j in (1, 2, 3):  # element 0 is the absmax, in the clipped top cell for SR
            t = float(x[j]) / delta
            p = t - math.floor(t)
            var = delta**2 * p * (1 - p) if kind == "sr" else delta**2 / 12
            assert abs(Q[:, j].mean() - float(x[j])) <= 5 * math.sqrt(var / n)
            # sample variance: SE from the fourth moment, estimated from the sample
            d2 = (Q[:, j] - Q[:, j].mean()) ** 2
            assert abs(d2.mean() - var) <= 5 * d2.std() / math.sqrt(n) + 1e-15


def test_empirical_risk_identity_and_exact_excess_vs_monte_carlo():
    cfg = TeacherStudentConfig(**SMALL)
    p = make_problem(cfg)
    X, Y = sample_data(jax.random.PRNGKey(3), p, 50)
    W = p.W0 + 0.3 * jax.random.normal(jax.random.PRNGKey(4), p.W0.shape)
    direct = np.mean(np.sum((np.asarray(Y) - np.asarray(X) @ np.asarray(W).T) ** 2, axis=1))
    assert float(empirical_risk(W, sufficient_stats(X, Y, 50))) == pytest.approx(direct, rel=1e-12)
    # first 30 rows via the mask
    direct30 = np.mean(
        np.sum((np.asarray(Y[:30]) - np.asarray(X[:30]) @ np.asarray(W).T) ** 2, axis=1)
    )
    assert float(empirical_risk(W, sufficient_stats(X, Y, 30))) == pytest.approx(
        direct30, rel=1e-12
    )
    # closed form ‖(W − W*)Σ^½‖² vs a Monte Carlo estimate of L(W) − L(W*) (paired samples)
    n = 50_000
    Xm, Ym = sample_data(jax.random.PRNGKey(5), p, n)
    Xm, Ym = np.asarray(Xm), np.asarray(Ym)
    d = np.sum((Ym - Xm @ np.asarray(W).T) ** 2, 1) - np.sum(
        (Ym - Xm @ np.asarray(p.Wstar).T) ** 2, 1
    )
    exact = float(excess_risk(W, p.Wstar, p.Sigma))
    assert abs(d.mean() - exact) <= 5 * d.std() / math.sqrt(n)
    D = np.asarray(W - p.Wstar)
    assert exact == pytest.approx(np.sum((D @ np.asarray(p.Sigma_half)) ** 2), rel=1e-12)
    # the sample covariance of x converges to Σ (checks Σ^{1/2} is its square root)
    np.testing.assert_allclose(
        np.asarray(p.Sigma_half) @ np.asarray(p.Sigma_half), np.asarray(p.Sigma), atol=1e-12
    )


def test_full_rank_student_reaches_least_squares():
    cfg = TeacherStudentConfig(
        m=4,
        n=6,
        r_star=2,
        ranks=(4,),
        bits=(4,),
        Ns=(40,),
        seeds=1,
        steps=3000,
        lr=0.03,
        label_noise=0.5,
        cond=4.0,
        teacher_norm=1.0,
    )
    p = make_problem(cfg)
    X, Y = sample_data(jax.random.PRNGKey(11), p, 40)
    stats = sufficient_stats(X, Y, 40)
    params, s = jax.jit(
        lambda st: train_student(
            p, st, 4, 4.0, jax.random.PRNGKey(0), jax.random.PRNGKey(1), arm="fp", cfg=cfg
        )
    )(stats)
    W = np.asarray(student_weight(p, params, 4, s))
    Sxx, Cyx = np.asarray(stats[0]), np.asarray(stats[1])
    W_ls = np.linalg.solve(Sxx, Cyx.T).T  # Ĉ·Σ̂⁻¹ (rank ≤ min(m, n) = 4 is no constraint)
    assert np.linalg.norm(W - W_ls) <= 1e-5 * np.linalg.norm(W_ls - np.asarray(p.W0))
    assert float(empirical_risk(jnp.asarray(W), stats)) == pytest.approx(
        float(empirical_risk(jnp.asarray(W_ls), stats)), rel=1e-9
    )


def test_ste_gradient_equals_finite_differences_of_smooth_surrogate():
    # STE: ∂L/∂B at B equals ∂f/∂B̃ of the smooth surrogate f(B̃, Ã) = L̂(W0 + s·B̃·Ã) at
    # (B̃, Ã) = (Q(B), Q(A)). f is quadratic in B̃ alone, so central differences are exact up to
    # rounding: error ≤ a few ε·|f|/h.
    cfg = TeacherStudentConfig(**SMALL)
    p = make_problem(cfg)
    X, Y = sample_data(jax.random.PRNGKey(2), p, 30)
    stats = sufficient_stats(X, Y, 30)
    model = LoRAStudent(cfg.m, cfg.n, 3)
    k = jax.random.PRNGKey(7)
    B = 0.5 * jax.random.normal(k, (cfg.m, 3))
    A = jax.random.normal(jax.random.fold_in(k, 1), (3, cfg.n))
    mask = jnp.ones(3)

    def loss(params):
        W = model.apply({"params": params}, p.W0, mask, 1.0, _quant_fn("rtn", 3, None, "tensor"))
        return empirical_risk(W, stats)

    g = jax.jit(jax.grad(loss))({"B": B, "A": A})
    QB, QA = fake_quant(B, kind="rtn", bits=3), fake_quant(A, kind="rtn", bits=3)
    fj = jax.jit(lambda Bt, At: empirical_risk(p.W0 + Bt @ At, stats))
    f = lambda Bt, At: float(fj(Bt, At))  # noqa: E731
    h = 1e-3
    fd_B = np.zeros(B.shape)
    for i, j in np.ndindex(B.shape):
        e = jnp.zeros(B.shape).at[i, j].set(h)
        fd_B[i, j] = (f(QB + e, QA) - f(QB - e, QA)) / (2 * h)
    tol = 50 * np.finfo(float).eps * abs(f(QB, QA)) / h
    np.testing.assert_allclose(np.asarray(g["B"]), fd_B, atol=tol)
    fd_A = np.zeros(A.shape)
    for i, j in np.ndindex(A.shape):
        e = jnp.zeros(A.shape).at[i, j].set(h)
        fd_A[i, j] = (f(QB, QA + e) - f(QB, QA - e)) / (2 * h)
    np.testing.assert_allclose(np.asarray(g["A"]), fd_A, atol=tol)
    # and it is NOT the gradient at the unquantized point (the STE is a real choice here)
    g_fp = jax.grad(lambda BA: empirical_risk(p.W0 + BA[0] @ BA[1], stats))((B, A))
    assert np.max(np.abs(np.asarray(g_fp[0]) - fd_B)) > 100 * tol


def test_padding_is_exact():
    # a rank-r student padded to r_max: the padded rows/columns never influence the result
    cfg = TeacherStudentConfig(**{**SMALL, "ranks": (2, 4)})
    p = make_problem(cfg)
    X, Y = sample_data(jax.random.PRNGKey(3), p, 40)
    stats = sufficient_stats(X, Y, 40)
    model = LoRAStudent(cfg.m, cfg.n, 4)
    params = model.init(jax.random.PRNGKey(0), p.W0, jnp.ones(4), 1.0)["params"]
    mask = (jnp.arange(4) < 2).astype(float)

    @jax.jit
    def val_grad(pr, kind_idx):  # one compilation for every quantizer (traced kind index)
        def loss(pr_):
            q = _quant_fn(kind_idx, 3, jax.random.PRNGKey(5), "tensor")
            return empirical_risk(model.apply({"params": pr_}, p.W0, mask, 1.0, q), stats)

        return jax.value_and_grad(loss)(pr)

    pr2 = {"B": params["B"].at[:, 2:].set(7.0), "A": params["A"].at[2:, :].set(-3.0)}
    pr2["B"] = pr2["B"].at[:, :2].set(0.3)
    pr1 = {"B": pr2["B"].at[:, 2:].set(0.0), "A": pr2["A"].at[2:, :].set(0.0)}
    for kind in ("rtn", "sr", "nf4", "additive", None):
        l2, g2 = val_grad(pr2, KIND_INDEX[kind])
        l1, g1 = val_grad(pr1, KIND_INDEX[kind])
        assert float(l2) == float(l1)
        np.testing.assert_array_equal(np.asarray(g2["B"][:, 2:]), 0.0)
        np.testing.assert_array_equal(np.asarray(g2["A"][2:, :]), 0.0)
        np.testing.assert_array_equal(np.asarray(g2["B"]), np.asarray(g1["B"]))


def test_additive_prediction_matches_monte_carlo():
    cfg = TeacherStudentConfig(**SMALL)
    p = make_problem(cfg)
    params = {
        "B": 0.4 * jax.random.normal(jax.random.PRNGKey(1), (cfg.m, 3)),
        "A": jax.random.normal(jax.random.PRNGKey(2), (3, cfg.n)),
    }
    r, s, b = 2, 1.7, 3
    W = student_weight(p, params, r, s)
    n = 20000
    keys = jax.random.split(jax.random.PRNGKey(9), n)
    qx = jax.jit(
        jax.vmap(
            lambda k: (lambda E: jnp.sum(E * (E @ p.Sigma)))(
                student_weight(p, params, r, s, kind="additive", bits=b, key=k) - W
            )
        )
    )(keys)
    qx = np.asarray(qx)
    pred = float(additive_prediction(p, params, r, s, b))
    assert abs(qx.mean() - pred) <= 5 * qx.std() / math.sqrt(n)


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(ranks=(1, 7)), r"ranks entry must be in 1…4"),
        (dict(bits=(0,)), r"bits entry must be in 1…16"),
        (dict(bits=(17,)), r"bits entry must be in 1…16"),
        (dict(Ns=(0, 10)), r"Ns entry \(N\) must be in ≥ 1"),
        (dict(arms=("fp", "qat")), r"arms entry must be one of"),
        (dict(scale="alpha"), r"scale must be one of"),
        (dict(cond=0.5), r"cond must be"),
    ],
)
def test_config_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        TeacherStudentConfig(**{**SMALL, **bad})


def test_uniform_at_is_jax_random_uniform_bit_for_bit():
    # the unrolled threefry on chosen flat indices = jax.random.uniform of the whole shape, there
    for dt in (jnp.float32, jnp.float64):
        for key in (
            jax.random.PRNGKey(0),
            jax.random.fold_in(jax.random.PRNGKey(3), 7),
            jax.random.key(11),
        ):
            full = np.asarray(jax.random.uniform(key, (7, 5), dt)).ravel()
            idx = np.array([[0, 34], [12, 5]], np.uint32)
            got = np.asarray(jax.jit(uniform_at, static_argnums=2)(key, jnp.asarray(idx), dt))
            assert got.dtype == full.dtype
            np.testing.assert_array_equal(got, full[idx])


def _reference_train(p, stats, r, bits, init_key, noise_key, kind, cfg):
    """The straightforward implementation train_student must equal: the r_max-padded flax model
    under a rank mask, autodiff of the empirical risk through straight-through quantizers that
    draw jax.random.uniform at the padded shapes (fold_in(fold_in(noise_key, step), B=0/A=1)),
    optax Adam. kind: an index into KIND_INDEX (may be traced)."""
    dt = p.W0.dtype
    mask = (jnp.arange(cfg.r_max) < r).astype(dt)
    s = scale_value(cfg.scale, jnp.asarray(r, dt), cfg.lora_alpha)
    model = LoRAStudent(cfg.m, cfg.n, cfg.r_max)
    params = model.init(init_key, p.W0, mask, s)["params"]
    opt = optax.adam(optax.cosine_decay_schedule(cfg.lr, cfg.steps))

    def loss(pr, k):
        W = model.apply({"params": pr}, p.W0, mask, s, _quant_fn(kind, bits, k, cfg.granularity))
        return empirical_risk(W, stats)

    def step(carry, i):
        pr, st = carry
        g = jax.grad(loss)(pr, jax.random.fold_in(noise_key, i))
        upd, st = opt.update(g, st, pr)
        return (optax.apply_updates(pr, upd), st), None

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), jnp.arange(cfg.steps))
    return params


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_train_student_equals_autodiff_reference(granularity):
    # every arm: the unpadded static-rank path (what the grid runs) and the padded traced path
    # (traced rank and arm index) against the autodiff reference, same keys, float64
    cfg = TeacherStudentConfig(
        **{**SMALL, "steps": 12, "ranks": (1, 3), "granularity": granularity}
    )
    p = make_problem(cfg)
    X, Y = sample_data(jax.random.PRNGKey(3), p, 40)
    stats = sufficient_stats(X, Y, 40)
    ki, kn = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
    kinds = jnp.asarray([KIND_INDEX[_ARM_KIND.get(a)] for a in ARMS])
    ranks = jnp.asarray([1, 3])
    ref = jax.jit(
        jax.vmap(
            jax.vmap(
                lambda k, r: _reference_train(p, stats, r, 3.0, ki, kn, k, cfg), in_axes=(None, 0)
            ),
            in_axes=(0, None),
        )
    )(kinds, ranks)
    traced = jax.jit(
        jax.vmap(
            jax.vmap(
                lambda k, r: train_student(p, stats, r, 3.0, ki, kn, arm=k, cfg=cfg)[0],
                in_axes=(None, 0),
            ),
            in_axes=(0, None),
        )
    )(kinds, ranks)
    for name in ("B", "A"):
        np.testing.assert_allclose(
            np.asarray(traced[name]), np.asarray(ref[name]), rtol=1e-10, atol=1e-12
        )
    if (
        granularity == "tensor"
    ):  # the static path, once per arm, rank 1 (padded output) or 3 (= r_max)
        for a, arm in enumerate(ARMS):
            j = a % 2
            out, _ = jax.jit(
                lambda st, arm=arm, j=j: train_student(
                    p, st, (1, 3)[j], 3.0, ki, kn, arm=arm, cfg=cfg
                )
            )(stats)
            for name in ("B", "A"):
                np.testing.assert_allclose(
                    np.asarray(out[name]),
                    np.asarray(ref[name][a, j]),
                    rtol=1e-10,
                    atol=1e-12,
                    err_msg=f"{arm} {name}",
                )
    # the arms really differ (the comparison is not between identical runs)
    assert np.max(np.abs(np.asarray(ref["B"][1] - ref["B"][0]))) > 1e-3


def test_make_problems_draws_one_teacher_per_seed():
    cfg = TeacherStudentConfig(**{**SMALL, "seeds": 3, "teacher_per_seed": True})
    ps = make_problems(cfg)
    assert ps.W0.shape == (3, cfg.m, cfg.n) and ps.Sigma.shape == (3, cfg.n, cfg.n)
    for j in range(3):
        pj = problem_at(ps, j)
        D = np.asarray(pj.Wstar - pj.W0)
        # each teacher is a rank-r* update of norm teacher_norm, Σ = Σ^½·Σ^½ with eigenvalues
        # geometric from 1 to 1/cond (the distribution of make_problem)
        assert np.linalg.matrix_rank(D, tol=1e-10) == cfg.r_star
        assert np.linalg.norm(D) == pytest.approx(cfg.teacher_norm, rel=1e-12)
        np.testing.assert_allclose(np.asarray(pj.Sigma_half @ pj.Sigma_half),
                                   np.asarray(pj.Sigma), atol=1e-12)
        ev = np.sort(np.linalg.eigvalsh(np.asarray(pj.Sigma)))
        np.testing.assert_allclose(ev[[0, -1]], [1 / cfg.cond, 1.0], rtol=1e-10)
    assert not np.allclose(np.asarray(ps.W0[0]), np.asarray(ps.W0[1]))  # distinct teachers
    assert problem_at(make_problem(cfg), 1) is not None  # a single problem passes through


def test_rank_r_floor_is_the_best_rank_r_excess():
    """Eckart–Young against (a) the excess of the truncated-SVD adapter, (b) random rank-r
    adapters (never below the floor) and (c) zero at r ≥ r*."""
    cfg = TeacherStudentConfig(**{**SMALL, "r_star": 3, "ranks": (1, 2, 3, 4)})
    p = make_problem(cfg)
    floor = rank_r_floor(p, (1, 2, 3, 4))
    D = np.asarray(p.Wstar - p.W0)
    half = np.asarray(p.Sigma_half)
    U, sv, Vt = np.linalg.svd(D @ half)
    rng = np.random.default_rng(0)
    for i, r in enumerate((1, 2, 3, 4)):
        M = (U[:, :r] * sv[:r]) @ Vt[:r] @ np.linalg.inv(half)
        best = float(excess_risk(jnp.asarray(np.asarray(p.W0) + M), p.Wstar, p.Sigma))
        assert floor[i] == pytest.approx(best, rel=1e-9, abs=1e-12)
        for _ in range(20):
            R = rng.normal(size=(cfg.m, r)) @ rng.normal(size=(r, cfg.n))
            W = jnp.asarray(np.asarray(p.W0) + R)
            assert float(excess_risk(W, p.Wstar, p.Sigma)) >= floor[i]
    assert floor[2] == pytest.approx(0.0, abs=1e-12) and floor[3] == pytest.approx(0.0, abs=1e-12)
    assert floor[0] > floor[1] > 0
    ps = make_problems(TeacherStudentConfig(**{**SMALL, "seeds": 2, "teacher_per_seed": True}))
    assert rank_r_floor(ps, (1, 2)).shape == (2, 2)
