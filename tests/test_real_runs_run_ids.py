"""Portable run ids: the dataset enters by the SHA-256 of its bytes, not by its path; the
migration of records files written with path ids (real_runs.migrate_run_ids)."""

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from quantbounds.calib.records import (
    append_lines,
    make_ptq_record,
    make_record,
    read_ptq_records,
    read_records,
    run_id,
)
from real_runs import data as D
from real_runs import migrate_run_ids as M
from real_runs.chitchat import HELDOUT_PROMPTS

# --- fixtures ---------------------------------------------------------------------------------


def _conv(prompt, turns):
    return {
        "messages": [[{"text": t, "sender": "ab"[i % 2]}] for i, t in enumerate(turns)],
        "prompt": prompt,
    }


def _chitchat_file(path: Path, n: int = 40) -> Path:
    """A small file in chitchat's layout: n held-out-prompt conversations and one other."""
    obj = {
        f"c{i:03d}": _conv(HELDOUT_PROMPTS[i % len(HELDOUT_PROMPTS)], [f"q{i}", f"a{i}", f"b{i}"])
        for i in range(n)
    }
    obj["zz"] = _conv("not held out", ["x", "y"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, sort_keys=True))
    return path


def _flip_one_byte(path: Path) -> None:
    """Change one byte of a turn's text ('q7' → 'q8'), keeping the file valid."""
    b = path.read_bytes()
    i = b.index(b'"q7"') + 2
    path.write_bytes(b[:i] + b"8" + b[i + 1 :])


def _strings(v):
    """Every string value (and dict key) anywhere in a nested identity."""
    if isinstance(v, str):
        yield v
    elif isinstance(v, dict):
        for k, x in v.items():
            yield str(k)
            yield from _strings(x)
    elif isinstance(v, (list, tuple)):
        for x in v:
            yield from _strings(x)


def _no_path(identity: dict, *roots) -> None:
    for s in _strings(identity):
        assert not os.path.isabs(s), f"absolute path {s!r} in the identity"
        assert not any(str(r) in s for r in roots), f"{s!r} names a local path"


# --- the digest (torch-free) -------------------------------------------------------------------


def test_file_digest_is_sha256_of_its_bytes(tmp_path):
    p = tmp_path / "d.json"
    p.write_bytes(b'{"a": 1}\n')
    # reference: SHA-256 test vector of the same bytes, computed by hashlib directly
    assert D.digest_dataset(p) == hashlib.sha256(b'{"a": 1}\n').hexdigest()
    empty = tmp_path / "e.json"
    empty.write_bytes(b"")
    # FIPS 180-2: SHA-256 of the empty message
    assert D.digest_dataset(empty) == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )


def test_directory_digest_hand_reference(tmp_path):
    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    (d / "b.yml").write_bytes(b"bee")
    (d / "a.yml").write_bytes(b"ay")
    (d / "sub" / "c.yml").write_bytes(b"")
    (d / ".hidden").write_bytes(b"not data")
    (d / "__pycache__").mkdir()
    (d / "__pycache__" / "x.pyc").write_bytes(b"bytecode")
    # by hand: files in sorted relative-path order, each "path NUL size NUL bytes"
    ref = hashlib.sha256(b"a.yml\x002\x00ay" + b"b.yml\x003\x00bee" + b"sub/c.yml\x000\x00")
    assert D.digest_dataset(d) == ref.hexdigest()
    # a copy elsewhere: the same digest; a renamed file or a moved boundary: another
    shutil.copytree(d, tmp_path / "copy")
    assert D.digest_dataset(tmp_path / "copy") == ref.hexdigest()
    (d / "b.yml").rename(d / "bb.yml")
    assert D.digest_dataset(d) != ref.hexdigest()
    (d / "bb.yml").rename(d / "b.yml")
    (d / "a.yml").write_bytes(b"ayb")
    (d / "b.yml").write_bytes(b"ee")  # the same concatenated bytes, another split
    assert D.digest_dataset(d) != ref.hexdigest()


