"""real_runs.testbed_report on hand-built records: gains over seeds, PTQ cost in paired se."""

import math

import pytest
from scipy import stats

from real_runs.testbed_report import (
    adapter_cost_rows,
    domain_shift_rows,
    finetune_rows,
    ptq_power_rows,
    two_bit_power,
)


def _run(seed, gain, rank=8, n=200):
    return {"arm": "fp16", "bits": 16, "n_train": n, "rank": rank, "seed": seed,
            "finetune_gain": gain, "finetune_gain_ci": [gain - 0.001, gain + 0.001],
            "eval_loss": 5.0 - gain, "f1": 0.05, "f1_ci": [0.04, 0.06], "eval_tokens": 24000,
            "eval_pairs_scored": 500}


def test_gain_is_a_t_interval_over_seeds():
    (row,) = finetune_rows([_run(0, 0.01), _run(1, 0.03), _run(2, 0.02)])
    g = row["gain"]
    se = 0.01 / math.sqrt(3)
    assert g["estimate"] == pytest.approx(0.02) and g["se"] == pytest.approx(se)
    assert g["ci"] == pytest.approx([0.02 - stats.t.ppf(0.975, 2) * se,
                                     0.02 + stats.t.ppf(0.975, 2) * se])
    assert row["seeds"] == [0, 1, 2] and row["eval_tokens"] == 24000


def test_runs_without_a_measured_gain_say_none():
    r = _run(0, 0.0)
    del r["finetune_gain"]
    (row,) = finetune_rows([r])
    assert row["gain"] is None and row["gain_per_run"] == []


def test_domain_shift_is_base_loss_minus_pretraining_validation_loss():
    """shift = mean eval_loss_base (unquantized base only) − the model's pretraining
    validation loss; best_gain is the largest mean fp16 gain; no info file, no shift."""
    runs = [{**_run(s, g, n=n), "embedded_model": "m", "dataset": "d", "base_quant": "none",
             "eval_loss_base": 5.2 + 0.001 * s}
            for s, g, n in ((0, 0.01, 200), (1, 0.03, 200), (0, 0.05, 600))]
    nf4 = {**_run(0, 0.0), "embedded_model": "m", "dataset": "d", "base_quant": "nf4",
           "eval_loss_base": 9.0}
    (row,) = domain_shift_rows(runs + [nf4], info_of=lambda n: {"pretrain_valid_loss_fp32": 5.0})
    assert row["runs"] == 3 and row["base_loss_heldout"] == pytest.approx(5.2 + 0.001 / 3)
    assert row["shift"] == pytest.approx(0.2 + 0.001 / 3)
    assert row["best_gain"]["n_train"] == 600 and row["best_gain"]["estimate"] == pytest.approx(0.05)
    (none,) = domain_shift_rows(runs, info_of=lambda n: None)
    assert none["shift"] is None and none["pretrain_valid_loss"] is None


def _ptq(rank, dl, half, bits=2, scheme="rtn_tensor"):
    return {"ptq_scheme": scheme, "bits": bits, "rank": rank, "delta_loss": dl,
            "delta_loss_ci": [dl - half, dl + half]}


def test_two_bit_power_in_paired_standard_errors():
    z = 1.959963984540054
    rows = ptq_power_rows([_ptq(4, 0.02, 0.002 * z), _ptq(8, 0.02, 0.001 * z),
                           _ptq(8, 0.03, 0.001 * z), _ptq(4, 0.001, 0.001, bits=4)])
    at = {(r["rank"], r["bits"]): r for r in rows}
    assert at[(4, 2)]["z_min"] == pytest.approx(10.0)
    assert at[(8, 2)]["z_min"] == pytest.approx(20.0) and at[(8, 2)]["n_records"] == 2
    p = two_bit_power(rows)
    assert p["met_at_every_rank"] and p["z_min_by_rank"] == pytest.approx({4: 10.0, 8: 20.0})
    assert not two_bit_power(rows, need=10.5)["met_at_every_rank"]
    # a negative cost (PTQ lowered the loss) never meets the target, though it is resolved
    neg = two_bit_power(ptq_power_rows([_ptq(4, -0.02, 0.001)]))
    assert not neg["met_at_every_rank"] and neg["resolved_at_every_rank"]


