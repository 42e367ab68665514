"""The nonlinear (one-hidden-layer) student: which audit claims survive off the linear case.

The same claims as the linear audit (:mod:`simulations.audit_claims`), judged the same way
(every verdict names its registry claim and is decided by :mod:`quantbounds.verdicts.standard`):
Theorem 3.1's generalization and quantization terms as upper bounds, the paper's scaling
sentences (factor 4 per bit, linear in rank, exponential degradation) as scaling laws, b*'s
slopes under both readings of b*, and Theorem 3.1 as a bound with fitted constants; plus the
exponent −1 in N that well-specified least squares predicts (toolkit.ts.estimation_rate, with
the ratio to σ²·r*(h + n − r*)/N beside it). Every claim starts "off the linear case"; the
linear audit's fits are quoted next to them.
"""

from __future__ import annotations

import numpy as np

from quantbounds.verdicts import standard
from quantbounds.verdicts.results import Verdict
from simulations.audit_claims import (bound_verdicts, gen_term_verdict,
                                      quantization_term_verdicts)
from simulations.audit_grid import (DES, S001, GridView, bstar_fits, bstar_reading_text,
                                    bstar_slopes, exponential_verdict, grid_view, judge, readings,
                                    seed_mean, verdict)

PREFIX = "off the linear case: "


TRAINING_READINGS = ("trained to convergence", "early-stopped (Adam phase only)")


def nonlinear_fits_and_verdicts(nl: dict, ncfg, acfg, linear_fits: dict | None = None):
    """Fits and verdicts of quantbounds.theory.nl_grid.run_nonlinear_grid's result ``nl``.

    When the grid returns the early-stopped reading of the fp arm (``fp_adam``: its Adam-phase
    fits, before the L-BFGS finish), every claim is judged on both and the verdict is the
    common one or ``conditional`` with the two readings named (training to convergence moves
    the rates; where the loss's infimum is not attained the finished fits drift to large
    weights, flagged by the convergence record); fits["early_stopped"] holds that reading's
    fits. ``linear_fits`` (the linear audit's fits) are quoted next to them. Returns
    (fits, verdicts).
    """
    training = nl["fp"].get("training")
    training = training if isinstance(training, str) else None
    conditions = nonlinear_conditions(ncfg, training=training)
    conv = convergence_fits(nl["fp"])
    if conv:
        conditions += (f"; converged (‖∇‖ ≤ tol) in {conv['converged_share']:.0%} of fp fits; "
                       "training to convergence moved the fp excess by a median "
                       f"{conv['excess_change_median']:+.1%} (max {conv['excess_change_max']:+.1%})"
                       " against the early-stopped Adam fit")
    fits, verdicts = _fits_and_verdicts(nl["fp"], ncfg, acfg, linear_fits, conditions)
    training_fits(nl, ncfg, grid_view(nl["fp"], ncfg, n_boot=acfg.n_boot, conditions=""), fits)
    if conv:
        fits["convergence"] = conv
    adam = next((k for k in nl if k.startswith("fp") and k.endswith("_adam")), None)
    if adam is None:
        return fits, verdicts
    early_cond = nonlinear_conditions(ncfg) + "; early-stopped reading (the Adam phase's fits)"
    fits["early_stopped"], early = _fits_and_verdicts(nl[adam], ncfg, acfg, linear_fits,
                                                      early_cond)
    return fits, [_both_trainings(v, e) for v, e in zip(verdicts, early, strict=True)]


def _fits_and_verdicts(fp, ncfg, acfg, linear_fits, conditions):
    """Every nonlinear claim on one reading ``fp`` of the fp arm: (fits, verdicts)."""
    grid = grid_view(fp, ncfg, n_boot=acfg.n_boot, conditions=conditions)
    linear = linear_fits or {}
    linear_value = lambda k: linear.get(k, {}).get("value")  # noqa: E731
    fits: dict = {}
    verdicts = nonlinear_rate_verdicts(grid, ncfg, fits, linear_value)
    verdicts += quantization_term_verdicts(
        grid, fp, "one", np.ones(len(ncfg.ranks)), fits, prefix=PREFIX,
        what="quantization excess E‖f_q − f‖² of post-training RTN of B, A",
        exponential_readings=(4,))
    fits["per_bit_factor"]["linear"] = linear_value("per_bit_factor")
    fits["quant_rank_slope"]["linear"] = linear_value("quant_rank_slope")
    verdicts.append(exponential_verdict(grid, linear=False))
    verdicts += nonlinear_bstar_verdicts(grid, acfg, fits)
    verdicts += bound_verdicts(grid, {"ptq": grid.ptq_excess}, acfg, fits, prefix=PREFIX,
                               what="; excess E‖f_q − f*‖² after post-training RTN")
    return fits, verdicts