def test_digest_of_a_missing_path_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        D.digest_dataset(tmp_path / "nope.json")


def test_dataset_identity_same_bytes_same_identity_one_byte_another(tmp_path):
    a = _chitchat_file(tmp_path / "one" / "cc.json")
    b = tmp_path / "two" / "renamed.json"
    b.parent.mkdir()
    shutil.copyfile(a, b)
    ia, ib = D.dataset_identity(f"chitchat:{a}"), D.dataset_identity(f"chitchat:{b}")
    assert ia == ib == {"dataset": "chitchat", "dataset_sha256": D.digest_dataset(a)}
    _flip_one_byte(b)
    assert D.dataset_identity(f"chitchat:{b}")["dataset_sha256"] != ia["dataset_sha256"]
    # a dialogue file as a path: parsed by datasets, by content too
    rows = tmp_path / "dd.jsonl"
    rows.write_text("".join(json.dumps({"dialog": [f"h{i}", "y"]}) + "\n" for i in range(3)))
    assert D.dataset_identity(str(rows)) == {
        "dataset": "dialogue_file",
        "dataset_sha256": hashlib.sha256(rows.read_bytes()).hexdigest(),
    }


def test_dataset_identity_dailydialog_local_or_hub(tmp_path, monkeypatch):
    monkeypatch.delenv(D.DAILYDIALOG_ENV, raising=False)
    hub = D.dataset_identity("dailydialog")
    assert hub == {"dataset": f"hub:{D.DAILYDIALOG_HUB}", "dataset_sha256": None}
    f = tmp_path / "dd.parquet"
    f.write_bytes(b"PAR1 stand-in")
    monkeypatch.setenv(D.DAILYDIALOG_ENV, str(f))
    assert D.dataset_identity("dailydialog") == {
        "dataset": "dialogue_file",
        "dataset_sha256": hashlib.sha256(b"PAR1 stand-in").hexdigest(),
    }


# --- hand-made records for the migration (torch-free) -------------------------------------------

_METRICS = dict(
    arm="fp16", model="embedded:tiny", rank=4, bits=16, base_quant="none", scale="alpha_r",
    lora_alpha=16.0, seed=0, n_train=16, steps=3, eval_loss=2.0, perplexity=7.389, f1=0.1,
    exact_match=0.0, grad_var=1.0, eps_ba_fro2=0.0, wall_s=1.0,
)  # fmt: skip


def _old_config(spec: str, location: str, **over) -> dict:
    return {
        "arm": "fp16", "dataset": spec, "dataset_path": location, "device": "cpu",
        "dtype": "float32", "embedded": "embedded-0123456789ab", "model": "embedded",
        "n_train": 16, "rank": 4, "seed": 0, "steps": 3, **over,
    }  # fmt: skip


def _old_run(spec, location, **over):
    cfg = _old_config(spec, location, **over)
    return make_record(
        run_id=run_id(cfg), dataset=spec, dataset_path=location, config=cfg,
        **{**_METRICS, **{k: v for k, v in over.items() if k in _METRICS}},
    )  # fmt: skip


def _ptq(parent_cfg, parent_id, scheme="rtn_tensor", bits=2, draw=0, *, budget=(8000, 64)):
    ident = {"ptq_of_config": parent_cfg, "scheme": scheme, "bits": bits, "draw": draw}
    if budget is not None:
        ident.update(ptq_eval_tokens=budget[0], curvature_windows=budget[1])
    return make_ptq_record(
        run_id=run_id(ident), ptq_of=parent_id, arm="fp16", rank=4, seed=0, bits=bits,
        ptq_scheme=scheme, ptq_draw=draw, eval_loss=2.1, eval_loss_ref=2.0, delta_loss=0.1,
        delta_loss_ci=[0.05, 0.15], pred_plugin=0.08, eps_ba_fro2=1.0, eps_ba_x2=1.0,
        layers={}, eval_tokens=100,
    )  # fmt: skip


