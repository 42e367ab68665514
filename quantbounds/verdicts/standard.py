"""The decision standard (DESIGN.md §6): one function per claim kind, and the family-wise step.

Every decision is a pair of one-sided tests on an estimate θ̂ with standard error se
(Student t with ``dof`` degrees of freedom, or normal when ``dof`` is None):

- ``p_holds``: the p-value of the test whose rejection establishes the claim;
- ``p_fails``: the p-value of the test whose rejection refutes it.

A claim ``holds`` when p_holds < α, ``fails`` when p_fails < α, and is ``inconclusive`` when
neither test rejects (the interval is too wide to decide). The two cannot both reject at
α ≤ ½ for a margin > 0, so the verdict is well defined. :func:`holm` then adjusts each
family's p-values (Holm 1979, step-down), and :func:`adjust_family` re-decides every verdict
with the adjusted p-values, keeping the raw decision beside it.

Kinds (the registry's):

- ``scaling_law`` / ``rule`` — equivalence to a predicted value c within a margin δ > 0:
  holds: TOST rejects |θ − c| ≥ δ, p_holds = max(P(T ≥ (θ̂ − c + δ)/se), P(T ≥ (c + δ − θ̂)/se));
  fails: θ outside [c − δ, c + δ] is established, p_fails = min(1, 2·min(p_above, p_below))
  with p_above = P(T ≥ (θ̂ − c − δ)/se) (H0: θ ≤ c + δ) and p_below = P(T ≥ (c − δ − θ̂)/se)
  (H0: θ ≥ c − δ), Bonferroni over the two sides.
- ``no_effect`` — the same with c = 0 (the claim's own margin, e.g. "< 5 % degradation").
- ``comparison`` — a directed difference d·θ > 0 (d = ±1): holds when a one-sided test rejects
  d·θ ≤ 0; fails when d·θ ≤ δ is established with δ ≥ 0 the practical margin (one-sided test
  rejecting d·θ ≥ δ: the claimed difference is absent or reversed).
- ``upper_bound`` — the measured quantity q against the bound's shape g (constant fitted on
  part of the configurations): with κ the growth exponent of q/g along the axis where the
  bound is claimed (e.g. the slope of log(q/g) in log N) and a ≥ 0 the allowance for the
  polylog factors Õ hides, holds when κ ≤ a is established (one-sided test rejecting κ ≥ a),
  fails when κ > a is established; a bound that is loose (κ < 0) holds. The tightness
  (measured ÷ bound) is reported by the caller either way.
- ``identity`` — exact algebra or a known answer: :func:`identity` (every residual within its
  rigorous rounding bound); reported apart from the findings.

A fit that is weakly identified, or whose held-out R² is below 0, never drives a decision:
:func:`usable_fit` says so and why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats

VERDICTS = ("holds", "fails", "conditional", "inconclusive")
ALPHA = 0.05


@dataclass(frozen=True, kw_only=True)
class Decision:
    """A verdict with the two p-values it rests on.

    verdict: "holds" | "fails" | "inconclusive" (| "conditional" when set by the caller);
    p_holds, p_fails: raw one-sided p-values (None for identity checks); reason: one line;
    adjusted: the Holm-adjusted (p_holds, p_fails) once a family has been adjusted, and
    raw_verdict the decision before adjustment; readings: {reading: verdict} when the
    decision was made under several readings of the claim (:func:`under_readings`).
    """

    verdict: str
    p_holds: float | None
    p_fails: float | None
    reason: str
    adjusted: tuple[float | None, float | None] | None = None
    raw_verdict: str | None = None
    readings: dict | None = None
    reading_p: dict | None = None

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")
        for name in ("p_holds", "p_fails"):
            p = getattr(self, name)
            if p is not None and not (0.0 <= p <= 1.0):
                raise ValueError(f"{name} must be in [0, 1], got {p!r}")


def _check(estimate: float, se: float, alpha: float, dof: float | None) -> None:
    if not math.isfinite(estimate):
        raise ValueError(f"estimate must be finite, got {estimate!r}")
    if not (se > 0 and math.isfinite(se)):
        raise ValueError(f"se must be finite and > 0, got {se!r}")
    if not (0.0 < alpha < 0.5):
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha!r}")
    if dof is not None and not dof > 0:
        raise ValueError(f"dof must be > 0 (or None for a normal reference), got {dof!r}")


def _sf(z: float, dof: float | None) -> float:
    """P(T ≥ z) for Student t with ``dof`` (normal when None)."""
    return float(stats.t.sf(z, dof) if dof is not None else stats.norm.sf(z))


def _decide(p_holds: float, p_fails: float, alpha: float, reason: str) -> Decision:
    if p_holds < alpha:
        verdict = "holds"
    elif p_fails < alpha:
        verdict = "fails"
    else:
        verdict = "inconclusive"
    return Decision(verdict=verdict, p_holds=p_holds, p_fails=p_fails, reason=reason)


def equivalence(
    estimate: float,
    se: float,
    *,
    center: float,
    margin: float,
    alpha: float = ALPHA,
    dof: float | None = None,
) -> Decision:
    """``scaling_law`` / ``rule``: is θ within ``margin`` of ``center``? (TOST; see the module.)

    holds ⇔ the (1 − 2α) interval θ̂ ± t·se lies inside [center − margin, center + margin];
    fails ⇔ θ is shown outside it (Bonferroni over its two sides).
    """
    _check(estimate, se, alpha, dof)
    if not (margin > 0 and math.isfinite(margin)):
        raise ValueError(f"margin must be finite and > 0 for an equivalence test, got {margin!r}")
    lo, hi = center - margin, center + margin
    p_holds = max(_sf((estimate - lo) / se, dof), _sf((hi - estimate) / se, dof))
    p_above = _sf((estimate - hi) / se, dof)  # H0: θ ≤ hi
    p_below = _sf((lo - estimate) / se, dof)  # H0: θ ≥ lo
    p_fails = min(1.0, 2.0 * min(p_above, p_below))
    return _decide(
        p_holds, p_fails, alpha, f"θ̂ = {estimate:.4g} ± {se:.3g} against [{lo:.4g}, {hi:.4g}]"
    )


def no_effect(
    estimate: float, se: float, *, margin: float, alpha: float = ALPHA, dof: float | None = None
) -> Decision:
    """``no_effect``: "does not depend on …", "matches": equivalence to 0 within ``margin``.
    An interval that merely contains 0 is not enough (that is inconclusive)."""
    return equivalence(estimate, se, center=0.0, margin=margin, alpha=alpha, dof=dof)


def comparison(
    estimate: float,
    se: float,
    *,
    direction: int = 1,
    margin: float = 0.0,
    alpha: float = ALPHA,
    dof: float | None = None,
) -> Decision:
    """``comparison``: a claimed difference direction·θ > 0 (e.g. "FP4 underperforms NF4":
    θ = loss(FP4) − loss(NF4), direction +1).

    holds ⇔ a one-sided test rejects direction·θ ≤ 0; fails ⇔ it is established that
    direction·θ < margin (margin ≥ 0: the smallest difference worth the claim; with 0, only a
    significant reversal refutes it).
    """
    _check(estimate, se, alpha, dof)
    if direction not in (1, -1):
        raise ValueError(f"direction must be +1 or −1, got {direction!r}")
    if not (margin >= 0 and math.isfinite(margin)):
        raise ValueError(f"margin must be finite and ≥ 0, got {margin!r}")
    d = direction * estimate
    p_holds = _sf(d / se, dof)
    p_fails = _sf((margin - d) / se, dof)
    return _decide(
        p_holds,
        p_fails,
        alpha,
        f"direction·θ̂ = {d:.4g} ± {se:.3g}; claimed > 0, refuted below {margin:.4g}",
    )


def upper_bound(
    excess_exponent: float,
    se: float,
    *,
    allowance: float = 0.0,
    alpha: float = ALPHA,
    dof: float | None = None,
) -> Decision:
    """``upper_bound``: does the measured quantity grow no faster than the bound's shape?

    excess_exponent κ: the growth exponent of measured ÷ bound along the bound's axis (e.g. the
    slope of log(q/g) against log N); allowance a ≥ 0: the polylog factors Õ(·) hides, as an
    exponent. holds ⇔ κ < a is established; fails ⇔ κ > a is established. A bound that is
    loose (the measured quantity falls faster, κ < 0) holds.
    """
    _check(excess_exponent, se, alpha, dof)
    if not (allowance >= 0 and math.isfinite(allowance)):
        raise ValueError(f"allowance must be finite and ≥ 0, got {allowance!r}")
    p_holds = _sf((allowance - excess_exponent) / se, dof)
    p_fails = _sf((excess_exponent - allowance) / se, dof)
    return _decide(
        p_holds,
        p_fails,
        alpha,
        f"excess growth exponent {excess_exponent:.4g} ± {se:.3g}, allowance {allowance:.3g}",
    )


def identity(ratios) -> Decision:
    """``identity``: holds iff every residual ÷ its rigorous rounding bound is finite and ≤ 1."""
    r = np.asarray(ratios, dtype=float)
    ok = bool(r.size) and bool(np.all(np.isfinite(r))) and bool(np.all(r <= 1.0))
    worst = float(np.max(r)) if r.size and np.all(np.isfinite(r)) else float("nan")
    return Decision(
        verdict="holds" if ok else "fails",
        p_holds=None,
        p_fails=None,
        reason=f"max residual ÷ bound = {worst:.3g}",
    )


def holm(p_values, *, alpha: float = ALPHA) -> tuple[np.ndarray, np.ndarray]:
    """Holm's step-down adjustment: (adjusted p-values, reject flags at α), in input order.

    Sorted p₍₁₎ ≤ … ≤ p₍K₎: p̃₍i₎ = max_{j ≤ i} min(1, (K − j + 1)·p₍j₎); reject where p̃ < α.
    Controls the family-wise error rate at α under any dependence. None entries are ignored
    (returned as NaN, not rejected).
    """
    p = np.array([np.nan if v is None else float(v) for v in p_values], dtype=float)
    adj = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    if ok.size:
        order = ok[np.argsort(p[ok], kind="stable")]
        k = order.size
        scaled = np.minimum(1.0, (k - np.arange(k)) * p[order])
        adj[order] = np.maximum.accumulate(scaled)
    return adj, np.where(np.isnan(adj), False, adj < alpha)


def adjust_family(decisions: list[Decision], *, alpha: float = ALPHA) -> list[Decision]:
    """Re-decide a results file's statistical verdicts with Holm-adjusted p-values.

    The family is all the tests of the file: each decision contributes p_holds and p_fails
    (two hypotheses). Identity checks (no p-values) and "conditional" verdicts set by the
    caller are kept as they are. Each returned decision keeps its raw verdict.
    """
    flat = [p for d in decisions for p in (d.p_holds, d.p_fails)]
    adj, _ = holm(flat, alpha=alpha)
    out = []
    for i, d in enumerate(decisions):
        if d.p_holds is None or d.verdict == "conditional":
            out.append(replace(d, raw_verdict=d.verdict))
            continue
        ph, pf = float(adj[2 * i]), float(adj[2 * i + 1])
        redo = _decide(ph, pf, alpha, d.reason)
        out.append(replace(d, verdict=redo.verdict, adjusted=(ph, pf), raw_verdict=d.verdict))
    return out


def usable_fit(*, heldout_r2: float | None, weakly_identified: bool) -> tuple[bool, str]:
    """Whether a fit may drive a decision (b* tables, the allocator): not weakly identified,
    and held-out R² ≥ 0 (it predicts held-out configurations better than their mean)."""
    if weakly_identified:
        return False, "weakly identified (an interval spans decades): not used for decisions"
    if heldout_r2 is None or not math.isfinite(heldout_r2):
        return False, "no held-out R²: not used for decisions"
    if heldout_r2 < 0:
        return False, f"held-out R² = {heldout_r2:.3g} < 0: not used for decisions"
    return True, f"held-out R² = {heldout_r2:.3g}"


def under_readings(named: dict[str, Decision]) -> Decision:
    """One decision from the same claim tested under each reasonable reading of it (b* by a
    relative or an absolute tolerance, θ* the teacher or the best rank-r parameter, σ, the
    factorisation (c·B, A/c), …): the common verdict when every reading agrees (with the
    largest p-values, so the weakest reading decides), else ``conditional`` with each
    reading's verdict named."""
    if not named:
        raise ValueError("under_readings needs at least one reading")
    verdicts = {k: d.verdict for k, d in named.items()}
    reason = "; ".join(f"{k}: {d.verdict} ({d.reason})" for k, d in named.items())
    # each reading's p-values, so that a results file's family step (results.finalize_verdicts)
    # re-decides every reading (statistical readings only)
    rp = {k: (d.p_holds, d.p_fails) for k, d in named.items()
          if d.p_holds is not None and d.p_fails is not None}
    if len(set(verdicts.values())) == 1:
        ds = list(named.values())
        if any(d.p_holds is None or d.p_fails is None for d in ds):
            ph = pf = None
        else:
            ph = max(d.p_holds for d in ds)
            pf = max(d.p_fails for d in ds)
        return Decision(
            verdict=ds[0].verdict, p_holds=ph, p_fails=pf, reason=reason, readings=verdicts,
            reading_p=rp or None,
        )
    return Decision(verdict="conditional", p_holds=None, p_fails=None, reason=reason,
                    readings=verdicts, reading_p=rp or None)