def _decision_of(v: Verdict) -> standard.Decision:
    return standard.Decision(verdict=v.verdict, p_holds=v.p_holds, p_fails=v.p_fails,
                             reason=str(v.details.get("decision", "")))


def _both_trainings(v: Verdict, early: Verdict) -> Verdict:
    """One verdict from the same claim judged on the converged and the early-stopped fits
    (standard.under_readings); the converged reading's numbers are the verdict's, the
    early-stopped reading's are in details["early_stopped"]."""
    if (v.claim_id, v.claim) != (early.claim_id, early.claim):
        raise ValueError(f"readings of different claims: {v.claim!r} and {early.claim!r}")
    d = readings({TRAINING_READINGS[0]: _decision_of(v), TRAINING_READINGS[1]: _decision_of(early)})
    details = {k: x for k, x in v.details.items() if k not in ("decision", "readings")}
    inner = {k: x for k, x in (("converged", v.details.get("readings")),
                               ("early-stopped", early.details.get("readings"))) if x}
    if inner:
        details["inner_readings"] = inner
    details["early_stopped"] = {"verdict": early.verdict, "measured": early.measured,
                                "ci": early.ci}
    return verdict(v.claim_id, v.claim, d, predicted=v.predicted, measured=v.measured, ci=v.ci,
                   conditions=v.conditions, source=v.source, details=details)


def convergence_fits(fp: dict) -> dict:
    """The fp arm's convergence record (when the grid returns one): the share of fits that are
    stationary and the change of the latent excess from the Adam-phase (early-stopped) fit to the
    returned one, excess_latent / excess_latent_adam − 1 (median, max, and per N)."""
    if "excess_latent_adam" not in fp or "converged" not in fp:
        return {}
    e, e0 = np.asarray(fp["excess_latent"], float), np.asarray(fp["excess_latent_adam"], float)
    change = e / e0 - 1.0  # (R, N, S)
    out = {"converged_share": float(np.mean(np.asarray(fp["converged"], float))),
           "excess_change_median": float(np.median(change)),
           "excess_change_max": float(np.max(change)),
           "excess_change_median_by_N": np.median(change, axis=(0, 2)).tolist()}
    if "train_loss" in fp and "train_loss_adam" in fp:
        drop = np.asarray(fp["train_loss_adam"], float) - np.asarray(fp["train_loss"], float)
        out["train_loss_drop_max"] = float(np.max(drop))
    conv = np.asarray(fp["converged"], float)
    out["converged_share_by_rank"] = np.mean(conv, axis=(1, 2)).tolist()
    out["converged_share_by_N"] = np.mean(conv, axis=(0, 2)).tolist()
    if "weight_norm" in fp:
        out["weight_norm_median_by_rank"] = np.median(np.asarray(fp["weight_norm"], float),
                                                      axis=(1, 2)).tolist()
    return out


def nonlinear_conditions(ncfg, *, training: str | None = None) -> str:
    """The set-up of the nonlinear student, quoted in every verdict (``training``: the grid's
    description of the fp training, else the configured Adam steps)."""
    exact = ncfg.activation == "erf"
    if ncfg.teacher_per_seed:
        teacher = (f"a teacher per seed (t intervals over {ncfg.seeds} seeds of teacher, data, "
                   f"init and noise), ")
    else:
        teacher = (f"one teacher (key {ncfg.key}; intervals over {ncfg.seeds} seeds of data, "
                   f"init, noise), ")
    excess = ("excess exact (arcsine kernel)" if exact
              else f"excess by Monte Carlo on {ncfg.n_test} test points")
    return (f"nonlinear one-hidden-layer student f = W2·{ncfg.activation}((W1⁰ + B·A)·x), n→h→m = "
            f"{ncfg.n}→{ncfg.h}→{ncfg.m}, r* = {ncfg.r_star}, σ = {ncfg.label_noise}, "
            f"cond(Σ) = {ncfg.cond}, gain {ncfg.gain}, " + teacher
            + (f"fp training: {training}" if training else f"{ncfg.steps} full-batch Adam steps")
            + ", s = 1, per-tensor absmax; " + excess)


