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

VerdictKind = Literal["holds", "fails", "conditional", "inconclusive"]
VERDICTS = ("holds", "fails", "conditional", "inconclusive")


@dataclass(frozen=True, kw_only=True)
class Verdict:
    """One claim and the measurement that judges it.

    claim:      the claim in words, citing its source (e.g. "seed 001 Thm 3.1: ...").
    verdict:    "holds" | "fails" | "inconclusive" (the interval is too wide to decide) |
                "conditional" (the outcome turns on a reading named in ``details["readings"]``
                or on ``conditions``). In a results file this is the Holm-adjusted decision
                (:func:`finalize_verdicts`); ``raw_verdict`` is the decision at the claim's own α.
    predicted:  what the claim predicts (number, list or short string).
    measured:   what was measured (same kind as ``predicted``).
    ci:         (lo, hi) confidence interval of ``measured`` (95 % unless ``details`` says),
                or None where the measurement is exact (an identity checked to rounding).
    conditions: where the verdict holds / the set-up it was measured in.
    source:     which seed document / theorem / DESIGN.md section the claim comes from.
    details:    anything else worth keeping (counts, per-cell numbers).
    claim_id:   the registry claim this verdict judges (:mod:`quantbounds.verdicts.registry`).
    kind:       that claim's kind (upper_bound, scaling_law, rule, comparison, no_effect,
                identity); filled from the registry when omitted.
    p_holds, p_fails: the one-sided p-values the decision rests on
                (:mod:`quantbounds.verdicts.standard`); None for identities and for verdicts
                decided by readings.
    """

    claim: str
    verdict: VerdictKind
    predicted: Any
    measured: Any
    ci: Any = None
    conditions: str = ""
    source: str = ""
    details: dict = field(default_factory=dict)
    claim_id: str | None = None
    kind: str | None = None
    p_holds: float | None = None
    p_fails: float | None = None

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")
        if self.claim_id is not None and self.kind is None:
            from quantbounds.verdicts.registry import registry

            reg = registry()
            if self.claim_id not in reg:
                raise ValueError(f"claim_id {self.claim_id!r} is not in the claim registry")
            object.__setattr__(self, "kind", reg[self.claim_id].kind)

    @classmethod
    def from_decision(cls, claim_id: str, decision, **fields) -> "Verdict":
        """A verdict on registry claim ``claim_id`` from a
        :class:`quantbounds.verdicts.standard.Decision` (its verdict, p-values and reason;
        the reason goes to ``details["decision"]``)."""
        details = dict(fields.pop("details", {}) or {})
        details.setdefault("decision", decision.reason)
        if getattr(decision, "readings", None):
            details.setdefault("readings", decision.readings)
        if getattr(decision, "reading_p", None):
            details.setdefault("readings_p", {k: list(v) for k, v in decision.reading_p.items()})
        return cls(
            claim_id=claim_id,
            verdict=decision.verdict,
            p_holds=decision.p_holds,
            p_fails=decision.p_fails,
            details=details,
            **fields,
        )

    def to_dict(self) -> dict:
        return to_jsonable(asdict(self))


def _recombine(readings: dict) -> str:
    """The verdict of a claim from its readings' verdicts: the common one, else conditional."""
    kinds = set(readings.values())
    return kinds.pop() if len(kinds) == 1 else "conditional"


def finalize_verdicts(verdicts: Iterable["Verdict | dict"], *, where: str = "",
                      alpha: float | None = None) -> list[dict]:
    """The verdicts of one results file as written: every one wired to the registry (else
    :class:`quantbounds.verdicts.registry_check.VerdictClaimError` naming it), then ONE Holm
    step (:func:`quantbounds.verdicts.standard.holm`) at α over every hypothesis of the file —
    (p_holds, p_fails) of each statistical verdict, and of each reading of a verdict tested
    under several readings (``details["readings_p"]``: {reading: [p_holds, p_fails]}) — which
    controls the file's family-wise error rate at α under any dependence.

    Each decision is re-made with its adjusted p-values (holds when p̃_holds < α, fails when
    p̃_fails < α, else inconclusive); a multi-reading verdict is recombined from its readings
    (the common verdict, else ``conditional``). ``raw_verdict`` keeps the decision at the
    claim's own α, ``p_adjusted`` the Holm p-values (``details["readings_p_adjusted"]`` per
    reading, ``details["readings_raw"]`` the readings before). Identities and verdicts without
    p-values are kept as they are (``p_adjusted`` None)."""
    from quantbounds.verdicts import standard
    from quantbounds.verdicts.registry_check import check_verdicts

    a = alpha or standard.ALPHA
    rows = [v.to_dict() if isinstance(v, Verdict) else to_jsonable(dict(v)) for v in verdicts]
    check_verdicts(rows, where=where)
    flat: list[tuple[int, str | None, float, float]] = []
    for i, d in enumerate(rows):
        rp = (d.get("details") or {}).get("readings_p")
        if rp:
            flat += [(i, k, ph, pf) for k, (ph, pf) in rp.items()
                     if ph is not None and pf is not None]
        elif (d.get("p_holds") is not None and d.get("p_fails") is not None
              and d["verdict"] != "conditional"):
            flat.append((i, None, d["p_holds"], d["p_fails"]))
    adj, _ = standard.holm([p for _, _, ph, pf in flat for p in (ph, pf)], alpha=a)
    adjusted = {(i, k): (float(adj[2 * j]), float(adj[2 * j + 1]))
                for j, (i, k, _, _) in enumerate(flat)}

    def decide(ph, pf):
        return "holds" if ph < a else "fails" if pf < a else "inconclusive"

    out = []
    for i, d in enumerate(rows):
        d = dict(d)
        d["raw_verdict"] = d.get("raw_verdict") or d["verdict"]
        d["p_adjusted"] = None
        if (i, None) in adjusted:
            d["p_adjusted"] = list(adjusted[(i, None)])
            d["verdict"] = decide(*adjusted[(i, None)])
        elif any(key[0] == i for key in adjusted):
            det = dict(d["details"])
            before = dict(det.get("readings") or {})
            final = {k: decide(*adjusted[(i, k)]) if (i, k) in adjusted else before.get(k, "?")
                     for k in det["readings_p"]}
            det["readings_raw"] = before
            det["readings"] = final
            det["readings_p_adjusted"] = {k: list(adjusted[(i, k)]) for k in det["readings_p"]
                                          if (i, k) in adjusted}
            d["details"] = det
            d["verdict"] = _recombine(final)
        out.append(d)
    return out


def write_results(path: str | os.PathLike, payload: dict, *, alpha: float | None = None) -> Path:
    """Write a results file atomically after :func:`finalize_verdicts` on its ``verdicts``
    (the family for Holm's step is this file), adding a ``"family"`` summary."""
    out = dict(payload)
    final = finalize_verdicts(out.get("verdicts", []), where=str(path), alpha=alpha)
    out["verdicts"] = final
    changed = sum(1 for d in final if d["verdict"] != d["raw_verdict"])
    from quantbounds.verdicts import standard

    out["family"] = {
        "method": "one Holm step-down at α over every hypothesis of the file: p_holds and "
        "p_fails of each statistical verdict and of each reading of a multi-reading verdict",
        "alpha": alpha or standard.ALPHA,
        "tests": 2 * sum(1 for d in final if d["p_adjusted"] is not None)
        + 2 * sum(len((d.get("details") or {}).get("readings_p_adjusted") or {}) for d in final),
        "changed_by_adjustment": changed,
    }
    return write_json_atomic(path, out)


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
    style = {"holds": "green", "fails": "red", "conditional": "yellow", "inconclusive": "blue"}
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