def judge(
    claim_id: str,
    estimate: float,
    se: float,
    *,
    dof: float | None = None,
    scale: str | None = None,
    center: float | None = None,
    margin: float | None = None,
    alpha: float | None = None,
) -> Decision:
    """Decide registry claim ``claim_id`` from an estimate and its standard error, with the
    test the registry fixed before the data were seen: its kind picks the rule above, its
    ``test.margin`` the margin (the allowance for an upper bound), ``test.direction`` a
    comparison's sign, and the prediction ``test.by_scale[scale]`` (the convention the
    measurements used) or ``test.predicted``. ``center`` / ``margin`` override the registry
    only where the caller measures on another scale (e.g. a log₂ factor); say so in the
    verdict's conditions."""
    from quantbounds.verdicts.registry import registry

    reg = registry()
    if claim_id not in reg:
        raise ValueError(f"claim_id {claim_id!r} is not in the claim registry")
    c = reg[claim_id]
    t = c.test
    a = t.alpha if alpha is None else alpha
    m = t.margin if margin is None else margin
    if c.kind in ("scaling_law", "rule"):
        if center is None:
            by = dict(t.by_scale)
            if scale is not None and scale in by:
                center = by[scale]
            elif scale is not None and by:
                raise ValueError(
                    f"claim {claim_id!r} predicts in scales {sorted(by)}, not {scale!r}"
                )
            else:
                center = t.predicted
        if center is None:
            raise ValueError(f"claim {claim_id!r} has no prediction; pass center=")
        return equivalence(estimate, se, center=center, margin=m, alpha=a, dof=dof)
    if c.kind == "no_effect":
        return no_effect(estimate - (center or 0.0), se, margin=m, alpha=a, dof=dof)
    if c.kind == "comparison":
        direction = 1 if t.direction == "greater" else -1
        return comparison(estimate - (center or 0.0), se, direction=direction, margin=m,
                          alpha=a, dof=dof)
    if c.kind == "upper_bound":
        return upper_bound(estimate, se, allowance=m, alpha=a, dof=dof)
    raise ValueError(
        f"claim {claim_id!r} is an identity: decide it with standard.identity(ratios)"
    )


