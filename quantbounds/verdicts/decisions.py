"""Decision rules: measurements and their intervals in, "holds" / "fails" / "conditional" out.

The one set of rules shared by ``validate`` (simulations/decomposition, moments_mc, slopes,
breakdown, codebooks), ``audit`` (simulations/audit_claims) and ``calibrate``
(:mod:`quantbounds.verdicts.claims`). Each rule is a pure function of numbers, so it is tested
with measurements that disagree with the claim (it must then say "fails"). The intervals they
read come from :mod:`quantbounds.verdicts.intervals`. Tolerances are derived, not guessed:

* z-scores against a family-wise error rate α over K tests (Bonferroni): a claim fails when
  some |z| exceeds z* = q(1 − α/(2K)) of N(0,1) or of Student t with ν dof (:func:`critical_z`).
* a predicted value holds when it lies inside the measured interval (:func:`decide_interval`);
  a prediction that differs from "no effect" is only tested when the interval excludes the
  no-effect value (:func:`decide_interval_vs_null`).
* an identity checked in floating point holds when every residual is below a rigorous
  rounding-error bound (ratio ≤ 1, :func:`decide_identity`).
* a reference number quoted to d significant digits holds when
  |measured − ref| ≤ z*·se + ½·10^{e−d+1} (MC error plus the quote's rounding,
  :func:`decide_reference`).
* a threshold claim ("< 5 %", "> 0.9") holds when the interval lies wholly on the claimed side
  (:func:`decide_side`); an upper bound "measured ≤ bound" is judged per cell
  (:func:`decide_upper_bound_cells`) or by the interval of max(measured/bound)
  (:func:`decide_upper_bound_max`).

The rules differ at their boundaries (``decide_sign`` fails an interval ending at 0 only when
hi < 0, ``decide_side(want="above")`` when hi ≤ 0); these are kept as they were decided.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

# False-alarm rate of each statistical verdict of `validate`, family-wise over its cells (our
# choice: 1 %; with ~10 statistical verdicts a correct theory is reported "fails" somewhere
# w.p. ≤ 10 %).
ALPHA = 0.01

# Fewer independent units (pairs of runs, baseline groups) than this: percentile intervals far
# too narrow to decide (n ≤ 3 covers ≪ 95 %), so the claims on paired runs say "conditional".
MIN_PAIRS = 4


def critical_z(n_tests: int, *, alpha: float = ALPHA, dof: float | None = None) -> float:
    """Two-sided Bonferroni critical value z* = q(1 − α/(2K)) of N(0,1) or of t_dof."""
    if n_tests < 1:
        raise ValueError(f"n_tests must be ≥ 1, got {n_tests}")
    q = 1.0 - alpha / (2.0 * n_tests)
    return float(stats.t.ppf(q, dof) if dof is not None else stats.norm.ppf(q))


# ---- identities and z-scores (validate) ------------------------------------------------------

def decide_identity(ratios) -> str:
    """"holds" iff every residual ÷ rounding bound ratio is ≤ 1 (and finite)."""
    r = np.asarray(ratios, dtype=float)
    return "holds" if r.size and np.all(np.isfinite(r)) and np.all(r <= 1.0) else "fails"


def decide_zscores(z, *, alpha: float = ALPHA, dof: float | None = None) -> tuple[str, float]:
    """Verdict on K z-scores (NaN entries = exactly-zero cells, skipped) and the z* used:
    "holds" iff every |z| ≤ z* = :func:`critical_z` (K)."""
    z = np.asarray(z, dtype=float).ravel()
    z = z[~np.isnan(z)]
    if z.size == 0:
        raise ValueError("decide_zscores needs at least one finite z-score")
    zc = critical_z(z.size, alpha=alpha, dof=dof)
    return ("holds" if np.all(np.abs(z) <= zc) else "fails"), zc


def quote_halfunit(ref: float, digits: int) -> float:
    """Half a unit in the last place of ``ref`` quoted to ``digits`` significant digits:
    ½·10^{e−d+1} with e = ⌊log₁₀|ref|⌋ (0 for ref = 0)."""
    if ref == 0:
        return 0.0
    e = math.floor(math.log10(abs(ref)))
    return 0.5 * 10.0 ** (e - digits + 1)


def decide_reference(measured: float, se: float, ref: float, *, digits: int,
                     n_tests: int = 1, alpha: float = ALPHA) -> tuple[str, float]:
    """Agreement with a quoted number: |m − ref| ≤ z*·se + ½ ulp of the quote. Returns
    (verdict, tolerance)."""
    tol = critical_z(n_tests, alpha=alpha) * se + quote_halfunit(ref, digits)
    return ("holds" if abs(measured - ref) <= tol else "fails"), tol


def decide_cells(agree) -> str:
    """All cells agree → holds; some → conditional; none → fails."""
    a = np.asarray(agree, dtype=bool).ravel()
    if a.size == 0:
        raise ValueError("decide_cells needs at least one cell")
    return "holds" if a.all() else ("conditional" if a.any() else "fails")


# ---- a predicted value against an interval ----------------------------------------------------

def decide_interval(predicted: float, ci) -> str:
    """"holds" iff the predicted value lies inside the measured interval [lo, hi]."""
    lo, hi = ci
    return "holds" if lo <= predicted <= hi else "fails"


def decide_all_intervals(predicted, cis) -> str:
    """Several point claims made together: "holds" iff every prediction lies in its interval."""
    inside = (decide_interval(p, c) == "holds" for p, c in zip(predicted, cis))
    return "holds" if all(inside) else "fails"


def decide_interval_vs_null(predicted: float, ci, *, null: float) -> str:
    """"fails" if [lo, hi] excludes ``predicted``; "conditional" if it also contains the
    no-effect value ``null`` (then the interval tests nothing); else "holds"."""
    lo, hi = ci
    if not lo <= predicted <= hi:
        return "fails"
    return "conditional" if predicted != null and lo <= null <= hi else "holds"


def decide_slope(predicted: float, ci, ci_fixed_range=None) -> str:
    """Slope claim from the slope's CI with absmax ranges (``ci``) and, when given, with the
    ranges held fixed (``ci_fixed_range``, the setting the theory assumes).

    fails: predicted ∉ ci_fixed_range (the claim is wrong even on its own assumptions);
    holds: predicted ∈ ci (and ∈ ci_fixed_range when given);
    conditional: predicted ∈ ci_fixed_range only (true for fixed ranges; the growth of the
    absmax range with r shifts the measured slope)."""
    if ci_fixed_range is not None and decide_interval(predicted, ci_fixed_range) == "fails":
        return "fails"
    if decide_interval(predicted, ci) == "holds":
        return "holds"
    return "conditional" if ci_fixed_range is not None else "fails"


# ---- thresholds, signs and bounds ------------------------------------------------------------

def decide_side(ci, threshold: float, *, want: str, n_units: int | None = None) -> str:
    """A threshold claim: "holds" if the whole interval [lo, hi] is on the claimed side of
    ``threshold`` (want="below": hi < t; want="above": lo > t), "fails" if it is wholly on the
    other side (below: lo ≥ t; above: hi ≤ t), else "conditional" (inconclusive). With
    ``n_units`` < MIN_PAIRS independent units the answer is always "conditional"."""
    if want not in ("below", "above"):
        raise ValueError(f"want must be 'below' or 'above', got {want!r}")
    if n_units is not None and n_units < MIN_PAIRS:
        return "conditional"
    lo, hi = ci
    if want == "below":
        return "holds" if hi < threshold else ("fails" if lo >= threshold else "conditional")
    return "holds" if lo > threshold else ("fails" if hi <= threshold else "conditional")


def decide_sign(ci, *, claimed_positive: bool = True) -> str:
    """A direction claim ("increases with"): holds if the CI excludes 0 on the claimed side
    (lo > 0 for a positive claim), fails if it excludes 0 on the other side (hi < 0),
    conditional if it contains 0."""
    lo, hi = ci
    if lo > 0:
        return "holds" if claimed_positive else "fails"
    if hi < 0:
        return "fails" if claimed_positive else "holds"
    return "conditional"


def decide_upper_bound_cells(ratio_lo, ratio_hi) -> str:
    """Claim "measured ≤ bound" from CIs of measured/bound per cell.

    holds: every CI upper end ≤ 1; fails: some CI lower end > 1 (significantly above);
    conditional: otherwise (some cells cannot be told from the bound).
    """
    lo, hi = np.asarray(ratio_lo, float).ravel(), np.asarray(ratio_hi, float).ravel()
    if np.any(lo > 1.0):
        return "fails"
    return "holds" if np.all(hi <= 1.0) else "conditional"


def decide_upper_bound_max(ratio_ci) -> str:
    """A bound judged by the interval of max over cells of measured/bound: holds if the CI
    lies ≤ 1 (hi ≤ 1), fails if it lies above 1 (lo > 1), conditional if it straddles 1."""
    lo, hi = ratio_ci
    if hi <= 1.0:
        return "holds"
    if lo > 1.0:
        return "fails"
    return "conditional"


def decide_exponential(factor_ci, dominated_fraction: float) -> str:
    """"Performance degrades exponentially with reduced precision": the quantization part must
    grow by a constant factor > 1 per bit removed (factor CI above 1), and the total loss follows
    it only where the quantization term dominates. Fails if the factor CI reaches 1; holds if the
    quantization term dominates at every grid cell; otherwise conditional on that."""
    if factor_ci[0] <= 1.0:
        return "fails"
    return "holds" if dominated_fraction >= 1.0 else "conditional"
