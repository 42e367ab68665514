"""The README's findings block and results/REPORT.md are generated from the results files.

The committed README and report must equal what the committed results generate: a finding
typed or edited by hand, or results regenerated without `quantbounds report`, fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quantbounds.cli.report import main, update_readme
from quantbounds.report.findings import BEGIN, END, findings_block, replace_block
from quantbounds.report.report import build_report

ROOT = Path(__file__).resolve().parents[2]


def test_committed_readme_findings_equal_the_generated_block():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    i, j = readme.find(BEGIN), readme.find(END)
    assert 0 <= i < j, "README.md has no findings markers"
    assert readme[i:j + len(END)] == findings_block(ROOT / "results"), (
        "README findings differ from results/*.json: run `quantbounds report` at the repo root")


def test_committed_report_equals_the_generated_one(monkeypatch):
    monkeypatch.chdir(ROOT)
    # written beside REPORT.md (figure links are relative to the report), then removed
    scratch = ROOT / "results" / ".REPORT.regenerated.md"
    try:
        out, _ = build_report(results_dir="results", figures_dir="figures", out=scratch)
        generated = Path(out).read_text()
    finally:
        scratch.unlink(missing_ok=True)
    assert generated == (ROOT / "results" / "REPORT.md").read_text(), (
        "results/REPORT.md differs from results/*.json: run `quantbounds report`")


def _results(tmp_path: Path, verdicts: list[dict]) -> Path:
    d = tmp_path / "results"
    d.mkdir()
    (d / "audit.json").write_text(json.dumps({"verdicts": verdicts}))
    return d


def test_block_tallies_seed_toolkit_and_identity_apart(tmp_path):
    d = _results(tmp_path, [
        {"claim": "x", "claim_id": "s001.thm3_1.quant_term", "kind": "upper_bound",
         "verdict": "fails", "measured": 1.25, "ci": [1.01, 1.48]},
        {"claim": "y", "claim_id": "s001.thm3_1.bound", "verdict": "holds", "measured": 0.5},
        {"claim": "z | with a pipe", "verdict": "inconclusive", "measured": {"a": 1.0}},
    ])
    block = findings_block(d)
    assert block.startswith(BEGIN) and block.endswith(END)
    assert "seed claims: 1 holds, 1 fails" in block
    assert "not in the registry: 1 inconclusive" in block
    assert "| fails | `s001.thm3_1.quant_term` | x | 1.25 [1.01, 1.48] |" in block
    assert "z \\| with a pipe" in block and "a 1" in block
    # a family-wise verdict that differs from the claim's own-α one shows both
    d2 = tmp_path / "r2"
    d2.mkdir()
    (d2 / "audit.json").write_text(json.dumps({
        "verdicts": [{"claim": "w", "claim_id": "s001.thm3_1.bound", "verdict": "inconclusive",
                      "raw_verdict": "holds", "measured": 1.0}],
        "family": {"alpha": 0.05, "tests": 2, "changed_by_adjustment": 1}}))
    b2 = findings_block(d2)
    assert "| inconclusive (alone: holds) | `s001.thm3_1.bound` | w |" in b2
    assert "Holm, α = 0.05, 2 tests; 1 changed by it" in b2


def test_update_readme_replaces_only_the_block_and_refuses_without_markers(tmp_path):
    d = _results(tmp_path, [{"claim": "x", "verdict": "holds", "measured": 2.0}])
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{BEGIN}\nold text\n{END}\n\n## after\n")
    assert update_readme(readme, d) is True
    text = readme.read_text()
    assert text.startswith("# title\n\n") and text.endswith("\n\n## after\n")
    assert "old text" not in text and "| holds | `—` | x | 2 |" in text
    assert update_readme(readme, d) is False                   # idempotent
    bare = tmp_path / "BARE.md"
    bare.write_text("no markers\n")
    with pytest.raises(ValueError, match="findings markers"):
        update_readme(bare, d)
    assert bare.read_text() == "no markers\n"
    with pytest.raises(ValueError, match="findings markers"):
        replace_block(f"{END} then {BEGIN}", "x")


def test_report_command_writes_both(tmp_path, monkeypatch):
    d = _results(tmp_path, [{"claim": "x", "verdict": "holds", "measured": 2.0}])
    readme = tmp_path / "README.md"
    readme.write_text(f"{BEGIN}\n{END}\n")
    monkeypatch.chdir(tmp_path)
    assert main(["--results", str(d), "--figures", str(tmp_path / "f")]) == 0
    assert (d / "REPORT.md").exists() and "| holds | `—` | x | 2 |" in readme.read_text()
    assert main(["--results", str(d), "--readme", str(tmp_path / "BARE.md")]) == 2
