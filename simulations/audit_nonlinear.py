"""The nonlinear (one-hidden-layer) student: which audit claims survive off the linear case.

The same rates as the linear audit (:mod:`simulations.audit_claims`): exponents in N and r of
the fp excess, factor per bit and rank exponent of the post-training-RTN quantization excess
E‖f_q − f‖², b* slopes and Theorem 3.1 as a bound, with seed-bootstrap CIs; plus the
parametric rate σ²·r*(h + n − r*)/N that well-specified least squares predicts. Every claim
starts "off the linear case"; the linear audit's fits are quoted next to them.
"""

from __future__ import annotations

import numpy as np

from quantbounds.verdicts import decisions
from quantbounds.verdicts.intervals import seed_bootstrap
from quantbounds.verdicts.results import Verdict
from simulations.audit_grid import (DES, S001, GridView, bound_regressors, bstar_slopes,
                                    exponential_verdict, grid_view, interval_fit,
                                    interval_verdict, largest_three, seed_mean)
from simulations.audit_fits import bit_slope, fit_envelope, log_slope, threshold_bits

PREFIX = "off the linear case: "


def nonlinear_fits_and_verdicts(nl: dict, ncfg, acfg, linear_fits: dict | None = None):
    """Fits and verdicts of quantbounds.theory.nl_grid.run_nonlinear_grid's result ``nl``.

    ``linear_fits`` (the linear audit's fits) are quoted next to them. Returns (fits, verdicts).
    """
    grid = grid_view(nl["fp"], ncfg, n_boot=acfg.n_boot, conditions=nonlinear_conditions(ncfg))
    linear = linear_fits or {}
    linear_value = lambda k: linear.get(k, {}).get("value")  # noqa: E731
    fits: dict = {}
    verdicts = nonlinear_rate_verdicts(grid, ncfg, fits, linear_value)
    verdicts += nonlinear_quantization_verdicts(grid, fits, linear_value)
    verdicts.append(exponential_verdict(grid, fits["per_bit_factor"], linear=False))
    verdicts += nonlinear_bstar_verdicts(grid, acfg, fits)
    verdicts += nonlinear_bound_verdicts(grid, acfg, fits)
    training_fits(nl, ncfg, grid, fits)
    return fits, verdicts


def nonlinear_conditions(ncfg) -> str:
    """The set-up of the nonlinear student, quoted in every verdict."""
    exact = ncfg.activation == "erf"
    if ncfg.teacher_per_seed:
        teacher = (f"a teacher per seed (CIs over {ncfg.seeds} seeds of teacher, data, init and "
                   f"noise), ")
    else:
        teacher = (f"one teacher (key {ncfg.key}; CIs over {ncfg.seeds} seeds of data, init, "
                   f"noise), ")
    excess = ("excess exact (arcsine kernel)" if exact
              else f"excess by Monte Carlo on {ncfg.n_test} test points")
    return (f"nonlinear one-hidden-layer student f = W2·{ncfg.activation}((W1⁰ + B·A)·x), n→h→m = "
            f"{ncfg.n}→{ncfg.h}→{ncfg.m}, r* = {ncfg.r_star}, σ = {ncfg.label_noise}, "
            f"cond(Σ) = {ncfg.cond}, gain {ncfg.gain}, " + teacher
            + f"{ncfg.steps} full-batch Adam steps, s = 1, per-tensor absmax; " + excess)


