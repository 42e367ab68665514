"""Verdicts on the seed documents' empirical claims, from paired runs (torch-free).

Every claim is judged on PAIRED runs (:class:`quantbounds.calib.pairing.PairedRuns`): a quantized
run and the 16-bit run with the same rank, seed, N, …. Per pair the relative degradation is

    dᵢ = m(qᵢ)/m(baseᵢ) − 1   (loss-like m: eval loss, perplexity)
    dᵢ = 1 − m(qᵢ)/m(baseᵢ)   (score-like m: F1, exact match)

(positive = the quantized run is worse), summarised by its mean d̄ with a percentile
bootstrap interval over pairs (:func:`quantbounds.verdicts.intervals.bootstrap_mean`).
:func:`quantbounds.verdicts.decisions.decide_side` turns an interval [lo, hi] and a threshold t
into "holds" (wholly on the claimed side of t), "fails" (wholly on the other side) or
"conditional" (contains t, or fewer than MIN_PAIRS independent units).

Claims checked (:func:`claim_verdicts`, one builder per family): the guideline table (8-bit
< 5 % / 10 % perplexity degradation by rank; 4-bit > 10 % above rank 8), "NF4 matches 16-bit"
(d̄ ≤ 1 %), "FP4 underperforms NF4" (d̄ > 0), the rank dependence of the excess loss (OLS slope
of Δ in log₂r, sign predicted from s²·r: + for s = 1, − for s = α/r, 0 for rsLoRA and for
quantizing W0), Pearson R > 0.9 between r·4^(−b) and Δ (group bootstrap), and the
gradient-variance law v ∝ r·ρ_g^(−b) with ρ_g = 4 (OLS on ln v). :func:`fit_verdicts` checks
whether the fitted exponents of :mod:`quantbounds.calib.calibration` contain the theory's
ρ = 4, β, a = c = ½.

Public: :func:`degradation`, :func:`claim_verdicts`, :func:`grad_var_verdicts`,
:func:`correlation_verdict`, :func:`rank_dependence_verdicts`, :func:`fit_verdicts` (the rules
they apply are :mod:`quantbounds.verdicts.decisions`, the intervals
:mod:`quantbounds.verdicts.intervals`).
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
from scipy import stats

from quantbounds._checks import check_choice
from quantbounds.calib.calibration import Calibration
from quantbounds.calib.pairing import ADAPTER_ARMS, METRICS, PairedRuns, Pairs, pair_runs
from quantbounds.verdicts.decisions import (MIN_PAIRS, decide_interval, decide_interval_vs_null,
                                            decide_side)
from quantbounds.verdicts.intervals import bootstrap_mean, group_resample_counts
from quantbounds.verdicts.results import Verdict

__all__ = ["claim_verdicts", "correlation_verdict", "degradation", "fit_verdicts",
           "grad_var_verdicts", "rank_dependence_verdicts"]

HIGHER_IS_BETTER = {"eval_loss": False, "perplexity": False, "f1": True, "exact_match": True}
NF4_MARGIN = 0.01   # "matches": within 1 % relative (our equivalence margin; the seeds give none)
SEVERE = 0.10       # "severe" degradation: above the guideline table's largest tolerance (10 %)
README_TABLE = "seed 003 README 'Practical Guidelines' table (also seed 001 §4.3)"
SEED002 = "seed 002 (QLoRA NF4 vs FP16 vs FP4 comparison, CoQA F1)"


def degradation(q, base, *, metric: str) -> np.ndarray:
    """Per-pair relative degradation: q/base − 1 (loss-like) or 1 − q/base (F1-like).

    Positive = the quantized run is worse. q, base: arrays of one shape; base ≠ 0.
    """
    check_choice(metric, "metric", METRICS)
    q, base = np.asarray(q, float), np.asarray(base, float)
    if np.any(base == 0):
        raise ValueError(f"baseline {metric} has zeros; relative degradation undefined")
    return 1 - q / base if HIGHER_IS_BETTER[metric] else q / base - 1


def _deg(pairs: Pairs, notes: list[str], what: str) -> np.ndarray:
    """Relative degradation of the pairs whose baseline is non-zero; a note for the rest
    (e.g. a small model whose greedy responses never overlap the reference: F1 = 0)."""
    ok = pairs.base != 0
    if len(pairs) and not ok.all():
        notes.append(f"{what}: {int((~ok).sum())} of {len(pairs)} pairs have baseline "
                     f"{pairs.metric} = 0; relative degradation undefined, left out")
    if not ok.any():
        return np.array([])
    return degradation(pairs.q[ok], pairs.base[ok], metric=pairs.metric)


def _inconclusive(v: str, n: int | None = None) -> str:
    if n is not None and n < MIN_PAIRS:
        return (f" — only {n} independent pairs/groups: too few for a decisive verdict "
                f"(need ≥ {MIN_PAIRS})")
    if v == "conditional":
        return " — inconclusive at this sample size (CI contains the threshold)"
    return ""


def _mean_judged(d, threshold: float, *, want: str, n_boot: int, seed: int) -> tuple[dict, str]:
    """:func:`bootstrap_mean` of d and the :func:`decide_side` verdict of its interval."""
    s = bootstrap_mean(d, n_boot=n_boot, seed=seed)
    return s, decide_side(s["ci"], threshold, want=want, n_units=s["n"])


def _arm_label(arm: str, bits: int) -> str:
    return f"{arm} (b={bits})" if arm in ADAPTER_ARMS else arm


def _bit_arms(runs: PairedRuns, bits: int) -> list[tuple[str, int | None]]:
    """(arm, bits filter) for every arm present that quantizes at ``bits``."""
    arms = runs.arms()
    out = [(a, bits) for a in arms if a in ADAPTER_ARMS and runs.has(a, bits=bits)]
    base = {8: ("base_int8",), 4: ("base_nf4", "base_fp4")}.get(bits, ())
    return out + [(a, None) for a in arms if a in base]


def claim_verdicts(records, *, n_boot: int = 2000, seed: int = 0) -> tuple[list, list[str]]:
    """Verdicts on the seeds' empirical claims from paired runs (records, screened here, or a
    PairedRuns); returns (verdicts, notes)."""
    runs = pair_runs(records)
    notes: list[str] = []
    out = guideline_8bit_verdicts(runs, notes, n_boot=n_boot, seed=seed)
    out += guideline_4bit_verdicts(runs, notes, n_boot=n_boot, seed=seed)
    out += codebook_verdicts(runs, notes, n_boot=n_boot, seed=seed)
    out += rank_dependence_verdicts(runs, n_boot=n_boot, seed=seed)
    for arm in [a for a in ADAPTER_ARMS if runs.has(a)]:
        v = correlation_verdict(runs, arm=arm, n_boot=n_boot, seed=seed)
        if v is not None:
            out.append(v)
    out += grad_var_verdicts(runs)
    return out, notes


def guideline_8bit_verdicts(runs: PairedRuns, notes: list, *, n_boot: int, seed: int) -> list:
    """The README table: 8-bit gives < 5 % perplexity degradation for r ≤ 8, < 10 % for 9–16."""
    out = []
    for arm, b in _bit_arms(runs, 8):
        pairs = runs.pairs(arm=arm, metric="perplexity", bits=b)
        for lo_r, hi_r, thr in ((1, 8, 0.05), (9, 16, 0.10)):
            m = (pairs.rank >= lo_r) & (pairs.rank <= hi_r)
            if not m.any():
                notes.append(f"guideline r∈[{lo_r},{hi_r}] for {arm}: no paired runs")
                continue
            d = degradation(pairs.q[m], pairs.base[m], metric="perplexity")
            s, v = _mean_judged(d, thr, want="below", n_boot=n_boot, seed=seed)
            out.append(Verdict(
                claim=f"8-bit gives < {thr:.0%} perplexity degradation for {lo_r} ≤ r ≤ {hi_r}",
                verdict=v, predicted=f"< {thr}", measured=s["estimate"], ci=s["ci"],
                source=README_TABLE,
                conditions=f"{_arm_label(arm, 8)} vs fp16, paired by rank/seed/N; {s['n']} pairs, "
                           f"ranks {sorted(set(pairs.rank[m].tolist()))}"
                           + _inconclusive(v, s["n"]),
                details={"arm": arm, "bits": 8, "metric": "perplexity"}))
    return out


def guideline_4bit_verdicts(runs: PairedRuns, notes: list, *, n_boot: int, seed: int) -> list:
    """The README table: avoid 4-bit above rank 8 (degradation > 10 % there)."""
    out = []
    for arm, b in _bit_arms(runs, 4):
        pairs = runs.pairs(arm=arm, metric="perplexity", bits=b)
        high, low = pairs.rank > 8, pairs.rank <= 8
        if not high.any():
            notes.append(f"'avoid 4-bit above rank 8' for {arm}: no paired runs with r > 8")
            continue
        d = degradation(pairs.q, pairs.base, metric="perplexity")
        s, v = _mean_judged(d[high], SEVERE, want="above", n_boot=n_boot, seed=seed)
        low_summary = bootstrap_mean(d[low], n_boot=n_boot, seed=seed) if low.any() else None
        out.append(Verdict(
            claim="4-bit degrades severely (> 10 % perplexity) for ranks > 8", verdict=v,
            predicted=f"> {SEVERE}", measured=s["estimate"], ci=s["ci"], source=README_TABLE,
            conditions=f"{_arm_label(arm, 4)} vs fp16, {s['n']} pairs with r > 8"
                       + _inconclusive(v, s["n"]),
            details={"arm": arm, "r_le_8": low_summary}))
    return out


def codebook_verdicts(runs: PairedRuns, notes: list, *, n_boot: int, seed: int) -> list:
    """Seed 002: NF4 matches or beats 16-bit (equivalence margin 1 %); FP4 underperforms NF4."""
    out = []
    for metric in ("perplexity", "f1"):
        for arm in ("base_nf4", "adapter_nf4"):
            d = _deg(runs.pairs(arm=arm, metric=metric), notes, f"{arm} vs fp16")
            if not d.size:
                continue
            s, v = _mean_judged(d, NF4_MARGIN, want="below", n_boot=n_boot, seed=seed)
            out.append(Verdict(
                claim=f"NF4 matches or beats 16-bit on {metric}", verdict=v,
                predicted=f"relative degradation ≤ {NF4_MARGIN} (equivalence margin)",
                measured=s["estimate"], ci=s["ci"], source=SEED002,
                conditions=f"{arm} vs fp16, {s['n']} pairs" + _inconclusive(v, s["n"]),
                details={"arm": arm}))
        pairs = runs.pairs(arm="base_fp4", baseline_arm="base_nf4", metric=metric)
        d = _deg(pairs, notes, "base_fp4 vs base_nf4")
        if d.size:
            s, v = _mean_judged(d, 0.0, want="above", n_boot=n_boot, seed=seed)
            no_diff = v == "conditional" and s["n"] >= MIN_PAIRS
            out.append(Verdict(
                claim=f"FP4 underperforms NF4 on {metric}", verdict=v, predicted="> 0",
                measured=s["estimate"], ci=s["ci"], source=SEED002,
                conditions=f"base_fp4 vs base_nf4, paired; {s['n']} pairs"
                           + (" — no significant difference" if no_diff
                              else _inconclusive(v, s["n"])),
                details={"metric": metric}))
        elif metric == "perplexity" and not len(pairs):
            notes.append("FP4 vs NF4: no base_fp4/base_nf4 pairs")
    return out


def grad_var_verdicts(records) -> list:
    """Seed 001 §4.2 / Thm 3.3: quantization-induced gradient variance ∝ r·2^(−2b).

    Uses ``grad_var_noise`` (trace of the gradient covariance across quantization-noise draws on
    one fixed batch: the part quantization adds) of the stochastic arms, and fits by OLS
    ln v = c + β·ln r − b·ln ρ_g; the interval of ρ_g is the t interval of the b coefficient
    (df = n − 3), mapped through exp(−·). Predicted ρ_g = 4 (a factor 4 per bit)."""
    runs = pair_runs(records)
    out = []
    for arm in ("adapter_sr", "adapter_noise"):
        rs = [r for r in runs.runs(arm) if r["bits"] < 16
              and isinstance(r.get("grad_var_noise"), (int, float)) and r["grad_var_noise"] > 0]
        if len(rs) < 5 or len({r["bits"] for r in rs}) < 2:
            continue
        bits = np.array([r["bits"] for r in rs], float)
        log_rank = np.log([r["rank"] for r in rs])
        log_v = np.log([r["grad_var_noise"] for r in rs])
        one_rank = np.ptp(log_rank) == 0
        design = np.column_stack([np.ones_like(bits), -bits] + ([] if one_rank else [log_rank]))
        coef, *_ = np.linalg.lstsq(design, log_v, rcond=None)
        dof = len(log_v) - design.shape[1]
        res = log_v - design @ coef
        se = math.sqrt(float(res @ res) / dof * np.linalg.inv(design.T @ design)[1, 1])
        half = float(stats.t.ppf(0.975, dof)) * se
        rho, lo, hi = math.exp(coef[1]), math.exp(coef[1] - half), math.exp(coef[1] + half)
        v = decide_interval_vs_null(4.0, (lo, hi), null=1.0)
        out.append(Verdict(
            claim="quantization-induced gradient variance falls by 4 per bit (∝ r·2^(−2b))",
            verdict=v, predicted=4.0, measured=rho, ci=[lo, hi],
            source="seed 001 §4.2 item 3 and Thm 3.3; seed 003 README",
            conditions=f"{arm}: grad_var_noise of {len(rs)} runs, OLS on ln v with ln r"
                       f"{' (one rank: no r term)' if one_rank else ''}; 95 % t interval"
                       + (" — also contains 1 (no effect)" if v == "conditional" else ""),
            details={"arm": arm, "exponent_r": float(coef[2]) if len(coef) > 2 else None}))
    return out


def _weighted_pearson(x, y, weights) -> float | None:
    """Pearson r of (x, y) under pair weights w/Σw (None when a variance is 0)."""
    w = weights / weights.sum()
    mx, my = w @ x, w @ y
    vx, vy = w @ (x - mx) ** 2, w @ (y - my) ** 2
    if vx > 0 and vy > 0:
        return float(w @ ((x - mx) * (y - my)) / math.sqrt(vx * vy))
    return None


def correlation_verdict(records, *, arm: str, n_boot: int = 2000, seed: int = 0):
    """Seed 003: "correlation R > 0.9 between predictions and results". Pearson r between the
    paper's predicted quantization term r·2^(−2b) and the measured paired excess eval loss,
    with a bootstrap interval resampling baseline groups (None if < 2 bit-widths or ranks)."""
    runs = pair_runs(records)
    pairs = runs.pairs(arm=arm)
    keep = pairs.bits < 16
    if keep.sum() < 4 or np.unique(pairs.bits[keep]).size < 2:
        return None
    x = (pairs.rank * 4.0 ** -pairs.bits.astype(float))[keep]
    y, group = pairs.excess[keep], pairs.group[keep]
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    groups = np.unique(group)
    counts = group_resample_counts(groups, n_boot=n_boot, rng=np.random.default_rng(seed),
                                   minlength=group.max() + 1)
    rs = [r for r in (_weighted_pearson(x, y, c) for c in counts[:, group]) if r is not None]
    lo, hi = (float(v) for v in np.quantile(rs, [0.025, 0.975]))
    v = decide_side((lo, hi), 0.9, want="above", n_units=int(groups.size))
    scales = sorted({r["scale"] for r in runs.runs(arm)})
    return Verdict(
        claim="predictions and results correlate with R > 0.9 (quantization term r·2^(−2b))",
        verdict=v, predicted="> 0.9", measured=float(np.corrcoef(x, y)[0, 1]), ci=[lo, hi],
        source="seed 003 README 'Experimental Validation'",
        conditions=f"{arm} vs fp16 paired excess eval loss, {int(keep.sum())} pairs, scale "
                   f"{scales}; prediction as the paper states it (s = 1)"
                   + _inconclusive(v, int(groups.size)),
        details={"arm": arm})


def _slope(x, y) -> float:
    x = x - x.mean()
    return float(np.dot(x, y - y.mean()) / np.dot(x, x))


def _rank_slope(pairs: Pairs) -> tuple[float, float, float]:
    """OLS slope of the paired excess in log₂r with its 95 % t interval (df = n − 2; infinite
    half-width below 3 pairs): a bootstrap within ranks collapses to a point with one pair per
    rank, and is too narrow with two."""
    x, y = np.log2(pairs.rank.astype(float)), pairs.excess
    n = len(pairs)
    fit = stats.linregress(x, y) if n >= 3 else None
    half = float(stats.t.ppf(0.975, n - 2) * fit.stderr) if fit is not None else math.inf
    slope = float(fit.slope) if fit is not None else _slope(x, y)
    return slope, slope - half, slope + half


def rank_dependence_verdicts(records, *, n_boot: int = 2000, seed: int = 0) -> list:  # noqa: ARG001
    """Slope of the paired excess eval loss in log₂r, per arm: W0 arms should be flat, adapter
    arms should follow s²·r (DESIGN.md §2: up for s = 1, down for α/r, flat for rsLoRA)."""
    runs = pair_runs(records)
    predicted_sign = {"one": 1, "alpha_r": -1, "rslora": 0}
    out = []
    for arm in [a for a in runs.arms() if a != "fp16"]:
        for scale in Counter(r["scale"] for r in runs.runs(arm)):
            b = min(r["bits"] for r in runs.runs(arm, scale=scale))  # lowest b: largest rank effect
            pairs = runs.pairs(arm=arm, bits=b, scale=scale)
            if np.unique(pairs.rank).size < 2:
                continue
            w0 = arm.startswith("base_") and arm != "base_nf4_adapter_rtn"
            sign = 0 if w0 else predicted_sign[scale]
            out.append(_rank_verdict(pairs, arm=arm, bits=b, scale=scale, sign=sign, w0=w0))
    return out


def _rank_verdict(pairs: Pairs, *, arm: str, bits: int, scale: str, sign: int, w0: bool) -> Verdict:
    """The rank-dependence verdict of one arm and scale: predicted slope sign ``sign``."""
    slope, lo, hi = _rank_slope(pairs)
    n = len(pairs)
    if n < MIN_PAIRS:
        v = "conditional"
    elif sign == 0:
        v = decide_interval(0.0, (lo, hi))
    else:
        v = decide_side((lo, hi), 0.0, want="above" if sign > 0 else "below")
    what = "quantizing W0" if w0 else "quantizing B, A"
    direction = "" if sign == 0 else (f" ({'increasing' if sign > 0 else 'decreasing'} "
                                      f"under scale={scale})")
    return Verdict(
        claim=f"{what}: excess loss {'does not depend' if sign == 0 else 'depends'} on rank"
              + direction,
        verdict=v, predicted="slope 0" if sign == 0 else f"slope {'>' if sign > 0 else '<'} 0",
        measured=slope, ci=[lo, hi] if math.isfinite(hi - slope) else None,
        source="DESIGN.md §2 (variance bound ∝ s²·r); seed 001 §4.2 'higher ranks need more bits'",
        conditions=f"{_arm_label(arm, bits)}, scale={scale}; slope of paired excess eval loss per "
                   f"doubling of r; {n} pairs, ranks {sorted(set(pairs.rank.tolist()))}"
                   + "; OLS slope, 95 % t interval"
                   + (" — a CI containing 0 is also what low power gives"
                      if sign == 0 and v == "holds" else "")
                   + _inconclusive(v, n),
        details={"arm": arm, "bits": bits, "scale": scale})


# the value meaning "no effect": a CI holding both it and the prediction tests nothing
_NULL = {"per_bit_factor": 1.0, "exponent_r": 0.0, "exponent_r_gen": 0.0, "exponent_N": 0.0}


def _fit_checks(cal: Calibration) -> list[tuple[str, float, str, dict]]:
    """(parameter, predicted value, claim, parameters) for each exponent the theory fixes."""
    beta_pred = {"one": 1.0, "alpha_r": -1.0, "rslora": 0.0}.get(cal.scale, 1.0)
    checks = []
    if cal.quant:
        p = cal.quant.params
        checks += [("per_bit_factor", 4.0,
                    "Thm 3.1 quantization term: error falls by 4 per bit (4^(−b))", p),
                   ("exponent_r", beta_pred, f"Thm 3.1 quantization term: ∝ s²·r (exponent "
                                             f"{beta_pred:g} under scale={cal.scale})", p)]
    if cal.gen:
        p = cal.gen.params
        checks += [("exponent_r_gen", 0.5,
                    "Thm 3.1 generalization term √(r/N): exponent ½ in r", p),
                   ("exponent_N", 0.5, "Thm 3.1 generalization term √(r/N): exponent ½ in 1/N", p)]
    return checks


def fit_verdicts(cal: Calibration) -> list:
    """Whether the theory's exponents lie inside the fitted intervals."""
    out = []
    weak = set(cal.quant.weakly_identified if cal.quant else ()) | set(
        cal.gen.weakly_identified if cal.gen else ())
    for name, pred, claim, params in _fit_checks(cal):
        e = params[name]
        if e.fixed or e.ci is None:
            continue
        lo, hi = e.ci
        v = decide_interval_vs_null(pred, (lo, hi), null=_NULL[name])
        why = (f" — also contains the no-effect value {_NULL[name]:g}: the data cannot tell"
               if v == "conditional" else "")
        # an interval that is unbounded, or a flat direction of the fit, contains the prediction
        # without testing it: consistent with the theory, not evidence for it
        if v == "holds" and (name in weak or not (np.isfinite(lo) and np.isfinite(hi))):
            v, why = "conditional", (" — weakly identified (unbounded or flat-direction interval): "
                                     "consistent with the prediction but not a test of it")
        out.append(Verdict(claim=claim, verdict=v, predicted=pred, measured=e.value, ci=[lo, hi],
                           source="seed 001 Theorem 3.1; DESIGN.md §2",
                           conditions=f"robust fit to paired {cal.arm} runs; interval = bootstrap "
                                      f"over baseline groups ∪ Wald" + why,
                           details={"parameter": name}))
    return out
