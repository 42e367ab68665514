"""real_runs.ptq_allocation: the per-seed paired difference and the pooled verdict by hand,
bad input, and the check end to end on the tiny model (resumable)."""

import json
import math

import numpy as np
import pytest

from real_runs.ptq_allocation import (
    PTQAllocationConfig,
    curvature_prediction,
    measured_sensitivity,
    pooled_difference,
    ptq_params,
    seed_difference,
    verdict,
)


def _rec(groups, windows, pattern=None, draw=0):
    r = {"ptq_scheme": "sr_tensor", "bits": 3, "ptq_draw": draw, "delta_loss": float(sum(groups)),
         "delta_loss_groups": list(groups), "group_windows": list(windows)}
    if pattern:
        r["ptq_pattern"] = pattern
    return r


def _cr1(u, n):
    u, n = np.asarray(u, float), np.asarray(n, float)
    k, tot = len(u), u.sum()
    return tot, math.sqrt(k / (k - 1) * ((u - n / n.sum() * tot) ** 2).sum())


def test_seed_difference_averages_draws_then_differences_group_by_group():
    w = [2, 1, 1]
    recs = [_rec([0.010, 0.004, 0.002], w), _rec([0.012, 0.006, 0.000], w, draw=1),
            _rec([0.006, 0.003, 0.001], w, "allocation"),
            _rec([0.008, 0.001, 0.003], w, "allocation", draw=1)]
    d = seed_difference(recs)
    u = [0.007 - 0.011, 0.002 - 0.005, 0.002 - 0.001]
    tot, se = _cr1(u, w)
    assert d["u"] == pytest.approx(u) and d["estimate"] == pytest.approx(tot)
    assert d["se"] == pytest.approx(se)
    assert d["cost_uniform"] == pytest.approx((0.016 + 0.018) / 2)
    assert "u_cv" not in d  # no first-order terms recorded: no control variate
    for r, p1 in zip(recs, ([0.001, 0, 0], [0.003, 0, 0], [0.002, 0, 0], [0.0, 0, 0])):
        r["first_order_groups"] = p1
    d = seed_difference(recs)
    assert d["u_cv"] == pytest.approx([u[0] - 0.001 + 0.002, u[1], u[2]])
    assert d["estimate_cv"] == pytest.approx(sum(d["u_cv"]))
    with pytest.raises(ValueError, match="allocation and uniform"):
        seed_difference(recs[:2])
    with pytest.raises(ValueError, match="disagree"):
        seed_difference(recs[:3] + [_rec([0.1, 0.1], [3, 1], "allocation")])


def _row(seed, u, w):
    tot, se = _cr1(u, w)
    return {"seed": seed, "u": list(u), "group_windows": list(w), "estimate": tot, "se": se,
            "ci": [tot - 2 * se, tot + 2 * se], "cost_uniform": 0.01, "cost_allocation": 0.01 + tot}


def test_verdict_pools_seeds_group_by_group_and_states_its_power():
    c = PTQAllocationConfig(seeds=(1, 2))
    w = [1, 1, 1, 1]
    rows = [_row(1, [-0.004, -0.006, -0.005, -0.004], w),
            _row(2, [-0.006, -0.005, -0.005, -0.005], w)]
    v = verdict(rows, c, predicted=0.02, fit_usable=True)
    tot, se = _cr1(np.mean([r["u"] for r in rows], 0), w)
    assert v.measured == pytest.approx(tot) and v.verdict == "holds"
    half = (v.ci[1] - v.ci[0]) / 2
    assert half == pytest.approx(se * 3.182446305284263, rel=1e-6)  # t_{0.975, 3}
    assert v.details["predicted_over_half_width"] == pytest.approx(0.02 / half)
    assert v.details["powered"] is True
    assert v.details["seed_t"]["estimate"] == pytest.approx(-0.02)
    # no spread between groups: no interval, no verdict
    flat = [_row(1, [-0.005] * 4, w), _row(2, [-0.005] * 4, w)]
    assert verdict(flat, c, predicted=0.02, fit_usable=True).verdict == "inconclusive"
    # a noisy null with a small prediction: inconclusive and said to be underpowered
    noisy = [_row(1, [0.01, -0.01, 0.004, -0.004], w), _row(2, [0.01, -0.012, 0.002, 0.0], w)]
    v = verdict(noisy, c, predicted=1e-4, fit_usable=True)
    assert v.verdict == "inconclusive" and v.details["powered"] is False
    assert "underpowered" in v.details["decision"]
    with pytest.raises(ValueError, match="different eval groups"):
        verdict([rows[0], _row(2, [0.0, 0.0, 0.0], [1, 1, 2])], c, predicted=0.0, fit_usable=True)


def test_curvature_prediction_is_the_mean_moment_prediction_of_each_choice():
    recs = [_rec([0.01], [1]), _rec([0.01], [1], draw=1), _rec([0.02], [1], "allocation")]
    for r, m in zip(recs, (0.002, 0.004, 0.005)):
        r["pred_moment"] = m
    assert curvature_prediction(recs) == pytest.approx(
        {"uniform": 0.003, "allocation": 0.005, "difference": 0.002})
    recs[0]["pred_moment"] = None
    assert curvature_prediction(recs) is None


