"""Calibrate Theorem 3.1's two terms against run records: the fits (torch-free).

Model (seed 001 Thm 3.1 with free constants and exponents, DESIGN.md §2):

    quantization term  Δ(r, b) = E[L_q − L_16 | r, b] = C2·r^β·ρ^(−b)
    generalization     L_16(r, N) = L∞ + C1·r^a·N^(−c)

Δ is the PAIRED excess eval loss of a quantized-adapter run over the 16-bit run with the same
rank, seed, N (and model, dataset, scale, α, steps; see :mod:`quantbounds.calib.pairing`). The
theory says ρ = 4 (a factor 4 per bit), β = 1 (linear in r, for s = 1; s = α/r gives β = −1
and rsLoRA β = 0 from the s² factor) and a = c = ½ (√(r/N)). Parameters are fitted by robust
least squares (``scipy.optimize.least_squares``, minimising Σᵢ c²·ρ_L((resᵢ/c)²) with the
soft-L1 loss ρ_L(z) = 2(√(1+z) − 1) and its scale c = 1.4826·MAD of a first ordinary fit),
with percentile bootstrap intervals from resampling *groups* — one 16-bit run together with
every quantized run paired with it (a cluster bootstrap: pairs sharing a baseline are
correlated). Not stratified by (r, N) cell: with the usual 2–3 seeds per cell a stratified
bootstrap under-states the spread (measured on synthetic records: SD of ln ρ 0.008–0.009
stratified vs 0.0126 unstratified vs 0.0127 asymptotic vs 0.015 across 10 independent data
sets). Resamples are weights on the groups, refitted all at once by a batched IRLS solver
(:func:`_batched_fit`, tested against least_squares). Each reported interval is the union of
the bootstrap percentile interval and the Wald interval θ̂ ± z·√diag(σ̂²(JᵀJ)⁻¹). A parameter
the design cannot identify (one rank → a, β; one N → c; one bit-width → ρ) is fixed at its
theory value and marked ``fixed``. Goodness of fit is reported in-sample and
leave-one-configuration-out (LOCO).

The calibrated bit-width (:func:`calibrated_bits`) solves, for rank r and N examples,

    balanced   C2·r^β·ρ^(−b) = C1·r^a·N^(−c)  →  b = ln(C2·r^β / (C1·r^a·N^(−c))) / ln ρ
    tolerance  C2·r^β·ρ^(−b) = tol            →  b = ln(C2·r^β / tol) / ln ρ
    cost       min_b Δ(b) + λ·b               →  b = ln(C2·r^β·ln ρ / λ) / ln ρ

Shapes: every array below is 1-D over runs/pairs. Public: :func:`calibrate`,
:class:`Calibration`, :func:`calibrated_bits`, :func:`bits_table`, :func:`quant_model`,
:func:`gen_model`. The verdicts on the seed documents' claims are in :mod:`quantbounds.verdicts.claims`;
the ``quantbounds calibrate`` command (:func:`main`, :func:`run_calibration`) is in
:mod:`quantbounds.cli.calibrate` and re-exported here (lazily, so this module imports neither).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
from scipy import stats
from scipy.optimize import least_squares

from quantbounds._checks import check_choice, check_int_range, check_positive, check_probability
from quantbounds.calib.pairing import (PAIR_KEYS, Pairs, baselines, group_resample_counts, paired_excess,
                                  screen_records)
from quantbounds.calib.records import ARMS

# parameters fitted on a log scale: fitted name -> public name (reported as exp(θ))
_LOG_PARAMS = {"log_C2": "C2", "log_per_bit_factor": "per_bit_factor", "log_C1": "C1"}


class CalibrationError(ValueError):
    """Not enough valid data to fit; the message says what is missing."""


def percentile_interval(x, ci: float) -> np.ndarray:
    """[q_{(1−ci)/2}, q_{1−(1−ci)/2}] of the 1-D sample x: a percentile bootstrap interval."""
    return np.quantile(x, [(1 - ci) / 2, 1 - (1 - ci) / 2])


# ----------------------------------------------------------------------------- models
@dataclass(frozen=True)
class _Term:
    names: tuple[str, ...]
    theory: tuple[float, ...]      # values in the fitted parameterisation
    identify: tuple[str | None, ...]  # which design column must vary for each parameter


# θ = (ln C2, β, ln ρ); X columns (r, b)
QUANT = _Term(("log_C2", "exponent_r", "log_per_bit_factor"), (0.0, 1.0, math.log(4.0)),
              (None, "rank", "bits"))
# θ = (L∞, ln C1, a, c); X columns (r, N)
GEN = _Term(("L_inf", "log_C1", "exponent_r_gen", "exponent_N"), (0.0, 0.0, 0.5, 0.5),
            (None, None, "rank", "n_train"))


def quant_model(theta, r, b):
    """Δ = C2·r^β·ρ^(−b) with θ = (ln C2, β, ln ρ); r, b arrays of one shape."""
    return np.exp(theta[0] + theta[1] * np.log(r) - theta[2] * b)


def gen_model(theta, r, N):
    """L16 = L∞ + C1·r^a·N^(−c) with θ = (L∞, ln C1, a, c)."""
    return theta[0] + np.exp(theta[1] + theta[2] * np.log(r) - theta[3] * np.log(N))


def _quant_jac(theta, r, b):
    f = quant_model(theta, r, b)
    return np.stack(np.broadcast_arrays(f, f * np.log(r), -b * f), axis=-1)


def _gen_jac(theta, r, N):
    e = np.exp(theta[1] + theta[2] * np.log(r) - theta[3] * np.log(N))
    return np.stack(np.broadcast_arrays(np.ones_like(e), e, e * np.log(r), -e * np.log(N)), axis=-1)


_JAC = {quant_model: _quant_jac, gen_model: _gen_jac}  # analytic Jacobians (tested by finite differences)


def _free_mask(term: _Term, cols: dict[str, np.ndarray]) -> np.ndarray:
    return np.array([k is None or np.unique(cols[k]).size >= 2 for k in term.identify])


# ----------------------------------------------------------------------------- robust fitting
def _fit(model, theta0, free, X, y, *, f_scale: float | None, loss: str):
    """Robust least squares over the free parameters; fixed ones stay at theta0."""
    theta0 = np.asarray(theta0, float)

    def full(p):
        th = theta0.copy()
        th[free] = p
        return th

    kw = {} if f_scale is None else dict(loss=loss, f_scale=f_scale)
    sol = least_squares(lambda p: model(full(p), *X) - y, theta0[free],
                        jac=lambda p: _JAC[model](full(p), *X)[:, free], method="trf", max_nfev=2000, **kw)
    return full(sol.x)


# ρ(z) and ρ′(z) of scipy's robust losses (z = (residual/f_scale)²), as least_squares defines them
_RHO = {
    "linear": (lambda z: z, lambda z: np.ones_like(z)),
    "soft_l1": (lambda z: 2 * (np.sqrt(1 + z) - 1), lambda z: 1 / np.sqrt(1 + z)),
    "huber": (lambda z: np.where(z <= 1, z, 2 * np.sqrt(z) - 1), lambda z: np.where(z <= 1, 1.0, 1 / np.sqrt(np.maximum(z, 1)))),
    "cauchy": (np.log1p, lambda z: 1 / (1 + z)),
    "arctan": (np.arctan, lambda z: 1 / (1 + z ** 2)),
}


def _batched_fit(model, theta0, free, X, y, W, *, f_scale: float | None, loss: str,
                 max_iter: int = 100) -> np.ndarray:
    """Many weighted robust fits at once: row k of W (K, n) weights the n observations.

    Minimises Σ_i W_ki·c²·ρ((res_i/c)²) for each k by damped iteratively-reweighted
    Gauss–Newton (weights ρ′), whose fixed points are the stationary points least_squares finds.
    Hand-written because a bootstrap or leave-one-out needs thousands of 3–4-parameter fits
    and scipy's per-call overhead (≈ 9 ms) dominates; tested against least_squares.
    Returns θ (K, p); fixed parameters stay at theta0.
    """
    rho, drho = _RHO["linear" if f_scale is None else loss]
    c2 = 1.0 if f_scale is None else f_scale ** 2
    K = W.shape[0]
    th = np.tile(np.asarray(theta0, float), (K, 1))

    def cost(t, Wa):
        res = model(t.T[..., None], *X) - y
        return np.sum(Wa * c2 * rho(res ** 2 / c2), axis=1)

    cur = cost(th, W)
    active = np.arange(K)                                         # rows not yet converged
    for _ in range(max_iter):
        t_a, W_a = th[active], W[active]
        res = model(t_a.T[..., None], *X) - y                    # (k, n)
        J = _JAC[model](t_a.T[..., None], *X)[..., free]         # (k, n, q)
        w = W_a * drho(res ** 2 / c2)
        A = np.einsum("kn,knp,knq->kpq", w, J, J)
        g = np.einsum("kn,knp,kn->kp", w, J, res)
        # a replicate whose normal equations overflowed takes no step (it keeps its last θ)
        broken = ~(np.isfinite(A).all(axis=(1, 2)) & np.isfinite(g).all(axis=1))
        A[broken], g[broken] = np.eye(A.shape[1]), 0.0
        A += 1e-12 * np.trace(A, axis1=1, axis2=2)[:, None, None] * np.eye(A.shape[1])
        try:
            step = -np.linalg.solve(A, g[..., None])[..., 0]
        except np.linalg.LinAlgError:  # a rank-deficient replicate: minimum-norm step
            step = -(np.linalg.pinv(A) @ g[..., None])[..., 0]
        t = np.ones(len(active))
        new = t_a.copy()
        for _h in range(30):  # step halving where the robust cost would rise
            new[:, free] = t_a[:, free] + t[:, None] * step
            c = cost(new, W_a)
            bad = ~(c <= cur[active] * (1 + 1e-14))
            if not bad.any():
                break
            t = np.where(bad, t / 2, t)
        ok = c <= cur[active] * (1 + 1e-14)
        new[~ok] = t_a[~ok]
        th[active] = new
        cur[active] = np.where(ok, c, cur[active])
        moved = np.max(np.abs(new - t_a), axis=1) > 1e-10 * (1 + np.max(np.abs(t_a), axis=1))
        active = active[ok & moved]
        if not active.size:
            break
    return th


def _two_stage(model, theta0, free, X, y, *, loss: str):
    """Ordinary fit, then the robust loss with f_scale = 1.4826·MAD of its residuals."""
    th = _fit(model, theta0, free, X, y, f_scale=None, loss="linear")
    res = model(th, *X) - y
    scale = 1.4826 * float(np.median(np.abs(res - np.median(res))))
    if loss == "linear" or not scale > 0:
        return th, None
    return _fit(model, th, free, X, y, f_scale=scale, loss=loss), scale


def _quant_start(r, b, y) -> np.ndarray:
    """Start from ln Δ = ln C2 + β ln r − b ln ρ fitted by ordinary LS on positive excess."""
    pos = y > 0
    th = np.array(QUANT.theory)
    th[0] = math.log(max(float(np.mean(np.abs(y))), 1e-12))
    if pos.sum() >= 4 and np.unique(b[pos]).size >= 2:
        M = np.column_stack([np.ones(pos.sum()), np.log(r[pos]), -b[pos]])
        coef, *_ = np.linalg.lstsq(M, np.log(y[pos]), rcond=None)
        if np.all(np.isfinite(coef)) and coef[2] > 0:
            th = coef
    return th


def _r2(y, yhat) -> float:
    ss = float(np.sum((y - y.mean()) ** 2))
    return float(1 - np.sum((y - yhat) ** 2) / ss) if ss > 0 else float("nan")


@dataclass
class Calibration:
    """Fitted terms, bootstrap draws and diagnostics (see :func:`calibrate`)."""

    quant: dict | None
    gen: dict | None
    quant_draws: np.ndarray | None      # (n_ok, 3) θ draws
    gen_draws: np.ndarray | None        # (n_ok, 4)
    notes: list[str]
    arm: str
    scale: str | None

    def fits_dict(self) -> dict:
        """The ``fits`` object of results/calibration.json."""
        out: dict = {}
        for name, part in (("quantization", self.quant), ("generalization", self.gen)):
            out[name] = part if part is not None else {"status": "not fitted"}
        for part, names in ((self.quant, ("C2", "per_bit_factor", "exponent_r")),
                            (self.gen, ("C1", "exponent_r_gen", "exponent_N"))):
            params = (part or {}).get("params", {})
            out.update({k: params.get(k) for k in names})
        return out


def _n_ok(draws) -> int:
    return 0 if draws is None else int(np.all(np.isfinite(draws), axis=1).sum())


def _wald_se(model, theta, free, X, y) -> np.ndarray:
    """Asymptotic standard errors √diag(σ²·(JᵀJ)⁻¹) of the free parameters (NaN for fixed or
    when JᵀJ is singular), σ² = Σres²/(n − p). Pairs sharing a baseline make this too narrow;
    a flat direction (e.g. L∞ vs C1 when the loss barely depends on r) makes it wide."""
    se = np.full(len(theta), np.nan)
    J = _JAC[model](np.asarray(theta), *X)[:, free]
    res = model(np.asarray(theta), *X) - y
    dof = len(y) - int(free.sum())
    if dof <= 0:
        return se
    with np.errstate(all="ignore"):
        try:
            cov = np.linalg.inv(J.T @ J) * float(res @ res) / dof
        except np.linalg.LinAlgError:
            return se
    se[free] = np.sqrt(np.clip(np.diag(cov), 0, np.inf))
    return se


def _summaries(term: _Term, theta, draws, free, ci: float, se=None) -> dict:
    """Value and interval of each parameter. The interval is the UNION of the bootstrap
    percentile interval and the Wald interval θ ± z·se: a bootstrap started at the estimate can
    miss a flat direction of the fit, and the Wald interval ignores the baseline sharing."""
    z = float(stats.norm.ppf(1 - (1 - ci) / 2))
    if draws is not None:
        draws = draws[np.all(np.isfinite(draws), axis=1)]
    se = np.full(len(theta), np.nan) if se is None else se
    out = {}
    for j, name in enumerate(term.names):
        def tr(v, _log=name.startswith("log_")):
            with np.errstate(over="ignore"):
                return float(np.exp(v)) if _log else float(v)
        pub = _LOG_PARAMS.get(name, name)
        entry = {"value": tr(theta[j]), "fixed": not bool(free[j]), "ci": None,
                 "ci_bootstrap": None, "ci_wald": None}
        if free[j]:
            ends = []
            if draws is not None and len(draws) >= 20:
                lo, hi = percentile_interval(draws[:, j], ci)
                entry["ci_bootstrap"] = [tr(lo), tr(hi)]
                ends += [lo, hi]
            if np.isfinite(se[j]):
                entry["ci_wald"] = [tr(theta[j] - z * se[j]), tr(theta[j] + z * se[j])]
                ends += [theta[j] - z * se[j], theta[j] + z * se[j]]
            if ends:
                entry["ci"] = [tr(min(ends)), tr(max(ends))]
        out[pub] = entry
    return out


def _term_result(model, term: _Term, theta, draws, free, X, y, ci: float, *, formula: str,
                 size: tuple[str, int]) -> dict:
    """The JSON summary of one fitted term: parameters with intervals, θ, data size
    (``size`` = (key, count)), successful bootstrap refits, in-sample R²."""
    return {"model": formula,
            "params": _summaries(term, theta, draws, free, ci, _wald_se(model, theta, free, X, y)),
            "theta": theta.tolist(), size[0]: size[1], "n_boot_ok": _n_ok(draws),
            "r2_in_sample": _r2(y, model(theta, *X))}


def calibrate(records: list[dict], *, arm: str = "adapter_rtn", baseline_arm: str = "fp16",
              scale: str | None = None, n_boot: int = 1000, seed: int = 0, ci: float = 0.95,
              loss: str = "soft_l1", max_bits: int = 15) -> Calibration:
    """Fit both terms of Thm 3.1 to ``records`` (valid ``quantbounds.run/1`` dicts).

    Uses the ``baseline_arm`` 16-bit runs for the generalization term and the pairs
    (``arm`` run at bits ≤ ``max_bits``, its baseline) for the quantization term, at one LoRA
    scale convention (default: the most frequent among the ``arm`` runs). Raises
    CalibrationError naming what is missing when neither term can be fitted; a term that
    cannot be fitted is None with the reason in ``notes``.
    """
    check_choice(arm, "arm", ARMS)
    check_int_range(n_boot, "n_boot", 0, None)
    check_probability(ci, "ci")
    check_choice(loss, "loss", tuple(_RHO))
    valid, notes = screen_records(records)
    pool = [r for r in valid if r["arm"] in (arm, baseline_arm)]
    if scale is None:
        sc = Counter(r["scale"] for r in pool if r["arm"] == arm) or Counter(r["scale"] for r in pool)
        scale = sc.most_common(1)[0][0] if sc else None
        if len(sc) > 1:
            notes.append(f"several LoRA scale conventions {dict(sc)}; fitted scale={scale!r} only")
    pool = [r for r in pool if r["scale"] == scale]
    base = baselines(pool, baseline_arm=baseline_arm)
    keys = sorted(base, key=str)
    gi = {k: i for i, k in enumerate(keys)}
    pairs = paired_excess([r for r in pool if r["bits"] <= max_bits or r["arm"] == baseline_arm],
                          arm=arm, baseline_arm=baseline_arm, group_index=gi)
    if pairs.missing:
        notes.append(f"{len(pairs.missing)} {arm} runs have no {baseline_arm} baseline at the same "
                     f"rank/seed/N: " + "; ".join(pairs.missing[:8]) + (" …" if len(pairs.missing) > 8 else ""))
    # generalization data: one point per baseline group (mean of repeats)
    g_r = np.array([k[PAIR_KEYS.index("rank")] for k in keys], float)
    g_N = np.array([k[PAIR_KEYS.index("n_train")] for k in keys], float)
    g_y = np.array([np.mean([b["eval_loss"] for b in base[k]]) for k in keys], float)
    g_X, g_cols = (g_r, g_N), {"rank": g_r, "n_train": g_N}
    q_X, q_cols = (pairs.rank.astype(float), pairs.bits.astype(float)), {"rank": pairs.rank, "bits": pairs.bits}

    q_free = _free_mask(QUANT, q_cols)
    q_ok = len(pairs) >= int(q_free.sum()) + 2
    if not q_ok:
        notes.append(f"quantization term not fitted: {len(pairs)} paired {arm} runs at b ≤ {max_bits} "
                     f"(need ≥ {int(q_free.sum()) + 2}); add {arm} runs with matching {baseline_arm} runs")
    g_free = _free_mask(GEN, g_cols)
    g_ok = len(keys) >= int(g_free.sum()) + 2
    if not g_ok:
        notes.append(f"generalization term not fitted: {len(keys)} distinct {baseline_arm} configurations "
                     f"(need ≥ {int(g_free.sum()) + 2})")
    if not (q_ok or g_ok):
        raise CalibrationError("too few valid runs to fit: " + " | ".join(notes))
    for name, free, term in (("quantization", q_free, QUANT), ("generalization", g_free, GEN)):
        fixed = [n for n, f in zip(term.names, free) if not f]
        if fixed:
            notes.append(f"{name}: {fixed} not identifiable from this design; fixed at theory values")

    # full data: two stages (ordinary, then robust with f_scale from the MAD); a bootstrap
    # resample: one robust stage from the full-data estimate with the full-data f_scale
    q_theta = g_theta = q_scale = g_scale = None
    if q_ok:
        th0 = np.where(q_free, _quant_start(*q_X, pairs.excess), QUANT.theory)
        q_theta, q_scale = _two_stage(quant_model, th0, q_free, q_X, pairs.excess, loss=loss)
    if g_ok:
        th0 = np.array([float(g_y.min()) - 0.1 * float(np.ptp(g_y) + 1e-3), math.log(max(np.ptp(g_y), 1e-3)),
                        0.5, 0.5])
        g_theta, g_scale = _two_stage(gen_model, np.where(g_free, th0, GEN.theory), g_free, g_X, g_y, loss=loss)

    # joint bootstrap over groups (a baseline and its pairs travel together), as weights
    counts = group_resample_counts(np.arange(len(keys)), n_boot=n_boot, rng=np.random.default_rng(seed),
                                   minlength=len(keys))
    qd = gd = None
    if g_ok and len(counts):
        gd = _boot_fits(gen_model, GEN, g_theta, g_free, g_cols, g_X, g_y, counts.astype(float), g_scale, loss)
    if q_ok and len(counts):
        qd = _boot_fits(quant_model, QUANT, q_theta, q_free, q_cols, q_X, pairs.excess,
                        counts[:, pairs.group].astype(float), q_scale, loss)

    quant = gen = None
    if q_ok:
        quant = _term_result(quant_model, QUANT, q_theta, qd, q_free, q_X, pairs.excess, ci,
                             formula="excess = C2·r^exponent_r·per_bit_factor^(−b)", size=("n_pairs", len(pairs)))
        quant["loco"] = _loco(pairs, q_theta, q_free, loss, q_scale)
        quant["data"] = {"rank": pairs.rank.tolist(), "bits": pairs.bits.tolist(),
                         "n_train": pairs.n_train.tolist(), "excess": pairs.excess.tolist()}
    if g_ok:
        gen = _term_result(gen_model, GEN, g_theta, gd, g_free, g_X, g_y, ci,
                           formula="L16 = L_inf + C1·r^exponent_r_gen·N^(−exponent_N)", size=("n_configs", len(keys)))
    for name, part in (("quantization", quant), ("generalization", gen)):
        if part is not None:
            part["weakly_identified"] = _weak(part["params"])
            if part["weakly_identified"]:
                notes.append(f"{name} term: {part['weakly_identified']} weakly identified (a flat direction "
                             f"of the fit: Wald interval ≫ bootstrap interval or unbounded); rules built on "
                             f"them get no interval")
    return Calibration(quant=quant, gen=gen, quant_draws=qd, gen_draws=gd, notes=notes, arm=arm,
                       scale=scale)


def _weak(params: dict, factor: float = 10.0) -> list[str]:
    """Free parameters whose interval is unbounded or whose Wald interval is > ``factor``×
    wider than the bootstrap one (the two agree within ≈ 2× on identified problems, see tests)."""
    out = []
    for k, e in params.items():
        if e["fixed"] or e["ci"] is None:
            continue
        log = k in _LOG_PARAMS.values()
        if not all(math.isfinite(v) for v in e["ci"]) or (e["ci"][0] <= 0 and log):
            out.append(k)
            continue
        w, b = e.get("ci_wald"), e.get("ci_bootstrap")
        if w and b:
            f = math.log if log else (lambda v: v)
            if f(w[1]) - f(w[0]) > factor * max(f(b[1]) - f(b[0]), 1e-300):
                out.append(k)
    return out


def _boot_fits(model, term: _Term, theta, free, cols, X, y, W, f_scale, loss) -> np.ndarray:
    """Refit on each weight row of W; rows where a free exponent is not identifiable → NaN."""
    out = np.full((W.shape[0], len(term.names)), np.nan)
    ok = (W > 0).sum(1) >= int(free.sum()) + 2
    for col, f in zip(term.identify, free):
        if col and f:
            v = cols[col]
            ok &= np.array([np.unique(v[w > 0]).size >= 2 for w in W])
    if ok.any():
        out[ok] = _batched_fit(model, theta, free, X, y, W[ok], f_scale=f_scale, loss=loss)
    return out


def _loco(pairs: Pairs, theta, free, loss: str, f_scale: float | None = None) -> dict:
    """Leave one (r, b, N) configuration out: refit without it (robust loss with the
    full-data f_scale, started from the full fit), predict its pairs."""
    cfg = np.stack([pairs.rank, pairs.bits, pairs.n_train], 1)
    uniq = np.unique(cfg, axis=0)
    pred = np.full(len(pairs), np.nan)
    null = np.full(len(pairs), np.nan)
    r, b, y = pairs.rank.astype(float), pairs.bits.astype(float), pairs.excess
    held = np.stack([np.all(cfg == c, axis=1) for c in uniq])          # (configs, pairs)
    fits = _boot_fits(quant_model, QUANT, np.asarray(theta), free, {"rank": r, "bits": b}, (r, b), y,
                      (~held).astype(float), f_scale, loss)
    skipped = [c.tolist() for c, th in zip(uniq, fits) if not np.all(np.isfinite(th))]
    for out, th in zip(held, fits):
        if np.all(np.isfinite(th)):
            pred[out] = quant_model(th, r[out], b[out])
            null[out] = y[~out].mean()
    m = np.isfinite(pred)
    return {"n_configs": int(len(uniq)), "n_held_out": int(len(uniq) - len(skipped)), "skipped": skipped,
            "rmse": float(np.sqrt(np.mean((y[m] - pred[m]) ** 2))) if m.any() else None,
            "rmse_null_mean": float(np.sqrt(np.mean((y[m] - null[m]) ** 2))) if m.any() else None,
            "r2": _r2(y[m], pred[m]) if m.sum() > 1 else None,
            "predictions": pred.tolist()}


# ----------------------------------------------------------------------------- b*
def calibrated_bits(cal: Calibration, r: float, N: float, *, rule: str = "balanced",
                    tol: float = 0.01, lam: float | None = None, ci: float = 0.95) -> dict:
    """Calibrated bit-width for rank r and N examples, with a bootstrap interval.

    rule = "balanced": the b where the fitted terms are equal,
        b = ln(C2·r^β / (C1·r^a·N^(−c))) / ln ρ   (with theory exponents: ¼log₂r + ¼log₂N + ½log₂(C2/C1));
    rule = "tolerance": the least b with fitted excess ≤ tol nats, b = ln(C2·r^β/tol)/ln ρ;
    rule = "cost": minimiser of Δ(b) + λ·b, b = ln(C2·r^β·ln ρ/λ)/ln ρ.
    Returns {"b": value, "ci": [lo, hi] | None, "rule": rule} (continuous b, not clipped).
    """
    check_choice(rule, "rule", ("balanced", "tolerance", "cost"))
    check_positive(r, "r")
    check_positive(N, "N")
    if cal.quant is None or (rule == "balanced" and cal.gen is None):
        raise CalibrationError(f"rule {rule!r} needs the quantization"
                               + (" and generalization fits" if rule == "balanced" else " fit"))
    if rule == "tolerance":
        check_positive(tol, "tol")
    if rule == "cost":
        if lam is None:
            raise ValueError("rule='cost' needs lam > 0 (nats per bit)")
        check_positive(lam, "lam")

    def b_of(q, g):
        lr = math.log(r)
        log_quant = q[..., 0] + q[..., 1] * lr
        if rule == "balanced":
            log_gen = g[..., 1] + g[..., 2] * lr - g[..., 3] * math.log(N)
            return (log_quant - log_gen) / q[..., 2]
        if rule == "tolerance":
            return (log_quant - math.log(tol)) / q[..., 2]
        return (log_quant + np.log(q[..., 2]) - math.log(lam)) / q[..., 2]

    q0 = np.asarray(cal.quant["theta"])
    g0 = np.asarray(cal.gen["theta"]) if cal.gen else np.zeros(4)
    val = float(b_of(q0, g0))
    out = {"rule": rule, "b": val, "ci": None}
    qd, gd = cal.quant_draws, cal.gen_draws
    if rule != "balanced" and qd is not None:
        gd = np.zeros((len(qd), 4))
    if qd is not None and gd is not None and len(gd) == len(qd):
        draws = b_of(qd, gd)
        draws = draws[np.isfinite(draws)]
    else:
        draws = np.array([])
    weak = (cal.quant.get("weakly_identified") or []) + (
        (cal.gen.get("weakly_identified") or []) if rule == "balanced" and cal.gen else [])
    if weak:
        out["note"] = f"no interval: {weak} weakly identified"
        return out
    if draws.size >= 20:
        out["ci"] = [float(v) for v in percentile_interval(draws, ci)]
    return out


def bits_table(cal: Calibration, ranks=(4, 8, 16, 32), Ns=(1000,), *, tol: float = 0.01) -> list[dict]:
    """Calibrated b* (balanced, tolerance) with intervals next to the paper's and derived rules.

    The paper's rule is Thm 3.2 with C = 0, σ_g² = 1; "derived_balanced" is the balanced rule
    with the fitted C1, C2 but the theory's exponents (bounds.optimal_bits).
    """
    from quantbounds.theory.bounds import optimal_bits

    rows = []
    for N in Ns:
        for r in ranks:
            row: dict = {"r": r, "N": N, "paper": float(optimal_bits(r, N, rule="paper"))}
            if cal.quant is not None:
                row["calibrated_tolerance"] = calibrated_bits(cal, r, N, rule="tolerance", tol=tol)
            if cal.quant is not None and cal.gen is not None:
                row["calibrated_balanced"] = calibrated_bits(cal, r, N, rule="balanced")
                C1, C2 = cal.gen["params"]["C1"]["value"], cal.quant["params"]["C2"]["value"]
                row["derived_balanced"] = float(optimal_bits(r, N, rule="balanced", C1=C1, C2=C2))
            rows.append(row)
    return rows
