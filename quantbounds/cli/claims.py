"""`quantbounds claims`: the claim registry with the latest verdict of each claim.

    quantbounds claims [--results DIR] [--kind K] [--origin seed|toolkit] [--json]

Reads every ``DIR/*.json`` with a ``verdicts`` list and matches verdicts to claims by their
``claim_id`` field. For each claim the latest results file that judges it (by its ``created``
field, else its modification time) gives the verdict(s); a claim no file judges shows
"no verdict". Seed claims and toolkit claims are tallied apart, and identity checks apart from
findings. Verdicts naming a claim id that is not in the registry are listed as warnings.
Output: a rich table (a fixed wide width when stdout is not a terminal, so logs stay
readable), or JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from quantbounds.verdicts.registry import KINDS, ORIGINS, Claim, readable, registry

NO_VERDICT = "no verdict"
OUTCOMES = ("holds", "fails", "conditional", "inconclusive", "mixed", NO_VERDICT)
LOG_WIDTH = 200  # table width when stdout is not a terminal


def _file_time(path: Path, data: dict) -> float:
    created = data.get("created") if isinstance(data, dict) else None
    if isinstance(created, str):
        try:
            t = datetime.fromisoformat(created.replace("Z", "+00:00"))
            if t.tzinfo is None:
                t = t.replace(tzinfo=timezone.utc)
            return t.timestamp()
        except ValueError:
            pass
    return path.stat().st_mtime


def load_results(results_dir: Path) -> tuple[dict[str, dict], list[str], list[str]]:
    """claim id → {"file", "time", "verdicts": [verdict dicts], "earlier": [the same for older
    files judging it, newest first]} from the latest file judging it; plus warnings (unknown
    claim ids, unreadable files) and the files read."""
    reg = registry()
    best: dict[str, dict] = {}
    warnings, files = [], []
    for path in sorted(results_dir.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            warnings.append(f"{path.name}: unreadable ({err})")
            continue
        verdicts = data.get("verdicts") if isinstance(data, dict) else None
        if not isinstance(verdicts, list):
            continue
        files.append(path.name)
        t = _file_time(path, data)
        per_claim: dict[str, list[dict]] = {}
        unwired = 0
        for i, v in enumerate(verdicts):
            cid = v.get("claim_id") if isinstance(v, dict) else None
            if not cid:
                unwired += 1
                continue
            if cid not in reg:
                warnings.append(
                    f"{path.name}: verdict {i} names claim_id {cid!r}, which is not in the registry"
                )
                continue
            per_claim.setdefault(cid, []).append(v)
        if unwired:
            warnings.append(
                f"{path.name}: {unwired} of {len(verdicts)} verdicts carry no claim_id "
                "(not counted)"
            )
        for cid, vs in per_claim.items():
            entry = {"file": path.name, "time": t, "verdicts": vs}
            if cid not in best:
                best[cid] = {**entry, "earlier": []}
            elif t >= best[cid]["time"]:
                prev = best[cid]
                best[cid] = {
                    **entry,
                    "earlier": [{k: prev[k] for k in ("file", "time", "verdicts")}]
                    + prev["earlier"],
                }
            else:
                best[cid]["earlier"].append(entry)
    for hit in best.values():
        hit["earlier"].sort(key=lambda e: -e["time"])
    return best, warnings, files


def summarize(verdicts: list[dict]) -> str:
    """One word for a claim's verdicts: the common verdict, "mixed (…)" or "no verdict"."""
    if not verdicts:
        return NO_VERDICT
    c = Counter(str(v.get("verdict", "?")) for v in verdicts)
    if len(c) == 1:
        ((word, n),) = c.items()
        return word if n == 1 else f"{word} ×{n}"
    return "mixed (" + ", ".join(f"{k} {n}" for k, n in sorted(c.items())) + ")"


def _outcome(summary: str) -> str:
    word = summary.split(" ", 1)[0]
    if summary == NO_VERDICT:
        return NO_VERDICT
    return word if word in OUTCOMES else "mixed"