def over_cells(named: dict, *, alpha: float = ALPHA, conditional: bool = True):
    """One decision from a claim tested in several cells (bits × granularity × family, ranks, …),
    each a :class:`quantbounds.verdicts.Decision` with p-values.

    holds  ⇔ it holds in every cell: the intersection–union test, p_holds = max over cells
             (valid at α without a multiplicity correction);
    fails  ⇔ it fails in some cell: p_fails = min(1, K·min over cells) (Bonferroni);
    conditional (when ``conditional``) ⇔ it fails in some cells and holds in others, each cell
             decided at α/K (Bonferroni, so the named cells hold simultaneously);
    else inconclusive. ``readings`` of the result: every cell's verdict at α/K."""
    if not named:
        raise ValueError("over_cells needs at least one cell")
    k = len(named)
    ph = max(d.p_holds for d in named.values())
    pf = min(1.0, k * min(d.p_fails for d in named.values()))
    cell = {
        name: "holds" if d.p_holds < alpha / k else "fails" if d.p_fails < alpha / k
        else "inconclusive"
        for name, d in named.items()
    }
    held = [n for n, v in cell.items() if v == "holds"]
    failed = [n for n, v in cell.items() if v == "fails"]
    reason = (f"{k} cells (each at α/{k}): {len(held)} hold, {len(failed)} fail, "
              f"{k - len(held) - len(failed)} inconclusive")
    if ph < alpha:
        verdict = "holds"
    elif pf < alpha and held and conditional:
        return Decision(verdict="conditional", p_holds=None, p_fails=None,
                                 reason=reason, readings=cell)
    elif pf < alpha:
        verdict = "fails"
    else:
        verdict = "inconclusive"
    return Decision(verdict=verdict, p_holds=ph, p_fails=pf, reason=reason,
                             readings=cell)


