"""`quantbounds audit`: fit helpers against exact answers, the claims on synthetic grids whose
rates are known, and a tiny end-to-end run (the decision rules and the seed bootstrap are
tested in tests/verdicts/)."""

import json

import numpy as np
import pytest

from quantbounds.verdicts.results import load_verdicts
from simulations import audit_fits as fits_mod


def test_fe_slope_and_log_slopes_recover_known_exponents():
    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    g = np.repeat(np.arange(4), 10)
    y = np.array([3.0, -1.0, 0.5, 7.0])[g] + 1.75 * x
    assert fits_mod.fe_slope(y, x, g) == pytest.approx(1.75, abs=1e-12)
    r = np.array([2.0, 4, 8, 16])
    N = np.array([64.0, 256, 1024])
    E = 0.3 * r[:, None] ** 0.8 / N[None, :]  # exponent −1 in N, 0.8 in r
    assert fits_mod.log_slope(E, N, 1) == pytest.approx(-1.0, abs=1e-12)
    assert fits_mod.log_slope(E, r, 0) == pytest.approx(0.8, abs=1e-12)
    b = np.array([2.0, 3, 4, 6])
    Q = 5.0 * r[:, None] * 3.0 ** -b[None, :]  # factor 3 per bit
    assert 2.0 ** -fits_mod.bit_slope(Q, b, 1) == pytest.approx(3.0, rel=1e-12)


def test_threshold_bits_exact_for_log_linear_curves():
    b = np.array([2.0, 3, 4, 6, 8])
    K, b0, tol = 2.0, 4.6, 0.1
    base = K * 4.0**-b0 / tol
    q = K * 4.0**-b  # log₂ linear in b: interpolation is exact
    assert fits_mod.threshold_bits(q, base, b, tol=tol) == pytest.approx(b0, abs=1e-12)
    assert np.isnan(fits_mod.threshold_bits(q, 1e6, b, tol=tol))  # below the tolerance everywhere
    assert np.isnan(fits_mod.threshold_bits(q, 1e-12, b, tol=tol))  # never reached on the grid


def test_fe_slope_is_the_dummy_variable_regression():
    rng = np.random.default_rng(2)
    x, g = rng.normal(size=60), rng.integers(0, 9, 60)
    y = rng.normal(size=60) + 0.5 * g - 0.7 * x
    design = np.column_stack([(g[:, None] == np.unique(g)[None, :]).astype(float), x])
    want = np.linalg.lstsq(design, y, rcond=None)[0][-1]
    assert fits_mod.fe_slope(y, x, g) == pytest.approx(want, rel=1e-10)
    y[3] = np.nan  # non-finite rows are dropped
    keep = np.arange(60) != 3
    want = np.linalg.lstsq(design[keep], y[keep], rcond=None)[0][-1]
    assert fits_mod.fe_slope(y, x, g) == pytest.approx(want, rel=1e-10)
    assert np.isnan(fits_mod.fe_slope(y, np.ones(60), np.arange(60)))  # no within-group spread


def test_fit_envelope_is_the_tightest_valid_bound():
    rng = np.random.default_rng(1)
    a, q = rng.uniform(0.1, 1, 30), rng.uniform(0.1, 1, 30)
    y = 2.0 * a + 0.5 * q
    C1, C2 = fits_mod.fit_envelope(a, q, y)
    assert np.all(C1 * a + C2 * q >= y * (1 - 1e-9))
    assert (C1, C2) == pytest.approx((2.0, 0.5), abs=1e-7)  # exact data: the generating constants
    # brute-force check of optimality on a grid of feasible (C1, C2)
    obj = lambda c1, c2: np.sum((c1 * a + c2 * q) / y)  # noqa: E731
    for c1 in np.linspace(0, 4, 41):
        need = np.max(np.where(q > 0, (y - c1 * a) / q, 0))
        assert obj(c1, max(need, 0)) >= obj(C1, C2) - 1e-9