def nonlinear_rate_verdicts(grid: GridView, ncfg, fits: dict, linear_value) -> list[Verdict]:
    """Theorem 3.1's generalization term as a bound (s001.thm3_1.gen_term), and the exponent −1
    in N of well-specified least squares (toolkit.ts.estimation_rate, one-hidden-layer reading)
    with the ratio to the parametric rate σ²·r*(h + n − r*)/N at r = r*."""
    out = gen_term_verdict(grid, fits, prefix=PREFIX, what="excess E‖f − f*‖²")
    fits["exponent_N"]["linear"] = linear_value("exponent_N")
    fits["exponent_r"]["linear"] = linear_value("exponent_r")
    exp_N = grid.boot(lambda e: float(fits_slope(e, grid)), (grid.fp_excess,))
    details = {"exponent_N_all_high_ranks": fits["exponent_N"]}
    if ncfg.r_star in ncfg.ranks:
        # well-specified least squares, N → ∞: E excess → σ²·d/N with d = r*(h + n − r*), the
        # dimension of the rank-r* adapters' manifold at the teacher (the Jacobian of W1 ↦ f has
        # full rank)
        i = list(ncfg.ranks).index(ncfg.r_star)
        dim = ncfg.r_star * (ncfg.h + ncfg.n - ncfg.r_star)
        rate = ncfg.label_noise ** 2 * dim / grid.Ns[-1]
        ratio = grid.boot(lambda e: float(seed_mean(e[i])[-1] / rate), (grid.fp_excess,))
        fits["parametric_ratio"] = ratio.fit(
            predicted=1.0, dim=dim, N=int(grid.Ns[-1]),
            what="fp excess at r = r* over σ²·r*(h+n−r*)/N at the largest N")
        details["ratio_to_sigma2_d_over_N"] = fits["parametric_ratio"]
    fits["exponent_N_at_r_star"] = exp_N.fit(predicted=-1.0)
    cid = "toolkit.ts.estimation_rate"
    out.append(verdict(
        cid, PREFIX + "excess at the parametric rate: exponent −1 in N (σ²·r*(h+n−r*)/N), not "
                      "−½", judge(cid, exp_N),
        predicted=-1.0, measured=exp_N.value, ci=list(exp_N.ci),
        conditions=grid.conditions + "; r = r*, slope of ln excess in ln N; margin ±0.10 "
                                     "(the ratio to σ²·d/N at the largest N in details)",
        source=DES, details=details))
    return out


def fits_slope(e, grid: GridView) -> float:
    """Slope of ln(seed-mean fp excess) in ln N at r = r* (the first rank ≥ r*)."""
    i = int(np.flatnonzero(grid.high_rank)[0])
    return float(np.polyfit(np.log(grid.Ns), np.log(seed_mean(e[i])), 1)[0])


def nonlinear_bstar_verdicts(grid: GridView, acfg, fits: dict) -> list[Verdict]:
    """b*'s slopes in log₂r (s001.s4_2.higher_rank_more_bits) and log₂N
    (s001.s5_1.larger_data_lower_precision) under both readings of b*."""
    slopes = bstar_slopes(grid, grid.quant_excess, grid.fp_excess, tol=acfg.tol,
                          abs_target=acfg.abs_target)
    fits["b_star"] = bstar_fits(slopes)
    texts = "; ".join(f"{rd}: {bstar_reading_text(rd, tol=acfg.tol, abs_target=acfg.abs_target)}"
                      for rd in slopes)
    out = []
    for cid, key, claim, pred in (
            ("s001.s4_2.higher_rank_more_bits", "slope_log2r",
             "higher ranks require higher precision (d b*/d log₂r > 0)", "d b*/d log₂r > 0"),
            ("s001.s5_1.larger_data_lower_precision", "slope_log2N",
             "larger datasets can tolerate lower precision (d b*/d log₂N < 0)",
             "d b*/d log₂N < 0")):
        named = {f"{rd} b*": judge(cid, v[key]) for rd, v in slopes.items()}
        out.append(verdict(
            cid, PREFIX + claim, readings(named), predicted=pred,
            measured={f"{rd} b*": v[key].value for rd, v in slopes.items()},
            ci={f"{rd} b*": list(v[key].ci) for rd, v in slopes.items()},
            conditions=grid.conditions + "; b* readings: " + texts,
            source=S001 + (" abstract, §4.2, §5.1" if key == "slope_log2r" else " §5.1.3")))
    return out


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
    if "excess_latent_mc" in fp and "excess_latent_se" in fp:
        z = (fp["excess_latent_mc"] - fp["excess_latent"]) / fp["excess_latent_se"]
        rel_se = fp["excess_latent_se"] / fp["excess_latent_mc"]
        fits["monte_carlo_check"] = {
            "max_abs_z": float(np.max(np.abs(z))) if ncfg.activation == "erf" else None,
            "mean_relative_se": float(np.mean(rel_se)), "n_test": ncfg.n_test}