def mc_identity(measured: float, se: float, stated: float, margin: float, dof):
    """An ``identity`` claim on a number measured with Monte Carlo error (a value DESIGN.md
    states, a reference distortion): with the 95 % Student-t interval m ± t_{dof}·se,
    holds ⇔ it lies within stated ± margin (``identity`` of
    (|m − stated| + t·se) ÷ margin ≤ 1); fails ⇔ it lies wholly outside
    (|m − stated| − t·se > margin); else inconclusive — a close call is not a coin flip.
    No p-values: identities are implementation checks, kept out of the family's Holm step."""
    t = float(stats.t.ppf(0.975, dof)) if dof else float(stats.norm.ppf(0.975))
    se = 0.0 if se is None or not math.isfinite(se) else float(se)
    d = abs(float(measured) - stated)
    inside = (d + t * se) / margin
    outside = (d - t * se) / margin
    reason = (f"{measured:.5g} ± {t * se:.3g} (95 %) against {stated:.5g} ± {margin:.3g}: "
              f"(|d| + t·se) ÷ margin = {inside:.3g}")
    if inside <= 1.0 or outside > 1.0:
        dec = identity([inside])
        return Decision(verdict=dec.verdict, p_holds=None, p_fails=None, reason=reason)
    return Decision(verdict="inconclusive", p_holds=None, p_fails=None, reason=reason)


def identity_cells(named: dict, *, conditional: bool = True):
    """``identity`` claims decided cell by cell (each a :func:`mc_identity` Decision): every cell
    holds → holds; some hold and some fail → conditional (the cells named in ``readings``;
    with ``conditional=False``, for several numbers stated together, fails); some fail, none
    hold → fails; else inconclusive."""
    if not named:
        raise ValueError("identity_cells needs at least one cell")
    cell = {n: d.verdict for n, d in named.items()}
    n_ok = sum(v == "holds" for v in cell.values())
    n_bad = sum(v == "fails" for v in cell.values())
    reason = (f"{len(cell)} cells: {n_ok} hold, {n_bad} fail, "
              f"{len(cell) - n_ok - n_bad} inconclusive")
    if n_ok == len(cell):
        verdict = "holds"
    elif n_bad and n_ok and conditional:
        verdict = "conditional"
    elif n_bad:
        verdict = "fails"
    else:
        verdict = "inconclusive"
    return Decision(verdict=verdict, p_holds=None, p_fails=None, reason=reason,
                             readings=cell)