def _grp(rank, of, groups, windows, scheme="sr_tensor", draw=0):
    return {"ptq_scheme": scheme, "bits": 2, "rank": rank, "ptq_of": of, "ptq_draw": draw,
            "delta_loss": float(sum(groups)), "delta_loss_ci": [0.0, 0.0],
            "delta_loss_groups": list(groups), "group_windows": list(windows)}


def test_adapter_cost_averages_draws_then_pools_adapters_group_by_group():
    """By hand: CR1 on the draw-averaged (then adapter-averaged) group contributions."""
    w = [1, 2, 1]
    recs = [_grp(8, "a", [0.01, 0.03, 0.00], w), _grp(8, "a", [0.03, 0.01, 0.02], w, draw=1),
            _grp(8, "b", [0.02, 0.04, 0.01], w)]
    (row,) = adapter_cost_rows(recs)
    assert row["adapters"] == 2 and row["draws"] == [1, 2] and row["groups"] == 3
    u = [(0.02 + 0.02) / 2, (0.02 + 0.04) / 2, (0.01 + 0.01) / 2]  # a: draws averaged, then b
    total, n = sum(u), [1, 2, 1]
    se = math.sqrt(3 / 2 * sum((uk - nk / 4 * total) ** 2 for uk, nk in zip(u, n)))
    assert row["cost"]["estimate"] == pytest.approx(total)
    assert row["cost"]["se"] == pytest.approx(se)
    assert row["z_paired"] == pytest.approx(total / se)
    ua = [0.02, 0.02, 0.01]
    sea = math.sqrt(3 / 2 * sum((x - nk / 4 * 0.05) ** 2 for x, nk in zip(ua, n)))
    ub = [0.02, 0.04, 0.01]
    seb = math.sqrt(3 / 2 * sum((x - nk / 4 * 0.07) ** 2 for x, nk in zip(ub, n)))
    assert row["z_adapter_min"] == pytest.approx(min(0.05 / sea, 0.07 / seb))
    st = row["seed_t"]
    assert st["estimate"] == pytest.approx(0.06) and st["se"] == pytest.approx(0.01)
    assert row["z_seed_t"] == pytest.approx(6.0)


def test_two_bit_power_is_judged_on_the_pooled_cost_when_given():
    w = [1, 1, 1, 1]
    recs = [_grp(4, "a", [0.010, 0.011, 0.009, 0.010], w),
            _grp(8, "b", [0.010, 0.030, -0.010, 0.010], w)]
    costs = adapter_cost_rows(recs)
    p = two_bit_power(ptq_power_rows(recs), scheme="sr_tensor", costs=costs)
    z = {c["rank"]: c["z_paired"] for c in costs}
    assert p["z_by_rank"] == pytest.approx(z) and z[4] > 10 > z[8]
    assert not p["met_at_every_rank"]
    assert two_bit_power(ptq_power_rows(recs[:1]), scheme="sr_tensor",
                         costs=adapter_cost_rows(recs[:1]))["met_at_every_rank"]
    # records without per-group contributions (an older file) give no cost rows
    old = dict(recs[0])
    del old["delta_loss_groups"]
    assert adapter_cost_rows([old]) == []