def _write(path: Path, recs, tail: str = "") -> Path:
    append_lines(path, recs)
    if tail:
        with path.open("a") as f:
            f.write(tail)
    return path


def test_migration_rewrites_path_ids_keeps_legacy_and_torn_lines(tmp_path, capsys):
    data = _chitchat_file(tmp_path / "data" / "cc.json")
    spec = f"chitchat:{data}"
    r0 = _old_run(spec, str(data))
    r1 = _old_run(spec, str(data), seed=1)
    legacy_cfg = {"arm": "fp16", "dataset": "chatterbot", "embedded": "default", "n_train": None}
    legacy = make_record(
        run_id=M.legacy_run_id(legacy_cfg), dataset="chatterbot", config=legacy_cfg, **_METRICS
    )
    runs = _write(tmp_path / "runs.jsonl", [r0, legacy, r1], tail='{"schema": "quantbou')
    ptq = _write(
        tmp_path / "runs.ptq.jsonl",
        [
            _ptq(r0["config"], r0["run_id"]),
            _ptq(r1["config"], r1["run_id"], "sr_tensor", 3, 1),
            _ptq(r0["config"], r0["run_id"], "nf4", 4, budget=None),  # before the token budget
        ],
    )
    before = runs.read_bytes(), ptq.read_bytes()
    assert M.main([str(runs), "--check"]) == 1
    assert (runs.read_bytes(), ptq.read_bytes()) == before  # --check writes nothing
    assert M.main([str(runs)]) == 0  # the PTQ partner is migrated with it
    out = capsys.readouterr().out
    assert "2 old→new ids" in out and "1 legacy" in out and "3 old→new ids" in out

    sha = hashlib.sha256(data.read_bytes()).hexdigest()
    lines = runs.read_text().split("\n")
    assert lines[1] == json.dumps(legacy, sort_keys=True)  # legacy: byte for byte
    assert lines[-1] == '{"schema": "quantbou'  # the torn last line, kept
    new = read_records(runs).records
    for old, rec in zip([r0, r1], [new[0], new[2]]):
        # the new identity, written out by hand from the old one
        want = {k: v for k, v in old["config"].items() if k != "dataset_path"}
        want.update(dataset="chitchat", dataset_sha256=sha)
        assert rec["config"] == want and rec["run_id"] == run_id(want) != old["run_id"]
        assert rec["previous_run_id"] == old["run_id"] and rec["dataset_sha256"] == sha
        assert rec["dataset_path"] == str(data) and rec["dataset"] == spec
        assert {k: v for k, v in rec.items() if k not in ("run_id", "config", "dataset_sha256",
                                                         "previous_run_id")} == {
            k: v for k, v in old.items() if k not in ("run_id", "config")
        }  # fmt: skip
    p = read_ptq_records(ptq).records
    want_forms = [
        {"ptq_of_config": new[0]["config"], "scheme": "rtn_tensor", "bits": 2, "draw": 0,
         "ptq_eval_tokens": 8000, "curvature_windows": 64},
        {"ptq_of_config": new[2]["config"], "scheme": "sr_tensor", "bits": 3, "draw": 1,
         "ptq_eval_tokens": 8000, "curvature_windows": 64},
        {"ptq_of_config": new[0]["config"], "scheme": "nf4", "bits": 4, "draw": 0},
    ]  # fmt: skip
    assert [x["run_id"] for x in p] == [run_id(f) for f in want_forms]
    assert [x["ptq_of"] for x in p] == [new[0]["run_id"], new[2]["run_id"], new[0]["run_id"]]
    assert all(x["dataset_sha256"] == sha for x in p)

    # idempotent: a second run (either file of the pair) changes nothing
    after = runs.read_bytes(), ptq.read_bytes()
    assert M.main([str(ptq)]) == 0 and M.main([str(runs), str(ptq), "--check"]) == 0
    assert (runs.read_bytes(), ptq.read_bytes()) == after
    assert not [f for f in tmp_path.iterdir() if f.name.endswith(".tmp")]


