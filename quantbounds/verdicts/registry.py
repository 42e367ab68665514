"""The claim registry: every quantitative claim of the seed documents, and the toolkit's own.

One :class:`Claim` per claim: a stable ``id``, the ``source`` file and the ``quote`` copied
verbatim from it, the claim's ``kind``, the ``quantity`` it is about, the ``convention`` it
assumes (LoRA scale, step Δ, range R) and the :class:`ClaimTest` that decides it, fixed before
the data are seen (DESIGN.md §6). A verdict in a results file names its claim by ``claim_id``
(:mod:`quantbounds.verdicts.registry_check`).

Kinds (DESIGN.md §6) and the sign convention of each kind's ``margin``:

- ``upper_bound``  (Õ(·), O(·), "≤"): margin ≥ 0 — the slack allowed above the bound on held-out
  configurations (relative, on measured ÷ bound) or in a growth exponent. Holds when the
  measured quantity stays under the bound's shape; a loose bound holds, its tightness reported.
- ``scaling_law``  ("linearly in r", "4× per bit"): margin > 0 — the half-width of the
  equivalence region around ``predicted``. Holds when the interval lies inside, fails when it
  lies outside, else inconclusive.
- ``no_effect``    ("matches", "does not depend on", "< 5 % degradation", a stated value):
  margin > 0 — the TOST equivalence bound (±margin; one-sided for non-inferiority).
- ``comparison``   ("FP4 underperforms NF4", "R > 0.9"): margin ≥ 0 — the smallest difference
  that counts, in the ``direction`` the claim predicts ("greater" | "less").
- ``rule``         (b* formulas): margin > 0 — tolerance between the rule's prediction and the
  measured optimum (bits, or bits per doubling).
- ``identity``     (exact algebra, a known answer, an implementation check): margin ≥ 0 —
  the tolerance (0 = exact). Reported apart from the findings.

``origin`` is "seed" for the seeds' claims and "toolkit" for the toolkit's own (DESIGN.md's
statements, reference values, implementation checks); the two are tallied apart.
A claim that cannot be tested here says why (``why_not``) and names a faithful ``stand_in``
where one exists, with the difference stated.

The module is torch- and JAX-free and does no work at import: :func:`registry` builds (and
validates) the entries on first call. :func:`build_registry` validates any list of claims —
a missing quote or test, an unknown kind, a margin of the wrong sign, a duplicate id raise
:class:`RegistryError` naming the claim. :func:`check_quotes` checks every quote against the
source files (whitespace-normalised substring); the test suite runs it.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Mapping

KINDS = ("upper_bound", "scaling_law", "rule", "comparison", "no_effect", "identity")
ORIGINS = ("seed", "toolkit")
DIRECTIONS = ("greater", "less")
# LoRA scale conventions a claim may assume (quantbounds.conventions.SCALES, plus "any": the
# claim does not involve s, e.g. a property of a quantizer; "n/a": no LoRA at all)
CONVENTION_SCALES = ("one", "alpha_r", "rslora", "any", "n/a")

SEED_FILES = {
    "s000": "000_e819af35a58a7b69.txt",
    "s001": "001_b495fa01a716f62e.txt",
    "s002": "002_ff9eca6efdb31914.txt",
    "s003": "003_0731ba8c3f64e7c2.txt",
}
TOOLKIT_SOURCE = "DESIGN.md"
SOURCES = tuple(SEED_FILES.values()) + (TOOLKIT_SOURCE,)
_ID_RE = re.compile(r"^(s00[0-3]|toolkit)(\.[a-z0-9_]+)+$")

# margin sign per kind: True = must be > 0, False = must be ≥ 0
_MARGIN_STRICT = {
    "upper_bound": False,
    "scaling_law": True,
    "no_effect": True,
    "comparison": False,
    "rule": True,
    "identity": False,
}


class RegistryError(ValueError):
    """A registry entry that does not validate; the message names the claim id."""


def normalize_ws(text: str) -> str:
    """Collapse every run of whitespace to one space and strip the ends."""
    return " ".join(text.split())


def readable(text: str) -> str:
    """Undo the UTF-8-read-as-cp1252 mojibake some seeds carry ("â‰¤" → "≤"); else unchanged.

    The registry keeps quotes verbatim (they must match the seed); this is for display only.
    """
    try:
        fixed = text.encode("cp1252").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return text
    return fixed


def _fail(cid: str, msg: str):
    raise RegistryError(f"claim {cid!r}: {msg}")


def _text(cid: str, name: str, value, *, min_len: int = 1) -> None:
    if not isinstance(value, str) or len(value.strip()) < min_len:
        _fail(
            cid,
            f"{name} must be a non-empty string"
            + (f" (≥ {min_len} characters)" if min_len > 1 else "")
            + f", got {value!r}",
        )


@dataclass(frozen=True, kw_only=True)
class Convention:
    """The convention a claim assumes.

    scale: the LoRA scale s in W = W0 + s·B·A — "one" (s = 1, the seed paper's), "alpha_r"
           (α/r, PEFT default), "rslora" (α/√r), "any" (s does not enter), "n/a" (no LoRA).
    step:  the quantization step Δ (e.g. "Δ = 2^{1−b}·R, the paper's step").
    range: the range R (e.g. "absmax per tensor").
    notes: anything else the claim takes for granted (what θ* is, which tensors are quantized).
    """

    scale: str
    step: str = "n/a"
    range: str = "n/a"
    notes: str = ""

    def validate(self, cid: str) -> None:
        if self.scale not in CONVENTION_SCALES:
            _fail(cid, f"convention.scale must be one of {CONVENTION_SCALES}, got {self.scale!r}")
        _text(cid, "convention.step", self.step)
        _text(cid, "convention.range", self.range)


@dataclass(frozen=True, kw_only=True)
class ClaimTest:
    """How a claim is decided, fixed before the data are seen (DESIGN.md §6).

    statistic:    what is computed from the measurements.
    decision:     when the verdict is holds / fails / inconclusive (/ conditional).
    margin:       the margin, sign by kind (module docstring); finite.
    margin_units: the units of ``margin`` (e.g. "exponent", "relative perplexity", "bits").
    alpha:        the test's level (before Holm's correction over the results file).
    predicted:    the claim's value where it has one (an exponent, a factor, a threshold).
    by_scale:     the prediction in each LoRA-scale convention, ((scale, value), ...), where it
                  changes with s (predictions are made in the convention the runs used).
    direction:    comparisons only: "greater" | "less" — the sign of the difference claimed.
    interval:     how the interval is computed (t / BCa, clustered over what).
    readings:     the reasonable readings of the claim tested side by side (→ "conditional").
    """

    statistic: str
    decision: str
    margin: float
    margin_units: str
    alpha: float = 0.05
    predicted: float | None = None
    by_scale: tuple[tuple[str, float], ...] = ()
    direction: str | None = None
    interval: str = ""
    readings: tuple[str, ...] = ()

    def validate(self, cid: str, kind: str) -> None:
        _text(cid, "test.statistic", self.statistic, min_len=8)
        _text(cid, "test.decision", self.decision, min_len=8)
        _text(cid, "test.margin_units", self.margin_units)
        m = self.margin
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m):
            _fail(cid, f"test.margin must be a finite number, got {m!r}")
        if _MARGIN_STRICT[kind] and m <= 0:
            _fail(
                cid,
                f"margin of the wrong sign: a {kind} claim needs margin > 0 "
                f"(an equivalence/tolerance half-width), got {m!r}",
            )
        if not _MARGIN_STRICT[kind] and m < 0:
            _fail(cid, f"margin of the wrong sign: a {kind} claim needs margin ≥ 0, got {m!r}")
        if (
            isinstance(self.alpha, bool)
            or not isinstance(self.alpha, (int, float))
            or not 0 < self.alpha < 0.5
        ):
            _fail(cid, f"test.alpha must be in (0, 0.5), got {self.alpha!r}")
        if self.predicted is not None and (
            isinstance(self.predicted, bool)
            or not isinstance(self.predicted, (int, float))
            or not math.isfinite(self.predicted)
        ):
            _fail(cid, f"test.predicted must be a finite number or None, got {self.predicted!r}")
        for item in self.by_scale:
            if (
                not isinstance(item, tuple)
                or len(item) != 2
                or item[0] not in ("one", "alpha_r", "rslora")
                or not isinstance(item[1], (int, float))
                or not math.isfinite(item[1])
            ):
                _fail(
                    cid,
                    f"test.by_scale entries must be (scale, finite value) with scale in "
                    f"('one', 'alpha_r', 'rslora'), got {item!r}",
                )
        if kind in ("scaling_law", "rule") and self.predicted is None and not self.by_scale:
            _fail(
                cid,
                f"a {kind} claim needs test.predicted (or test.by_scale): the value it predicts",
            )
        if kind == "comparison":
            if self.direction not in DIRECTIONS:
                _fail(
                    cid,
                    f"a comparison needs test.direction in {DIRECTIONS}, got {self.direction!r}",
                )
        elif self.direction is not None:
            _fail(
                cid,
                f"test.direction is for comparisons only, got {self.direction!r} on a {kind} claim",
            )
        if not isinstance(self.readings, tuple) or not all(
            isinstance(r, str) and r.strip() for r in self.readings
        ):
            _fail(cid, f"test.readings must be a tuple of non-empty strings, got {self.readings!r}")


@dataclass(frozen=True, kw_only=True)
class Claim:
    """One quantitative claim (module docstring).

    id:          stable, "<s000|s001|s002|s003|toolkit>.<section>.<name>".
    source:      the seed file name (origin "seed") or "DESIGN.md" (origin "toolkit").
    quote:       the sentence or equation, verbatim (whitespace aside) from ``source``.
    also_quoted: ((source, quote), ...) where the same claim is made elsewhere, verbatim too.
    kind, quantity, convention, test, origin: see the module docstring.
    testable:    False when the claim cannot be tested here; then ``why_not`` says why and
                 ``stand_in`` names the faithful stand-in tested instead, if one exists, with
                 the difference stated.
    section:     where in the source ("§4.2 item 2", "abstract", "table row 1").
    notes:       what a reader must know to judge the verdict.
    """

    id: str
    source: str
    quote: str
    kind: str
    quantity: str
    convention: Convention
    test: ClaimTest
    origin: str
    testable: bool = True
    why_not: str = ""
    stand_in: str = ""
    section: str = ""
    also_quoted: tuple[tuple[str, str], ...] = ()
    notes: str = ""

    def __post_init__(self):
        cid = self.id
        if not isinstance(cid, str) or not _ID_RE.match(cid):
            raise RegistryError(
                f"claim id {cid!r} must look like 's001.thm3_1.quant_term' "
                f"(prefix s000…s003 or toolkit, then lower-case dotted parts)"
            )
        if self.kind not in KINDS:
            _fail(cid, f"unknown kind {self.kind!r}; choose one of {KINDS}")
        if self.origin not in ORIGINS:
            _fail(cid, f"origin must be one of {ORIGINS}, got {self.origin!r}")
        if self.source not in SOURCES:
            _fail(cid, f"source must be one of {SOURCES}, got {self.source!r}")
        prefix = cid.split(".", 1)[0]
        want_source = TOOLKIT_SOURCE if prefix == "toolkit" else SEED_FILES[prefix]
        if self.source != want_source:
            _fail(cid, f"id prefix {prefix!r} needs source {want_source!r}, got {self.source!r}")
        if (self.origin == "toolkit") != (prefix == "toolkit"):
            _fail(
                cid,
                f"origin {self.origin!r} does not match the id prefix {prefix!r} "
                f"(toolkit claims are 'toolkit.…' from {TOOLKIT_SOURCE}, seed claims 's00N.…')",
            )
        if not isinstance(self.quote, str) or len(normalize_ws(self.quote)) < 8:
            _fail(
                cid, f"needs a source quote (the verbatim sentence or equation), got {self.quote!r}"
            )
        _text(cid, "quantity", self.quantity, min_len=8)
        if not isinstance(self.convention, Convention):
            _fail(cid, f"convention must be a Convention, got {type(self.convention).__name__}")
        self.convention.validate(cid)
        if not isinstance(self.test, ClaimTest):
            _fail(
                cid, f"needs a test (a ClaimTest fixed before the data are seen), got {self.test!r}"
            )
        self.test.validate(cid, self.kind)
        if not isinstance(self.testable, bool):
            _fail(cid, f"testable must be a bool, got {self.testable!r}")
        if not self.testable and len(self.why_not.strip()) < 8:
            _fail(cid, "an untestable claim must say why (why_not)")
        if self.testable and self.why_not.strip():
            _fail(cid, "why_not is for untestable claims; this one is marked testable")
        for item in self.also_quoted:
            if (
                not isinstance(item, tuple)
                or len(item) != 2
                or item[0] not in SOURCES
                or not isinstance(item[1], str)
                or len(normalize_ws(item[1])) < 8
            ):
                _fail(
                    cid, f"also_quoted entries must be (source in {SOURCES}, quote), got {item!r}"
                )

    @property
    def quotes(self) -> tuple[tuple[str, str], ...]:
        """(source, quote) of the primary quote and every ``also_quoted`` one."""
        return ((self.source, self.quote),) + tuple(self.also_quoted)

    @property
    def status(self) -> str:
        """"testable", "stand-in" (untestable as stated, tested on the stand-in) or
        "untestable"."""
        if self.testable:
            return "testable"
        return "stand-in" if self.stand_in.strip() else "untestable"

    def to_dict(self) -> dict:
        t, c = self.test, self.convention
        return {
            "id": self.id,
            "source": self.source,
            "section": self.section,
            "quote": self.quote,
            "also_quoted": [list(q) for q in self.also_quoted],
            "kind": self.kind,
            "quantity": self.quantity,
            "origin": self.origin,
            "testable": self.testable,
            "status": self.status,
            "why_not": self.why_not,
            "stand_in": self.stand_in,
            "notes": self.notes,
            "convention": {"scale": c.scale, "step": c.step, "range": c.range, "notes": c.notes},
            "test": {
                "statistic": t.statistic,
                "decision": t.decision,
                "margin": t.margin,
                "margin_units": t.margin_units,
                "alpha": t.alpha,
                "predicted": t.predicted,
                "by_scale": {k: v for k, v in t.by_scale},
                "direction": t.direction,
                "interval": t.interval,
                "readings": list(t.readings),
            },
        }


class Registry(Mapping):
    """An ordered, read-only id → :class:`Claim` mapping."""

    def __init__(self, claims: dict[str, Claim]):
        self._claims = dict(claims)

    def __getitem__(self, cid: str) -> Claim:
        try:
            return self._claims[cid]
        except KeyError:
            raise KeyError(f"no claim {cid!r} in the registry") from None

    def __iter__(self):
        return iter(self._claims)

    def __len__(self) -> int:
        return len(self._claims)

    def select(self, *, kind: str | None = None, origin: str | None = None) -> list[Claim]:
        if kind is not None and kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if origin is not None and origin not in ORIGINS:
            raise ValueError(f"origin must be one of {ORIGINS}, got {origin!r}")
        return [
            c
            for c in self._claims.values()
            if (kind is None or c.kind == kind) and (origin is None or c.origin == origin)
        ]

    def tally(self) -> dict:
        """Counts by origin × kind, by source, and by testability (seed and toolkit apart)."""
        out: dict = {}
        for origin in ORIGINS:
            cs = self.select(origin=origin)
            out[origin] = {
                "total": len(cs),
                "by_kind": {k: sum(c.kind == k for c in cs) for k in KINDS},
                "by_source": {
                    s: sum(c.source == s for c in cs)
                    for s in SOURCES
                    if any(c.source == s for c in cs)
                },
                "by_status": {
                    s: sum(c.status == s for c in cs)
                    for s in ("testable", "stand-in", "untestable")
                },
            }
        return out


def build_registry(claims: Iterable[Claim]) -> Registry:
    """Validate ``claims`` as a registry: each a :class:`Claim`, ids unique."""
    out: dict[str, Claim] = {}
    for i, c in enumerate(claims):
        if not isinstance(c, Claim):
            raise RegistryError(f"registry entry {i} is a {type(c).__name__}, not a Claim")
        if c.id in out:
            raise RegistryError(f"duplicate claim id {c.id!r}")
        out[c.id] = c
    return Registry(out)


@lru_cache(maxsize=1)
def registry() -> Registry:
    """The registry (built and validated on first call)."""
    from quantbounds.verdicts._claims_table import claims

    return build_registry(claims())


def find_sources(start: str | os.PathLike | None = None) -> Path | None:
    """The folder holding DESIGN.md and seeds/: $QUANTBOUNDS_SHARED, else ../shared or ./shared
    next to the repository root; None if not found."""
    env = os.environ.get("QUANTBOUNDS_SHARED")
    cands = [Path(env)] if env else []
    root = Path(start) if start is not None else Path(__file__).resolve().parents[2]
    cands += [root.parent / "shared", root / "shared"]
    for c in cands:
        if (c / "DESIGN.md").is_file() and (c / "seeds").is_dir():
            return c
    return None


def source_path(shared: str | os.PathLike, source: str) -> Path:
    shared = Path(shared)
    return shared / source if source == TOOLKIT_SOURCE else shared / "seeds" / source


def check_quotes(shared: str | os.PathLike, claims: Iterable[Claim] | None = None) -> list[str]:
    """Every quote that is not a substring of its source after whitespace normalisation,
    as "claim id: source: quote" lines (empty when all match)."""
    cache: dict[str, str] = {}
    bad = []
    for c in registry().values() if claims is None else claims:
        for src, q in c.quotes:
            if src not in cache:
                cache[src] = normalize_ws(source_path(shared, src).read_text(encoding="utf-8"))
            if normalize_ws(q) not in cache[src]:
                bad.append(f"{c.id}: {src}: {q!r}")
    return bad