def test_sr_cost_with_the_first_order_control_variate_by_hand():
    """z_cv: the pooled cost of D − P₁ group by group (SR only); not there without P₁ groups
    or for RTN; two_bit_power judges SR on it (same expected cost, E[P₁] = 0) and keeps the
    plain pooled cost beside it."""
    w = [1, 2, 1]
    a = {**_grp(8, "a", [0.01, 0.03, 0.00], w), "first_order_groups": [-0.005, 0.01, -0.01]}
    b = {**_grp(8, "b", [0.02, 0.04, 0.01], w), "first_order_groups": [0.004, 0.02, 0.0]}
    (row,) = adapter_cost_rows([a, b])
    u = [((0.01 + 0.005) + (0.02 - 0.004)) / 2, ((0.03 - 0.01) + (0.04 - 0.02)) / 2,
         ((0.00 + 0.01) + 0.01) / 2]
    total = sum(u)
    se = math.sqrt(3 / 2 * sum((uk - nk / 4 * total) ** 2 for uk, nk in zip(u, w)))
    assert row["cost_cv"]["estimate"] == pytest.approx(total)
    assert row["z_cv"] == pytest.approx(total / se)
    p = two_bit_power(ptq_power_rows([a, b]), scheme="sr_tensor", costs=[row])
    assert p["z_cv_by_rank"] == {8: pytest.approx(total / se)}
    assert p["z_by_rank"] == {8: pytest.approx(row["z_paired"])}
    assert p["judged_on"].startswith("z_cv_by_rank")
    # the target follows z_cv, not the plain z: a need between the two flips it
    lo, hi = sorted([total / se, row["z_paired"]])
    need = (lo + hi) / 2
    assert two_bit_power(ptq_power_rows([a, b]), scheme="sr_tensor", costs=[row],
                         need=need)["met_at_every_rank"] is (total / se >= need)
    # a rank without the control variate: judged on the plain cost at every rank
    plain = {k: v for k, v in row.items() if k not in ("z_cv", "cost_cv")}
    q = two_bit_power(ptq_power_rows([a, b]), scheme="sr_tensor",
                      costs=[plain, {**row, "rank": 16}])
    assert q["judged_on"].startswith("z_by_rank") and q["z_cv_by_rank"] == {16: row["z_cv"]}
    rtn = [{**a, "ptq_scheme": "rtn_tensor"}, {**b, "ptq_scheme": "rtn_tensor"}]
    assert "z_cv" not in adapter_cost_rows(rtn)[0]
    assert "z_cv" not in adapter_cost_rows([_grp(8, "a", [0.01, 0.03, 0.00], w)])[0]


def test_main_reports_another_sweeps_domain_shift_beside_its_own(tmp_path, monkeypatch):
    """--shift-also: the other records' models get domain-shift rows (marked by source), and
    nothing else of theirs enters the report; an empty other file is a clear error."""
    import json
    from types import SimpleNamespace

    from real_runs import testbed_report as T

    def runs(model, base):
        return [{**_run(s, 0.01 * (s + 1)), "embedded_model": model, "dataset": "chitchat",
                 "base_quant": "none", "eval_loss_base": base} for s in range(3)]

    files = {str(tmp_path / "new.jsonl"): runs("chitchat-topic", 5.0),
             str(tmp_path / "old.jsonl"): runs("chitchat", 5.27),
             str(tmp_path / "empty.jsonl"): []}
    monkeypatch.setattr(T, "read_records", lambda f: SimpleNamespace(records=files[str(f)]))
    out = tmp_path / "testbed.json"
    assert T.main([str(tmp_path / "new.jsonl"), "--out", str(out),
                   "--shift-also", str(tmp_path / "old.jsonl")]) == 0
    t = json.loads(out.read_text())
    assert [(d["embedded_model"], d.get("source")) for d in t["domain_shift"]] == [
        ("chitchat-topic", None), ("chitchat", "--shift-also")]
    assert t["n_runs"] == 3 and len(t["finetune"]) == 1  # the other file's runs are not pooled
    # each shift is against its own shipped model's pretraining validation loss
    from real_runs.embedded import SHIPPED
    for d in t["domain_shift"]:
        info = json.loads((SHIPPED[d["embedded_model"]] / "embedded_info.json").read_text())
        assert d["shift"] == pytest.approx(d["base_loss_heldout"] - info["pretrain_valid_loss_fp32"])
    assert T.main([str(tmp_path / "new.jsonl"), "--shift-also", str(tmp_path / "empty.jsonl")]) == 2
