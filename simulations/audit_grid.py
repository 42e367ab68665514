"""The audit's grid as the claim builders see it, and the helpers both students' claims share.

:class:`GridView` holds one convention's seed-resolved arrays (fp excess, quantization excess
and total excess after post-training RTN), the rank mask r ≥ r*, the seed bootstrap with the
audit's replicate count and the set-up text every verdict quotes. The helpers build Theorem
3.1's two shapes √(r/N) and r·4^{−b} on the cell grid, the held-out max(measured/bound) of
an LP envelope fit, b*'s fixed-effects slopes and the exponential-degradation verdict; they
are used by :mod:`simulations.audit_claims` (linear student) and
:mod:`simulations.audit_nonlinear`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from quantbounds.verdicts import decisions
from quantbounds.verdicts.intervals import seed_bootstrap
from quantbounds.verdicts.results import Verdict
from simulations.audit_fits import fe_slope, fit_envelope, threshold_bits

S001, S003, DES = "seed 001 (paper)", "seed 003 (README)", "DESIGN.md §2"


def seed_mean(x):
    """Mean over the last (seed) axis."""
    return np.mean(x, axis=-1)


def interval_fit(estimate, **extra) -> dict:
    """A (value, (lo, hi)) bootstrap estimate as the fits' {"value", "ci"} entry."""
    return {"value": estimate[0], "ci": estimate[1], **extra}


def interval_verdict(claim: str, verdict: str, predicted, estimate, **fields) -> Verdict:
    """A Verdict whose measurement is a (value, (lo, hi)) bootstrap estimate."""
    return Verdict(claim=claim, verdict=verdict, predicted=predicted, measured=estimate[0],
                   ci=estimate[1], **fields)


@dataclass(frozen=True)
class GridView:
    """One convention's seed-resolved arrays of the grid and what every claim family needs.

    fp_excess (R, N, S): exact excess risk of the full-precision student; quant_excess and
    ptq_excess (R, N, B, S): quantization part and total excess after post-training RTN;
    high_rank: ranks ≥ r*; boot(stat, arrays): the seed bootstrap with the audit's n_boot;
    conditions: the set-up, quoted in every verdict.
    """

    ranks: np.ndarray
    Ns: np.ndarray
    bits: np.ndarray
    fp_excess: np.ndarray
    quant_excess: np.ndarray
    ptq_excess: np.ndarray
    high_rank: np.ndarray
    boot: Callable
    conditions: str


def grid_view(fp: dict, cfg, *, n_boot: int, conditions: str) -> GridView:
    """The GridView of one run_grid / run_nonlinear_grid arm ``fp`` (seed axis moved last)."""
    ranks = np.array(cfg.ranks, float)
    return GridView(ranks=ranks, Ns=np.array(cfg.Ns, float), bits=np.array(cfg.bits, float),
                    fp_excess=fp["excess_latent"],
                    quant_excess=np.moveaxis(fp["ptq_qexcess"], -1, -2),
                    ptq_excess=np.moveaxis(fp["ptq_excess"], -1, -2),
                    high_rank=ranks >= cfg.r_star,
                    boot=lambda stat, arrays: seed_bootstrap(stat, arrays, n_boot=n_boot),
                    conditions=conditions)


def largest_three(Ns: np.ndarray) -> np.ndarray:
    """Mask of the three largest sample sizes N."""
    return Ns >= np.sort(Ns)[max(len(Ns) - 3, 0)]


def bound_regressors(grid: GridView):
    """(√(r/N), r·4^{−b}, r, N) on the (R, N, B) cell grid: Theorem 3.1's two shapes."""
    rank_cells, n_cells, bit_cells = np.meshgrid(grid.ranks, grid.Ns, grid.bits, indexing="ij")
    return np.sqrt(rank_cells / n_cells), rank_cells * 4.0 ** -bit_cells, rank_cells, n_cells


def heldout_ratio(excess, gen_shape, quant_shape, fit_cells, test_cells) -> float:
    """max over test cells of measured/bound, C1·√(r/N) + C2·r·4^{−b} fitted (LP) on fit cells."""
    mean = seed_mean(excess)
    gen_b = np.broadcast_to(gen_shape, mean.shape)
    quant_b = np.broadcast_to(quant_shape, mean.shape)
    C1, C2 = fit_envelope(gen_b[fit_cells], quant_b[fit_cells], mean[fit_cells])
    return float(np.max((mean / (C1 * gen_shape + C2 * quant_shape))[test_cells]))


def bstar_regression(bstar, ranks, Ns, axis: str):
    """Flatten b*(r, N) into (y, x, groups) for a fixed-effects slope in log₂N or log₂r."""
    rank_cells, n_cells = np.meshgrid(ranks, Ns, indexing="ij")
    if axis == "N":
        return bstar, np.log2(n_cells), np.broadcast_to(np.arange(len(ranks))[:, None], bstar.shape)
    return bstar, np.log2(rank_cells), np.broadcast_to(np.arange(len(Ns))[None, :], bstar.shape)


def bstar_slopes(grid: GridView, quant, excess, tol: float) -> dict:
    """Empirical b* (bits where the quantization excess = tol × fp excess, ranks ≥ r*) and its
    fixed-effects slopes in log₂N and log₂r with seed-bootstrap intervals."""
    hi, bits = grid.high_rank, grid.bits

    def slope(q, e, axis):
        bstar = threshold_bits(seed_mean(q[hi]), seed_mean(e[hi]), bits, tol=tol)
        return fe_slope(*bstar_regression(bstar, grid.ranks[hi], grid.Ns, axis))

    slope_N = grid.boot(lambda q, e: slope(q, e, "N"), (quant, excess))
    slope_r = grid.boot(lambda q, e: slope(q, e, "r"), (quant, excess))
    return {"slope_log2N": interval_fit(slope_N), "slope_log2r": interval_fit(slope_r),
            "b_star": threshold_bits(seed_mean(quant[hi]), seed_mean(excess[hi]), bits, tol=tol)}


def exponential_verdict(grid: GridView, per_bit: dict, *, linear: bool) -> Verdict:
    """Factor per bit > 1, and the share of (r, N, b) cells where the quantization term
    exceeds the estimation error (the total follows the factor only there)."""
    dominated = float(np.mean(seed_mean(grid.quant_excess) > seed_mean(grid.fp_excess)[:, :, None]))
    prefix = "" if linear else "off the linear case: "
    tail = "; elsewhere the loss is flat in b" if linear else ""
    return Verdict(
        claim=prefix + "performance degrades exponentially with reduced precision",
        verdict=decisions.decide_exponential(per_bit["ci"], dominated),
        predicted="constant factor > 1 per bit removed", measured=per_bit["value"],
        ci=per_bit["ci"],
        conditions=grid.conditions + f"; the quantization term exceeds the estimation error in "
                                     f"{dominated:.0%} of (r, N, b) cells" + tail,
        source=S001 + " §4.2, " + S003)
