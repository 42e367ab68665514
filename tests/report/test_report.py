"""`quantbounds report`: partial inputs, tables, SYNTHETIC labels, figures (incl. the
nine-panel figure from synthetic records)."""

from __future__ import annotations

import json

import pytest

from quantbounds.cli.report import main
from quantbounds.report.report import build_report, verdict_table
from quantbounds.verdicts.results import Verdict, write_json_atomic


def _verdict(v="holds", claim="a | claim"):
    return Verdict(
        claim=claim,
        verdict=v,
        predicted=1.0,
        measured=1.01,
        ci=[0.99, 1.03],
        conditions="x",
        source="seed 001",
    ).to_dict()


def test_report_with_every_part_missing_names_the_commands(tmp_path):
    out, missing = build_report(
        results_dir=tmp_path / "r", figures_dir=tmp_path / "f", out=tmp_path / "R.md"
    )
    text = out.read_text()
    assert missing == ["validation", "audit", "calibration"]
    for cmd in ("quantbounds validate", "quantbounds audit", "quantbounds calibrate runs.jsonl"):
        assert cmd in text
    assert "no PNG under" in text


def test_report_partial_inputs_counts_and_escaping(tmp_path):
    r = tmp_path / "results"
    write_json_atomic(
        r / "validation.json", {"verdicts": [_verdict(), _verdict("fails"), _verdict("fails")]}
    )
    (r / "audit.json").write_text("{not json")
    fig = tmp_path / "figures"
    fig.mkdir()
    (fig / "synthetic_calibration_analysis.png").write_bytes(b"\x89PNG")
    out, missing = build_report(results_dir=r, figures_dir=fig, out=r / "REPORT.md")
    text = out.read_text()
    assert missing == ["audit", "calibration"]
    assert "| validation | 1 | 2 | 0 | 0 |" in text
    assert "unreadable" in text and "quantbounds audit" in text
    assert "a \\| claim" in text  # pipes escaped inside table cells
    assert "SYNTHETIC — synthetic calibration analysis" in text
    assert "](../figures/synthetic_calibration_analysis.png)" in text  # relative to the report


def test_verdict_table_shape():
    lines = verdict_table([_verdict("conditional")])
    assert len(lines) == 3 and lines[2].count(" | ") == 5 and "conditional" in lines[2]


@pytest.mark.slow
def test_end_to_end_synthetic_calibration_figures_and_report(tmp_path):
    """calibrate (SYNTHETIC) → figures → report: the report flags SYNTHETIC and holds the fits."""
    from quantbounds.cli.calibrate import main as calibrate_main
    from quantbounds.calib.records import append_record
    from quantbounds.calib.synthetic import synthetic_records

    recs = synthetic_records(
        seed=0, ranks=(2, 8, 32), bits=(2, 4, 8), n_trains=(500, 2000), seeds=(0, 1, 2)
    )
    path = tmp_path / "runs.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in recs[:-1]))
    append_record(path, recs[-1])
    r, f = tmp_path / "results", tmp_path / "figures"
    assert (
        calibrate_main(
            [str(path), "--n-boot", "50", "--out", str(r / "calibration.json"), "--figures", str(f)]
        )
        == 0
    )
    pngs = sorted(p.name for p in f.glob("*.png"))
    assert pngs == ["synthetic_additive_vs_real.png", "synthetic_calibration_analysis.png"]
    assert main(["--results", str(r), "--figures", str(f), "--no-readme"]) == 0
    text = (r / "REPORT.md").read_text()
    assert "**SYNTHETIC**" in text and "| calibration (SYNTHETIC) |" in text
    assert "| per_bit_factor |" in text and "leave-one-configuration-out R²" in text
    assert "calibrated balanced" in text


