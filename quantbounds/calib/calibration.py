"""Calibrate Theorem 3.1's two terms against run records: the fits (torch-free).

Model (seed 001 Thm 3.1 with free constants and exponents, DESIGN.md §2):

    quantization term  Δ(r, b) = E[L_q − L_16 | r, b] = C2·r^β·ρ^(−b)
    generalization     L_16(r, N) = L∞ + C1·r^a·N^(−c)

Δ is the PAIRED excess eval loss of a quantized-adapter run over the 16-bit run with the same
rank, seed, N (and model, dataset, scale, α, steps; see :mod:`quantbounds.calib.pairing`). The
theory says ρ = 4 (a factor 4 per bit), β = 1 (linear in r, for s = 1; s = α/r gives β = −1
and rsLoRA β = 0 from the s² factor) and a = c = ½ (√(r/N)). Parameters are fitted by robust
least squares (:mod:`quantbounds.calib.fitting`: soft-L1 loss ρ_L(z) = 2(√(1+z) − 1) with
scale c = 1.4826·MAD of a first ordinary fit), with percentile bootstrap intervals from
resampling *groups* — one 16-bit run together with every quantized run paired with it (a
cluster bootstrap: pairs sharing a baseline are correlated). Not stratified by (r, N) cell:
with the usual 2–3 seeds per cell a stratified bootstrap under-states the spread (measured on
synthetic records: SD of ln ρ 0.008–0.009 stratified vs 0.0126 unstratified vs 0.0127
asymptotic vs 0.015 across 10 independent data sets). Resamples are weights on the groups
(:func:`quantbounds._bootstrap.group_resample_counts`), refitted all at once by the
batched solver. Each reported interval ``ci`` is the union of the bootstrap percentile interval
and the Wald interval θ̂ ± z·√diag(σ̂²(JᵀJ)⁻¹) (a diagnostic of identification). The interval
the verdicts read is ``ci_t``: a Student-t interval θ̂ ± t_{G−1}·se_J with se_J the
delete-one-cluster jackknife over the G seeds (runs of one seed share the data order and the
initialisation stream, so a seed is the unit of independent randomness; with 4–6 pairs a
percentile bootstrap covers 79–86 %, not 95 %):

    se_J² = (G − 1)/G · Σ_g (θ̂_(−g) − θ̄)²,    θ̂_(−g) the fit without seed g.

A parameter the design cannot identify (one rank →
a, β; one N → c; one bit-width → ρ) is fixed at its theory value and marked ``fixed``. Goodness
of fit is reported in-sample and leave-one-configuration-out (LOCO) for both terms: the
quantization term over (r, b, N) configurations, the generalization term over (r, N). A fit
whose LOCO R² is below 0, or that is weakly identified, must not drive a decision (the b*
table, the allocator): the caller asks :func:`quantbounds.verdicts.standard.usable_fit`.

The calibrated bit-widths built on these fits are in :mod:`quantbounds.calib.bstar`.

Results are typed (:mod:`quantbounds.calib.fit_results`): :class:`Calibration` holds one
:class:`TermFit` per term (parameters as :class:`ParamEstimate`, held-out fit as
:class:`LocoResult`); ``to_dict`` gives the JSON of results/calibration.json. Shapes: every
array below is 1-D over runs/pairs. Public: :func:`calibrate`, :class:`Calibration`,
:func:`quant_model`, :func:`gen_model`. The verdicts are in :mod:`quantbounds.verdicts.claims`;
the ``quantbounds calibrate`` command in :mod:`quantbounds.cli.calibrate`.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import stats

from quantbounds._checks import check_choice, check_int_range, check_probability
from quantbounds.calib.fitting import (
    GEN,
    QUANT,
    ROBUST_LOSSES,
    Term,
    batched_fit,
    free_mask,
    gen_model,
    quant_model,
    quant_start,
    r_squared,
    two_stage_fit,
    wald_se,
)
from quantbounds.calib.fit_results import Calibration, LocoResult, ParamEstimate, TermFit
from quantbounds.calib.pairing import PAIR_KEYS, PairedRuns, Pairs, pair_runs
from quantbounds.calib.records import ARMS
from quantbounds._bootstrap import group_resample_counts, percentile_interval

__all__ = [
    "Calibration",
    "CalibrationError",
    "LocoResult",
    "ParamEstimate",
    "TermFit",
    "calibrate",
    "calibrate_pairs",
    "gen_model",
    "quant_model",
]

# parameters fitted on a log scale: fitted name -> public name (reported as exp(θ))
_LOG_PARAMS = {"log_C2": "C2", "log_per_bit_factor": "per_bit_factor", "log_C1": "C1"}


class CalibrationError(ValueError):
    """Not enough valid data to fit; the message says what is missing."""


# ----------------------------------------------------------------------------- the data
@dataclass(frozen=True, eq=False)
class _Design:
    """What the two fits see: the pairs (quantization term) and one point per baseline group
    (generalization term: rank, N and mean 16-bit eval loss of the group's runs)."""

    pairs: Pairs
    group_keys: list
    gen_rank: np.ndarray
    gen_n: np.ndarray
    gen_loss: np.ndarray
    gen_seed: np.ndarray
    notes: list = field(default_factory=list)

    @property
    def quant_X(self):
        return self.pairs.rank.astype(float), self.pairs.bits.astype(float)

    @property
    def quant_cols(self):
        return {"rank": self.pairs.rank, "bits": self.pairs.bits}

    @property
    def gen_X(self):
        return self.gen_rank, self.gen_n

    @property
    def gen_cols(self):
        return {"rank": self.gen_rank, "n_train": self.gen_n}


def _fitted_scale(runs: PairedRuns, arm: str, baseline_arm: str, scale, notes: list):
    """The LoRA scale convention to fit: ``scale``, else the most frequent among the ``arm``
    runs (among arm and baseline runs if there are none)."""
    if scale is not None:
        return scale
    pool = runs.runs(arm, baseline_arm)
    counts = Counter(r["scale"] for r in pool if r["arm"] == arm) or Counter(
        r["scale"] for r in pool
    )
    chosen = counts.most_common(1)[0][0] if counts else None
    if len(counts) > 1:
        notes.append(f"several LoRA scale conventions {dict(counts)}; fitted scale={chosen!r} only")
    return chosen


def _design(runs: PairedRuns, *, arm: str, baseline_arm: str, scale, max_bits: int) -> _Design:
    """Pairs of ``arm`` (b ≤ max_bits) and the baseline groups of one scale."""
    keys = runs.baseline_keys(baseline_arm, scale=scale)
    pairs = runs.pairs(arm=arm, baseline_arm=baseline_arm, scale=scale, max_bits=max_bits)
    notes = []
    if pairs.missing:
        shown = "; ".join(pairs.missing[:8]) + (" …" if len(pairs.missing) > 8 else "")
        notes.append(
            f"{len(pairs.missing)} {arm} runs have no {baseline_arm} baseline at the same "
            f"rank/seed/N: " + shown
        )
    base = runs.baselines.get(baseline_arm, {})
    mean_loss = [np.mean([b["eval_loss"] for b in base[k]]) for k in keys]
    return _Design(
        pairs=pairs,
        group_keys=keys,
        gen_rank=np.array([k[PAIR_KEYS.index("rank")] for k in keys], float),
        gen_n=np.array([k[PAIR_KEYS.index("n_train")] for k in keys], float),
        gen_loss=np.array(mean_loss, float),
        gen_seed=np.array([k[PAIR_KEYS.index("seed")] for k in keys]),
        notes=notes,
    )


def _identifiable(design: _Design, *, arm: str, baseline_arm: str, max_bits: int, notes: list):
    """Free-parameter masks of both terms and whether each has enough data (≥ free + 2)."""
    q_free, g_free = free_mask(QUANT, design.quant_cols), free_mask(GEN, design.gen_cols)
    n_pairs, n_configs = len(design.pairs), len(design.group_keys)
    q_ok, g_ok = n_pairs >= int(q_free.sum()) + 2, n_configs >= int(g_free.sum()) + 2
    if not q_ok:
        notes.append(
            f"quantization term not fitted: {n_pairs} paired {arm} runs at b ≤ {max_bits} "
            f"(need ≥ {int(q_free.sum()) + 2}); add {arm} runs with matching "
            f"{baseline_arm} runs"
        )
    if not g_ok:
        notes.append(
            f"generalization term not fitted: {n_configs} distinct {baseline_arm} "
            f"configurations (need ≥ {int(g_free.sum()) + 2})"
        )
    if not (q_ok or g_ok):
        raise CalibrationError("too few valid runs to fit: " + " | ".join(notes))
    for name, free, term in (("quantization", q_free, QUANT), ("generalization", g_free, GEN)):
        fixed = [n for n, f in zip(term.names, free) if not f]
        if fixed:
            notes.append(
                f"{name}: {fixed} not identifiable from this design; fixed at theory values"
            )
    return (q_free if q_ok else None), (g_free if g_ok else None)


# ----------------------------------------------------------------------------- calibrate
def calibrate(
    records,
    *,
    arm: str = "adapter_rtn",
    baseline_arm: str = "fp16",
    scale: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    loss: str = "soft_l1",
    max_bits: int = 15,
) -> Calibration:
    """Fit both terms of Thm 3.1 to ``records`` (``quantbounds.run/1`` dicts, screened here,
    or a :class:`~quantbounds.calib.pairing.PairedRuns` already screened and paired).

    Uses the ``baseline_arm`` 16-bit runs for the generalization term and the pairs
    (``arm`` run at bits ≤ ``max_bits``, its baseline) for the quantization term, at one LoRA
    scale convention (default: the most frequent among the ``arm`` runs). Raises
    CalibrationError naming what is missing when neither term can be fitted; a term that
    cannot be fitted is None with the reason in ``notes`` (which also holds the screening
    problems when raw records are given).
    """
    check_choice(arm, "arm", ARMS)
    check_int_range(n_boot, "n_boot", 0, None)
    check_probability(ci, "ci")
    check_choice(loss, "loss", tuple(ROBUST_LOSSES))
    notes = [] if isinstance(records, PairedRuns) else None
    runs = pair_runs(records)
    notes = list(runs.problems) if notes is None else notes
    scale = _fitted_scale(runs, arm, baseline_arm, scale, notes)
    design = _design(runs, arm=arm, baseline_arm=baseline_arm, scale=scale, max_bits=max_bits)
    notes += design.notes
    q_free, g_free = _identifiable(
        design, arm=arm, baseline_arm=baseline_arm, max_bits=max_bits, notes=notes
    )
    # joint bootstrap over groups (a baseline and its pairs travel together), as weights
    n_groups = len(design.group_keys)
    counts = group_resample_counts(
        np.arange(n_groups), n_boot=n_boot, rng=np.random.default_rng(seed), minlength=n_groups
    )
    gen, gen_draws = (
        (None, None)
        if g_free is None
        else _fit_generalization(design, g_free, counts, ci=ci, loss=loss)
    )
    quant, quant_draws = (
        (None, None)
        if q_free is None
        else _fit_quantization(design, q_free, counts, ci=ci, loss=loss, scale=scale)
    )
    for name, part in (("quantization", quant), ("generalization", gen)):
        if part is not None and part.weakly_identified:
            notes.append(
                f"{name} term: {list(part.weakly_identified)} weakly identified (a flat "
                f"direction of the fit: Wald interval ≫ bootstrap interval or unbounded); "
                f"rules built on them get no interval"
            )
    return Calibration(
        quant=quant,
        gen=gen,
        quant_draws=quant_draws,
        gen_draws=gen_draws,
        notes=tuple(notes),
        arm=arm,
        baseline_arm=baseline_arm,
        scale=scale,
    )


def calibrate_pairs(
    pairs: Pairs,
    *,
    n_groups: int,
    scale: str | None,
    baseline_arm: str = "fp16",
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    loss: str = "soft_l1",
) -> Calibration:
    """The quantization term alone, Δ = C2·r^β·ρ^(−b), fitted to ``pairs`` made elsewhere — the
    post-training quantization of trained adapters (:func:`quantbounds.calib.ptq_pairs.
    ptq_pairs`, ``pairs.arm`` = "ptq_<scheme>"): the same robust fit, bootstrap over the
    ``n_groups`` groups (``pairs.group``: one trained adapter and every pair made from it),
    seed jackknife and leave-one-(r, b, N)-out check as :func:`calibrate`. ``gen`` is None.
    Raises CalibrationError when there are too few pairs (≥ free parameters + 2)."""
    check_int_range(n_groups, "n_groups", 1, None)
    check_int_range(n_boot, "n_boot", 0, None)
    check_probability(ci, "ci")
    check_choice(loss, "loss", tuple(ROBUST_LOSSES))
    if len(pairs) and (pairs.group.min() < 0 or pairs.group.max() >= n_groups):
        raise ValueError(f"pairs.group must index 0…{n_groups - 1} (n_groups = {n_groups})")
    empty = np.zeros(0)
    design = _Design(pairs=pairs, group_keys=list(range(n_groups)), gen_rank=empty, gen_n=empty,
                     gen_loss=empty, gen_seed=empty)
    q_free = free_mask(QUANT, design.quant_cols)
    notes = [f"quantization term of {pairs.arm}: {len(pairs)} pairs from {n_groups} trained "
             f"adapters"]
    if len(pairs) < int(q_free.sum()) + 2:
        raise CalibrationError(f"{pairs.arm}: {len(pairs)} pairs (need ≥ {int(q_free.sum()) + 2})")
    fixed = [n for n, f in zip(QUANT.names, q_free) if not f]
    if fixed:
        notes.append(f"quantization: {fixed} not identifiable from this design; fixed at theory "
                     f"values")
    counts = group_resample_counts(
        np.arange(n_groups), n_boot=n_boot, rng=np.random.default_rng(seed), minlength=n_groups
    )
    quant, draws = _fit_quantization(design, q_free, counts, ci=ci, loss=loss, scale=scale)
    if quant.weakly_identified:
        notes.append(f"quantization term: {list(quant.weakly_identified)} weakly identified")
    return Calibration(quant=quant, gen=None, quant_draws=draws, gen_draws=None,
                       notes=tuple(notes), arm=pairs.arm, baseline_arm=baseline_arm, scale=scale)


def theory_exponent_r(scale: str) -> float:
    """The rank exponent β of Thm 3.1's quantization term O(s²·r·2^(−2b)) under a LoRA scale
    convention, s = s(r): β = 1 + 2·d ln s / d ln r (s = α/r: −1; α/√r: 0; 1: +1), from
    :func:`quantbounds.conventions.lora_scale` (every convention is a power of r)."""
    from quantbounds.conventions import lora_scale

    return round(1.0 + 2.0 * math.log2(lora_scale(scale, 1.0, 2) / lora_scale(scale, 1.0, 1)), 12)


def _fit_quantization(design: _Design, free, counts, *, ci: float, loss: str,
                      scale: str | None = None):
    """Δ = C2·r^β·ρ^(−b) on the pairs: two-stage robust fit, group bootstrap, LOCO; with a
    known ``scale`` and a fitted exponent, also the LOCO of the same form with the paper's
    exponents (ρ = 4, β = :func:`theory_exponent_r`; C2 fitted): ``loco_theory``."""
    pairs, X, y = design.pairs, design.quant_X, design.pairs.excess
    theta0 = np.where(free, quant_start(*X, y), QUANT.theory)
    theta, f_scale = two_stage_fit(quant_model, theta0, free, X, y, loss=loss)
    draws = None
    if len(counts):
        draws = _boot_fits(
            quant_model,
            QUANT,
            theta,
            free,
            design.quant_cols,
            X,
            y,
            counts[:, pairs.group].astype(float),
            f_scale,
            loss,
        )
    fit = _term_fit(
        quant_model,
        QUANT,
        theta,
        draws,
        free,
        X,
        y,
        ci,
        formula="excess = C2·r^exponent_r·per_bit_factor^(−b)",
        size=("n_pairs", len(pairs)),
        jack=_jackknife(quant_model, QUANT, theta, free, design.quant_cols, X, y, pairs.seed,
                        f_scale, loss),
    )
    data = {
        "rank": pairs.rank.tolist(),
        "bits": pairs.bits.tolist(),
        "n_train": pairs.n_train.tolist(),
        "group": pairs.group.tolist(),  # the baseline group (theory_exponents' jackknife unit)
        "excess": pairs.excess.tolist(),
    }
    cfg = np.stack([pairs.rank, pairs.bits, pairs.n_train], 1)
    loco = _loco_term(quant_model, QUANT, theta, free, design.quant_cols, X, y, cfg, f_scale, loss)
    loco_theory = None
    if scale is not None and (free[1] or free[2]):
        th_free = np.array([True, False, False])
        th0 = np.array([theta[0], theory_exponent_r(scale), math.log(4.0)])
        th, fs = two_stage_fit(quant_model, th0, th_free, X, y, loss=loss)
        loco_theory = _loco_term(quant_model, QUANT, th, th_free, design.quant_cols, X, y, cfg,
                                 fs, loss)
    return replace(fit, loco=loco, loco_theory=loco_theory, data=data), draws


def _fit_generalization(design: _Design, free, counts, *, ci: float, loss: str):
    """L16 = L∞ + C1·r^a·N^(−c) on one point per baseline group, with the group bootstrap."""
    X, y = design.gen_X, design.gen_loss
    spread = float(np.ptp(y))
    theta0 = np.array(
        [float(y.min()) - 0.1 * float(spread + 1e-3), math.log(max(spread, 1e-3)), 0.5, 0.5]
    )
    theta, f_scale = two_stage_fit(
        gen_model, np.where(free, theta0, GEN.theory), free, X, y, loss=loss
    )
    draws = None
    if len(counts):
        draws = _boot_fits(
            gen_model, GEN, theta, free, design.gen_cols, X, y, counts.astype(float), f_scale, loss
        )
    fit = _term_fit(
        gen_model,
        GEN,
        theta,
        draws,
        free,
        X,
        y,
        ci,
        formula="L16 = L_inf + C1·r^exponent_r_gen·N^(−exponent_N)",
        size=("n_configs", len(design.group_keys)),
        jack=_jackknife(gen_model, GEN, theta, free, design.gen_cols, X, y, design.gen_seed,
                        f_scale, loss),
    )
    cfg = np.stack([design.gen_rank, design.gen_n], 1)
    loco = _loco_term(gen_model, GEN, theta, free, design.gen_cols, X, y, cfg, f_scale, loss)
    return replace(fit, loco=loco), draws


def _n_ok(draws) -> int:
    return 0 if draws is None else int(np.all(np.isfinite(draws), axis=1).sum())


def _estimates(term: Term, theta, draws, free, ci: float, se,
               jack=None) -> dict[str, ParamEstimate]:
    """Value and interval of each parameter. ``ci`` is the UNION of the bootstrap percentile
    interval and the Wald interval θ ± z·se: a bootstrap started at the estimate can miss a flat
    direction of the fit, and the Wald interval ignores the baseline sharing. ``ci_t`` is the
    clustered t interval θ ± t_{G−1}·se_J of the seed jackknife ``jack`` = (se_J, G)."""
    z = float(stats.norm.ppf(1 - (1 - ci) / 2))
    se_j, n_clusters = (None, 0) if jack is None else jack
    if draws is not None:
        draws = draws[np.all(np.isfinite(draws), axis=1)]
    out = {}
    for j, name in enumerate(term.names):

        is_log = name.startswith("log_")

        def public(v, _log=is_log):
            with np.errstate(over="ignore"):
                return float(np.exp(v)) if _log else float(v)

        if not free[j]:
            out[_LOG_PARAMS.get(name, name)] = ParamEstimate(value=public(theta[j]), fixed=True)
            continue
        ends, boot, wald = [], None, None
        if draws is not None and len(draws) >= 20:
            lo, hi = percentile_interval(draws[:, j], ci)
            boot, ends = (public(lo), public(hi)), [lo, hi]
        if np.isfinite(se[j]):
            lo, hi = theta[j] - z * se[j], theta[j] + z * se[j]
            wald, ends = (public(lo), public(hi)), ends + [lo, hi]
        union = (public(min(ends)), public(max(ends))) if ends else None
        sj = None if se_j is None or not math.isfinite(se_j[j]) else float(se_j[j])
        dof = float(n_clusters - 1) if sj is not None and n_clusters >= 2 else None
        ci_t = None
        if sj is not None and dof is not None and sj > 0:
            half = float(stats.t.ppf(1 - (1 - ci) / 2, dof)) * sj
            ci_t = (public(theta[j] - half), public(theta[j] + half))
        out[_LOG_PARAMS.get(name, name)] = ParamEstimate(
            value=public(theta[j]), fixed=False, ci=union, ci_bootstrap=boot, ci_wald=wald,
            se=sj, dof=dof, ci_t=ci_t, log_scale=is_log, theta=float(theta[j]),
        )
    return out


def _term_fit(
    model, term: Term, theta, draws, free, X, y, ci: float, *, formula: str, size: tuple[str, int],
    jack=None,
) -> TermFit:
    """The TermFit of one fitted term (``size`` = (JSON key, count); ``jack`` = (se_J, G) of
    the seed jackknife)."""
    params = _estimates(term, theta, draws, free, ci, wald_se(model, theta, free, X, y), jack)
    return TermFit(
        model=formula,
        params=params,
        theta=np.asarray(theta),
        size_key=size[0],
        n=size[1],
        n_boot_ok=_n_ok(draws),
        r2_in_sample=r_squared(y, model(theta, *X)),
        weakly_identified=tuple(_weak(params)),
        n_clusters=0 if jack is None else int(jack[1]),
    )


def _jackknife(model, term: Term, theta, free, cols, X, y, clusters, f_scale, loss):
    """(se_J per parameter, G): delete-one-cluster jackknife over the G seeds,
    se_J² = (G − 1)/G · Σ_g (θ̂_(−g) − θ̄)², refits started at the full fit (robust loss with
    the full-data scale). se_J is NaN for every parameter when G < 2 or when a refit without
    some seed cannot identify the term (all G refits are needed)."""
    labels, inv = np.unique(np.asarray(clusters), return_inverse=True)
    G = labels.size
    nan = np.full(len(theta), np.nan)
    if G < 2:
        return nan, int(G)
    W = np.stack([(inv != g).astype(float) for g in range(G)])
    fits = _boot_fits(model, term, np.asarray(theta), free, cols, X, y, W, f_scale, loss)
    if not np.all(np.isfinite(fits[:, free])):
        return nan, int(G)
    se = np.sqrt((G - 1) / G * np.sum((fits - fits.mean(0)) ** 2, axis=0))
    se[~free] = np.nan
    return se, int(G)


def _weak(params: dict[str, ParamEstimate], factor: float = 10.0) -> list[str]:
    """Free parameters whose interval is unbounded or whose Wald interval is > ``factor``×
    wider than the bootstrap one (the two agree within ≈ 2× on identified problems, see tests)."""
    out = []
    for k, e in params.items():
        if e.fixed or e.ci is None:
            continue
        log = k in _LOG_PARAMS.values()
        if not all(math.isfinite(v) for v in e.ci) or (e.ci[0] <= 0 and log):
            out.append(k)
            continue
        wald, boot = e.ci_wald, e.ci_bootstrap
        if wald and boot:
            f = math.log if log else (lambda v: v)
            if f(wald[1]) - f(wald[0]) > factor * max(f(boot[1]) - f(boot[0]), 1e-300):
                out.append(k)
    return out


def _boot_fits(model, term: Term, theta, free, cols, X, y, W, f_scale, loss) -> np.ndarray:
    """Refit on each weight row of W; rows where a free exponent is not identifiable → NaN."""
    out = np.full((W.shape[0], len(term.names)), np.nan)
    ok = (W > 0).sum(1) >= int(free.sum()) + 2
    for col, f in zip(term.identify, free):
        if col and f:
            v = cols[col]
            ok &= np.array([np.unique(v[w > 0]).size >= 2 for w in W])
    if ok.any():
        out[ok] = batched_fit(model, theta, free, X, y, W[ok], f_scale=f_scale, loss=loss)
    return out


def _loco_term(model, term: Term, theta, free, cols, X, y, cfg, f_scale, loss) -> LocoResult:
    """Leave one configuration (a row of ``cfg``: (r, b, N) for the quantization term, (r, N)
    for the generalization term) out: refit without it (robust loss with the full-data
    f_scale, started from the full fit), predict its points; R² of the held-out predictions
    against the measurements (below 0: worse than predicting the mean of the rest)."""
    uniq = np.unique(cfg, axis=0)
    pred = np.full(len(y), np.nan)
    null = np.full(len(y), np.nan)
    held = np.stack([np.all(cfg == c, axis=1) for c in uniq])  # (configs, points)
    fits = _boot_fits(model, term, np.asarray(theta), free, cols, X, y, (~held).astype(float),
                      f_scale, loss)
    skipped = tuple(tuple(c.tolist()) for c, th in zip(uniq, fits) if not np.all(np.isfinite(th)))
    for out, th in zip(held, fits):
        if np.all(np.isfinite(th)):
            with np.errstate(over="ignore", invalid="ignore"):
                pred[out] = model(th, *[x[out] for x in X])
            null[out] = y[~out].mean()
    m = np.isfinite(pred)
    ceiling, means_r2 = _loco_ceiling(y, pred, held)
    return LocoResult(
        n_configs=int(len(uniq)),
        n_held_out=int(len(uniq) - len(skipped)),
        skipped=skipped,
        rmse=float(np.sqrt(np.mean((y[m] - pred[m]) ** 2))) if m.any() else None,
        rmse_null_mean=float(np.sqrt(np.mean((y[m] - null[m]) ** 2))) if m.any() else None,
        r2=r_squared(y[m], pred[m]) if m.sum() > 1 else None,
        predictions=pred,
        r2_ceiling=ceiling,
        r2_config_means=means_r2,
    )


def _loco_ceiling(y, pred, held) -> tuple[float | None, float | None]:
    """(r2_ceiling, r2_config_means) of :class:`LocoResult` over the held-out configurations
    (rows of ``held``, (configs, points), whose prediction is finite)."""
    rows = [h for h in held if np.all(np.isfinite(pred[h]))]
    if len(rows) < 2 or min(int(h.sum()) for h in rows) < 2:
        return None, None
    pts = np.any(rows, axis=0)
    yy = y[pts]
    sst = float(((yy - yy.mean()) ** 2).sum())
    if sst <= 0:
        return None, None
    n = np.array([h.sum() for h in rows], float)
    ybar = np.array([y[h].mean() for h in rows])
    p = np.array([pred[h].mean() for h in rows])  # constant within a configuration
    within = float(sum(((y[h] - y[h].mean()) ** 2).sum() for h in rows))
    between = float((n * (ybar - yy.mean()) ** 2).sum())
    means_r2 = 1.0 - float((n * (ybar - p) ** 2).sum()) / between if between > 0 else None
    return 1.0 - within / sst, means_r2


def _loco(pairs: Pairs, theta, free, loss: str, f_scale: float | None = None) -> LocoResult:
    """:func:`_loco_term` of the quantization term on ``pairs`` over (r, b, N)."""
    r, b, y = pairs.rank.astype(float), pairs.bits.astype(float), pairs.excess
    cfg = np.stack([pairs.rank, pairs.bits, pairs.n_train], 1)
    return _loco_term(quant_model, QUANT, theta, free, {"rank": r, "bits": b}, (r, b), y, cfg,
                      f_scale, loss)
