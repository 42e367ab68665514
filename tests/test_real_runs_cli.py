"""`quantbounds finetune` / `quantbounds sweep`: help, bad arguments, damaged shipped weights.

Bad arguments are rejected before anything is loaded. A missing or corrupt shipped weight file
(tested on a DAMAGED COPY of real_runs/weights/chitchat, never the shipped files) exits with
status 2 and one paragraph naming the file and the fix, not a traceback, and leaves nothing
behind in the cache directory or the output file.
"""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

from real_runs import embedded as E  # noqa: E402
from real_runs.cli import finetune_main, sweep_main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = E.DEFAULT_EMBEDDED  # the model a plain `quantbounds finetune` loads
SHIPPED = E.SHIPPED[DEFAULT]
needs_shipped = pytest.mark.skipif(
    not (SHIPPED / "SHA256SUMS").exists(), reason=f"{DEFAULT} weights not shipped in this checkout"
)


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _quantbounds(*argv, timeout=300):
    """`quantbounds ARGV…` through the real dispatcher (entry points), this checkout first."""
    return subprocess.run(
        [sys.executable, "-m", "quantbounds.cli.main", *argv],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=ROOT,
        timeout=timeout,
    )


def test_finetune_help_lists_the_options():
    p = _quantbounds("finetune", "--help")
    assert p.returncode == 0, p.stderr
    for opt in ("--arm", "--rank", "--bits", "--embedded", "--cache-dir", "--output"):
        assert opt in p.stdout
    assert "usage: quantbounds finetune" in p.stdout


