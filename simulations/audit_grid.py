"""The audit's grid as the claim builders see it, and the helpers both students' claims share.

:class:`GridView` holds one convention's seed-resolved arrays (fp excess, quantization excess
and total excess after post-training RTN), the rank mask r ≥ r*, the seed bootstrap with the
audit's replicate count and the set-up text every verdict quotes.

Intervals. Every interval of the audit resamples the seeds, the independent units of the grid
(with ``teacher_per_seed`` each seed is its own draw of teacher, data, initialisation and
noise, so the seeds are the clusters and the interval covers teachers too):
:func:`boot` is :func:`quantbounds.verdicts.intervals.seed_bootstrap`'s normal-theory
interval θ̂ ± t_{S−1}·sd*·√(S/(S−1)) for a vector of statistics computed once per resample
(the same resamples, :func:`quantbounds.verdicts.intervals.resample_indices`), returned as
:class:`Est` (value, se, dof, ci) — the (estimate, se, dof) the decision standard reads.

Decisions. Every verdict is decided by :mod:`quantbounds.verdicts.standard`: ``judge`` with
the registry's fixed test, ``upper_bound`` for Theorem 3.1's and 3.3's bounds (on the growth
exponent of measured ÷ bound, and on the held-out tightness log τ), ``under_readings`` where
the claim's outcome turns on a definition. :func:`all_of` joins the parts of one claim that
must all hold (an intersection–union test: p_holds = the largest part's, p_fails Bonferroni
over the parts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import stats

from quantbounds.verdicts import standard
from quantbounds.verdicts.intervals import resample_indices
from quantbounds.verdicts.results import Verdict
from simulations.audit_fits import crossing_bits, fe_slope, fit_envelope

S001, S003, DES = "seed 001 (paper)", "seed 003 (README)", "DESIGN.md §2"

# held-out tightness τ = max measured ÷ fitted bound: holds when τ ≤ 1 + TAU_SLACK is established
# (the registry's decision text of s001.thm3_1.bound / gen_term / quant_term: "τ ≤ 1.10")
TAU_SLACK = 0.10


def seed_mean(x):
    """Mean over the last (seed) axis."""
    return np.mean(x, axis=-1)


@dataclass(frozen=True)
class Est:
    """An estimate with its seed-bootstrap standard error: value, se, dof (S − 1) and the
    95 % t interval value ± t_{dof}·se (NaN se/ci when it could not be computed)."""

    value: float
    se: float
    dof: float
    ci: tuple

    def fit(self, **extra) -> dict:
        """The fits' {"value", "ci", "se", "dof"} entry."""
        return {"value": self.value, "ci": list(self.ci), "se": self.se, "dof": self.dof, **extra}

    def map(self, f: Callable, df: Callable) -> "Est":
        """f(θ̂) with the delta-method se |f′(θ̂)|·se (e.g. a factor 2^{−slope} from a slope)."""
        v = float(f(self.value))
        se = float(abs(df(self.value)) * self.se)
        return _est(v, se, self.dof)

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.value) and np.isfinite(self.se) and self.se > 0)


def _est(value: float, se: float, dof: float) -> Est:
    if not (np.isfinite(value) and np.isfinite(se) and dof > 0):
        return Est(float(value), float("nan"), float(dof), (float("nan"), float("nan")))
    half = float(stats.t.ppf(0.975, dof)) * se
    return Est(float(value), float(se), float(dof), (float(value) - half, float(value) + half))


def boot(stat: Callable, arrays, *, n_boot: int, seed: int = 0):
    """Seed bootstrap of ``stat(*arrays)`` (a scalar or a 1-D vector of statistics), resampling
    the LAST axis of every array (the S seeds) with the audit's one resampler. Returns one
    :class:`Est` (or a list, for a vector stat) with se = sd*·√(S/(S−1)) over the finite
    replicates and dof = S − 1 (seed_bootstrap's interval)."""
    first = np.asarray(stat(*arrays), float)
    est = np.atleast_1d(first)
    n_seeds = arrays[0].shape[-1]
    reps = []
    for idx in resample_indices(n_seeds, n_boot=n_boot, rng=np.random.default_rng(seed)):
        reps.append(np.atleast_1d(np.asarray(stat(*[a[..., idx] for a in arrays]), float)))
    reps = np.array(reps)
    out = []
    for k in range(est.size):
        col = reps[:, k][np.isfinite(reps[:, k])]
        if n_seeds < 2 or col.size < 2:
            se = float("nan")
        else:
            se = float(np.std(col, ddof=1)) * math.sqrt(n_seeds / (n_seeds - 1))
        out.append(_est(est[k], se, n_seeds - 1))
    return out if first.ndim else out[0]


