"""Run-record schema: validation, append durability, torn-line recovery, resume ids."""

import pytest

from quantbounds.calib import records as R


def _rec(**over):
    base = dict(
        run_id="abc",
        arm="fp16",
        model="embedded",
        dataset="chatterbot",
        rank=4,
        bits=16,
        base_quant="none",
        scale="alpha_r",
        lora_alpha=8.0,
        seed=0,
        n_train=100,
        steps=10,
        eval_loss=2.0,
        perplexity=7.389,
        f1=0.1,
        exact_match=0.0,
        grad_var=1e-3,
        eps_ba_fro2=0.0,
        wall_s=1.5,
    )
    base.update(over)
    return R.make_record(**base)


def test_make_and_validate():
    rec = _rec()
    assert rec["schema"] == R.SCHEMA
    for bad, msg in [
        (dict(arm="nope"), "arm"),
        (dict(bits=17), "bits"),
        (dict(bits=0), "bits"),
        (dict(rank=0), "rank"),
        (dict(scale="x"), "scale"),
        (dict(n_train=0), "n_train"),
        (dict(base_quant="int3"), "base_quant"),
        (dict(rank=True), "rank"),
    ]:
        with pytest.raises(R.RecordError, match=msg):
            _rec(**bad)
    with pytest.raises(R.RecordError, match="missing"):
        R.validate_record({"schema": R.SCHEMA})
    with pytest.raises(R.RecordError, match="schema"):
        R.validate_record({**_rec(), "schema": "quantbounds.run/0"})


def test_append_read_roundtrip_and_torn_line(tmp_path):
    p = tmp_path / "runs.jsonl"
    R.append_record(p, _rec(run_id="a"))
    R.append_record(p, _rec(run_id="b"))
    # simulate kill -9 mid-write: a torn final line without newline
    with open(p, "a") as f:
        f.write('{"schema": "quantbounds.run/1", "run_id": "c", "arm"')
    res = R.read_records(p)
    assert [r["run_id"] for r in res.records] == ["a", "b"]
    assert len(res.errors) == 1 and res.errors[0][0] == 3
    # the next append starts on a fresh line, so the good record after the torn one survives
    R.append_record(p, _rec(run_id="c"))
    res = R.read_records(p)
    assert [r["run_id"] for r in res.records] == ["a", "b", "c"]
    assert R.completed_ids(p) == {"a", "b", "c"}
    with pytest.raises(R.RecordError, match=r"runs.jsonl:3"):
        R.read_records(p, strict=True)


def test_missing_file_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere"):
        R.read_records(tmp_path / "nothere.jsonl")
    assert R.completed_ids(tmp_path / "nothere.jsonl") == set()


def test_run_id_stable_and_order_free():
    a = R.run_id({"arm": "fp16", "rank": 4, "seed": 0})
    b = R.run_id({"seed": 0, "rank": 4, "arm": "fp16"})
    assert a == b and len(a) == 16
    assert a != R.run_id({"arm": "fp16", "rank": 8, "seed": 0})


def test_lora_scale_conventions():
    assert R.lora_scale("alpha_r", 16, 4) == 4.0
    assert R.lora_scale("rslora", 16, 4) == 8.0
    assert R.lora_scale("one", 16, 4) == 1.0
    with pytest.raises(ValueError, match="scale"):
        R.lora_scale("bad", 16, 4)
    with pytest.raises(ValueError, match="rank"):
        R.lora_scale("alpha_r", 16, 0)


def test_no_nan_in_records(tmp_path):
    with pytest.raises(ValueError):
        R.append_record(tmp_path / "x.jsonl", _rec(eval_loss=float("nan")))