def nonlinear_rate_verdicts(grid: GridView, ncfg, fits: dict, linear_value) -> list[Verdict]:
    """Exponents of the fp excess in N (paper −½) and r (+½), and the parametric rate at r*."""
    hi, Ns, ranks, excess = grid.high_rank, grid.Ns, grid.ranks, grid.fp_excess
    exp_N = grid.boot(lambda e: log_slope(seed_mean(e[hi]), Ns, 1), (excess,))
    exp_r = grid.boot(lambda e: log_slope(seed_mean(e[hi]), ranks[hi], 0), (excess,))
    big = largest_three(Ns)
    exp_N_big = grid.boot(lambda e: log_slope(seed_mean(e[hi][:, big]), Ns[big], 1), (excess,))
    fits["exponent_N"] = interval_fit(
        exp_N, predicted_paper=-0.5, predicted_parametric=-1.0, linear=linear_value("exponent_N"),
        cells="fp excess, ranks ≥ r*, rank fixed effects",
        large_N=interval_fit(exp_N_big, Ns=Ns[big]))
    fits["exponent_r"] = interval_fit(exp_r, predicted_paper=0.5, linear=linear_value("exponent_r"),
                                      cells="fp excess, ranks ≥ r*, N fixed effects")
    cond = grid.conditions + "; ranks ≥ r*"
    out = [
        interval_verdict(PREFIX + "Thm 3.1 generalization term exponent in N = −½",
                         decisions.decide_interval(-0.5, exp_N[1]), -0.5, exp_N, conditions=cond,
                         source=S001 + " eq. 7",
                         details={"linear_exponent_N": linear_value("exponent_N")}),
        interval_verdict(PREFIX + "Thm 3.1 generalization term exponent in r = +½",
                         decisions.decide_interval(0.5, exp_r[1]), 0.5, exp_r, conditions=cond,
                         source=S001 + " eq. 7",
                         details={"linear_exponent_r": linear_value("exponent_r")}),
    ]
    if ncfg.r_star in ncfg.ranks:
        # well-specified least squares, N → ∞: E excess → σ²·d/N with d = r*(h + n − r*), the
        # dimension of the rank-r* adapters' manifold at the teacher (the Jacobian of W1 ↦ f has
        # full rank)
        i = list(ncfg.ranks).index(ncfg.r_star)
        dim = ncfg.r_star * (ncfg.h + ncfg.n - ncfg.r_star)
        rate = ncfg.label_noise ** 2 * dim / Ns[-1]
        ratio = grid.boot(lambda e: float(seed_mean(e[i])[-1] / rate), (excess,))
        fits["parametric_ratio"] = interval_fit(
            ratio, predicted=1.0, dim=dim, N=int(Ns[-1]),
            what="fp excess at r = r* over σ²·r*(h+n−r*)/N at the largest N")
        out.append(interval_verdict(
            PREFIX + "excess at the parametric rate σ²·r*(h+n−r*)/N, not √(r/N)",
            decisions.decide_interval(1.0, ratio[1]), 1.0, ratio,
            conditions=grid.conditions + f"; r = r*, N = {int(Ns[-1])}; ratio measured/(σ²·d/N), "
                                         f"d = {dim} (asymptotic least squares)",
            source=DES, details={"exponent_N": exp_N, "exponent_N_large_N": exp_N_big}))
    return out


def nonlinear_quantization_verdicts(grid: GridView, fits: dict, linear_value) -> list[Verdict]:
    """Factor per bit (all b, b ≥ 4, between consecutive b) and rank exponent of E‖f_q − f‖²."""
    bits, ranks, quant = grid.bits, grid.ranks, grid.quant_excess
    factor = lambda q, sel: 2.0 ** -bit_slope(seed_mean(q[:, :, sel]), bits[sel], 2)  # noqa: E731
    per_bit = grid.boot(lambda q: 2.0 ** -bit_slope(seed_mean(q), bits, 2), (quant,))
    b_ge_4 = bits >= 4
    per_bit_4 = grid.boot(lambda q: factor(q, b_ge_4), (quant,)) if b_ge_4.sum() >= 2 else None
    rank_slope = grid.boot(lambda q: log_slope(seed_mean(q), ranks, 0), (quant,))
    local = {f"{int(bits[j])}->{int(bits[j + 1])}": float(factor(quant, slice(j, j + 2)))
             for j in range(len(bits) - 1)}
    fits["per_bit_factor"] = interval_fit(
        per_bit, predicted=4.0, linear=linear_value("per_bit_factor"),
        b_ge_4=None if per_bit_4 is None else interval_fit(per_bit_4),
        between_consecutive_bits=local,
        cells="E‖f_q − f‖² after fp training, post-training RTN of B, A, all ranks and N")
    fits["quant_rank_slope"] = interval_fit(rank_slope, predicted=1.0,
                                            linear=linear_value("quant_rank_slope"))
    out = [Verdict(
        claim=PREFIX + "Thm 3.1 quantization term O(r·2^{−2b}), factor 4 per bit and linear in r",
        verdict=decisions.decide_all_intervals([4.0, 1.0], [per_bit[1], rank_slope[1]]),
        predicted=[4.0, 1.0], measured=[per_bit[0], rank_slope[0]],
        ci=[per_bit[1], rank_slope[1]],
        conditions=grid.conditions + "; quantization excess E‖f_q − f‖² of post-training RTN; "
                                     "[factor/bit, rank exponent]",
        source=S001 + " eq. 7",
        details={"factor_b_ge_4": per_bit_4, "factor_between_consecutive_bits": local})]
    if per_bit_4 is not None:
        steps = ", ".join(f"{k}: {v:.3g}" for k, v in local.items())
        out.append(interval_verdict(
            PREFIX + "factor 4 per bit of the quantization excess at b ≥ 4",
            decisions.decide_interval(4.0, per_bit_4[1]), 4.0, per_bit_4,
            conditions=grid.conditions + "; E‖f_q − f‖² of post-training RTN, b ≥ 4 (all b: "
                                         f"{per_bit[0]:.3g}; between consecutive bits {steps})",
            source=S001 + " eq. 7"))
    return out