def _synthetic(rate_N, rate_r, factor, *, quant_rank=0.3, grad_rank=1.0, seeds=6, noise=0.05,
               seed=0, floor=0.0):
    """A fake run_grid/run_gradvar result whose rates are known exactly (multiplicative noise).

    fp excess 0.5·r^rate_r·(N/64)^rate_N (+ ``floor`` at r < r*: the rank-r approximation
    floor, constant in N); quantization excess 2·r^quant_rank·factor^−b; gradient variance
    r^grad_rank·4^−b split equally between ∇_B and ∇_A."""
    from quantbounds.theory.teacher_student import TeacherStudentConfig

    cfg = TeacherStudentConfig(
        m=16,
        n=24,
        r_star=2,
        ranks=(1, 2, 4, 8, 16),
        bits=(2, 3, 4, 6, 8),
        Ns=(64, 128, 256, 512, 1024),
        seeds=seeds,
        conventions=("one",),
        teacher_per_seed=True,
    )
    rng = np.random.default_rng(seed)
    r = np.array(cfg.ranks, float)[:, None, None]
    N = np.array(cfg.Ns, float)[None, :, None]
    b = np.array(cfg.bits, float)
    mult = lambda shape: np.exp(noise * rng.normal(size=shape))  # noqa: E731
    floors = np.where(np.array(cfg.ranks) < cfg.r_star, floor, 0.0)
    E = 0.5 * r**rate_r * (N / 64) ** rate_N * mult((5, 5, seeds)) + floors[:, None, None]
    Q = 2.0 * r[..., None] ** quant_rank * factor**-b * mult((5, 5, seeds, 5))
    fp = {"excess_latent": E, "ptq_qexcess": Q, "ptq_excess": E[..., None] + Q, "ptq_pred": Q,
          "scale": np.ones((5, 5, seeds))}
    res = {"fp_one": fp}
    for arm in ("ste_rtn", "additive"):
        res[arm] = {"excess_deployed": np.moveaxis(E[..., None] + Q, -1, 1)}
    rr = np.array(cfg.ranks, float)[:, None, None]

    def gradvar(loss):
        v = rr**grad_rank * 4.0 ** -b[None, :, None] * mult((5, 5, seeds))
        return {"var_noise": v, "var_noise_B": v / 2, "var_noise_A": v / 2,
                "var_batch": np.ones((5, 5, seeds)), "var_joint": 1 + v,
                "loss": loss * np.ones((5, 5, seeds)), "x_norm2": np.ones((5, 5, seeds)),
                "R_B": 2.0 * np.ones((5, 5, seeds)), "R_A": 2.0 * np.ones((5, 5, seeds)),
                "R": 2.0 * np.ones((5, 5, seeds))}

    floor_sr = np.tile(floors, (seeds, 1))  # (S, R) like rank_r_floor of a stacked problem
    # loss 1 at σ = 0.5 (ρ3 = v/(L²·4^−b·r·R²) = 1/4 everywhere), 0.2 at σ = 0.1 (ρ3 = 6.25)
    return res, {"additive": gradvar(1.0)}, cfg, floor_sr, {0.1: {"additive": gradvar(0.2)}}


def _by_id(vs, cid, start=""):
    return next(v for v in vs if v.claim_id == cid and v.claim.startswith(start))


def _acfg(**kw):
    from simulations.audit import AuditConfig

    return AuditConfig(n_boot=60, **kw)


def _run(*args, **kw):
    from simulations.audit_claims import fits_and_verdicts

    res, gv, cfg, floor, gv_sigma = _synthetic(*args, **kw)
    return fits_and_verdicts(res, gv, cfg, _acfg(), floor=floor, gv_by_sigma=gv_sigma)


