"""Decision rules that turn measurements into verdicts, and the fits they rest on.

Each rule is a pure function of numbers, so it can be unit-tested with measurements that
disagree with the theory (it must then say "fails"). The tolerances are derived, not guessed:

* z-scores against a family-wise error rate α over K tests (Bonferroni): a claim fails when
  some |z| exceeds z* = t⁻¹_{ν}(1 − α/(2K)) (Student t with the MC sample's ν = n − 1 dof).
* a fitted slope holds when the theory value lies inside its (1 − α) confidence interval
  (Bonferroni-split when one verdict covers several fits).
* an identity checked in floating point holds when every residual is below a rigorous
  rounding-error bound (ratio ≤ 1), see :mod:`simulations.decomposition`.
* a reference number quoted to d significant digits holds when
  |measured − ref| ≤ z*·se + ½·10^{e−d+1} (MC error plus the quote's own rounding).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize, stats

# False-alarm rate of each statistical verdict, family-wise over its cells (our choice: 1 %;
# with ~10 statistical verdicts a correct theory is reported "fails" somewhere w.p. ≤ 10 %).
ALPHA = 0.01


def critical_z(n_tests: int, *, alpha: float = ALPHA, dof: float | None = None) -> float:
    """Two-sided Bonferroni critical value z* = q(1 − α/(2K)) of N(0,1) or of t_dof."""
    if n_tests < 1:
        raise ValueError(f"n_tests must be ≥ 1, got {n_tests}")
    q = 1.0 - alpha / (2.0 * n_tests)
    return float(stats.t.ppf(q, dof) if dof is not None else stats.norm.ppf(q))


def decide_identity(ratios) -> str:
    """"holds" iff every residual ÷ rounding bound ratio is ≤ 1 (and finite)."""
    r = np.asarray(ratios, dtype=float)
    return "holds" if r.size and np.all(np.isfinite(r)) and np.all(r <= 1.0) else "fails"


def decide_zscores(z, *, alpha: float = ALPHA, dof: float | None = None) -> tuple[str, float]:
    """Verdict on K z-scores (NaN entries = exactly-zero cells, skipped) and the z* used."""
    z = np.asarray(z, dtype=float).ravel()
    z = z[~np.isnan(z)]
    if z.size == 0:
        raise ValueError("decide_zscores needs at least one finite z-score")
    zc = critical_z(z.size, alpha=alpha, dof=dof)
    return ("holds" if np.all(np.abs(z) <= zc) else "fails"), zc


def decide_upper_bound(ratio_lo, ratio_hi) -> str:
    """Claim "measured ≤ bound" from CIs of measured/bound per cell.

    holds: every CI upper end ≤ 1; fails: some CI lower end > 1 (significantly above);
    conditional: otherwise (some cells cannot be told from the bound).
    """
    lo, hi = np.asarray(ratio_lo, float).ravel(), np.asarray(ratio_hi, float).ravel()
    if np.any(lo > 1.0):
        return "fails"
    return "holds" if np.all(hi <= 1.0) else "conditional"


def decide_interval(predicted: float, ci) -> str:
    """"holds" iff the predicted value lies inside the measured confidence interval."""
    lo, hi = ci
    return "holds" if lo <= predicted <= hi else "fails"


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


def decide_cells(agree) -> str:
    """All cells agree → holds; some → conditional; none → fails."""
    a = np.asarray(agree, dtype=bool).ravel()
    if a.size == 0:
        raise ValueError("decide_cells needs at least one cell")
    return "holds" if a.all() else ("conditional" if a.any() else "fails")


def quote_halfunit(ref: float, digits: int) -> float:
    """Half a unit in the last place of ``ref`` quoted to ``digits`` significant digits."""
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


def mean_ci(samples, *, alpha: float = 0.05) -> tuple[float, float, tuple[float, float]]:
    """Sample mean, its standard error and the (1 − α) Student-t interval."""
    x = np.asarray(samples, dtype=float).ravel()
    n = x.size
    mean = float(x.mean())
    if n < 2:
        return mean, float("nan"), (float("nan"), float("nan"))
    se = float(x.std(ddof=1) / math.sqrt(n))
    h = float(stats.t.ppf(1 - alpha / 2, n - 1)) * se
    return mean, se, (mean - h, mean + h)


def fit_loglinear(x, y, y_se=None, *, base: float = 2.0, alpha: float = 0.05) -> dict:
    """Weighted least-squares fit log_base(y) = c + k·x, with a (1 − α) CI for k.

    The per-point log-space error is y_se / (y·ln base) (delta method). The parameter
    covariance is scaled by max(χ²_red, 1): points scattering more than their MC errors
    (model misfit, factor-draw variation) widen the interval, and it never shrinks below
    what the MC errors alone allow. scipy.optimize.curve_fit does the fit.
    Returns dict(slope, slope_se, ci, intercept, chi2_red, n).
    """
    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    if x.size != y.size or x.size < 3:
        raise ValueError(f"fit_loglinear needs ≥ 3 matching points, got {x.size} and {y.size}")
    if np.any(y <= 0) or not np.all(np.isfinite(y)):
        raise ValueError("fit_loglinear needs finite positive y")
    ly = np.log(y) / math.log(base)
    if y_se is None:
        sig = None
    else:
        sig = np.maximum(np.asarray(y_se, float).ravel() / (y * math.log(base)), 1e-300)
    popt, pcov = optimize.curve_fit(lambda t, c, k: c + k * t, x, ly, sigma=sig,
                                    absolute_sigma=sig is not None)
    resid = ly - (popt[0] + popt[1] * x)
    dof = x.size - 2
    w = 1.0 / sig ** 2 if sig is not None else np.ones_like(x)
    chi2_red = float(np.sum(w * resid ** 2) / dof)
    if sig is not None:
        pcov = pcov * max(chi2_red, 1.0)
    se = float(math.sqrt(max(pcov[1, 1], 0.0)))
    h = float(stats.t.ppf(1 - alpha / 2, dof)) * se
    k = float(popt[1])
    return {"slope": k, "slope_se": se, "ci": (k - h, k + h), "intercept": float(popt[0]),
            "chi2_red": chi2_red, "n": int(x.size)}
