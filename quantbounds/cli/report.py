"""``quantbounds report``: results/REPORT.md and the README findings block, from results/*.json."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from quantbounds.report.findings import findings_block, replace_block
from quantbounds.report.report import build_report


def _write_text_atomic(path: Path, text: str) -> None:
    """Temp file in the same directory, fsync, rename: a reader never sees half a README."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def update_readme(readme: str | os.PathLike, results_dir: str | os.PathLike) -> bool:
    """Replace the findings block of ``readme`` with one generated from ``results_dir``;
    True when the file changed. Missing markers: ValueError, the file left as it was."""
    path = Path(readme)
    text = path.read_text(encoding="utf-8")
    new = replace_block(text, findings_block(results_dir))
    if new != text:
        _write_text_atomic(path, new)
    return new != text


def main(argv: list[str] | None = None) -> int:
    """``quantbounds report``: assemble results/*.json and figures/ into results/REPORT.md, and
    regenerate the README's findings block (between its markers) from the same files."""
    p = argparse.ArgumentParser(prog="quantbounds report", description=main.__doc__)
    p.add_argument("--results", default="results")
    p.add_argument("--figures", default="figures")
    p.add_argument("--out", default=None, help="default: RESULTS/REPORT.md")
    p.add_argument(
        "--readme",
        default=None,
        help="README whose findings block to regenerate (default ./README.md if present)",
    )
    p.add_argument("--no-readme", action="store_true", help="leave the README alone")
    a = p.parse_args(argv)
    out, missing = build_report(
        results_dir=a.results, figures_dir=a.figures, out=a.out or Path(a.results) / "REPORT.md"
    )
    print(f"wrote {out}" + (f" (missing: {', '.join(missing)})" if missing else ""))
    readme = a.readme or ("README.md" if Path("README.md").exists() else None)
    if not a.no_readme and readme is not None:
        try:
            changed = update_readme(readme, a.results)
        except (OSError, ValueError) as err:
            print(f"quantbounds report: --readme {readme}: {err}")
            return 2
        print(f"{'updated' if changed else 'unchanged'}: findings block of {readme}")
    return 0