def nonlinear_bstar_verdicts(grid: GridView, acfg, fits: dict) -> list[Verdict]:
    """b*'s slopes in log₂r and log₂N, where at least 3 (r, N) cells have a b* on the grid."""
    hi = grid.high_rank
    bstar = threshold_bits(seed_mean(grid.quant_excess[hi]), seed_mean(grid.fp_excess[hi]),
                           grid.bits, tol=acfg.tol)
    if np.isfinite(bstar).sum() < 3:
        return []
    slopes = bstar_slopes(grid, grid.quant_excess, grid.fp_excess, acfg.tol)
    fits["b_star"] = {"slope_log2r": slopes["slope_log2r"], "slope_log2N": slopes["slope_log2N"],
                      "b_star": bstar}
    slope_r, slope_N = slopes["slope_log2r"], slopes["slope_log2N"]
    return [
        Verdict(claim=PREFIX + "higher ranks require higher precision",
                verdict=decisions.decide_sign(slope_r["ci"]),
                predicted="d b*/d log₂r > 0 (rule: +½)", measured=slope_r["value"],
                ci=slope_r["ci"],
                conditions=grid.conditions + f"; b* = bits where PTQ excess = {acfg.tol:g}×fp "
                                             "excess",
                source=S001 + " abstract, §4.2, §5.1"),
        Verdict(claim=PREFIX + "larger datasets can tolerate lower precision",
                verdict=decisions.decide_sign(slope_N["ci"], claimed_positive=False),
                predicted="d b*/d log₂N < 0", measured=slope_N["value"], ci=slope_N["ci"],
                conditions=grid.conditions + "; b* as above", source=S001 + " §5.1.3"),
    ]


def nonlinear_bound_verdicts(grid: GridView, acfg, fits: dict) -> list[Verdict]:
    """Thm 3.1 as a bound: C1·√(r/N) + C2·r·4^{−b} fitted (LP) on small r, N (r ≥ r*) of the
    PTQ excess; max measured/bound on the rest."""
    gen_shape, quant_shape, rank_cells, n_cells = bound_regressors(grid)
    high = np.broadcast_to(grid.high_rank[:, None, None], rank_cells.shape)
    fit_cells = ((rank_cells <= np.median(grid.ranks[grid.high_rank]))
                 & (n_cells <= np.median(grid.Ns)) & high)
    test_cells = ~fit_cells & high
    if not (fit_cells.any() and test_cells.any()):
        return []

    def heldout(ptq):
        mean = seed_mean(ptq)
        C1, C2 = fit_envelope(gen_shape[fit_cells], quant_shape[fit_cells], mean[fit_cells])
        return float(np.max((mean / (C1 * gen_shape + C2 * quant_shape))[test_cells]))

    ratio = seed_bootstrap(heldout, (grid.ptq_excess,), n_boot=max(acfg.n_boot // 5, 50))
    mean = seed_mean(grid.ptq_excess)
    C1, C2 = fit_envelope(gen_shape[high], quant_shape[high], mean[high])
    loose = ((C1 * gen_shape + C2 * quant_shape) / mean)[high]
    fits["theorem_3_1"] = {
        "C1": C1, "C2_sigma_g2": C2, "looseness_median": float(np.median(loose)),
        "looseness_max": float(np.max(loose)),
        "heldout_max_measured_over_bound": interval_fit(ratio),
        "calibration_cells": "r ≤ median rank (≥ r*) and N ≤ median N; PTQ excess"}
    return [interval_verdict(
        PREFIX + "Thm 3.1 holds as a bound with fitted C1, C2 (fit on small r, N; checked on the "
                 "rest, r ≥ r*)",
        decisions.decide_upper_bound_max(ratio[1]), "max measured/bound ≤ 1", ratio,
        conditions=grid.conditions + "; excess E‖f_q − f*‖² after post-training RTN; in-sample "
                                     f"looseness median {np.median(loose):.3g}, max "
                                     f"{np.max(loose):.3g}",
        source=S001 + " eq. 7", details={"C1": C1, "C2_sigma_g2": C2})]


def training_fits(nl: dict, ncfg, grid: GridView, fits: dict) -> None:
    """Quantization-aware training against post-training quantization at the trained
    bit-widths (deployed/PTQ excess ratios), and the Monte Carlo check of the exact excess."""
    trained = [list(ncfg.bits).index(b) for b in ncfg.trained_bits if b in ncfg.bits]
    for arm in ("ste_rtn", "ste_sr", "additive"):
        if arm in nl and len(trained) == len(ncfg.trained_bits):
            ptq = seed_mean(np.moveaxis(grid.ptq_excess[:, :, trained], 2, 1))   # (R, Bt, N)
            ratio = seed_mean(nl[arm]["excess_deployed"]) / ptq
            fits.setdefault("deployed_over_ptq", {})[arm] = {
                int(b): {"median": float(np.median(ratio[:, j])), "min": float(np.min(ratio[:, j])),
                         "max": float(np.max(ratio[:, j]))}
                for j, b in enumerate(ncfg.trained_bits)}
    fp = nl["fp"]
    z = (fp["excess_latent_mc"] - fp["excess_latent"]) / fp["excess_latent_se"]
    rel_se = fp["excess_latent_se"] / fp["excess_latent_mc"]
    fits["monte_carlo_check"] = {
        "max_abs_z": float(np.max(np.abs(z))) if ncfg.activation == "erf" else None,
        "mean_relative_se": float(np.mean(rel_se)), "n_test": ncfg.n_test}