def test_same_content_at_two_paths_migrates_to_one_id(tmp_path):
    a = _chitchat_file(tmp_path / "a" / "cc.json")
    b = tmp_path / "b" / "cc.json"
    b.parent.mkdir()
    shutil.copyfile(a, b)
    c = tmp_path / "c" / "cc.json"
    c.parent.mkdir()
    shutil.copyfile(a, c)
    _flip_one_byte(c)
    recs = [_old_run(f"chitchat:{p}", str(p)) for p in (a, b, c)]
    assert len({r["run_id"] for r in recs}) == 3
    runs = _write(tmp_path / "runs.jsonl", recs)
    assert M.main([str(runs)]) == 0
    ids = [r["run_id"] for r in read_records(runs).records]
    assert ids[0] == ids[1] != ids[2]


def test_missing_dataset_falls_back_to_the_builtin_of_that_name(tmp_path):
    pytest.importorskip("chitchat_dataset")
    from real_runs.chitchat import chitchat_path

    gone = "/elsewhere/python3.11/site-packages/chitchat_dataset/dataset.json"
    runs = _write(tmp_path / "runs.jsonl", [_old_run("chitchat", gone)])
    assert M.main([str(runs)]) == 0
    (rec,) = read_records(runs).records
    sha = hashlib.sha256(chitchat_path().read_bytes()).hexdigest()
    assert rec["config"]["dataset_sha256"] == rec["dataset_sha256"] == sha
    assert rec["dataset_path"] == gone  # where it was read from, as information


