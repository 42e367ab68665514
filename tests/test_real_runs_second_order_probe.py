"""real_runs.second_order_probe: the pooled ratios by hand, the readings, a tiny end-to-end run
that resumes, and bad input."""

from __future__ import annotations

import json

import pytest

from real_runs import second_order_probe as S


def _rec(scheme, b, seed, *, Q, T, P1, P2, windows=(3, 2, 4)):
    """A mirror-carrying PTQ record with per-group Q̂, T̂, P₁ (lists over the groups)."""
    D = [q + t + p for q, t, p in zip(Q, T, P1)]  # ΔL(+) = Q + T + P₁ per group
    return {
        "run_id": f"{scheme}-{b}-{seed}", "ptq_of": f"run-{seed}", "ptq_scheme": scheme, "bits": b,
        "rank": 8, "seed": seed, "ptq_draw": 0, "group_windows": list(windows),
        "delta_loss": sum(D), "delta_loss_groups": D, "delta_loss_ci": [sum(D) - 1, sum(D) + 1],
        "pred_first_order": sum(P1), "first_order_groups": list(P1),
        "resid_first_order_ci": [sum(D) - sum(P1) - 1, sum(D) - sum(P1) + 1],
        "pred_plugin": P2,
        "second_order_measured": sum(Q), "second_order_measured_groups": list(Q),
        "second_order_measured_ci": [sum(Q) - 1e-3, sum(Q) + 1e-3],
        "third_order_measured": sum(T), "third_order_measured_groups": list(T),
    }


def test_summary_pools_adapters_group_by_group_and_reads_the_intervals():
    from quantbounds.verdicts.intervals import grouped_total

    # four adapters: Q̂ per group (3 groups of 3, 2, 4 windows), T̂ small, P₂ = 0.024 each
    # (each group's share close to its share of the windows, so the held-out spread is small)
    Qs = [[3.0e-3 * (1 + 0.01 * s), 2.05e-3, 4.0e-3 * (1 - 0.01 * s)] for s in range(4)]
    Ts = [[1e-6, -1e-6, 0.0], [0.0, 1e-6, -1e-6], [1e-6, 0.0, -1e-6], [0.0, 0.0, 0.0]]
    P1 = [1e-3, -2e-3, 5e-4]
    recs = [_rec("rtn_channel", 2, s, Q=Qs[s], T=Ts[s], P1=P1, P2=0.024) for s in range(4)]
    (row,) = S.summarize(recs)
    assert (row["scheme"], row["bits"], row["records"]) == ("rtn_channel", 2, 4)
    Qsum = sum(map(sum, Qs))
    assert row["second_order_measured"]["estimate"] == pytest.approx(Qsum)
    qt = grouped_total([sum(q[j] for q in Qs) for j in range(3)], [3, 2, 4])
    assert row["second_order_measured"]["ci"] == pytest.approx(qt["ci"])
    assert row["third_order"]["estimate"] == pytest.approx(sum(map(sum, Ts)))
    # P₂ ÷ Q̂, P₂ ÷ (ΔL − P₁) and Q̂ ÷ (ΔL − P₁) by hand (ΔL − P₁ = Q̂ + T̂ here)
    assert row["kfac_over_exact"]["ratio"] == pytest.approx(0.096 / Qsum)
    resid = Qsum + sum(map(sum, Ts))
    assert row["resid_first_order"] == pytest.approx(resid)
    assert row["kfac_over_resid"]["ratio"] == pytest.approx(0.096 / resid)
    assert row["exact_over_resid"]["ratio"] == pytest.approx(Qsum / resid)
    lo, hi = row["kfac_over_exact"]["ci"]
    assert lo < row["kfac_over_exact"]["ratio"] < hi
    # P₂ = 0.096 vs Q̂ ≈ 0.036 with these spreads: the curvature model is off, T is not resolved
    assert lo > 1 and "K-FAC over-predicts Q" in row["reading"]
    assert "third order" not in row["reading"]
    # records without mirror fields, and mixed-precision cells, are not probe cells
    assert S.summarize([{k: v for k, v in recs[0].items() if k != "second_order_measured"}]) == []


def test_reading_names_a_resolved_third_order_and_a_consistent_cell():
    row = {"kfac_over_exact": {"ratio": 1.0, "ci": [0.9, 1.1]},
           "third_order": {"estimate": 1e-3, "ci": [5e-4, 2e-3]}}
    assert S.reading(row) == "third order resolved"
    row["third_order"]["ci"] = [-1e-4, 2e-3]
    assert S.reading(row).startswith("consistent")
    # K-FAC short of Q while the training loss's exact Q_tr is not: the residual term
    row["kfac_over_exact"] = {"ratio": 0.7, "ci": [0.6, 0.8]}
    row["train_exact_over_exact"] = {"ratio": 1.04, "ci": [0.9, 1.2]}
    assert S.reading(row) == ("K-FAC under-predicts Q (P₂/Q = 0.70); the training loss's exact "
                              "Q_tr matches (Q_tr/Q = 1.04): K-FAC misses the Hessian's residual "
                              "term, not the data")
    row["train_exact_over_exact"] = {"ratio": 0.5, "ci": [0.4, 0.6]}
    assert "Q_tr/Q = 0.50: the training loss curves differently" in S.reading(row)
    row["hessian_moment_over_exact"] = {"ratio": 0.55, "ci": [0.45, 0.65]}
    assert "expected Q with the full Hessian is off (E/Q = 0.55)" in S.reading(row)
    row["hessian_moment_over_exact"] = {"ratio": 0.95, "ci": [0.8, 1.1]}
    assert "full Hessian is off" not in S.reading(row)


