"""Gradient variance (quantbounds.theory.gradvar) against references that could disagree: the
closed-form (Isserlis) batch variance against the sampled one, the vmapped measurement against
a Python loop over draws, a traced quantizer index against the named quantizer, and a padded
rank against the unpadded factors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quantbounds.conventions import KIND_INDEX
from quantbounds.theory.gradvar import (
    _batch,
    analytic_batch_variance,
    draw_gradvar,
    lora_grad,
    measure_grad_variance,
)
from quantbounds.theory.teacher_student import TeacherStudentConfig, make_problem

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


def _setup(r=3, seed=1):
    cfg = TeacherStudentConfig(**SMALL)
    p = make_problem(cfg)
    B = 0.5 * jax.random.normal(jax.random.PRNGKey(seed), (cfg.m, r))
    A = jax.random.normal(jax.random.PRNGKey(seed + 1), (r, cfg.n)) / math.sqrt(cfg.n)
    return cfg, p, B, A


def test_batch_gradient_variance_vs_closed_form():
    cfg = TeacherStudentConfig(**SMALL)
    p = make_problem(cfg)
    B = 0.5 * jax.random.normal(jax.random.PRNGKey(1), (cfg.m, 3))
    A = jax.random.normal(jax.random.PRNGKey(2), (3, cfg.n)) / math.sqrt(cfg.n)
    s, k, D = 1.3, 4, 4000
    draws = draw_gradvar(jax.random.PRNGKey(3), n_draws=D, batch_size=k, m=cfg.m, n=cfg.n, r=3)
    mgv = jax.jit(lambda b: measure_grad_variance(p, B, A, s, draws, kind="additive", bits=b))
    out = mgv(4.0)
    exact = float(analytic_batch_variance(p, B, A, s, k))
    # SE of the estimator Σ_j var_j = mean_d ‖g_d − ḡ‖²·D/(D−1), from the per-draw terms
    from quantbounds.theory.gradvar import _batch

    G = np.asarray(
        jax.jit(jax.vmap(lambda Z, Xi: lora_grad(p, B, A, s, *_batch(p, Z, Xi))[0]))(
            draws.Zb, draws.Xib
        )
    )
    t = np.sum((G - G.mean(0)) ** 2, axis=1)
    assert float(out["var_batch"]) == pytest.approx(t.mean() * D / (D - 1), rel=1e-10)
    assert abs(float(out["var_batch"]) - exact) <= 5 * t.std() / math.sqrt(D)
    # quantization noise adds variance; fixed-batch noise variance is positive and shrinks ~4×/bit
    v4 = float(out["var_noise"])
    v6 = float(mgv(6.0)["var_noise"])
    assert v4 > 0 and 8 < v4 / v6 < 32


@pytest.mark.parametrize("kind", ["sr", "additive"])
def test_measurement_equals_a_python_loop_over_draws(kind):
    """var_noise and var_joint from per-draw gradients computed one at a time (numpy variance)."""
    cfg, p, B, A = _setup()
    s, bits, D = 0.8, 3.0, 12
    draws = draw_gradvar(jax.random.PRNGKey(5), n_draws=D, batch_size=5, m=cfg.m, n=cfg.n, r=3)
    out = jax.jit(lambda: measure_grad_variance(p, B, A, s, draws, kind=kind, bits=bits))()
    grad = jax.jit(
        lambda X, Y, uB, uA: lora_grad(p, B, A, s, X, Y, kind=kind, bits=bits, uB=uB, uA=uA)[0]
    )
    X0, Y0 = _batch(p, draws.Z0, draws.Xi0)
    noise = np.stack([np.asarray(grad(X0, Y0, draws.UB[d], draws.UA[d])) for d in range(D)])
    joint = np.stack(
        [
            np.asarray(
                grad(
                    *_batch(p, draws.Zb[d], draws.Xib[d]),
                    draws.UB[(d - 1) % D],
                    draws.UA[(d - 1) % D],
                )
            )
            for d in range(D)
        ]
    )
    np.testing.assert_allclose(float(out["var_noise"]), noise.var(axis=0, ddof=1).sum(), rtol=1e-9)
    np.testing.assert_allclose(float(out["var_joint"]), joint.var(axis=0, ddof=1).sum(), rtol=1e-9)
    assert float(out["R"]) == max(float(jnp.max(jnp.abs(B))), float(jnp.max(jnp.abs(A))))


def test_traced_kind_index_equals_the_named_kind():
    cfg, p, B, A = _setup()
    draws = draw_gradvar(jax.random.PRNGKey(6), n_draws=6, batch_size=3, m=cfg.m, n=cfg.n, r=3)
    kinds = ("sr", "additive")
    by_index = jax.jit(
        jax.vmap(lambda k: measure_grad_variance(p, B, A, 1.0, draws, kind=k, bits=4.0))
    )(jnp.asarray([KIND_INDEX[k] for k in kinds]))
    for i, kind in enumerate(kinds):
        named = jax.jit(lambda: measure_grad_variance(p, B, A, 1.0, draws, kind=kind, bits=4.0))()
        for key, value in named.items():
            np.testing.assert_allclose(
                np.asarray(by_index[key][i]), np.asarray(value), rtol=1e-12, err_msg=f"{kind} {key}"
            )


@pytest.mark.parametrize("kind", ["sr", "additive"])
def test_padded_rank_equals_the_unpadded_factors(kind):
    """Rank 2 inside width-3 factors (third component zero, rank=2 masks it) measures what the
    width-2 factors measure: the draws' first two columns are the same noise."""
    cfg, p, B, A = _setup()
    B2, A2 = B[:, :2], A[:2]
    Bp, Ap = B.at[:, 2].set(0.0), A.at[2].set(0.0)
    draws = draw_gradvar(jax.random.PRNGKey(7), n_draws=8, batch_size=4, m=cfg.m, n=cfg.n, r=3)
    padded = jax.jit(
        lambda: measure_grad_variance(p, Bp, Ap, 1.2, draws, kind=kind, bits=3.0, rank=2)
    )()
    plain = jax.jit(lambda: measure_grad_variance(p, B2, A2, 1.2, draws, kind=kind, bits=3.0))()
    for key in ("var_noise", "var_joint", "var_batch", "loss", "R"):
        # the padded component's gradients, ∇_B column 3 = s·∇_W·A[2]ᵀ and ∇_A row 3 =
        # s·B[:, 2]ᵀ·∇_W, vanish (zero factors, masked after quantization): the totals agree
        np.testing.assert_allclose(float(padded[key]), float(plain[key]), rtol=1e-10, err_msg=key)