def test_unmigratable_records_are_named_and_nothing_is_written(tmp_path, capsys):
    good = _chitchat_file(tmp_path / "cc.json")
    ok = _write(tmp_path / "ok.jsonl", [_old_run(f"chitchat:{good}", str(good))])
    lost = "/nowhere/cc.json"
    bad_rec = _old_run(f"chitchat:{lost}", lost)
    tampered = _old_run(f"chitchat:{good}", str(good), seed=3)
    tampered["config"]["rank"] = 99  # its config no longer hashes to its run_id
    bad = _write(tmp_path / "bad.jsonl", [bad_rec, tampered])
    orphan = _write(tmp_path / "orphan.jsonl", [_old_run(f"chitchat:{good}", str(good), seed=5)])
    _write(tmp_path / "orphan.ptq.jsonl", [_ptq({"other": 1}, "0000000000000000")])
    before = {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert M.main([str(ok), str(bad), str(orphan)]) == 2
    err = capsys.readouterr().err
    assert f"bad.jsonl:1 (run {bad_rec['run_id']})" in err and lost in err
    assert f"bad.jsonl:2 (run {tampered['run_id']})" in err and "does not hash" in err
    assert "orphan.ptq.jsonl:1" in err and "not in" in err
    assert "nothing written" in err
    assert {p: p.read_bytes() for p in before} == before  # not even the good file
    # a PTQ file alone needs its run file
    lone = _write(tmp_path / "lone.ptq.jsonl", [_ptq({"x": 1}, "0000000000000000")])
    assert M.main([str(lone)]) == 2
    assert "lone.jsonl not found" in capsys.readouterr().err


def test_run_file_migrated_but_ptq_file_not_is_finished_on_rerun(tmp_path):
    """A crash between the two os.replace calls: the rerun still links the PTQ records."""
    data = _chitchat_file(tmp_path / "cc.json")
    r = _old_run(f"chitchat:{data}", str(data))
    runs = _write(tmp_path / "runs.jsonl", [r])
    ptq = _write(tmp_path / "runs.ptq.jsonl", [_ptq(r["config"], r["run_id"], budget=(150, 8))])
    old_ptq = ptq.read_bytes()
    assert M.main([str(runs)]) == 2  # an unusual budget: not among the defaults
    assert M.main([str(runs), "--ptq-eval-tokens", "150", "--curvature-windows", "8"]) == 0
    want = ptq.read_bytes()
    ptq.write_bytes(old_ptq)  # as if the PTQ file's replace never happened
    assert M.main([str(ptq), "--ptq-eval-tokens", "150", "--curvature-windows", "8"]) == 0
    assert ptq.read_bytes() == want


def test_write_is_atomic_and_keeps_the_mode(tmp_path, monkeypatch):
    data = _chitchat_file(tmp_path / "cc.json")
    runs = _write(tmp_path / "runs.jsonl", [_old_run(f"chitchat:{data}", str(data))])
    runs.chmod(0o640)
    before = runs.read_bytes()

    def boom(src, dst):
        raise OSError("disk full")

    from quantbounds import _files

    monkeypatch.setattr(_files.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        M.main([str(runs)])
    assert runs.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cc.json", "runs.jsonl"]
    monkeypatch.undo()
    assert M.main([str(runs)]) == 0
    assert runs.read_bytes() != before and (runs.stat().st_mode & 0o777) == 0o640


# --- the identity of real configurations (torch, tiny model) ------------------------------------

FAST = dict(
    model="embedded", embedded="tiny", steps=3, batch_size=4, seq_len=32, n_train=16,
    grad_var_batches=2, noise_draws=2, eval_pairs=2, max_new_tokens=2, eval_tokens=200,
    device="cpu", progress=False,
)  # fmt: skip


@pytest.fixture
def finetune(embedded_tiny_cache, monkeypatch):
    pytest.importorskip("peft")
    from real_runs import finetune as F

    monkeypatch.setattr(F, "_DATA_CACHE", {})
    return F


def test_identity_holds_no_path_and_two_copies_share_a_run_id(
    finetune, embedded_tiny_cache, tmp_path
):
    F = finetune
    cache = str(embedded_tiny_cache)  # how a run is executed: not in the identity
    a = _chitchat_file(tmp_path / "one" / "cc.json")
    b = tmp_path / "two" / "other-name.json"
    b.parent.mkdir()
    shutil.copyfile(a, b)
    c = tmp_path / "three" / "cc.json"
    c.parent.mkdir()
    shutil.copyfile(a, c)
    _flip_one_byte(c)
    cfgs = [F.FinetuneConfig(**FAST, dataset=f"chitchat:{p}", cache_dir=cache) for p in (a, b, c)]
    ia, ib, ic = (x.identity() for x in cfgs)
    for ident in (ia, ib, ic):
        _no_path(ident, tmp_path, embedded_tiny_cache)
    assert ia == ib and cfgs[0].run_id == cfgs[1].run_id
    assert ia["dataset_sha256"] == hashlib.sha256(a.read_bytes()).hexdigest()
    assert cfgs[2].run_id != cfgs[0].run_id
    assert {k for k in ia if ia[k] != ic[k]} == {"dataset_sha256"}
    # where the data was read from is still known, outside the identity
    assert cfgs[1].resolve()["dataset_path"] == str(b.resolve())


def test_local_model_enters_the_identity_by_content(finetune, tmp_path):
    """--model DIR: the run id holds the directory's digest, not its path: two copies of one
    model share a run id, one changed byte makes another; the path stays in resolve()."""
    F = finetune
    a = tmp_path / "m1"
    a.mkdir()
    (a / "config.json").write_text('{"n_layer": 2}')
    (a / "model.safetensors").write_bytes(b"\x00weights" * 100)
    b = tmp_path / "copy"
    shutil.copytree(a, b)
    base = {**FAST, "dataset": f"chitchat:{_chitchat_file(tmp_path / 'cc.json')}"}
    ca, cb = (F.FinetuneConfig(**{**base, "model": str(p)}) for p in (a, b))
    ia = ca.identity()
    _no_path(ia, tmp_path)
    assert ia["model"] == "local" and ia["model_sha256"] == D.digest_dataset(a)
    assert ca.run_id == cb.run_id and ca.resolve()["model_path"] == str(a.resolve())
    w = b / "model.safetensors"
    w.write_bytes(b"\x01" + w.read_bytes()[1:])  # one byte changed, size and name kept
    F._MODEL_DIGESTS.clear()
    cc = F.FinetuneConfig(**{**base, "model": str(b)})
    assert cc.run_id != ca.run_id
    assert {k for k in ia if ia[k] != cc.identity()[k]} == {"model_sha256"}
    # a hub name is its own identity (nothing local to hash)
    hub = F.FinetuneConfig(**{**base, "model": "microsoft/DialoGPT-medium"}).identity()
    assert hub["model"] == "microsoft/DialoGPT-medium" and "model_sha256" not in hub


def test_default_dataset_identity_holds_no_path(finetune):
    pytest.importorskip("chitchat_dataset")
    import sys

    cfg = finetune.FinetuneConfig(**FAST)
    _no_path(cfg.identity(), sys.prefix, Path(D.__file__).parent)
    assert cfg.identity()["dataset"] == "chitchat"


def test_migrated_old_record_resumes_with_nothing_pending(finetune, embedded_tiny_cache, tmp_path):
    """The key property: a record produced by run_finetune under the OLD (path) identity is
    migrated to exactly the id the new code computes for its config, PTQ records included,
    so the sweep that wrote it finds nothing pending."""
    F = finetune
    from real_runs.sweep import pending, ptq_path

    data = _chitchat_file(tmp_path / "data" / "cc.json")
    cfg = F.FinetuneConfig(
        **FAST,
        dataset=f"chitchat:{data}",
        cache_dir=str(embedded_tiny_cache),
        ptq=True,
        ptq_bits=(2, 16),
        ptq_schemes=("rtn_tensor", "sr_tensor"),
        ptq_sr_draws=2,
    )
    rec, ptq = F.run_finetune(cfg, return_ptq=True)
    assert rec["run_id"] == cfg.run_id and {p["ptq_of"] for p in ptq} == {cfg.run_id}

    # the same run as the old code wrote it: the identity held the resolved path
    old_cfg = {k: v for k, v in rec["config"].items() if k != "dataset_sha256"}
    old_cfg.update(dataset=cfg.dataset, dataset_path=D.resolve_dataset(cfg.dataset))
    old_id = run_id(old_cfg)
    old_rec = {k: v for k, v in rec.items() if k != "dataset_sha256"}
    old_rec.update(run_id=old_id, config=old_cfg)
    old_ptq = []
    for p in ptq:
        ident = {
            "ptq_of_config": old_cfg, "scheme": p["ptq_scheme"], "bits": p["bits"],
            "draw": p["ptq_draw"], "ptq_eval_tokens": cfg.ptq_eval_tokens,
            "curvature_windows": cfg.curvature_windows,
        }  # fmt: skip
        q = {k: v for k, v in p.items() if k != "dataset_sha256"}
        old_ptq.append({**q, "run_id": run_id(ident), "ptq_of": old_id})
    out = tmp_path / "runs.jsonl"
    append_lines(out, [old_rec])
    append_lines(ptq_path(out), old_ptq)
    assert [r.run_id for r in pending([cfg], out)[0]] == [cfg.run_id]  # old ids: pending

    assert M.main([str(out)]) == 0
    (mig,) = read_records(out).records
    assert mig["run_id"] == cfg.run_id == rec["run_id"] and mig["config"] == rec["config"]
    assert mig["dataset_sha256"] == rec["dataset_sha256"] == D.digest_dataset(data)
    by_key = {(p["ptq_scheme"], p["bits"], p["ptq_draw"]): p for p in ptq}
    got = read_ptq_records(ptq_path(out)).records
    assert len(got) == len(ptq)
    for g in got:
        want = by_key[(g["ptq_scheme"], g["bits"], g["ptq_draw"])]
        assert (g["run_id"], g["ptq_of"], g["dataset_sha256"]) == (
            want["run_id"], want["ptq_of"], want["dataset_sha256"],
        )  # fmt: skip
    assert pending([cfg], out)[0] == []  # resumes with nothing to do