def decide_p(p_holds: float, p_fails: float, reason: str) -> standard.Decision:
    """A decision from its two p-values by the standard's own rule (holds if p_holds < α, else
    fails if p_fails < α, else inconclusive) — the rule write_results' Holm step re-applies."""
    return standard._decide(min(1.0, p_holds), min(1.0, p_fails), standard.ALPHA, reason)


def no_interval(reason: str) -> standard.Decision:
    """No usable interval (too few finite replicates): inconclusive, with p-values 1."""
    return standard.Decision(verdict="inconclusive", p_holds=1.0, p_fails=1.0,
                             reason="no interval: " + reason)


def judge(claim_id: str, e: Est, **kw) -> standard.Decision:
    """standard.judge on an :class:`Est` (inconclusive when it has no interval)."""
    if not e.ok:
        return no_interval(f"{claim_id}: estimate {e.value!r}")
    return standard.judge(claim_id, e.value, e.se, dof=e.dof, **kw)


def grows_no_faster(e: Est, *, allowance: float, what: str = "") -> standard.Decision:
    """standard.upper_bound on a growth exponent κ of measured ÷ bound (κ < allowance holds)."""
    if not e.ok:
        return no_interval(what or "growth exponent")
    d = standard.upper_bound(e.value, e.se, allowance=allowance, dof=e.dof)
    return d if not what else standard.Decision(verdict=d.verdict, p_holds=d.p_holds,
                                                p_fails=d.p_fails, reason=f"{what}: {d.reason}")


def tightness(log_tau: Est, *, slack: float = TAU_SLACK, growth=(),
              what: str = "held-out τ") -> standard.Decision:
    """The held-out check of a bound with fitted constants: τ = max over held-out cells of
    measured ÷ bound, judged on log τ by standard.upper_bound with allowance log(1 + slack):
    holds when τ < 1 + slack is established; fails when τ > 1 + slack is established AND (when
    ``growth`` decisions are given) measured ÷ bound is shown to grow along some held-out
    direction (p_fails = the larger of the two, an intersection–union test; the growth p-value
    Bonferroni over the directions)."""
    if not log_tau.ok:
        return no_interval(what)
    d = standard.upper_bound(log_tau.value, log_tau.se, allowance=math.log1p(slack),
                             dof=log_tau.dof)
    tau = math.exp(log_tau.value)
    reason = (f"{what} = {tau:.4g} (log {log_tau.value:.3g} ± {log_tau.se:.3g}) "
              f"against ≤ {1 + slack:g}")
    p_fails = d.p_fails
    growth = list(growth)
    if growth:
        p_grow = min(1.0, len(growth) * min(g.p_fails for g in growth))
        p_fails = max(p_fails, p_grow)
        reason += "; fails only if measured ÷ bound also grows: " + "; ".join(
            g.reason for g in growth)
    return decide_p(d.p_holds, p_fails, reason)


def all_of(named: dict[str, standard.Decision]) -> standard.Decision:
    """One decision from parts that must all hold: holds iff every part holds (p_holds the
    largest part's: an intersection–union test), fails iff some part fails (p_fails Bonferroni
    over the parts). Parts without p-values are not allowed."""
    ds = list(named.values())
    if any(d.p_holds is None or d.p_fails is None for d in ds):
        raise ValueError("all_of needs statistical parts (p_holds and p_fails)")
    ph = max(d.p_holds for d in ds)
    pf = min(1.0, len(ds) * min(d.p_fails for d in ds))
    reason = "; ".join(f"{k}: {d.verdict} ({d.reason})" for k, d in named.items())
    return decide_p(ph, pf, reason)


