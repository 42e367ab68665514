"""Argument checks, verdict objects, atomic result files, the CLI dispatcher, layering."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from quantbounds import _checks as C
from quantbounds.verdicts.results import Verdict, load_verdicts, to_jsonable, write_json_atomic

ROOT = Path(__file__).resolve().parents[1]


def test_checks_name_argument_and_range():
    assert C.check_bits(4) == 4
    for b in (0, 17, -1):
        with pytest.raises(ValueError, match=r"bits must be in 1…16"):
            C.check_bits(b)
    with pytest.raises(TypeError, match="bits"):
        C.check_bits("4")
    with pytest.raises(ValueError, match="r must be in ≥ 1"):
        C.check_rank(0)
    with pytest.raises(ValueError, match="shapes do not multiply"):
        C.check_lora_factors(np.ones((4, 2)), np.ones((3, 5)))
    with pytest.raises(ValueError, match="B must be finite"):
        C.check_lora_factors(np.full((4, 2), np.nan), np.ones((2, 5)))
    with pytest.raises(ValueError, match="block_size=5 does not divide"):
        C.check_block_size(64, 5)
    assert C.check_lora_factors(np.ones((4, 2)), np.ones((2, 5))) == (4, 2, 5)
    with pytest.raises(ValueError, match="sigma"):
        C.check_positive(0.0, "sigma_g2")


def test_verdict_roundtrip(tmp_path):
    v = Verdict(
        claim="x",
        verdict="holds",
        predicted=4.0,
        measured=np.float32(3.9),
        ci=(np.float64(3.8), 4.1),
        conditions="b ≥ 3",
    )
    with pytest.raises(ValueError, match="verdict"):
        Verdict(claim="x", verdict="maybe", predicted=1, measured=1)
    p = write_json_atomic(
        tmp_path / "sub" / "r.json", {"verdicts": [v.to_dict()], "x": np.arange(3)}
    )
    out = load_verdicts(p)
    assert out[0]["ci"] == [3.8, 4.1] and out[0]["measured"] == pytest.approx(3.9, rel=1e-6)
    assert json.loads(p.read_text())["x"] == [0, 1, 2]
    assert not list((tmp_path / "sub").glob("*.tmp"))
    assert to_jsonable(float("nan")) == "nan"


def test_cli_help_and_unknown_command():
    out = subprocess.run(
        [sys.executable, "-m", "quantbounds.cli.main", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "validate" in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "quantbounds.cli.main", "nope"], capture_output=True, text=True
    )
    assert out.returncode == 2 and "unknown command 'nope'" in out.stderr


def test_core_never_imports_torch_or_real_runs():
    """quantbounds must be importable and usable without torch (DESIGN.md §4)."""
    offenders = []
    for p in (ROOT / "quantbounds").rglob("*.py"):
        for line in p.read_text().splitlines():
            s = line.strip()
            if s.startswith(("import torch", "from torch", "import real_runs", "from real_runs")):
                offenders.append(f"{p.name}: {s}")
    assert not offenders, offenders
    code = (
        "import sys, quantbounds as qb; qb.read_records; qb.Verdict; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_ruff_lints_the_tree_clean():
    """The lint configured in pyproject.toml ([tool.ruff]: line 100; E, F, W, B) passes."""
    pytest.importorskip("ruff")
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(ROOT)],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