def tally(claims: list[Claim], latest: dict[str, dict]) -> dict:
    """Per origin: claims, findings (non-identity) and identity checks, each by outcome."""
    out = {}
    for origin in ORIGINS:
        cs = [c for c in claims if c.origin == origin]
        block = {
            "claims": len(cs),
            "by_status": dict(Counter(c.status for c in cs)),
            "by_kind": {
                k: sum(c.kind == k for c in cs) for k in KINDS if any(c.kind == k for c in cs)
            },
        }
        for part, sel in (
            ("findings", [c for c in cs if c.kind != "identity"]),
            ("identity_checks", [c for c in cs if c.kind == "identity"]),
        ):
            counts = Counter(
                _outcome(summarize(latest.get(c.id, {}).get("verdicts", []))) for c in sel
            )
            block[part] = {"claims": len(sel), **{o: counts.get(o, 0) for o in OUTCOMES}}
        out[origin] = block
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="quantbounds claims",
        description="List the claim registry with the latest verdict of each claim.",
    )
    p.add_argument(
        "--results",
        default="results",
        metavar="DIR",
        help="folder of results JSON files to read verdicts from (default: results)",
    )
    p.add_argument("--kind", choices=KINDS, help="only claims of this kind")
    p.add_argument("--origin", choices=ORIGINS, help="only seed claims or only the toolkit's own")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def _short(text: str, n: int) -> str:
    text = " ".join(readable(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _files_cell(hit: dict | None) -> str:
    """The latest file, and the older files' summaries (the latest decides the verdict shown)."""
    if hit is None:
        return "—"
    older = "; ".join(f"{e['file']}: {summarize(e['verdicts'])}" for e in hit["earlier"])
    return hit["file"] + (f" (earlier: {older})" if older else "")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    results_dir = Path(args.results)
    if not results_dir.is_dir():
        print(f"quantbounds claims: results folder {str(results_dir)!r} not found", file=sys.stderr)
        return 2
    reg = registry()
    claims = reg.select(kind=args.kind, origin=args.origin)
    latest, warnings, files = load_results(results_dir)
    tallies = tally(claims, latest)

    if args.json:
        rows = []
        for c in claims:
            hit = latest.get(c.id)
            rows.append(
                {
                    **c.to_dict(),
                    "latest": None
                    if hit is None
                    else {
                        "file": hit["file"],
                        "summary": summarize(hit["verdicts"]),
                        "verdicts": hit["verdicts"],
                        "earlier": [
                            {"file": e["file"], "summary": summarize(e["verdicts"])}
                            for e in hit["earlier"]
                        ],
                    },
                }
            )
        print(
            json.dumps(
                {
                    "results_dir": str(results_dir),
                    "files": files,
                    "claims": rows,
                    "tally": tallies,
                    "warnings": warnings,
                },
                indent=2,
                ensure_ascii=False,
            )
        )
        return 0

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else LOG_WIDTH)
    style = {
        "holds": "green",
        "fails": "red",
        "conditional": "yellow",
        "inconclusive": "yellow",
        "mixed": "magenta",
        NO_VERDICT: "dim",
    }
    table = Table(
        title=f"Claim registry ({len(claims)} claims; verdicts from {results_dir}/: "
        f"{', '.join(files) or 'none'})",
        show_lines=False,
    )
    for col, kw in (
        ("id", {"no_wrap": True}),
        ("kind", {}),
        ("origin", {}),
        ("status", {}),
        ("latest verdict", {}),
        ("file", {}),
        ("claim (quote)", {"overflow": "fold"}),
    ):
        table.add_column(col, **kw)
    for c in claims:
        hit = latest.get(c.id)
        summary = summarize(hit["verdicts"]) if hit else NO_VERDICT
        table.add_row(
            c.id,
            c.kind,
            c.origin,
            c.status,
            f"[{style[_outcome(summary)]}]{escape(summary)}[/]",
            _files_cell(hit),
            escape(_short(c.quote, 90)),
        )
    console.print(table)
    for origin in ORIGINS:
        t = tallies[origin]
        if not t["claims"]:
            continue
        parts = []
        for part in ("findings", "identity_checks"):
            d = t[part]
            if d["claims"]:
                counts = ", ".join(f"{o} {d[o]}" for o in OUTCOMES if d[o])
                parts.append(f"{part.replace('_', ' ')} {d['claims']} ({counts})")
        status = ", ".join(f"{k} {v}" for k, v in sorted(t["by_status"].items()))
        console.print(escape(f"{origin} claims: {t['claims']} ({status}) — " + "; ".join(parts)))
    for w in warnings:
        console.print(f"[yellow]warning:[/] {escape(w)}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