def test_bad_rank_through_the_quantbounds_command(tmp_path):
    out = tmp_path / "runs.jsonl"
    p = _quantbounds("finetune", "--rank", "0", "--no-progress", "--output", str(out))
    assert p.returncode == 2
    assert "rank" in p.stderr and "got 0" in p.stderr and "Traceback" not in p.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    "argv,names",
    [
        (["--rank", "0"], ["rank", "got 0"]),
        (["--rank", "-3"], ["rank", "got -3"]),
        (["--arm", "adapter_rtn", "--bits", "17"], ["bits", "1…16", "got 17"]),
        (["--arm", "adapter_rtn", "--bits", "0"], ["bits", "1…16", "got 0"]),
        (["--arm", "fp16", "--bits", "4"], ["bits must be 16", "fp16"]),
        (["--arm", "adapter_fp8"], ["arm", "adapter_fp8", "adapter_rtn"]),
        (["--eval-pairs", "0"], ["eval_pairs", "got 0"]),
        (["--grad-var-batches", "1"], ["grad_var_batches", "got 1"]),
        (["--ptq-bits", "2,x"], ["--ptq-bits", "2,x"]),
        (["--ptq-eval-tokens", "0"], ["ptq_eval_tokens", "got 0"]),
        (["--ptq-groups", "0"], ["ptq_groups", "got 0"]),
        (["--ptq-sr-draws", "0"], ["ptq_sr_draws", "got 0"]),
        (["--eval-tokens", "0"], ["eval_tokens", "got 0"]),
        (["--ptq-schemes", "rtn_x"], ["rtn_x", "rtn_tensor"]),
    ],
)
def test_bad_argument_exits_2_naming_it(argv, names, tmp_path, capsys):
    out = tmp_path / "runs.jsonl"
    rc = finetune_main([*argv, "--no-progress", "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ")
    for n in names:
        assert n in err, (n, err)
    assert not out.exists()


def test_ptq_and_eval_flags_reach_the_config(monkeypatch):
    """--ptq-* and --eval-tokens set the run's FinetuneConfig; their defaults are its own."""
    from real_runs import finetune as F

    seen = []

    def fake(cfg, **kw):
        seen.append(cfg)
        raise ValueError("stop here")

    monkeypatch.setattr(F, "run_finetune", fake)
    assert finetune_main(["--no-progress"]) == 2
    d = F.FinetuneConfig()
    assert (seen[0].ptq_eval_tokens, seen[0].ptq_groups, seen[0].ptq_sr_draws,
            seen[0].ptq_schemes, seen[0].eval_tokens) == (
        d.ptq_eval_tokens, d.ptq_groups, d.ptq_sr_draws, d.ptq_schemes, d.eval_tokens)
    assert finetune_main(["--no-progress", "--ptq", "--ptq-eval-tokens", "900", "--ptq-groups",
                          "7", "--ptq-sr-draws", "2", "--ptq-schemes", "rtn_tensor,sr_tensor",
                          "--eval-tokens", "1200"]) == 2
    c = seen[1]
    assert (c.ptq, c.ptq_eval_tokens, c.ptq_groups, c.ptq_sr_draws, c.ptq_schemes,
            c.eval_tokens) == (True, 900, 7, 2, ("rtn_tensor", "sr_tensor"), 1200)


@pytest.mark.parametrize(
    "argv,name",
    [
        (["--rank", "four"], "--rank"),
        (["--bits", "3.5"], "--bits"),
        (["--device", "tpu"], "--device"),
        (["--rank-pattern", "[1, 2]"], "--rank-pattern"),
    ],
)
def test_unparsable_argument_is_argparse_error_naming_it(argv, name, capsys):
    with pytest.raises(SystemExit) as e:
        finetune_main(argv)
    assert e.value.code == 2
    assert name in capsys.readouterr().err


# --- damaged shipped weights ---------------------------------------------------------------


def _flip(f: Path):
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0xFF
    f.write_bytes(bytes(b))


def _unlist(man: Path, name: str):
    lines = [x for x in man.read_text().splitlines() if not x.endswith("  " + name)]
    man.write_text("\n".join(lines) + "\n")


# (damage, the file the message must name, what it must say)
DAMAGE = {
    "corrupt_weights": (lambda d: _flip(d / "model.safetensors"), "model.safetensors", "corrupt"),
    "missing_weights": (lambda d: (d / "model.safetensors").unlink(), "model.safetensors", "missing"),
    "corrupt_tokenizer": (lambda d: _flip(d / "tokenizer.json"), "tokenizer.json", "corrupt"),
    "missing_manifest": (lambda d: (d / "SHA256SUMS").unlink(), "SHA256SUMS", "missing"),
    "unlisted_weights": (
        lambda d: _unlist(d / "SHA256SUMS", "model.safetensors"),
        "SHA256SUMS",
        "does not list model.safetensors",
    ),
}


@pytest.fixture
def damaged(request, tmp_path, monkeypatch):
    """A damaged copy of the default model's shipped directory, installed as the shipped one."""
    kind = request.param
    d = tmp_path / "weights-copy"
    shutil.copytree(SHIPPED, d)
    damage, victim, what = DAMAGE[kind]
    damage(d)
    monkeypatch.setitem(E.SHIPPED, DEFAULT, d)
    yield d, d / victim, what
    # the shipped files themselves were never touched
    assert E.verify_weights(SHIPPED) == _manifest_hash(SHIPPED)


def _manifest_hash(d: Path) -> str:
    got = hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest()
    listed = dict(
        reversed(line.split("  ", 1)) for line in (d / "SHA256SUMS").read_text().splitlines()
    )
    assert listed["model.safetensors"] == got
    return got


def _check_message(err: str, victim: Path, what: str):
    assert "Traceback" not in err
    text = err.strip()
    assert text.startswith("error: ") and "\n" not in text  # one paragraph
    assert str(victim) in text and what in text
    assert "reinstall" in text and E.rebuild_command(DEFAULT) in text


def _nothing_left(cache: Path):
    # no cache entry, finished or half-built (".building-*"), was created by the failed run
    assert not cache.exists() or not any(cache.iterdir()), list(cache.iterdir())


@needs_shipped
@pytest.mark.parametrize("damaged", list(DAMAGE), indirect=True)
def test_finetune_with_damaged_weights_exits_2_naming_the_file(damaged, tmp_path, capsys):
    d, victim, what = damaged
    cache, out = tmp_path / "cache", tmp_path / "runs.jsonl"
    argv = ["--steps", "1", "--no-progress", "--cache-dir", str(cache), "--output", str(out)]
    rc = finetune_main(argv)
    cap = capsys.readouterr()
    assert rc == 2
    _check_message(cap.err, victim, what)
    assert cap.out == ""
    assert not out.exists() and not out.with_name("runs.ptq.jsonl").exists()
    _nothing_left(cache)


SWEEP_TOML = f"""
[defaults]
model = "embedded"
embedded = "{DEFAULT}"
dataset = "chitchat"
steps = 1
n_train = 8
device = "cpu"

[[grid]]
arm = "fp16"
bits = 16
rank = [4, 8]
"""


@needs_shipped
@pytest.mark.parametrize("dry_run", [False, True])
@pytest.mark.parametrize("damaged", ["corrupt_weights", "missing_weights"], indirect=True)
def test_sweep_with_damaged_weights_exits_2_naming_the_file(damaged, dry_run, tmp_path, capsys):
    d, victim, what = damaged
    cfg = tmp_path / "s.toml"
    cfg.write_text(SWEEP_TOML)
    cache, out = tmp_path / "cache", tmp_path / "runs.jsonl"
    argv = [str(cfg), "--out", str(out), "--no-progress", "--cache-dir", str(cache)]
    rc = sweep_main(argv + (["--dry-run"] if dry_run else []))
    cap = capsys.readouterr()
    assert rc == 2
    _check_message(cap.err, victim, what)
    assert not out.exists()
    _nothing_left(cache)