def readings(named: dict[str, standard.Decision]) -> standard.Decision:
    """standard.under_readings (the common verdict, or conditional with the readings named)."""
    return standard.under_readings(named)


def verdict(claim_id: str, claim: str, decision: standard.Decision, *, predicted, measured,
            ci=None, conditions: str = "", source: str = "", details: dict | None = None):
    """Verdict.from_decision, with each reading's verdict (if any) named in the conditions."""
    if decision.verdict == "conditional" and decision.readings:
        named = "; ".join(f"{k}: {v}" for k, v in decision.readings.items())
        conditions = (conditions + "; " if conditions else "") + "readings — " + named
    return Verdict.from_decision(claim_id, decision, claim=claim, predicted=predicted,
                                 measured=measured, ci=ci, conditions=conditions, source=source,
                                 details=details or {})


@dataclass(frozen=True)
class GridView:
    """One convention's seed-resolved arrays of the grid and what every claim family needs.

    fp_excess (R, N, S): exact excess risk of the full-precision student; quant_excess and
    ptq_excess (R, N, B, S): quantization part and total excess after post-training RTN;
    high_rank: ranks ≥ r*; n_boot: replicates of the seed bootstrap; conditions: the set-up,
    quoted in every verdict.
    """

    ranks: np.ndarray
    Ns: np.ndarray
    bits: np.ndarray
    fp_excess: np.ndarray
    quant_excess: np.ndarray
    ptq_excess: np.ndarray
    high_rank: np.ndarray
    n_boot: int
    conditions: str

    def boot(self, stat: Callable, arrays, *, n_boot: int | None = None):
        """:func:`boot` with the audit's replicate count."""
        return boot(stat, arrays, n_boot=n_boot or self.n_boot)


def grid_view(fp: dict, cfg, *, n_boot: int, conditions: str) -> GridView:
    """The GridView of one run_grid / run_nonlinear_grid arm ``fp`` (seed axis moved last)."""
    ranks = np.array(cfg.ranks, float)
    return GridView(ranks=ranks, Ns=np.array(cfg.Ns, float), bits=np.array(cfg.bits, float),
                    fp_excess=np.asarray(fp["excess_latent"], float),
                    quant_excess=np.moveaxis(np.asarray(fp["ptq_qexcess"], float), -1, -2),
                    ptq_excess=np.moveaxis(np.asarray(fp["ptq_excess"], float), -1, -2),
                    high_rank=ranks >= cfg.r_star, n_boot=n_boot, conditions=conditions)


def largest_three(Ns: np.ndarray) -> np.ndarray:
    """Mask of the three largest sample sizes N."""
    return Ns >= np.sort(Ns)[max(len(Ns) - 3, 0)]


def cell_axes(grid: GridView):
    """(r, N, b) on the (R, N, B) cell grid."""
    return np.meshgrid(grid.ranks, grid.Ns, grid.bits, indexing="ij")


def bound_shapes(grid: GridView):
    """Theorem 3.1's two shapes on the (R, N, B) cell grid, with the polylog factor Õ hides
    written out: √(r/N)·ln N and r·4^{−b} (s = 1; σ_g² absorbed in C2)."""
    r, N, b = cell_axes(grid)
    return np.sqrt(r / N) * np.log(N), r * 4.0 ** -b


def _growth(log_ratio, axis_values, mask, axis: int) -> float:
    """Fixed-effects slope of log(measured ÷ bound) against log(axis value) over the ``mask``
    cells (one intercept per combination of the other axes)."""
    shape = log_ratio.shape
    x = np.broadcast_to(np.log(np.asarray(axis_values, float)).reshape(
        [-1 if i == axis else 1 for i in range(len(shape))]), shape)
    other = np.moveaxis(np.arange(int(np.prod(shape))).reshape(shape), axis, -1)
    groups = np.moveaxis(np.broadcast_to(other[..., :1], other.shape), -1, axis)
    sel = mask & np.isfinite(log_ratio)
    if len(np.unique(x[sel])) < 2:
        return float("nan")
    return fe_slope(log_ratio[sel], x[sel], groups[sel])


