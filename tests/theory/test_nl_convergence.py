"""The nonlinear student trained to convergence: the L-BFGS finish against an independent optimiser
(scipy's L-BFGS-B), the convergence record the grid returns (a converged fit, an unattained
infimum, the early-stopped reading), and the grid's own precision whatever the caller's x64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from quantbounds.theory.nl_grid import run_nonlinear_grid
from quantbounds.theory.nonlinear_student import (
    NonlinearConfig,
    finish_nonlinear,
    fit_diagnostics,
    function_distance_erf,
    hidden_weight,
    make_nonlinear_problem,
    sample_nonlinear,
    train_nonlinear,
    training_description,
    training_loss,
)


def test_finish_meets_the_gradient_tolerance_and_agrees_with_scipy_lbfgsb():
    """Well posed (r = r*, N = 512 ≫ r(h + n − r)): from Adam's end, the finish reaches
    ‖∇‖₂ ≤ grad_tol and the same minimum as scipy's L-BFGS-B run to ‖∇‖∞ ≤ 1e−11 (compared on
    the gauge-invariant W1 = W1⁰ + B·A and on the excess)."""
    cfg = NonlinearConfig(
        n=5, h=6, m=3, r_star=2, ranks=(2,), Ns=(512,), label_noise=0.3, steps=100, grad_tol=1e-8
    )
    p = make_nonlinear_problem(cfg)
    X, Y = sample_nonlinear(jax.random.PRNGKey(1), p, 512)
    adam = jax.jit(
        lambda: train_nonlinear(
            p, X, Y, 2, 0, 16.0, jax.random.PRNGKey(2), jax.random.PRNGKey(3), cfg=cfg
        )
    )()
    done, k = finish_nonlinear(p, adam, X, Y, 2, cfg=cfg)
    diag, diag0 = (fit_diagnostics(p, q, X, Y, 2, 0, 16.0, cfg=cfg) for q in (done, adam))
    assert 0 < int(k) < cfg.lbfgs_steps
    assert float(diag["grad_norm"]) <= cfg.grad_tol < float(diag0["grad_norm"])
    assert float(diag["train_loss"]) < float(diag0["train_loss"])

    shapes = {k: v.shape for k, v in adam.items()}
    sizes = np.cumsum([int(np.prod(s)) for s in shapes.values()])[:-1]

    def unflat(v):
        return {
            k: jnp.asarray(x.reshape(s)) for (k, s), x in zip(shapes.items(), np.split(v, sizes))
        }

    vg = jax.jit(jax.value_and_grad(lambda q: training_loss(p, q, X, Y, 2, cfg=cfg)))

    def fun(v):
        value, g = vg(unflat(v))
        return float(value), np.concatenate([np.asarray(g[k]).ravel() for k in shapes])

    v0 = np.concatenate([np.asarray(adam[k]).ravel() for k in shapes])
    # run until the loss stops decreasing at float64 resolution (scipy's ftol test at 0)
    ref = scipy.optimize.minimize(
        fun, v0, jac=True, method="L-BFGS-B", options={"gtol": 1e-12, "ftol": 0, "maxiter": 20000}
    )
    g_ref = np.linalg.norm(ref.jac)
    assert g_ref <= 1e-8
    # both ends are stationary to g ≤ 1e-8; off the GL(r) gauge orbit (the Hessian's r² zero
    # eigenvalues) the loss curves by at least λ, so the two differ by ≤ (g + g_ref)/λ in the
    # factors and W1 = W1⁰ + B·A by ≤ (‖B‖ + ‖A‖) times that, to first order
    H = np.linalg.eigvalsh(np.asarray(jax.hessian(lambda v: vg(unflat(v))[0])(jnp.asarray(ref.x))))
    lam = np.sort(np.abs(H))[4:].min()  # r² = 4 gauge directions
    q_ref = unflat(ref.x)
    scale = float(jnp.linalg.norm(q_ref["B"], 2) + jnp.linalg.norm(q_ref["A"], 2))
    tol_W = scale * (float(diag["grad_norm"]) + g_ref) / lam
    W_ours, W_ref = (hidden_weight(p, q, 2) for q in (done, q_ref))
    assert float(jnp.max(jnp.abs(W_ours - W_ref))) <= tol_W
    # the excess is smooth in W1: a relative change ≲ 2‖ΔW‖/√excess (~3e−4 here at most)
    ex = [float(function_distance_erf(W, p.W2, p.W1_star, p.W2, p.Sigma)) for W in (W_ours, W_ref)]
    assert ex[0] == pytest.approx(ex[1], rel=2 * tol_W * W_ours.size**0.5 / ex[1] ** 0.5)


GRID = dict(
    n=4,
    h=5,
    m=2,
    r_star=1,
    ranks=(1, 3),
    bits=(2, 8),
    train_bits=(3,),
    Ns=(16, 256),
    seeds=2,
    steps=40,
    n_test=64,
    arms=("fp", "ste_rtn"),
    lbfgs_steps=300,
)


@pytest.fixture(scope="module")
def grids():
    """The grid finished by L-BFGS and early-stopped (lbfgs_steps = 0), both run with x64 off."""
    with jax.enable_x64(False):
        out = {
            steps: run_nonlinear_grid(NonlinearConfig(**{**GRID, "lbfgs_steps": steps}))
            for steps in (GRID["lbfgs_steps"], 0)
        }
        assert not jax.config.jax_enable_x64  # the grid's float64 was scoped to its call
    return out


def test_grid_runs_in_float64_with_x64_off_and_float32_on_request(grids):
    for arm in ("fp", "ste_rtn"):
        for key in ("excess_latent", "ptq_qexcess", "grad_norm", "train_loss"):
            assert grids[300][arm][key].dtype == np.float64, (arm, key)
    cfg32 = NonlinearConfig(
        **{**GRID, "dtype": "float32", "Ns": (16,), "seeds": 1, "arms": ("fp",)}
    )
    assert run_nonlinear_grid(cfg32)["fp"]["excess_latent"].dtype == np.float32


def test_convergence_record_of_the_finished_grid(grids):
    fp, ste = grids[300]["fp"], grids[300]["ste_rtn"]
    cfg = NonlinearConfig(**GRID)
    # (rank, N, seed): r = r* at N = 256 is well posed and converges within the cap
    assert np.all(fp["converged"][0, 1] == 1.0)
    assert np.all(fp["grad_norm"][0, 1] <= cfg.grad_tol)
    assert np.all((fp["lbfgs_iterations"][0, 1] > 0) & (fp["lbfgs_iterations"][0, 1] < 300))
    # r = 3 at N = 16 (18 free parameters, 32 targets): the infimum is not attained, the weights
    # run off (erf units saturating into steps): one fit stops at the cap unconverged, the other
    # "converges" only because its saturated units have no gradient left; weight_norm flags both
    assert np.all(fp["weight_norm"][1, 0] > 100 * cfg.teacher_norm)
    assert np.any((fp["converged"][1, 0] == 0.0) & (fp["lbfgs_iterations"][1, 0] == 300))
    assert np.all(fp["weight_norm"][0] < 10 * cfg.teacher_norm)
    # L-BFGS only ever lowers the training loss from Adam's end
    assert np.all(fp["train_loss"] <= fp["train_loss_adam"] + 1e-12)
    # the quantized arm keeps Adam's fixed budget: never "converged", no L-BFGS, and its record
    # is that of its Adam phase
    assert np.all(ste["converged"] == 0.0) and np.all(ste["lbfgs_iterations"] == 0)
    # (to rounding: train_loss is the padded weighted sum, train_loss_adam the plain mean)
    np.testing.assert_allclose(ste["train_loss"], ste["train_loss_adam"], rtol=1e-14)
    assert "L-BFGS" in fp["training"] and "fixed budget" in ste["training"]


def test_finish_starts_from_the_early_stopped_fit(grids):
    """lbfgs_steps = 0 is the Adam-only student; the finished grid's early-stopped reading
    ("fp_adam", and excess_latent_adam / train_loss_adam of "fp") equals it."""
    fin, early = grids[300], grids[0]
    assert "fp_adam" in fin and "fp_adam" in early
    np.testing.assert_array_equal(early["fp"]["lbfgs_iterations"], 0)
    np.testing.assert_array_equal(early["fp"]["excess_latent"], early["fp"]["excess_latent_adam"])
    np.testing.assert_allclose(
        early["fp"]["train_loss"], early["fp"]["train_loss_adam"], rtol=1e-14
    )
    for key in ("excess_latent", "ptq_qexcess", "ptq_excess", "train_loss", "grad_norm"):
        np.testing.assert_allclose(fin["fp_adam"][key], early["fp"][key], rtol=1e-12, err_msg=key)
    np.testing.assert_allclose(
        fin["fp"]["excess_latent_adam"], early["fp"]["excess_latent"], rtol=1e-12
    )
    np.testing.assert_allclose(fin["fp"]["train_loss_adam"], early["fp"]["train_loss"], rtol=1e-12)
    np.testing.assert_array_equal(fin["fp_adam"]["lbfgs_iterations"], 0)
    np.testing.assert_array_equal(
        fin["ste_rtn"]["excess_deployed"], early["ste_rtn"]["excess_deployed"]
    )
    assert (
        "early-stopped" in early["fp"]["training"] and "early-stopped" in fin["fp_adam"]["training"]
    )
    # and the finish moved the fits
    assert not np.allclose(fin["fp"]["excess_latent"], early["fp"]["excess_latent"])


def test_training_description_names_the_procedure():
    cfg = NonlinearConfig(weight_decay=1e-4)
    assert "1e-08" in training_description(cfg) and "0.0001" in training_description(cfg)
    assert "early-stopped" in training_description(cfg, early_stopped=True)
    assert "fixed budget" in training_description(cfg, "additive")
    with pytest.raises(ValueError, match="arm"):
        training_description(cfg, "nf4")


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(lbfgs_steps=-1), "lbfgs_steps"),
        (dict(grad_tol=0.0), "grad_tol"),
        (dict(weight_decay=-1e-3), "weight_decay"),
        (dict(dtype="float16"), "dtype"),
    ],
)
def test_bad_convergence_settings_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        NonlinearConfig(**kw)
