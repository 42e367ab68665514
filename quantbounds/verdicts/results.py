"""Verdicts and result files shared by `validate`, `audit` and `calibrate`.

A :class:`Verdict` is one quantitative claim checked against a computation that could have
disagreed with it: what the claim predicts, what was measured, a confidence interval for the
measurement, and the conditions under which the verdict holds. Every report writes a JSON
object with a ``verdicts`` list of these (``Verdict.to_dict``), atomically.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal

import numpy as np

from quantbounds._files import atomic_write_bytes

VerdictKind = Literal["holds", "fails", "conditional"]
VERDICTS = ("holds", "fails", "conditional")


@dataclass(frozen=True, kw_only=True)
class Verdict:
    """One claim and the measurement that judges it.

    claim:      the claim in words, citing its source (e.g. "seed 001 Thm 3.1: ...").
    verdict:    "holds" | "fails" | "conditional" (holds only under ``conditions``).
    predicted:  what the claim predicts (number, list or short string).
    measured:   what was measured (same kind as ``predicted``).
    ci:         (lo, hi) confidence interval of ``measured`` (95 % unless ``details`` says),
                or None where the measurement is exact (an identity checked to rounding).
    conditions: where the verdict holds / the set-up it was measured in.
    source:     which seed document / theorem / DESIGN.md section the claim comes from.
    details:    anything else worth keeping (counts, per-cell numbers).
    """

    claim: str
    verdict: VerdictKind
    predicted: Any
    measured: Any
    ci: Any = None
    conditions: str = ""
    source: str = ""
    details: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")

    def to_dict(self) -> dict:
        return to_jsonable(asdict(self))


def to_jsonable(obj: Any) -> Any:
    """Convert numpy/jax scalars and arrays, tuples and dataclasses to plain JSON types.

    Non-finite floats become the strings "nan", "inf", "-inf" (JSON has no such numbers).
    """
    if hasattr(obj, "__dataclass_fields__"):
        return to_jsonable(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "_asdict"):
        return to_jsonable(obj._asdict())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        if math.isfinite(f):
            return f
        return "nan" if math.isnan(f) else ("inf" if f > 0 else "-inf")
    if hasattr(obj, "shape") and hasattr(obj, "dtype"):  # numpy / jax arrays
        arr = np.asarray(obj)
        return to_jsonable(arr.tolist()) if arr.ndim else to_jsonable(arr.item())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int = 2) -> Path:
    """Write JSON to ``path`` atomically (``quantbounds._files.atomic_write_bytes``: temp file
    in the same directory, fsync, rename, fsync of the directory).

    A reader never sees a half-written file; an interrupted writer leaves the old file.
    """
    text = json.dumps(to_jsonable(obj), indent=indent, allow_nan=False)
    return atomic_write_bytes(path, (text + "\n").encode())


def format_cell(v: Any, *, width: int = 60) -> str:
    """A verdict-table cell: 4 significant digits, an interval as [lo, hi], at most ``width``
    characters."""
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v):
        return f"[{v[0]:.4g}, {v[1]:.4g}]"
    s = json.dumps(v) if isinstance(v, (dict, list)) else str(v)
    return s if len(s) <= width else s[:width - 1] + "…"


_fmt = format_cell


def print_verdicts(verdicts: Iterable[Verdict | dict], *, title: str = "Verdicts", console=None,
                   plain: bool | None = None) -> None:
    """Print the verdicts: a rich table on a terminal, a plain-text layout otherwise.

    In a log or a pipe a rich table would wrap at the non-terminal width (80 columns, ≈ 10
    characters per column), so when ``console`` is not a terminal (or ``plain=True``) each
    verdict is written as a block with no width limit:

        [holds] claim
            predicted …  measured …  95% CI […]
            conditions …
    """
    from rich.console import Console

    console = console or Console()
    rows = [v.to_dict() if isinstance(v, Verdict) else to_jsonable(v) for v in verdicts]
    if plain if plain is not None else not console.is_terminal:
        console.print(plain_verdicts(rows, title=title), markup=False, highlight=False,
                      soft_wrap=True, crop=False)
        return
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for col in ("claim", "verdict", "predicted", "measured", "95% CI", "conditions"):
        table.add_column(col, overflow="fold")
    style = {"holds": "green", "fails": "red", "conditional": "yellow"}
    for d in rows:
        table.add_row(d["claim"], f"[{style[d['verdict']]}]{d['verdict']}[/]", _fmt(d["predicted"]),
                      _fmt(d["measured"]), _fmt(d.get("ci")), _fmt(d.get("conditions", "")))
    console.print(table)


def plain_verdicts(rows: Iterable[dict], *, title: str = "Verdicts") -> str:
    """The plain-text layout of :func:`print_verdicts`: a title line, then one block per verdict
    (verdict and claim; predicted, measured and interval; conditions in full)."""
    rows = list(rows)
    lines = [f"{title} ({len(rows)})", "=" * len(f"{title} ({len(rows)})")]
    for d in rows:
        lines.append(f"[{d['verdict']}] {d['claim']}")
        lines.append(f"    predicted {_fmt(d['predicted'])}  measured {_fmt(d['measured'])}  "
                     f"95% CI {_fmt(d.get('ci'))}")
        if d.get("conditions"):
            lines.append(f"    conditions: {d['conditions']}")
    return "\n".join(lines)


def load_verdicts(path: str | os.PathLike) -> list[dict]:
    """Read the ``verdicts`` list of a report JSON, checking each has the required keys."""
    data = json.loads(Path(path).read_text())
    out = data.get("verdicts")
    if not isinstance(out, list):
        raise ValueError(f"{path}: no 'verdicts' list")
    required = ("claim", "verdict", "predicted", "measured", "ci", "conditions")
    for i, v in enumerate(out):
        missing = [k for k in required if k not in v]
        if missing:
            raise ValueError(f"{path}: verdict {i} lacks {missing}")
        if v["verdict"] not in VERDICTS:
            raise ValueError(f"{path}: verdict {i} has verdict={v['verdict']!r}")
    return out