def test_modules_import_without_torch_jax_or_matplotlib():
    """No import-time work: importing calib's modules loads neither torch, jax nor matplotlib."""
    import subprocess
    import sys

    code = (
        "import sys, quantbounds.calib.calibration, quantbounds.calib.allocator, "
        "quantbounds.report.report, quantbounds.report.plots, quantbounds.calib.synthetic, "
        "quantbounds.calib.pairing, quantbounds.verdicts.claims, "
        "quantbounds.cli.calibrate; "
        "print([m for m in ('torch', 'jax', 'matplotlib') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_report_shows_the_testbed_and_the_ptq_prediction(tmp_path):
    """testbed.json and ptq_prediction.json (written by real_runs.testbed_report / ptq_report)
    become their own sections, numbers taken from the files; a one-seed row has no interval."""
    r = tmp_path / "results"
    write_json_atomic(r / "testbed.json", {
        "source": "runs.jsonl", "n_runs": 2, "n_ptq_records": 1,
        "finetune": [{"arm": "fp16", "bits": 16, "n_train": 600, "rank": 8, "seeds": [0, 1, 2],
                      "gain": {"estimate": 0.0123, "ci": [0.001, 0.0236]},
                      "eval_loss": {"estimate": 5.25}, "f1": {"estimate": 0.041}},
                     {"arm": "adapter_rtn", "bits": 2, "n_train": 200, "rank": 8, "seeds": [0],
                      "gain": {"estimate": 0.0009, "ci": [float("nan"), float("nan")]},
                      "eval_loss": {"estimate": 5.27}, "f1": {"estimate": 0.038}}],
        "domain_shift": [{"embedded_model": "chitchat", "dataset": "chitchat",
                          "base_loss_heldout": 5.27, "pretrain_valid_loss": 5.31,
                          "shift": -0.04, "best_gain": {"estimate": 0.002, "n_train": 600,
                                                        "rank": 8}},
                         {"embedded_model": "other", "dataset": "chitchat",
                          "source": "--shift-also", "base_loss_heldout": 5.0,
                          "pretrain_valid_loss": 4.75, "shift": 0.25}],
        "two_bit_power": {"sr_tensor": {"z_min_by_rank": {"4": 4.4, "8": 11.5},
                                        "met_at_every_rank": False}}})
    write_json_atomic(r / "ptq_prediction.json", {
        "source": "runs.ptq.jsonl", "n_records": 3,
        "pooled_over_rank": [{"scheme": "sr_tensor", "bits": 2, "n_records": 3,
                              "measured_mean": 0.0183,
                              "second": {"ratio": 0.7, "ci": [0.45, 0.95]},
                              "first+2nd": {"ratio": 0.69, "ci": None}, "moment": None}],
        "agreement_R2_0": {"all": {"n": 3, "second": 0.79, "first+2nd": 0.84, "moment": None}}})
    out, _ = build_report(results_dir=r, figures_dir=tmp_path / "f", out=r / "REPORT.md")
    text = out.read_text()
    assert "| fp16 | 16 | 600 | 8 | 3 | 0.0123 [0.001, 0.0236] | 5.25 | 0.041 |" in text
    assert "| adapter_rtn | 2 | 200 | 8 | 1 | 0.0009 (one seed) |" in text
    assert "| sr_tensor | 4.4 | 11.5 | ΔL | False |" in text
    assert ("held-out dialogues 5.27 − its pretraining validation loss 5.31 = -0.04 nats per "
            "token (≤ 0: no harder") in text and "gain 0.002 at N = 600, r = 8" in text
    assert ("for `other` on `chitchat`: the base model's loss on the held-out dialogues 5 − its "
            "pretraining validation loss 4.75 = 0.25 nats per token (positive: a shift) — from "
            "another sweep's records, for comparison.") in text
    assert "| sr_tensor | 2 | 3 | 0.0183 | 0.7 [0.45, 0.95] | 0.69 | — |" in text
    assert "| all | 3 | 0.79 | 0.84 | — |" in text


def test_report_shows_the_pooled_two_bit_cost_when_the_testbed_has_it(tmp_path):
    r = tmp_path / "results"
    write_json_atomic(r / "testbed.json", {
        "source": "runs.jsonl", "n_runs": 1, "n_ptq_records": 2, "finetune": [],
        "two_bit_power": {"sr_tensor": {"z_min_by_rank": {"4": 3.0}, "z_by_rank": {"4": 12.5},
                                        "z_adapter_min_by_rank": {"4": 8.25},
                                        "met_at_every_rank": True}}})
    out, _ = build_report(results_dir=r, figures_dir=tmp_path / "f", out=r / "REPORT.md")
    text = out.read_text()
    assert "| sr_tensor | 12.5 (8.25) | ΔL | True |" in text and "pooled over its trained" in text
    # no control variate in the file: the text says what every row is judged on
    assert "judged on its plain ΔL" in text and "judged on ΔL − P₁" not in text
    # judged on the control variate: that row first, the plain pooled cost beside it
    write_json_atomic(r / "testbed.json", {
        "source": "runs.jsonl", "n_runs": 1, "n_ptq_records": 2, "finetune": [],
        "two_bit_power": {"sr_tensor": {"z_min_by_rank": {"4": 3.0}, "z_by_rank": {"4": 9.5},
                                        "z_cv_by_rank": {"4": 14.0},
                                        "z_adapter_min_by_rank": {"4": 8.25},
                                        "judged_on": "z_cv_by_rank: ...",
                                        "met_at_every_rank": True}}})
    out, _ = build_report(results_dir=r, figures_dir=tmp_path / "f", out=r / "REPORT.md")
    text = out.read_text()
    assert "| sr_tensor | 14 (8.25) | ΔL − P₁ | True |" in text
    assert "Unbiased SR is judged on ΔL − P₁" in text and "judged on its plain ΔL" not in text
    assert "| sr_tensor (plain ΔL, beside) | 9.5 | ΔL | — |" in text


def test_report_shows_the_second_order_probe(tmp_path):
    """second_order_probe.json (real_runs.second_order_probe) becomes its own section, numbers
    from the file; no file, no section."""
    r = tmp_path / "results"
    out, _ = build_report(results_dir=r, figures_dir=tmp_path / "f", out=r / "REPORT.md")
    assert "mirror" not in out.read_text()
    write_json_atomic(r / "second_order_probe.json", {
        "command": "python -m real_runs.second_order_probe",
        "cells": [{"scheme": "rtn_channel", "bits": 2, "records": 5,
                   "kfac_over_exact": {"ratio": 0.81, "ci": [0.74, 0.88]},
                   "kfac_over_resid": {"ratio": 0.78, "ci": [0.7, 0.86]},
                   "token_fisher_over_exact": {"ratio": 0.9, "ci": [0.8, 1.0]},
                   "seq_fisher_over_exact": {"ratio": 0.95, "ci": None},
                   "train_exact_over_exact": {"ratio": 1.02, "ci": None},
                   "hessian_moment_over_exact": {"ratio": 1.01, "ci": None},
                   "exact_over_resid": {"ratio": 0.96, "ci": None},
                   "third_order": {"estimate": 0.0001, "ci": [5e-05, 0.00015]},
                   "reading": "K-FAC under-predicts Q (P₂/Q = 0.81); third order resolved"}],
        "reproduced": {"cells": 85, "max_abs_delta_loss_diff": 2e-07,
                       "median_rel_delta_loss_diff": 1e-05}})
    out, _ = build_report(results_dir=r, figures_dir=tmp_path / "f", out=r / "REPORT.md")
    text = out.read_text()
    assert ("| rtn_channel | 2 | 5 | 0.81 [0.74, 0.88] | — | 0.9 [0.8, 1] | 0.95 | — | 1.02 | "
            "— | 1.01 | 0.96 | "
            "0.0001 [5e-05, 0.00015] | K-FAC under-predicts Q (P₂/Q = 0.81); third order "
            "resolved |") in text
    assert "re-measure 85 committed sweep cells" in text
    # one file per model: the calibrated sweep's model first, the columns explained once
    base = json.loads((r / "second_order_probe.json").read_text())
    (r / "second_order_probe.json").unlink()
    write_json_atomic(r / "second_order_probe_a.json", {**base, "embedded_model": "a",
                                                         "command": "probe-a"})
    write_json_atomic(r / "second_order_probe_b.json", {
        **base, "embedded_model": "b", "command": "probe-b",
        "reproduced": {**base["reproduced"], "hessian_moment_cells": 9,
                       "max_rel_hessian_moment_diff": 0.0}})
    write_json_atomic(r / "calibration.json", {"verdicts": [],
                                               "data": {"models": ["embedded:b"]}})
    out, _ = build_report(results_dir=r, figures_dir=tmp_path / "f", out=r / "REPORT.md")
    text = out.read_text()
    b, a = text.index("(embedded model `b`)"), text.index("(embedded model `a`)")
    assert b < a and "From `probe-a`: the same columns as above." in text
    assert text.count("the even part of the loss change") == 1
    assert "the 9 that carry the sweep's E_Hessian give it to a relative difference of 0" in text


def test_report_shows_the_full_hessian_moment_only_where_the_records_have_it(tmp_path):
    r = tmp_path / "results"
    row = {"scheme": "sr_tensor", "bits": 2, "n_records": 3, "measured_mean": 0.0183,
           "second": {"ratio": 0.7, "ci": [0.45, 0.95]}, "first+2nd": None, "moment": None,
           "hessian_moment": {"ratio": 0.98, "ci": [0.9, 1.06]}}
    write_json_atomic(r / "ptq_prediction.json", {
        "source": "runs.ptq.jsonl", "n_records": 3, "pooled_over_rank": [row],
        "agreement_R2_0": {"all": {"n": 3, "second": 0.79, "first+2nd": 0.84, "moment": None,
                                   "hessian_moment": 0.95}}})
    out, _ = build_report(results_dir=r, figures_dir=tmp_path / "f", out=r / "REPORT.md")
    text = out.read_text()
    assert ("| sr_tensor | 2 | 3 | 0.0183 | 0.7 [0.45, 0.95] | — | — | 0.98 [0.9, 1.06] | — |"
            in text)
    assert "| all | 3 | 0.79 | 0.84 | — | 0.95 |" in text
    write_json_atomic(r / "ptq_prediction.json", {
        "source": "runs.ptq.jsonl", "n_records": 3,
        "pooled_over_rank": [{**row, "hessian_moment": None}]})
    out, _ = build_report(results_dir=r, figures_dir=tmp_path / "f", out=r / "REPORT.md")
    assert "E_Hessian" not in out.read_text()


def test_report_shows_each_models_ptq_allocation_check(tmp_path):
    """allocation_check_ptq_<model>.json (python -m real_runs.ptq_allocation --out) beside the
    plain allocation_check_ptq.json: one section each, titled by its embedded model, the
    per-model files first; the verdict rows come from each file."""
    r = tmp_path / "results"
    for name, model, measured in (("allocation_check_ptq.json", "old", 0.0029),
                                  ("allocation_check_ptq_new.json", "new", -0.0004)):
        write_json_atomic(r / name, {
            "config": {"embedded": model}, "notes": [f"note of {model}"],
            "verdicts": [{"claim": f"alloc {model}", "verdict": "fails", "measured": measured,
                          "ci": [measured - 1e-4, measured + 1e-4], "predicted": "< 0",
                          "conditions": f"embedded:{model}", "source": "s"}]})
    out, _ = build_report(results_dir=r, figures_dir=tmp_path / "f", out=r / "REPORT.md")
    text = out.read_text()
    new = text.index("(real runs, post-training SR) — embedded model `new`")
    old = text.index("(real runs, post-training SR) — embedded model `old`")
    assert new < old
    assert text.index("alloc new") < old < text.index("alloc old")
    assert "- note of new" in text and "- note of old" in text


def test_report_states_the_noise_ceiling_and_the_papers_exponents_held_out(tmp_path):
    r = tmp_path / "results"
    loco = {"n_configs": 10, "n_held_out": 10, "rmse": 0.0016, "rmse_null_mean": 0.0023,
            "r2": 0.463, "r2_ceiling": 0.612, "r2_config_means": 0.757, "predictions": []}
    quant = {"r2_in_sample": 0.55, "loco": loco,
             "loco_theory": {**loco, "r2": -0.608, "r2_config_means": -0.994}}
    write_json_atomic(r / "calibration.json", {"verdicts": [], "fits": {"quantization": quant}})
    out, _ = build_report(results_dir=r, figures_dir=tmp_path / "f", out=r / "REPORT.md")
    text = out.read_text()
    assert "leave-one-configuration-out R² = 0.463" in text
    assert "caps any model of the configuration at R² = 0.612" in text
    assert "configuration means with R² = 0.757" in text
    assert "paper's exponents (4 per bit, ∝ s²·r; C2 refitted) the same check gives R² = -0.608 " \
           "(configuration means: -0.994)" in text
    # a calibration without them: neither sentence
    write_json_atomic(r / "calibration.json", {"verdicts": [], "fits": {"quantization": {
        "r2_in_sample": 0.55, "loco": {k: v for k, v in loco.items()
                                       if k not in ("r2_ceiling", "r2_config_means")}}}})
    out, _ = build_report(results_dir=r, figures_dir=tmp_path / "f", out=r / "REPORT.md")
    text = out.read_text()
    assert "leave-one-configuration-out R² = 0.463" in text
    assert "noise ceiling" not in text and "paper's exponents" not in text