def bound_heldout(y_mean, gen, quant, fit_cells, test_cells, growth_axes=()):
    """The envelope C1·gen + C2·quant (LP, :func:`simulations.audit_fits.fit_envelope`) fitted
    on ``fit_cells`` of the seed-mean measured ``y_mean``, checked on ``test_cells``: returns
    [log τ, growth exponents…] with τ = max over test cells of measured ÷ bound and one growth
    exponent of log(measured ÷ bound) over the test cells per (axis_values, axis) in
    ``growth_axes``. Arrays broadcast to y_mean's shape."""
    y = np.maximum(y_mean, np.finfo(float).tiny)
    g, q = np.broadcast_to(gen, y.shape), np.broadcast_to(quant, y.shape)
    C1, C2 = fit_envelope(g[fit_cells], q[fit_cells], y[fit_cells])
    log_ratio = np.log(y) - np.log(C1 * g + C2 * q)
    out = [float(np.max(log_ratio[test_cells]))]
    out += [_growth(log_ratio, vals, test_cells, ax) for vals, ax in growth_axes]
    return np.array(out)


def one_term_heldout(y_mean, shape, fit_cells, test_cells, growth_axes=()):
    """:func:`bound_heldout` for a one-term bound C·shape: C = max over fit cells of measured ÷
    shape (the smallest valid constant), τ and the growth exponents as there."""
    y = np.maximum(y_mean, np.finfo(float).tiny)
    s = np.broadcast_to(shape, y.shape)
    log_ratio = np.log(y) - np.log(s)
    log_ratio = log_ratio - np.max(log_ratio[fit_cells])
    out = [float(np.max(log_ratio[test_cells]))]
    out += [_growth(log_ratio, vals, test_cells, ax) for vals, ax in growth_axes]
    return np.array(out)


def bstar_regression(bstar, ranks, Ns, axis: str):
    """Flatten b*(r, N) into (y, x, groups) for a fixed-effects slope in log₂N or log₂r."""
    rank_cells, n_cells = np.meshgrid(ranks, Ns, indexing="ij")
    if axis == "N":
        return bstar, np.log2(n_cells), np.broadcast_to(np.arange(len(ranks))[:, None], bstar.shape)
    return bstar, np.log2(rank_cells), np.broadcast_to(np.arange(len(Ns))[None, :], bstar.shape)


BSTAR_READINGS = ("relative", "absolute")


def bstar_reading_text(reading: str, *, tol: float, abs_target: float) -> str:
    """The b* definition of a reading, as quoted in the verdicts."""
    if reading == "relative":
        return f"b* where the PTQ quantization excess = {tol:g} × the fp excess (relative)"
    return f"b* where the PTQ quantization excess = {abs_target:g} (a fixed absolute target)"


def bstar_slopes(grid: GridView, quant, excess, *, tol: float, abs_target: float) -> dict:
    """Empirical b* (ranks ≥ r*) under both readings — relative: the bits where the quantization
    excess falls to tol × the fp excess; absolute: where it falls to ``abs_target`` — and its
    fixed-effects slopes in log₂r and log₂N with seed-bootstrap Est's:
    {reading: {"slope_log2r": Est, "slope_log2N": Est, "b_star": (R≥r*, N) array}}."""
    hi, bits = grid.high_rank, grid.bits

    def targets(e, reading):
        return tol * seed_mean(e[hi]) if reading == "relative" else np.full(e[hi].shape[:-1],
                                                                              abs_target)

    def stat(q, e, reading):
        bstar = crossing_bits(seed_mean(q[hi]), targets(e, reading), bits)
        if np.isfinite(bstar).sum() < 3:
            return np.array([np.nan, np.nan])
        return np.array([fe_slope(*bstar_regression(bstar, grid.ranks[hi], grid.Ns, "r")),
                         fe_slope(*bstar_regression(bstar, grid.ranks[hi], grid.Ns, "N"))])

    out = {}
    for reading in BSTAR_READINGS:
        slope_r, slope_N = grid.boot(lambda q, e, rd=reading: stat(q, e, rd), (quant, excess))
        out[reading] = {"slope_log2r": slope_r, "slope_log2N": slope_N,
                        "b_star": crossing_bits(seed_mean(quant[hi]), targets(excess, reading),
                                                bits)}
    return out


