"""``quantbounds report``: the markdown report (quantbounds.report.report)."""

from __future__ import annotations

import argparse
from pathlib import Path

from quantbounds.report.report import build_report


def main(argv: list[str] | None = None) -> int:
    """``quantbounds report``: assemble results/*.json and figures/ into results/REPORT.md."""
    p = argparse.ArgumentParser(prog="quantbounds report", description=main.__doc__)
    p.add_argument("--results", default="results")
    p.add_argument("--figures", default="figures")
    p.add_argument("--out", default=None, help="default: RESULTS/REPORT.md")
    a = p.parse_args(argv)
    out, missing = build_report(results_dir=a.results, figures_dir=a.figures,
                                out=a.out or Path(a.results) / "REPORT.md")
    print(f"wrote {out}" + (f" (missing: {', '.join(missing)})" if missing else ""))
    return 0