def test_measured_sensitivity_is_the_pilot_layer_cost_and_pooling_is_by_group():
    from quantbounds.calib.allocator import LayerSpec

    layers = [LayerSpec(name="a", m=4, n=4), LayerSpec(name="b", m=4, n=4)]
    pil = [dict(_rec([0.01], [1]), layers={"a": {"pred_moment": 0.002}, "b": {"pred_moment": 0.0}}),
           dict(_rec([0.01], [1], draw=1), layers={"a": {"pred_moment": 0.004},
                                                    "b": {"pred_moment": 0.0}})]
    a, b = measured_sensitivity(layers, pil)
    assert a.sens() == pytest.approx(0.003) and 0 < b.sens() < 1e-200
    with pytest.raises(ValueError, match="uniform sr_tensor"):
        measured_sensitivity(layers, [dict(pil[0], ptq_pattern="allocation")])
    w = [1, 1, 1]
    rows = [_row(1, [0.001, 0.002, 0.0], w), _row(2, [0.003, 0.0, 0.001], w)]
    p = pooled_difference(rows)
    tot, _ = _cr1([0.002, 0.001, 0.0005], w)
    assert p["estimate"] == pytest.approx(tot) and p["per_seed"] == pytest.approx([0.003, 0.004])
    assert p["seed_t"]["estimate"] == pytest.approx(0.0035)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="bits_menu"):
        PTQAllocationConfig(bits=3, bits_menu=(2, 4))
    with pytest.raises(ValueError, match="2…15"):
        PTQAllocationConfig(bits=3, bits_menu=(1, 3))
    with pytest.raises(ValueError, match="pilot_seed"):
        PTQAllocationConfig(pilot_seed=1, seeds=(1, 2))
    with pytest.raises(ValueError, match="draws"):
        PTQAllocationConfig(draws=0)


def test_default_files_are_per_model():
    a = PTQAllocationConfig(embedded="chitchat-topic")
    assert (a.records, a.out) == ("results/runs_allocation_check_ptq_chitchat_topic.jsonl",
                                  "results/allocation_check_ptq_chitchat_topic.json")
    b = PTQAllocationConfig(embedded="chitchat", out="x.json")
    assert (b.records, b.out) == ("results/runs_allocation_check_ptq_chitchat.jsonl", "x.json")


def test_constants_come_from_a_usable_sr_fit_only(tmp_path):
    p = tmp_path / "cal.json"
    fit = {"C2": {"value": 2.0}, "per_bit_factor": {"value": 8.0}, "exponent_r": {"value": -1.0},
           "usable": True, "why": "held-out R² = 0.9"}
    p.write_text(json.dumps({"fits": {"ptq": {"sr_tensor": fit}}}))
    params, notes, usable = ptq_params(str(p))
    assert usable is True and (params["C2"], params["per_bit_factor"], params["exponent_r"]) == (
        2.0, 8.0, -1.0)
    p.write_text(json.dumps({"fits": {"ptq": {"sr_tensor": {**fit, "usable": False}}}}))
    params, notes, usable = ptq_params(str(p))
    assert usable is False and params["per_bit_factor"] == 4.0 and "not usable" in notes[0]
    assert ptq_params(str(tmp_path / "missing.json"))[2] is None


@pytest.mark.torch
def test_check_end_to_end_on_the_tiny_model_and_resumes(tmp_path, embedded_tiny_cache):
    pytest.importorskip("torch")
    from real_runs import ptq_allocation as pa

    c = PTQAllocationConfig(embedded="tiny", steps=3, n_train=8, eval_tokens=300, draws=2,
                            groups=4, seeds=(1,), pilot_seed=0, calibration=None,
                            cache_dir=str(embedded_tiny_cache), records=str(tmp_path / "r.jsonl"),
                            out=str(tmp_path / "out.json"))
    out = pa.run_check(c)
    (v,) = out["verdicts"]
    assert v["claim_id"] == "s000.summary.joint_allocation"
    assert out["memory_bytes"]["allocation"] <= out["budget_bytes"]
    ptq = [json.loads(x) for x in (tmp_path / "r.ptq.jsonl").read_text().splitlines()]
    n_pat = len({p["ptq_pattern"] for p in ptq if "ptq_pattern" in p})
    assert sum("ptq_pattern" in p for p in ptq) == 2 * n_pat and len(ptq) == 2 + 2 * n_pat
    assert all(p["layer_bits"] == out["allocation"] for p in ptq
               if p.get("ptq_pattern") == "allocation")
    (row,) = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert row["estimate"] == pytest.approx(seed_difference(ptq)["estimate"])
    assert v["measured"] == pytest.approx(row["estimate"])
    assert v["details"]["curvature_prediction"] == pytest.approx(curvature_prediction(ptq))
    k = out["measured_sensitivity_allocation"]  # a third choice only when it differs
    assert k is None or (k["memory_bytes"] <= out["budget_bytes"]
                         and len({p.get("ptq_pattern") for p in ptq}) == 3)
    # a rerun measures nothing new
    again = pa.run_check(c)
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 1
    assert again["verdicts"][0]["measured"] == v["measured"]


@pytest.mark.parametrize("module", ["real_runs.ptq_allocation", "real_runs.allocation_check"])
def test_a_bad_integer_list_exits_2_naming_the_flag(module, capsys):
    import importlib

    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exc:
        main(["--seeds", "0,x"])
    assert exc.value.code == 2 and "--seeds" in capsys.readouterr().err