def bstar_fits(slopes: dict) -> dict:
    """The fits entry of :func:`bstar_slopes`' result."""
    return {reading: {"slope_log2r": v["slope_log2r"].fit(), "slope_log2N": v["slope_log2N"].fit(),
                      "b_star": v["b_star"]} for reading, v in slopes.items()}


def per_bit(grid: GridView, quant, *, sel=None) -> Est:
    """log₂ of the factor per bit of a (R, N, B, S) quantity: −(slope of log₂ seed-mean in b),
    rank and N fixed effects, over the bit-widths ``sel`` (all by default)."""
    from simulations.audit_fits import bit_slope

    sel = np.ones(len(grid.bits), bool) if sel is None else sel
    return grid.boot(lambda q: -bit_slope(seed_mean(q[:, :, sel]), grid.bits[sel], 2), (quant,))


def curvature(grid: GridView, quant) -> Est:
    """Curvature of ln(seed-mean quantity) in b (per bit², the quadratic coefficient of a
    per-(r, N) quadratic fit in b, averaged over the (r, N) cells)."""
    b = grid.bits

    def stat(q):
        with np.errstate(divide="ignore", invalid="ignore"):
            y = np.log(seed_mean(q)).reshape(-1, len(b))
        V = np.vander(b - b.mean(), 3)
        coef, *_ = np.linalg.lstsq(V, y.T, rcond=None)
        return float(np.mean(coef[0]))

    return grid.boot(stat, (quant,))


def exponential_verdict(grid: GridView, *, linear: bool) -> Verdict:
    """s001.s4_2.exponential_bits on the post-training quantization excess (the degradation
    attributable to quantization): strong reading log₂(factor per bit) within 2 ± 0.5 (the
    registry's margin); weak reading — exponential at any rate — factor > 1 established
    (log₂ρ > 0, one-sided) and the curvature of ln(excess) in b within ±0.25 per bit²
    (equivalence). Conditional when only the weak reading holds."""
    cid = "s001.s4_2.exponential_bits"
    log2_rho = per_bit(grid, grid.quant_excess)
    curv = curvature(grid, grid.quant_excess)
    strong = judge(cid, log2_rho)
    weak_rate = (standard.comparison(log2_rho.value, log2_rho.se, direction=1, dof=log2_rho.dof)
                 if log2_rho.ok else no_interval("log₂ρ"))
    weak_curv = (standard.equivalence(curv.value, curv.se, center=0.0, margin=0.25, dof=curv.dof)
                 if curv.ok else no_interval("curvature"))
    d = readings({"factor 4 per bit (2^{−2b})": strong,
                  "exponential at any rate": all_of({"factor > 1": weak_rate,
                                                     "curvature": weak_curv})})
    dominated = float(np.mean(seed_mean(grid.quant_excess) > seed_mean(grid.fp_excess)[:, :, None]))
    prefix = "" if linear else "off the linear case: "
    return verdict(
        cid, prefix + "performance degrades exponentially with reduced precision", d,
        predicted={"log2 factor per bit": 2.0, "curvature per bit²": 0.0},
        measured={"log2 factor per bit": log2_rho.value, "curvature per bit²": curv.value},
        ci={"log2 factor per bit": list(log2_rho.ci), "curvature per bit²": list(curv.ci)},
        conditions=grid.conditions + "; degradation = post-training-RTN quantization excess; "
                                     f"it exceeds the estimation error in {dominated:.0%} of "
                                     "(r, N, b) cells (elsewhere the total loss is flat in b)",
        source=S001 + " §4.2, " + S003,
        details={"factor_per_bit": 2.0 ** log2_rho.value, "dominated_share": dominated})
