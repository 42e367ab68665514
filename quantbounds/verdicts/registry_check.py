"""Check the verdicts of a results file against the claim registry; map legacy verdicts to claims.

Every verdict carries ``claim_id`` (an id of :func:`quantbounds.verdicts.registry.registry`) and
``kind`` (the registry entry's kind). :func:`check_verdicts` raises :class:`VerdictClaimError`
listing every verdict that lacks either, names an unknown claim, or disagrees with the
registry's kind; :func:`verdict_problems` returns the same list without raising.

:func:`suggest_claim_id` maps a verdict of the results files written before claim ids existed
(``results/validation.json``, ``audit.json``, ``calibration.json``, ``allocation_check.json``)
to the claim it should carry, by its claim text — a wiring aid, documented in
``briefs/verdict_mapping.md``; new verdicts set ``claim_id`` themselves.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterable, Mapping

from quantbounds.verdicts.registry import KINDS, Registry, registry


class VerdictClaimError(ValueError):
    """Verdicts that do not name a registry claim, or name it with the wrong kind."""


def _label(i: int, v) -> str:
    text = v.get("claim", "") if isinstance(v, Mapping) else ""
    text = text if len(text) <= 70 else text[:69] + "…"
    return f"verdict {i}" + (f" ({text!r})" if text else "")


def verdict_problems(verdicts: Iterable[Mapping], *, reg: Registry | None = None) -> list[str]:
    """One line per problem: no claim_id, an unknown claim_id, no kind / an unknown kind, or a kind
    that disagrees with the registry entry. Empty when every verdict is wired correctly."""
    reg = registry() if reg is None else reg
    out = []
    for i, v in enumerate(verdicts):
        if not isinstance(v, Mapping):
            out.append(f"verdict {i}: not a JSON object ({type(v).__name__})")
            continue
        cid, kind = v.get("claim_id"), v.get("kind")
        if not cid:
            out.append(f"{_label(i, v)}: no claim_id")
            continue
        if cid not in reg:
            out.append(f"{_label(i, v)}: claim_id {cid!r} is not in the registry")
            continue
        want = reg[cid].kind
        if not kind:
            out.append(f"{_label(i, v)}: no kind (claim {cid!r} is {want!r})")
        elif kind not in KINDS:
            out.append(f"{_label(i, v)}: unknown kind {kind!r}; choose one of {KINDS}")
        elif kind != want:
            out.append(
                f"{_label(i, v)}: kind {kind!r} disagrees with claim {cid!r}, which is {want!r}"
            )
    return out


def check_verdicts(
    verdicts: Iterable[Mapping], *, reg: Registry | None = None, where: str = ""
) -> None:
    """Raise :class:`VerdictClaimError` naming every verdict that is not wired to the registry."""
    problems = verdict_problems(list(verdicts), reg=reg)
    if problems:
        head = f"{where}: " if where else ""
        raise VerdictClaimError(
            head
            + f"{len(problems)} verdict(s) not wired to the claim registry:\n  "
            + "\n  ".join(problems)
        )


def check_results_file(path: str | os.PathLike, *, reg: Registry | None = None) -> None:
    """:func:`check_verdicts` on the ``verdicts`` list of a results JSON file."""
    data = json.loads(Path(path).read_text())
    verdicts = data.get("verdicts") if isinstance(data, dict) else None
    if not isinstance(verdicts, list):
        raise VerdictClaimError(f"{path}: no 'verdicts' list")
    check_verdicts(verdicts, reg=reg, where=str(path))


# -- legacy verdicts → claim ids --------------------------------------------------------------
# (pattern on the verdict's claim text, claim id, remark). First match wins; the order matters
# where one text contains another. REMOVE: the verdict must be deleted, not wired.
REMOVE = "REMOVE"
LEGACY_MAP: tuple[tuple[str, str, str], ...] = (
    # validation.json
    (r"^Q\(B\)Q\(A\) − BA = ", "s001.eq6.decomposition", "identity: an implementation check"),
    (r"^PEFT zero-initialised B", "toolkit.zero_b", ""),
    (r"^Monte Carlo E‖Bε_A‖²", "toolkit.moments.fro", "self-consistency of the Monte Carlo engine"),
    (r"^Var\[\(ε_BA\)_ij\]", "toolkit.moments.entry", ""),
    (r"^E‖ε_BA·x‖²", "toolkit.moments.output", ""),
    (
        r"^variance bound .* holds \(",
        "toolkit.variance_bound.additive",
        "additive model checked against its own bound",
    ),
    (r"^absmax variance bound .* real per-tensor quantizers", "toolkit.variance_bound.real", ""),
    (r"^E‖ε_BA‖² falls by a factor 4 per bit", "s001.s5_1.exponential_precision", ""),
    (
        r"^E‖ε_BA‖² ∝ r\^1 under LoRA scale 'one'",
        "s001.thm3_1.rank_mechanism",
        "s = 1: the seed's convention",
    ),
    (r"^E‖ε_BA‖² ∝ r\^", "toolkit.scale_conventions", "α/r and rsLoRA: DESIGN.md's translation"),
    (
        r"^higher LoRA ranks need higher precision \(quantization error grows",
        "s001.s4_2.higher_rank_more_bits",
        "a proxy: the sign of the error slope, not the b* slope",
    ),
    (
        r"^additive uniform model \(Var ε = Δ²/12\)",
        "s001.eq3.noise_variance",
        "RTN and SR are two readings",
    ),
    (
        r"^RTN at b = 2 on Gaussian factors",
        "toolkit.widrow.epsba_ratio",
        "judges 0.47, a number DESIGN.md no longer states (now 0.95 paper grid, 0.26 mid-tread)",
    ),
    (r"^stochastic rounding error variance", "toolkit.sr_variance", ""),
    (
        r"lloyd max distortion of N\(0,1\) = 0\.009497",
        "toolkit.lloyd_max.reference",
        "judges Max's printed 0.009497 instead of the reference 0.0095010",
    ),
    (r"optimal uniform distortion of N\(0,1\) = 0\.01154", "toolkit.uniform_opt.reference", ""),
    (r"^NF4 blockwise distortion", "toolkit.blockwise.nf4", ""),
    (r"^INT4 blockwise distortion", "toolkit.blockwise.int4", ""),
    (r"^FP4 blockwise distortion", "toolkit.blockwise.fp4", ""),
    (r"^int8 blockwise error variance", "toolkit.absmax_exact", ""),
    (r"^blockwise distortion order NF4 < int4 < FP4", "s002.lloyd_max.nf4_vs_fp4_distortion", ""),
    (
        r"^NF4 code is MSE-optimal",
        "toolkit.nf4_not_mse_optimal",
        "judged an MSE claim the seed does not make; the seed's claim is "
        "s002.qlora.nf4_information_optimal",
    ),
    (
        r"^an optimal non-uniform quantizer beats the optimal uniform",
        "s002.lloyd_max.optimal_beats_uniform",
        "",
    ),
    # audit.json (linear and "off the linear case" nonlinear)
    (r"Thm 3\.2 worked example", REMOVE, "no seed contains b* ≈ 5.7"),
    (
        r"Thm 3\.1 generalization term",
        "s001.thm3_1.gen_term",
        "an upper bound, judged as an exact exponent",
    ),
    (r"^least squares: estimation error", "toolkit.ts.estimation_rate", ""),
    (
        r"excess at the parametric rate",
        "toolkit.ts.estimation_rate",
        "a ratio to σ²·d/N, not the slope",
    ),
    (r"^full-rank student reaches least squares", "toolkit.ts.closed_form", ""),
    (r"factor 4 per bit of the quantization excess", "s001.s5_1.exponential_precision", ""),
    (
        r"Thm 3\.1 quantization term O\(r·2\^\{−2b\}\)",
        "s001.thm3_1.quant_term",
        "an upper bound, judged as exact exponents",
    ),
    (r"Thm 3\.1 holds (as a bound|for r < r\*)", "s001.thm3_1.bound", ""),
    (r"Thm 3\.2 follows from Thm 3\.1", "s001.thm3_2.derivation", ""),
    (r"higher ranks require higher precision", "s001.s4_2.higher_rank_more_bits", ""),
    (r"^Thm 3\.2 rule as stated", "s001.thm3_2.rule", ""),
    (r"larger datasets can tolerate lower precision", "s001.s5_1.larger_data_lower_precision", ""),
    (r"performance degrades exponentially", "s001.s4_2.exponential_bits", ""),
    (
        r"^gradient variance scales as O\(r·2\^\{−2b\}\)",
        "s001.s4_2.grad_var_bits",
        "two claims in one verdict: split into grad_var_bits and grad_var_rank",
    ),
    (r"^Thm 3\.3:", "s001.thm3_3.bound", ""),
    (r"^guideline table: r ≤ 8", "s003.guideline.r_le_8", "teacher–student stand-in"),
    (r"^guideline table: 8 < r ≤ 16", "s003.guideline.r_9_16", "teacher–student stand-in"),
    (r"^guideline table: r > 16", "s003.guideline.r_gt_16", "no measurement behind it"),
    (r"^avoid 4-bit for ranks > 8", "s001.s4_3.avoid_4bit_gt_8", "second reading (worse at r > 8)"),
    # calibration.json
    (r"^8-bit gives < 5% perplexity degradation", "s003.guideline.r_le_8", ""),
    (r"^8-bit gives < 10% perplexity degradation", "s003.guideline.r_9_16", ""),
    (r"^4-bit degrades severely", "s001.s4_3.avoid_4bit_gt_8", ""),
    (
        r"^NF4 matches or beats 16-bit",
        "s002.abstract.nf4_matches_fp16",
        "stand-in: the embedded model",
    ),
    (r"^FP4 underperforms NF4", "s002.abstract.fp4_underperforms", "stand-in: the embedded model"),
    (
        r"^quantizing B, A: excess loss depends on rank",
        "s001.s4_2.degradation_linear_rank",
        "judged by the sign of a slope in log₂r, not by the exponent with a margin",
    ),
    (
        r"^quantizing W0: excess loss does not depend on rank",
        "toolkit.w0_rank_independence",
        "holds whenever the interval contains 0: needs TOST",
    ),
    (
        r"^predictions and results correlate with R > 0\.9",
        "s003.validation.correlation",
        "prediction in s = 1 while the runs used α/r",
    ),
    (r"^quantization-induced gradient variance falls by 4 per bit", "s001.s4_2.grad_var_bits", ""),
    (
        r"^Thm 3\.1 quantization term: error falls by 4 per bit",
        "s001.s5_1.exponential_precision",
        "fitted per-bit factor; wide intervals must be inconclusive",
    ),
    (
        r"^Thm 3\.1 quantization term: ∝ s²·r",
        "s001.s4_2.degradation_linear_rank",
        "fitted rank exponent; wide intervals must be inconclusive",
    ),
    (
        r"^Thm 3\.1 generalization term √\(r/N\)",
        "s001.thm3_1.gen_term",
        "fitted exponents of a bound term",
    ),
    # allocation_check.json
    (r"bound-optimal allocation beats reference uniform", "s000.summary.joint_allocation", ""),
)


def suggest_claim_id(verdict: Mapping | str) -> tuple[str, str] | None:
    """(claim id or "REMOVE", remark) for a legacy verdict (a dict with "claim", or its text);
    None if no rule matches."""
    text = verdict if isinstance(verdict, str) else str(verdict.get("claim", ""))
    for pat, cid, remark in LEGACY_MAP:
        if re.search(pat, text):
            return cid, remark
    return None


def wire_legacy(verdicts: Iterable[Mapping], *, reg: Registry | None = None) -> list[dict]:
    """Copies of ``verdicts`` with ``claim_id`` and ``kind`` filled in from :data:`LEGACY_MAP`
    where absent (verdicts to REMOVE are dropped; unmatched ones are left without an id, so
    :func:`check_verdicts` still reports them)."""
    reg = registry() if reg is None else reg
    out = []
    for v in verdicts:
        d = dict(v)
        if not d.get("claim_id"):
            hit = suggest_claim_id(d)
            if hit is not None:
                if hit[0] == REMOVE:
                    continue
                d["claim_id"] = hit[0]
                d.setdefault("kind", reg[hit[0]].kind)
        out.append(d)
    return out
