"""`quantbounds audit`: fit helpers against exact answers, the claims on synthetic grids whose
rates are known, and a tiny end-to-end run (the decision rules and the seed bootstrap are
tested in tests/verdicts/)."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from quantbounds.verdicts.results import load_verdicts
from quantbounds.verdicts import decisions
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


def _synthetic(rate_N, rate_r, factor, *, seeds=6, noise=0.05, seed=0):
    """A fake run_grid/run_gradvar result whose rates are known exactly (multiplicative noise)."""
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
    )
    rng = np.random.default_rng(seed)
    r = np.array(cfg.ranks, float)[:, None, None]
    N = np.array(cfg.Ns, float)[None, :, None]
    b = np.array(cfg.bits, float)
    mult = lambda shape: np.exp(noise * rng.normal(size=shape))  # noqa: E731
    E = 0.5 * r**rate_r * (N / 64) ** rate_N * mult((5, 5, seeds))
    Q = 2.0 * r[..., None] ** 0.3 * factor**-b * mult((5, 5, seeds, 5))
    fp = {"excess_latent": E, "ptq_qexcess": Q, "ptq_excess": E[..., None] + Q, "ptq_pred": Q}
    res = {"fp_one": fp}
    for arm in ("ste_rtn", "additive"):
        res[arm] = {"excess_deployed": np.moveaxis(E[..., None] + Q, -1, 1)}
    rr = np.array(cfg.ranks, float)[:, None, None]
    g = {
        "var_noise": rr * 4.0 ** -b[None, :, None] * mult((5, 5, seeds)),
        "var_batch": np.ones((5, 5, seeds)),
        "var_joint": 1 + rr * 4.0 ** -b[None, :, None] * mult((5, 5, seeds)),
        "loss": np.ones((5, 5, seeds)),
        "x_norm2": np.ones((5, 5, seeds)),
        "R": 2.0 * np.ones((5, 5, seeds)),
    }
    return res, {"additive": g}, cfg


def _verdict(vs, start):
    return next(v for v in vs if v.claim.startswith(start))


def test_claims_come_out_either_way_on_synthetic_grids():
    from simulations.audit_claims import fits_and_verdicts

    acfg = SimpleNamespace(n_boot=60, tol=0.1, grad_batch=32, grad_draws=64)
    # a world where the paper's rates are true: exponent −½ in N, +½ in r, factor 4 per bit
    res, gv, cfg = _synthetic(-0.5, 0.5, 4.0)
    fits, vs, _ = fits_and_verdicts(res, gv, cfg, acfg)
    assert fits["exponent_N"]["value"] == pytest.approx(-0.5, abs=0.03)
    assert _verdict(vs, "Thm 3.1 generalization term: excess risk ∝ √(r/N)").verdict == "holds"
    assert _verdict(vs, "Thm 3.1 generalization term: exponent in r").verdict == "holds"
    assert _verdict(vs, "gradient variance scales as").verdict == "holds"
    assert not any("worked example" in v.claim for v in vs)  # no seed has one (DESIGN.md §2)
    # a least-squares world: exponent −1 in N, +1 in r, factor 2 per bit
    res, gv, cfg = _synthetic(-1.0, 1.0, 2.0, seed=1)
    fits, vs, _ = fits_and_verdicts(res, gv, cfg, acfg)
    assert fits["exponent_N"]["value"] == pytest.approx(-1.0, abs=0.03)
    assert fits["per_bit_factor"]["value"] == pytest.approx(2.0, rel=0.03)
    assert _verdict(vs, "Thm 3.1 generalization term: excess risk ∝ √(r/N)").verdict == "fails"
    assert _verdict(vs, "Thm 3.1 quantization term").verdict == "fails"
    for v in vs:
        assert v.verdict in ("holds", "fails", "conditional")


def _synthetic_nl(rate_N, rate_r, factor, *, seeds=6, noise=0.05, seed=0):
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
    Q = 2.0 * r[..., None] ** 0.3 * factor**-b * mult((R, Nn, seeds, B))
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

    acfg = SimpleNamespace(n_boot=60, tol=0.1)
    nl, ncfg = _synthetic_nl(-0.5, 0.5, 4.0)
    fits, vs = nonlinear_fits_and_verdicts(nl, ncfg, acfg, {"exponent_N": {"value": -1.16}})
    assert fits["exponent_N"]["value"] == pytest.approx(-0.5, abs=0.03)
    assert fits["exponent_N"]["linear"] == -1.16
    assert fits["per_bit_factor"]["value"] == pytest.approx(4.0, rel=0.03)
    assert (
        _verdict(vs, "off the linear case: Thm 3.1 generalization term exponent in N").verdict
        == "holds"
    )
    assert (
        _verdict(vs, "off the linear case: Thm 3.1 generalization term exponent in r").verdict
        == "holds"
    )
    # (each CI is a nominal 95 % interval: on this seed the b ≥ 4 one just misses 4, so check the
    # estimate and that the verdict follows its own CI)
    v4 = _verdict(vs, "off the linear case: factor 4 per bit")
    assert v4.measured == pytest.approx(4.0, rel=0.01)
    assert v4.verdict == decisions.decide_interval(4.0, v4.ci)
    # rank exponent 0.3 of the quantization term: the O(r·4^{−b}) claim fails on it
    assert _verdict(vs, "off the linear case: Thm 3.1 quantization term").verdict == "fails"
    # STE deployed = fp excess + PTQ's quantization term: ratio to PTQ is exactly 1
    assert fits["deployed_over_ptq"]["ste_rtn"][2]["median"] == pytest.approx(1.0, rel=1e-9)
    nl, ncfg = _synthetic_nl(-1.0, 1.0, 2.0, seed=1)
    fits, vs = nonlinear_fits_and_verdicts(nl, ncfg, acfg, None)
    assert fits["exponent_N"]["value"] == pytest.approx(-1.0, abs=0.03)
    assert fits["per_bit_factor"]["value"] == pytest.approx(2.0, rel=0.03)
    assert (
        _verdict(vs, "off the linear case: Thm 3.1 generalization term exponent in N").verdict
        == "fails"
    )
    assert _verdict(vs, "off the linear case: factor 4 per bit").verdict == "fails"
    for v in vs:
        assert v.verdict in ("holds", "fails", "conditional")
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