def test_claims_come_out_either_way_on_synthetic_grids(tmp_path):
    from quantbounds.verdicts.results import write_results

    # the paper's world: exponent −½ in N, +½ in r, factor 4 per bit, gradient variance ∝ r·4^−b
    fits, vs, _ = _run(-0.5, 0.5, 4.0, quant_rank=1.0)
    assert fits["exponent_N"]["value"] == pytest.approx(-0.5, abs=0.03)
    assert _by_id(vs, "s001.thm3_1.gen_term").verdict == "holds"
    assert _by_id(vs, "s001.thm3_1.quant_term").verdict == "holds"
    assert _by_id(vs, "s001.s5_1.exponential_precision").verdict == "holds"
    assert _by_id(vs, "s001.s4_2.degradation_linear_rank").verdict == "holds"
    assert _by_id(vs, "s001.s4_2.grad_var_rank").verdict == "holds"
    assert _by_id(vs, "s001.s4_2.grad_var_bits").verdict == "holds"
    assert not any("worked example" in v.claim for v in vs)  # no seed has one (DESIGN.md §2)
    # a world falling like N^−1 (faster than the bound: it still holds, loose), rank exponent
    # 0.3 of the quantization excess (slower than r: the bound holds, the "linear in rank"
    # scaling law fails), factor 2 per bit (slower than 4^−b: both fail)
    fits, vs, _ = _run(-1.0, 0.5, 2.0, quant_rank=0.3, grad_rank=0.0, seed=1)
    assert fits["exponent_N"]["value"] == pytest.approx(-1.0, abs=0.03)
    assert fits["per_bit_factor"]["value"] == pytest.approx(2.0, rel=0.03)
    assert _by_id(vs, "s001.thm3_1.gen_term").verdict == "holds"
    assert _by_id(vs, "s001.thm3_1.quant_term").verdict == "fails"
    assert _by_id(vs, "s001.s5_1.exponential_precision").verdict == "fails"
    assert _by_id(vs, "s001.s4_2.degradation_linear_rank").verdict == "fails"
    assert _by_id(vs, "s001.s4_2.grad_var_rank").verdict == "fails"
    # an excess flat in N outgrows √(r/N): the generalization term fails as a bound; so does one
    # growing like r^1 (the registry's rule: held-out τ > 1.1 with measured ÷ bound growing in r)
    fits, vs, _ = _run(0.0, 0.5, 4.0, seed=2)
    assert _by_id(vs, "s001.thm3_1.gen_term").verdict == "fails"
    fits, vs, _ = _run(-1.0, 1.0, 4.0, seed=2)
    assert _by_id(vs, "s001.thm3_1.gen_term").verdict == "fails"
    # far too noisy to decide: inconclusive, not holds
    fits, vs, _ = _run(-0.5, 0.5, 4.0, quant_rank=1.0, noise=3.0, seeds=3, seed=3)
    assert _by_id(vs, "s001.s5_1.exponential_precision").verdict == "inconclusive"
    assert _by_id(vs, "s001.s4_2.grad_var_rank").verdict == "inconclusive"
    # every verdict is wired to the registry and survives write_results (Holm)
    write_results(tmp_path / "a.json", {"verdicts": [v.to_dict() for v in vs]})
    for v in vs:
        assert v.verdict in ("holds", "fails", "conditional", "inconclusive") and v.claim_id


def test_readings_make_verdicts_conditional_by_construction():
    """θ* = the teacher against the best rank-r parameter (an approximation floor at r < r*),
    Theorem 3.3 at two label-noise levels: the readings disagree, the verdict is conditional
    and names them."""
    _, vs, _ = _run(-1.0, 1.0, 4.0, floor=0.5, seed=4)
    low = _by_id(vs, "s001.thm3_1.bound", "Thm 3.1 holds for r < r*")
    assert low.verdict == "conditional"
    assert low.details["readings"] == {"θ* = the teacher": "fails",
                                       "θ* = the best rank-r parameter": "holds"}
    t33 = _by_id(vs, "s001.thm3_3.bound")
    assert t33.verdict == "conditional"
    assert {k for k, v in t33.details["readings"].items() if v == "fails"} == {
        f"σ = 0.1, c = {c:g}" for c in (0.25, 1.0, 4.0)}
    assert t33.measured["σ = 0.5, c = 1"] == pytest.approx(0.25, rel=0.1)
    # c = 4: var = v_B/16 + 16·v_A, R = max(4·2, 2/4) = 8 → ratio (v/2)(1/16 + 16)/(v·64/4)·4
    assert t33.measured["σ = 0.5, c = 4"] == pytest.approx(
        0.25 * 0.5 * (1 / 16 + 16) / 16, rel=0.1)
    assert "units" in t33.conditions


