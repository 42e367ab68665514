"""real_runs.finetune / sweep / cli: records validate; sweeps resume after torn lines and kill -9."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from quantbounds.calib.records import read_records, validate_record  # noqa: E402
from real_runs.cli import finetune_main, sweep_main  # noqa: E402
from real_runs.finetune import FinetuneConfig, run_finetune  # noqa: E402
from real_runs.sweep import SweepConfigError, expand, load_config, run_sweep  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# the smallest run that still exercises every measurement
FAST = dict(
    model="embedded",
    embedded="tiny",
    steps=3,
    batch_size=4,
    seq_len=32,
    n_train=16,
    grad_var_batches=2,
    noise_draws=2,
    eval_pairs=2,
    max_new_tokens=2,
    log_every=1,
    eval_tokens=200,
    device="cpu",
    progress=False,
)


@pytest.fixture(scope="session")
def cache(embedded_tiny_cache):
    return embedded_tiny_cache


def _toml_value(v):
    return json.dumps(v)  # JSON strings / numbers / lists of them are valid TOML


def _write_config(path, defaults, grids):
    lines = ["[sweep]", 'name = "test"', "", "[defaults]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in defaults.items()]
    for g in grids:
        lines += ["", "[[grid]]"] + [f"{k} = {_toml_value(v)}" for k, v in g.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_finetune_record_validates_and_is_measured(cache):
    rec = run_finetune(
        FinetuneConfig(arm="adapter_sr", bits=3, rank=4, seed=0, cache_dir=str(cache), **FAST)
    )
    validate_record(rec)
    json.dumps(rec, allow_nan=False)
    assert rec["n_train"] == 16 and rec["steps"] == 3 and rec["train_loss_steps"] == [1, 2, 3]
    assert rec["perplexity"] == pytest.approx(float(torch.tensor(rec["eval_loss"]).exp()), rel=1e-6)
    layers = rec["grad_var_layers"]
    assert len(layers) == 2 * 4  # tiny model: 2 blocks × (c_attn, attn.c_proj, c_fc, mlp.c_proj)
    assert rec["grad_var"] == pytest.approx(sum(layers.values()), rel=1e-12) and rec["grad_var"] > 0
    assert rec["grad_var_noise"] > 0  # SR redraws on a fixed batch
    assert set(rec["x_norm2"]) == set(layers) and all(v > 0 for v in rec["x_norm2"].values())
    assert rec["eps_ba_fro2"] > 0 and rec["lora_scale"] == 16.0 / 4
    # the base (adapter off) on the same tokens, and the paired gain = base − fine-tuned
    assert rec["finetune_gain"] == pytest.approx(rec["eval_loss_base"] - rec["eval_loss"],
                                                 rel=1e-9, abs=1e-12)
    lo, hi = rec["finetune_gain_ci"]
    assert lo <= rec["finetune_gain"] <= hi
    assert {"load", "eval_base", "train", "grad_var", "eval", "f1"} <= set(rec["phase_s"])
    assert 0 <= rec["f1"] <= 1 and rec["exact_match"] in (0.0, 0.5, 1.0)
    assert rec["trainable_params"] < rec["total_params"]
    assert rec["quantized_params"] == 0  # an fp32 base (4-bit counts: test_real_runs_measure_bytes)


def test_run_id_ignores_how_but_not_what():
    a = FinetuneConfig(**{**FAST, "progress": True})
    b = FinetuneConfig(**{**FAST, "threads": 2, "cache_dir": "/elsewhere"})
    assert a.run_id == b.run_id
    assert FinetuneConfig(**{**FAST, "seed": 1}).run_id != a.run_id
    rtn = {**FAST, "arm": "adapter_rtn", "bits": 4}
    assert (
        FinetuneConfig(**{**rtn, "bits_pattern": {"c_fc": 3}}).run_id
        != FinetuneConfig(**rtn).run_id
    )


def test_config_expansion_and_errors(tmp_path):
    p = _write_config(
        tmp_path / "c.toml",
        FAST,
        [
            {"arm": ["fp16", "base_int8"], "rank": [4, 8], "seed": [0, 1]},
            {"arm": "fp16", "rank": 4, "seed": 0},  # duplicate of a run above
            {"arm": "adapter_rtn", "bits": [8, 2], "rank": 4},
        ],
    )
    runs = expand(load_config(p))
    assert len(runs) == 8 + 2 and len({r.run_id for r in runs}) == 10
    # a list-valued field: a flat list fixes it (one run), a list of lists sweeps it
    lists = _write_config(
        tmp_path / "lists.toml",
        FAST,
        [
            {"arm": "fp16", "rank": 4, "ptq": True, "ptq_bits": [2, 3, 16],
             "ptq_hessian_bits": [2, 3]},
            {"arm": "fp16", "rank": 8, "target_modules": [["c_attn"], ["c_attn", "c_proj"]]},
        ],
    )
    fixed, *swept = expand(load_config(lists))
    assert fixed.ptq_bits == (2, 3, 16) and fixed.ptq_hessian_bits == (2, 3)
    assert [r.target_modules for r in swept] == [("c_attn",), ("c_attn", "c_proj")]
    for bad, match in [
        ({"arm": "fp16", "rnak": 4}, "rnak"),
        ({"arm": "warp_drive"}, "warp_drive"),
        ({"arm": "adapter_rtn", "bits": 0}, "bits"),
        ({"arm": "adapter_rtn", "bits": 17}, "bits"),
    ]:
        q = _write_config(tmp_path / "bad.toml", FAST, [bad])
        with pytest.raises(SweepConfigError, match=match):
            expand(load_config(q))
    (tmp_path / "top.toml").write_text('[sweep]\nname="x"\n[oops]\na=1\n[[grid]]\narm="fp16"\n')
    with pytest.raises(SweepConfigError, match="oops"):
        load_config(tmp_path / "top.toml")
    with pytest.raises(FileNotFoundError, match="missing.toml"):
        load_config(tmp_path / "missing.toml")


def test_shipped_configs_expand(tmp_path, monkeypatch):
    emb = expand(load_config(ROOT / "real_runs/configs/embedded.toml"))
    ids = [r.run_id for r in emb]
    assert len(ids) == len(set(ids))
    assert {4, 8, 16, 32, 64} <= {r.rank for r in emb}
    Ns = sorted({r.n_train for r in emb if r.arm == "fp16"})
    assert Ns[-1] / Ns[0] >= 100  # N over at least two decades
    assert any(r.ptq for r in emb)
    # every PTQ adapter also carries the full-Hessian expected second-order term at b 2-4
    assert {r.ptq_hessian_bits for r in emb if r.ptq} == {(2, 3, 4)}
    # the DialoGPT grid resolves N from DailyDialog: a local file in its published layout
    import datasets
    from real_runs import finetune as F

    rows = [
        {"dialog": [f"hi {i}", f"hello {i}", "bye"], "act": [1, 2, 3], "emotion": [0, 0, 0]}
        for i in range(50)
    ]
    pq = tmp_path / "dailydialog_train.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(pq))
    monkeypatch.setenv("QUANTBOUNDS_DAILYDIALOG", str(pq))
    monkeypatch.setattr(F, "_DATA_CACHE", {})
    dgpt = expand(load_config(ROOT / "real_runs/configs/dialogpt_medium.toml"))
    # the dataset enters the id by content (SHA-256 of the file's bytes), not by path
    sha = hashlib.sha256(pq.read_bytes()).hexdigest()
    assert {(r.identity()["dataset"], r.identity()["dataset_sha256"]) for r in dgpt} == {
        ("dialogue_file", sha)
    }
    assert {r.resolve()["dataset_path"] for r in dgpt} == {str(pq.resolve())}
    assert {r.identity()["device"] for r in dgpt} == {"cuda"}
    assert {r.rank for r in dgpt} == {4, 8, 16, 32} and {r.seed for r in dgpt} == {0, 1}


def test_sweep_resumes_after_a_torn_last_line(tmp_path, cache):
    cfg = _write_config(
        tmp_path / "s.toml",
        {**FAST, "cache_dir": str(cache)},
        [{"arm": ["fp16", "adapter_rtn"], "bits": 16, "seed": [0, 1], "rank": 2}],
    )
    out = tmp_path / "runs.jsonl"
    c1 = run_sweep(cfg, out, limit=2, progress=False)
    assert c1 == {"total": 4, "skipped": 0, "done": 2, "failed": 0}
    # simulate kill -9 in the middle of writing the second record: tear its line
    text = out.read_bytes()
    first_end = text.index(b"\n") + 1
    out.write_bytes(text[: first_end + (len(text) - first_end) // 2])
    assert len(read_records(out).records) == 1 and len(read_records(out).errors) == 1
    logs = []
    c2 = run_sweep(cfg, out, progress=False, log=logs.append)
    assert c2 == {"total": 4, "skipped": 1, "done": 3, "failed": 0}
    assert any("corrupt" in m for m in logs)
    res = read_records(out)
    ids = [r["run_id"] for r in res.records]
    assert sorted(ids) == sorted(r.run_id for r in expand(load_config(cfg))) and len(set(ids)) == 4
    assert len(res.errors) == 1  # the torn line stays, reported, and is never counted
    assert run_sweep(cfg, out, progress=False)["done"] == 0  # all done: nothing re-run


def test_sweep_survives_kill_9_of_a_subprocess(tmp_path, cache):
    cfg = _write_config(
        tmp_path / "k.toml",
        {**FAST, "cache_dir": str(cache)},
        [{"arm": "fp16", "bits": 16, "seed": [0, 1, 2, 3], "rank": 2}],
    )
    out = tmp_path / "runs.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "real_runs.cli",
            "sweep",
            str(cfg),
            "--out",
            str(out),
            "--no-progress",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 150
        while time.time() < deadline and proc.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= 1:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the sweep finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    n_before = len(read_records(out).records)
    assert 1 <= n_before < 4
    assert sweep_main([str(cfg), "--out", str(out), "--no-progress"]) == 0
    ids = [r["run_id"] for r in read_records(out).records]
    assert len(ids) == 4 and len(set(ids)) == 4


def test_cli_bad_inputs_exit_2(tmp_path, capsys, cache):
    base = ["--embedded", "tiny", "--cache-dir", str(cache), "--steps", "1", "--no-progress"]
    assert finetune_main(["--arm", "nope", *base]) == 2
    assert "arm" in capsys.readouterr().err
    assert finetune_main(["--arm", "adapter_rtn", "--bits", "17", *base]) == 2
    assert "bits" in capsys.readouterr().err
    assert finetune_main(["--model", str(tmp_path / "no_model"), *base]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert finetune_main(["--dataset", str(tmp_path / "dd.json"), *base]) == 2
    assert "dd.json" in capsys.readouterr().err
    assert sweep_main([str(tmp_path / "none.toml"), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "none.toml" in capsys.readouterr().err


def test_finetune_on_a_local_dialogue_file(tmp_path, cache):
    rows = [
        {"dialog": [f"hello number {i}", f"hi {i}, how are you?", "fine thanks"]} for i in range(40)
    ]
    p = tmp_path / "dd.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "o.jsonl"
    rc = finetune_main(
        [
            "--dataset",
            str(p),
            "--arm",
            "adapter_noise",
            "--bits",
            "2",
            "--rank",
            "2",
            "--embedded",
            "tiny",
            "--cache-dir",
            str(cache),
            "--steps",
            "2",
            "--n-train",
            "10",
            "--grad-var-batches",
            "2",
            "--noise-draws",
            "3",
            "--eval-pairs",
            "2",
            "--max-new-tokens",
            "2",
            "--no-progress",
            "--output",
            str(out),
        ]
    )
    assert rc == 0
    (rec,) = read_records(out, strict=True).records
    assert rec["dataset"] == str(p) and rec["n_train"] == 10 and rec["arm"] == "adapter_noise"
    assert rec["grad_var_noise"] > 0 and rec["eps_ba_fro2"] > 0


def test_finetune_benchmark_times_every_phase(cache):
    """benchmarks/bench_bridge.py --finetune on the tiny model: the phases add up to the run,
    the PTQ ratio is PTQ ÷ the rest, and the targets are judged from those numbers."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_bridge", ROOT / "benchmarks/bench_bridge.py")
    bb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bb)
    fast = {k: v for k, v in FAST.items() if k != "progress"}
    res = bb.finetune_benchmark(overrides={**fast, "cache_dir": str(cache), "ptq_bits": (2, 8),
                                           "ptq_schemes": ("rtn_tensor",), "progress": False})
    ph = res["phase_s"]
    assert res["finetune_s"] == pytest.approx(sum(v for k, v in ph.items() if k != "ptq"))
    assert res["ptq_over_finetune"] == pytest.approx(ph["ptq"] / res["finetune_s"])
    assert res["finetune_s"] + ph["ptq"] <= res["wall_s"] + 1e-6
    assert res["meets"]["ptq_over_finetune"] == (res["ptq_over_finetune"] <= 2.0)
    assert res["ptq_evaluations"] == 2 and res["peak_mem_bytes"] > 0
    # one run per thread count, judged at the fastest fine-tune's
    threads = torch.get_num_threads()
    try:
        by = bb.finetune_by_threads((1, 2), overrides={**fast, "cache_dir": str(cache),
                                                       "ptq_bits": (2,), "ptq_schemes": ("rtn_tensor",),
                                                       "progress": False})
    finally:
        torch.set_num_threads(threads)
    assert [r["torch_threads"] for r in by["by_threads"]] == [1, 2]
    fastest = min(by["by_threads"], key=lambda r: r["finetune_s"])
    assert by["threads"] == fastest["torch_threads"] and by["meets"] == fastest["meets"]
    assert by["ptq_over_finetune"] == fastest["ptq_over_finetune"]