def test_bad_input_names_the_argument(tmp_path):
    with pytest.raises(ValueError, match="ranks"):
        S.ProbeConfig(ranks=())
    with pytest.raises(ValueError, match="bits"):
        S.ProbeConfig(bits=(2, 17))
    with pytest.raises(ValueError, match="scheme"):
        S.ProbeConfig(schemes=("rtn_tensor", "nope"))
    with pytest.raises(ValueError, match="sr_draws"):
        S.ProbeConfig(sr_draws=0)
    assert S.main(["--bits", "0", "--out", str(tmp_path / "x.json")]) == 2
    assert not (tmp_path / "x.json").exists()


def test_tiny_probe_runs_resumes_and_reproduces_its_own_cells(tmp_path, embedded_tiny_cache,
                                                               monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    from real_runs import finetune as F

    fast = dict(model="embedded", embedded="tiny", steps=4, batch_size=4, seq_len=32, n_train=16,
                grad_var_batches=2, noise_draws=2, eval_pairs=2, max_new_tokens=2,
                eval_tokens=300, device="cpu", curvature_windows=8, rank=4)
    toml = tmp_path / "sweep.toml"
    lines = ["[sweep]", 'name = "t"', "", "[defaults]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in fast.items()]
    lines += ["", "[[grid]]", "ptq = true", "ptq_eval_tokens = 150", "ptq_groups = 3",
              'arm = ["fp16"]']
    toml.write_text("\n".join(lines) + "\n")
    c = S.ProbeConfig(embedded="tiny", ranks=(4,), seeds=(0,), schemes=("rtn_tensor", "sr_tensor"),
                      bits=(2, 4), sr_draws=1, sweep_config=str(toml), reference=None,
                      records=str(tmp_path / "p.ptq.jsonl"), out=str(tmp_path / "p.json"),
                      cache_dir=str(embedded_tiny_cache))
    out = S.run_probe(c)
    assert [(r["scheme"], r["bits"]) for r in out["cells"]] == [
        ("rtn_tensor", 2), ("rtn_tensor", 4), ("sr_tensor", 2), ("sr_tensor", 4)]
    assert all("token_fisher_over_exact" in r and "seq_fisher_cross_over_exact" in r
               and "train_exact_over_exact" in r for r in out["cells"])
    saved = json.loads((tmp_path / "p.json").read_text())
    assert saved["cells"] == json.loads(json.dumps(out["cells"]))
    assert saved["embedded_model"] == "tiny"
    # the command it records reruns it: every path is named, whatever the defaults
    for flag in ("--sweep-config " + str(toml), "--records " + c.records, "--out " + c.out):
        assert flag in saved["command"]
    # a rerun measures nothing again, and its own records reproduce exactly
    monkeypatch.setattr(F, "run_finetune", lambda *a, **k: pytest.fail("re-ran a measured adapter"))
    again = S.run_probe(S.ProbeConfig(**{**c.__dict__, "reference": c.records}))
    assert again["cells"] == out["cells"]
    assert again["reproduced"]["cells"] == 4 and again["reproduced"]["max_abs_delta_loss_diff"] == 0


@pytest.mark.parametrize("toml,records", [
    ("real_runs/configs/embedded_chitchat.toml", "results/runs_chitchat.jsonl"),
    ("real_runs/configs/embedded.toml", "results/runs_chitchat_topic.jsonl"),
])
def test_the_probes_adapters_are_the_committed_sweeps_runs(toml, records):
    """The probe's adapter at (rank, seed) is that sweep's fp16 PTQ run (same run id), for each
    shipped sweep config, the model taken from the config unless --embedded names another."""
    from pathlib import Path

    from real_runs.embedded import SHIPPED
    from real_runs.sweep import load_config

    root = Path(__file__).resolve().parents[1]
    model = load_config(root / toml)["defaults"]["embedded"]
    if not (SHIPPED[model] / "SHA256SUMS").exists():
        pytest.skip(f"{model} weights not shipped in this checkout")
    pytest.importorskip("chitchat_dataset")
    ids = {json.loads(line)["run_id"] for line in (root / records).read_text().splitlines()
           if line.strip()}
    c = S.ProbeConfig(sweep_config=str(root / toml), reference=None)
    for rank in (4, 64):
        assert S.finetune_cfg(c, rank, 0).run_id in ids
    other = S.ProbeConfig(sweep_config=str(root / toml), reference=None,
                          embedded="chitchat" if model != "chitchat" else "chitchat-topic")
    assert S.finetune_cfg(other, 4, 0).run_id not in ids