def _synthetic_nl(rate_N, rate_r, factor, *, quant_rank=0.3, seeds=6, noise=0.05, seed=0):
    """A fake run_nonlinear_grid result whose rates are known exactly (multiplicative noise)."""
    from quantbounds.theory.nonlinear_student import NonlinearConfig

    ncfg = NonlinearConfig(
        ranks=(1, 2, 4, 8),
        bits=(2, 3, 4, 5, 6, 8),
        train_bits=(2, 4),
        Ns=(128, 256, 512, 1024),
        seeds=seeds,
    )
    rng = np.random.default_rng(seed)
    R, Nn, B = len(ncfg.ranks), len(ncfg.Ns), len(ncfg.bits)
    r = np.array(ncfg.ranks, float)[:, None, None]
    N = np.array(ncfg.Ns, float)[None, :, None]
    b = np.array(ncfg.bits, float)
    mult = lambda shape: np.exp(noise * rng.normal(size=shape))  # noqa: E731
    E = 0.05 * r**rate_r * (N / 128) ** rate_N * mult((R, Nn, seeds))
    Q = 2.0 * r[..., None] ** quant_rank * factor**-b * mult((R, Nn, seeds, B))
    fp = {
        "excess_latent": E,
        "ptq_qexcess": Q,
        "ptq_excess": E[..., None] + Q,
        "excess_latent_mc": E * (1 + 0.01 * rng.normal(size=E.shape)),
        "excess_latent_se": 0.01 * E,
    }
    dep = np.stack(
        [E + Q[..., list(ncfg.bits).index(tb)] for tb in ncfg.train_bits], axis=1
    )  # (R, Bt, N, S)
    return {"fp": fp, "ste_rtn": {"excess_deployed": dep}}, ncfg


def test_nonlinear_claims_come_out_either_way_on_synthetic_grids():
    from simulations.audit_nonlinear import nonlinear_fits_and_verdicts

    nl, ncfg = _synthetic_nl(-0.5, 0.5, 4.0, quant_rank=1.0)
    fits, vs = nonlinear_fits_and_verdicts(nl, ncfg, _acfg(), {"exponent_N": {"value": -1.16}})
    assert fits["exponent_N"]["value"] == pytest.approx(-0.5, abs=0.03)
    assert fits["exponent_N"]["linear"] == -1.16
    assert fits["per_bit_factor"]["value"] == pytest.approx(4.0, rel=0.03)
    assert _by_id(vs, "s001.thm3_1.gen_term").verdict == "holds"
    assert _by_id(vs, "s001.thm3_1.quant_term").verdict == "holds"
    assert _by_id(vs, "s001.s5_1.exponential_precision").verdict == "holds"
    # exponent −½ is not least squares' −1
    assert _by_id(vs, "toolkit.ts.estimation_rate").verdict == "fails"
    # STE deployed = fp excess + PTQ's quantization term: ratio to PTQ is exactly 1
    assert fits["deployed_over_ptq"]["ste_rtn"][2]["median"] == pytest.approx(1.0, rel=1e-9)
    nl, ncfg = _synthetic_nl(-1.0, 0.5, 2.0, seed=1)
    fits, vs = nonlinear_fits_and_verdicts(nl, ncfg, _acfg(), None)
    assert fits["exponent_N"]["value"] == pytest.approx(-1.0, abs=0.03)
    assert fits["per_bit_factor"]["value"] == pytest.approx(2.0, rel=0.03)
    assert _by_id(vs, "s001.thm3_1.gen_term").verdict == "holds"  # faster than the bound
    assert _by_id(vs, "toolkit.ts.estimation_rate").verdict == "holds"
    assert _by_id(vs, "s001.thm3_1.quant_term").verdict == "fails"
    assert _by_id(vs, "s001.s5_1.exponential_precision").verdict == "fails"
    assert _by_id(vs, "s001.s4_2.degradation_linear_rank").verdict == "fails"
    for v in vs:
        assert v.claim.startswith("off the linear case") and v.claim_id
        assert "nonlinear one-hidden-layer student" in v.conditions


