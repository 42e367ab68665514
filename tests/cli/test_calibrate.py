"""``quantbounds calibrate``: the results file it writes — every verdict wired to the registry,
Holm over the file with raw and adjusted decisions, the command that produced it, repeated
configurations counted once, and a b* table only from usable fits — on SYNTHETIC records, and
on a records file with only a few 16-bit runs (the chitchat sweep as it starts)."""

from __future__ import annotations

import json

from quantbounds.calib.synthetic import SyntheticTruth, synthetic_records
from quantbounds.cli.calibrate import main
from quantbounds.verdicts.registry_check import check_results_file


def _write(path, recs):
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def test_calibrate_writes_a_registry_wired_family_with_its_command(tmp_path):
    recs = synthetic_records(seed=3, ranks=(4, 16, 64), bits=(2, 4, 8), n_trains=(300, 1000),
                             seeds=(0, 1, 2),
                             truth=SyntheticTruth(scale="alpha_r", beta=-1.0, C2=20.0),
                             extra_adapter_arms=(("adapter_sr", 20.0, 4.0),))
    # a repeated configuration: the same runs again under new run ids, with a config whose
    # default n_train (None) resolves to the record's N
    for r in recs:
        r["config"] = {"arm": r["arm"], "rank": r["rank"], "bits": r["bits"], "seed": r["seed"],
                       "n_train": r["n_train"]}
    twins = [dict(r, run_id=r["run_id"] + "x", config=dict(r["config"], n_train=None))
             for r in recs if r["n_train"] == 1000][:5]
    path = _write(tmp_path / "runs.jsonl", recs + twins)
    out = tmp_path / "cal.json"
    assert main([str(path), "--n-boot", "30", "--out", str(out), "--figures", ""]) == 0
    check_results_file(out)  # every verdict names a registry claim with the right kind
    data = json.loads(out.read_text())
    assert data["command"] == f"quantbounds calibrate {path} --n-boot 30 --out {out} --figures ''"
    assert data["data"]["n_repeats_dropped"] == 5
    assert sum("counted once" in n for n in data["notes"]) == 5
    fam = data["family"]
    assert fam["alpha"] == data["family_alpha"] == 0.05 and fam["tests"] > 0  # one Holm step
    for v in data["verdicts"]:
        assert {"claim_id", "kind", "raw_verdict", "p_adjusted"} <= set(v)
        if v["p_adjusted"] is not None:
            assert all(a >= p for a, p in zip(v["p_adjusted"], (v["p_holds"], v["p_fails"])))
    assert {u["usable"] for u in data["fits"]["usable"].values()} == {True}
    assert "calibrated_tolerance" in data["bits_table"][0]


def test_calibrate_on_a_few_16bit_runs_decides_nothing_and_says_why(tmp_path):
    recs = [r for r in synthetic_records(seed=0, ranks=(4, 8, 16, 32), bits=(4,),
                                         n_trains=(200,), seeds=(0,), base_arms=())
            if r["arm"] == "fp16"]
    out = tmp_path / "cal.json"
    assert main([_write(tmp_path / "r.jsonl", recs).as_posix(), "--n-boot", "10", "--out",
                 str(out), "--figures", ""]) == 0
    data = json.loads(out.read_text())
    assert data["verdicts"] == [] and any("not fitted" in n for n in data["notes"])
    assert all("calibrated_tolerance" not in row for row in data["bits_table"])


def test_an_unusable_fit_drives_no_b_star(tmp_path):
    """Quantization excess independent of b and r (pure noise): the fit's held-out R² < 0 or it
    is weakly identified, so the b* table carries only the paper's rule and says why."""
    t = SyntheticTruth(C2=1e-9, noise_sd=0.01)
    recs = synthetic_records(seed=5, ranks=(4, 16, 64), bits=(2, 4, 8), n_trains=(500, 2000),
                             seeds=(0, 1), truth=t, base_arms=())
    out = tmp_path / "cal.json"
    assert main([_write(tmp_path / "r.jsonl", recs).as_posix(), "--n-boot", "40", "--out",
                 str(out), "--figures", ""]) == 0
    data = json.loads(out.read_text())
    assert data["fits"]["usable"]["quantization"]["usable"] is False
    row = data["bits_table"][0]
    assert "calibrated_tolerance" not in row and "not usable" in row["not_calibrated"]
    pb = [v for v in data["verdicts"] if v["claim_id"] == "s001.s5_1.exponential_precision"]
    assert pb and all(v["verdict"] == "inconclusive" and "not usable" in v["details"]["decision"]
                      for v in pb)