@pytest.mark.parametrize("kind", ["sr", "additive"])
@pytest.mark.parametrize("c", [4.0, 0.3])
def test_refactorisation_rescales_the_measurement_exactly(kind, c):
    """(c·B, A/c) is the same W: measured directly it gives what rescaled_noise_variance predicts
    from the c = 1 measurement (the B and A parts scale by 1/c² and c²; R = max(c·R_B, R_A/c));
    c = 4 is a power of two (bit-exact steps), c = 0.3 agrees to rounding."""
    from quantbounds.theory.gradvar import rescaled_noise_variance

    cfg, p, B, A = _setup()
    draws = draw_gradvar(jax.random.PRNGKey(8), n_draws=10, batch_size=4, m=cfg.m, n=cfg.n, r=3)
    base = jax.jit(lambda: measure_grad_variance(p, B, A, 0.9, draws, kind=kind, bits=3.0))()
    moved = jax.jit(
        lambda: measure_grad_variance(p, c * B, A / c, 0.9, draws, kind=kind, bits=3.0)
    )()
    assert float(base["var_noise"]) == pytest.approx(
        float(base["var_noise_B"]) + float(base["var_noise_A"]), rel=1e-12)
    v, R = rescaled_noise_variance(float(base["var_noise_B"]), float(base["var_noise_A"]),
                                   float(base["R_B"]), float(base["R_A"]), c)
    assert float(moved["var_noise"]) == pytest.approx(v, rel=1e-9)
    assert float(moved["R"]) == pytest.approx(float(R), rel=1e-12)
    # the fixed-batch loss and the batch variance of the weight are unchanged; the bound's R² is not
    assert float(moved["loss"]) == pytest.approx(float(base["loss"]), rel=1e-9)
    assert float(moved["R"]) != pytest.approx(float(base["R"]), rel=1e-3)
    with pytest.raises(ValueError, match="c must be"):
        rescaled_noise_variance(1.0, 1.0, 1.0, 1.0, 0.0)