def test_audit_end_to_end_tiny(tmp_path, monkeypatch):
    import simulations.audit as audit

    tiny = dict(
        m=4,
        n=6,
        r_star=1,
        ranks=(1, 2, 4),
        bits=(2, 4, 8),
        Ns=(16, 32, 64),
        seeds=3,
        steps=20,
        conventions=("one", "alpha_r"),
        arms=("fp", "ste_rtn", "additive"),
    )
    monkeypatch.setitem(audit._PRESETS, "quick", tiny)
    tiny_nl = dict(
        n=4,
        h=5,
        m=2,
        r_star=1,
        ranks=(1, 2, 4),
        bits=(2, 4, 6),
        train_bits=(2,),
        Ns=(16, 64),
        seeds=3,
        steps=20,
        n_test=64,
    )
    monkeypatch.setitem(audit._NL_PRESETS, "quick", tiny_nl)
    out = tmp_path / "audit.json"
    rc = audit.main(["--quick", "--out", str(out), "--figures", str(tmp_path / "figs")])
    assert rc == 0
    data = json.loads(out.read_text())
    verdicts = load_verdicts(out)  # checks required keys and verdict values
    assert len(verdicts) >= 12
    from quantbounds.verdicts.registry_check import check_results_file

    check_results_file(out)  # every verdict names a registry claim with the right kind
    assert data["family"]["tests"] > 0 and all("raw_verdict" in v for v in verdicts)
    assert data["config"]["dtype"] == "float64"
    for key in ("exponent_N", "exponent_r", "per_bit_factor"):
        f = data["fits"][key]
        assert isinstance(f["value"], float) and len(f["ci"]) == 2 and f["ci"][0] <= f["ci"][1]
    assert data["config"]["teacher_student"]["ranks"] == [1, 2, 4]
    for fig in data["figures"]:
        assert (tmp_path / "figs" / fig.split("/")[-1]).stat().st_size > 1000
    assert any(f.endswith("audit_nonlinear.png") for f in data["figures"])
    nl = data["fits"]["nonlinear"]
    for key in ("exponent_N", "exponent_r", "per_bit_factor"):
        assert isinstance(nl[key]["value"], float) and len(nl[key]["ci"]) == 2
    assert data["config"]["nonlinear"]["ranks"] == [1, 2, 4]
    off = [v for v in verdicts if v["claim"].startswith("off the linear case")]
    assert len(off) >= 4 and all(
        "nonlinear one-hidden-layer student" in v["conditions"] for v in off
    )


def test_nonlinear_convergence_record_is_summarised():
    from simulations.audit_nonlinear import convergence_fits

    e0 = np.ones((2, 3, 4))
    e = e0 * np.array([1.08, 1.2, 1.59])[None, :, None]  # training on raised the excess 8–59 %
    fp = {"excess_latent": e, "excess_latent_adam": e0, "converged": np.ones((2, 3, 4)),
          "train_loss": np.zeros((2, 3, 4)), "train_loss_adam": np.full((2, 3, 4), 0.054)}
    out = convergence_fits(fp)
    assert out["converged_share"] == 1.0 and out["excess_change_max"] == pytest.approx(0.59)
    assert out["excess_change_median_by_N"] == pytest.approx([0.08, 0.2, 0.59])
    assert out["train_loss_drop_max"] == pytest.approx(0.054)
    assert convergence_fits({"excess_latent": e}) == {}  # an early-stopped grid has no record


def test_nonlinear_training_readings_make_verdicts_conditional():
    """The grid's early-stopped reading (fp_adam) judged beside the converged fits: a claim that
    holds on one and fails on the other is conditional with both readings named."""
    from simulations.audit_nonlinear import TRAINING_READINGS, nonlinear_fits_and_verdicts

    nl, ncfg = _synthetic_nl(-0.5, 0.5, 2.0, seed=5)       # converged: factor 2 per bit
    early, _ = _synthetic_nl(-0.5, 0.5, 4.0, seed=6)       # early-stopped: factor 4 per bit
    nl["fp_adam"] = early["fp"]
    fits, vs = nonlinear_fits_and_verdicts(nl, ncfg, _acfg(), None)
    v = _by_id(vs, "s001.s5_1.exponential_precision")
    assert v.verdict == "conditional"
    assert v.details["readings"] == {TRAINING_READINGS[0]: "fails", TRAINING_READINGS[1]: "holds"}
    assert v.details["early_stopped"]["verdict"] == "holds"
    assert fits["early_stopped"]["per_bit_factor"]["value"] == pytest.approx(4.0, rel=0.03)
    # a claim both readings agree on keeps its verdict
    assert _by_id(vs, "s001.thm3_1.gen_term").verdict == "holds"
