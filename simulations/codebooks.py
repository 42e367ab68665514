"""Experiment 6: NF4 vs FP4 vs int4 vs Lloyd–Max distortion on Gaussian weights.

Two kinds of numbers, both computed here:

* exact distortions of a *fixed-scale* 16-level code on x ~ N(0, 1):
      D(y) = Σ_k ∫_{t_k}^{t_{k+1}} (x − y_k)² φ(x) dx,   t_k = midpoints of sorted levels y,
  evaluated in closed form with Φ and φ (∫(x−y)²φ = (1+y²)[Φ] − [xφ] − 2y[−φ], see
  :func:`gaussian_code_distortion`), minimised over a global scale c for NF4/FP4/uniform;
  the Lloyd–Max code from :func:`quantbounds.quant.lloyd_max.lloyd_max` goes through the same
  integral (an independent check of its reported distortion, Max 1960: 0.009497);
* Monte Carlo distortions of the real *blockwise absmax* quantizers (block 64, as in
  bitsandbytes) on i.i.d. N(0, 1) blocks, with standard errors from the per-block spread.

Reference numbers (DESIGN.md §2): Lloyd–Max 0.009497, optimal uniform 0.01154 (Max 1960);
blockwise NF4 0.00845, int4 0.0116, bnb FP4 0.0149; int8 = (63/64)·Δ²/12 (the absmax element
of each block is exact).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from scipy import optimize, special, stats

from quantbounds._checks import check_int_range
from quantbounds.verdicts.results import Verdict

from quantbounds.verdicts.decisions import critical_z, decide_interval, decide_reference
from quantbounds.verdicts.intervals import mean_ci

# DESIGN.md §2 reference values, with the number of significant digits they are quoted to.
REFERENCES = {
    "lloyd_max": (0.009497, 4, "Max (1960) Table, 16 levels"),
    "optimal_uniform": (0.01154, 4, "Max (1960) Table, 16 levels"),
    "nf4_block": (0.00845, 3, "DESIGN.md §2 (measured, block 64)"),
    "int4_block": (0.0116, 3, "DESIGN.md §2 (measured, block 64)"),
    "fp4_block": (0.0149, 3, "DESIGN.md §2 (measured, block 64)"),
}


@dataclass(frozen=True, kw_only=True)
class CodebookConfig:
    """n_blocks Gaussian blocks of block_size values each (bitsandbytes default block 64)."""

    n_blocks: int = 16384
    block_size: int = 64

    def __post_init__(self):
        check_int_range(self.n_blocks, "n_blocks", 2)
        check_int_range(self.block_size, "block_size", 2)


def gaussian_code_distortion(levels, scale: float = 1.0) -> float:
    """Exact E(x − Q(x))² for x ~ N(0,1), Q = nearest of scale·levels (any sorted levels).

    Cell k is [t_k, t_{k+1}] with t = midpoints (±∞ at the ends); on it
    ∫(x − y)²φ dx = (1 + y²)(Φ(b) − Φ(a)) − (bφ(b) − aφ(a)) − 2y(φ(a) − φ(b)).
    """
    y = np.sort(np.asarray(levels, dtype=np.float64).ravel() * scale)
    t = np.concatenate([[-np.inf], 0.5 * (y[1:] + y[:-1]), [np.inf]])
    a, b = t[:-1], t[1:]
    Pa, Pb = stats.norm.cdf(a), stats.norm.cdf(b)
    pa, pb = stats.norm.pdf(a), stats.norm.pdf(b)
    # x·φ(x) → 0 at ±∞; write it out to avoid inf·0.
    apa = np.where(np.isfinite(a), a, 0.0) * pa
    bpb = np.where(np.isfinite(b), b, 0.0) * pb
    return float(np.sum((1 + y**2) * (Pb - Pa) - (bpb - apa) - 2 * y * (pa - pb)))


def best_scale_distortion(levels, *, lo: float = 0.05, hi: float = 8.0) -> tuple[float, float]:
    """min_c D(c·levels) over a global scale c (scipy bounded Brent). Returns (D, c)."""
    res = optimize.minimize_scalar(
        lambda c: gaussian_code_distortion(levels, c),
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": 1e-10},
    )
    return float(res.fun), float(res.x)


def lloyd_levels(n_levels: int, *, n_iter: int = 20000, tol: float = 1e-14) -> np.ndarray:
    """Lloyd's fixed-point iteration for N(0,1): levels ← cell centroids
    (φ(a) − φ(b))/(Φ(b) − Φ(a)), thresholds ← midpoints, until levels move < tol. A second,
    independent computation of the optimum ``quantbounds.quant.lloyd_max`` also solves (kept short
    on purpose: a cross-check, not the library's solver). φ is written out and Φ is
    scipy.special.ndtr because scipy.stats' per-call overhead dominates ~800 iterations."""
    y = np.linspace(-2.7, 2.7, n_levels)
    c = 1.0 / math.sqrt(2.0 * math.pi)
    for _ in range(n_iter):
        t = np.concatenate([[-np.inf], 0.5 * (y[1:] + y[:-1]), [np.inf]])
        pdf, cdf = c * np.exp(-0.5 * np.square(t)), special.ndtr(t)
        new = (pdf[:-1] - pdf[1:]) / (cdf[1:] - cdf[:-1])
        if np.max(np.abs(new - y)) < tol:
            return new
        y = new
    return y


def uniform_levels(n_levels: int) -> np.ndarray:
    """Mid-rise uniform levels (k + ½) for k = −n/2 … n/2 − 1 (unit step)."""
    return np.arange(-n_levels // 2, n_levels // 2) + 0.5


def run(config: CodebookConfig, key) -> dict:
    """Exact fixed-scale distortions and MC blockwise distortions. Returns a dict of rows."""
    from quantbounds.quant.lloyd_max import lloyd_max
    from quantbounds.quant.quantizers import fp4_code, nf4_code, quantize

    exact = {}
    lm = lloyd_max(4)
    exact["lloyd_max"] = {
        "reported": float(lm.distortion),
        "integral": gaussian_code_distortion(np.asarray(lm.levels)),
        "converged": bool(lm.converged),
        "own_iteration": gaussian_code_distortion(lloyd_levels(16)),
    }
    d, c = best_scale_distortion(uniform_levels(16))
    exact["optimal_uniform"] = {"distortion": d, "step": c}
    for name, code in (("nf4", nf4_code()), ("fp4", fp4_code())):
        d, c = best_scale_distortion(np.asarray(code))
        exact[f"{name}_best_scale"] = {"distortion": d, "scale": c}

    bs = config.block_size
    x = jax.random.normal(key, (config.n_blocks * bs,), dtype=jnp.float32)
    blocks = np.asarray(x, np.float64).reshape(-1, bs)
    absmax = np.abs(blocks).max(axis=1)
    schemes = {
        "nf4_block": dict(scheme="nf4", block_size=bs),
        "fp4_block": dict(scheme="fp4", block_size=bs),
        "int4_block": dict(scheme="uniform", bits=4, block_size=bs, step="midtread"),
        "uniform4_paper_block": dict(scheme="uniform", bits=4, block_size=bs, step="paper"),
        "int8_block": dict(scheme="int8", block_size=bs),
    }
    mc = {}
    for name, kw in schemes.items():
        scheme = kw.pop("scheme")
        q = np.asarray(quantize(x, scheme, **kw), np.float64).reshape(-1, bs)
        per_block = ((q - blocks) ** 2).mean(axis=1)
        mean, se, ci = mean_ci(per_block)
        mc[name] = {"distortion": mean, "se": se, "ci": ci}
    # int8: additive prediction with the absmax element exact, Δ_b = R_b/127 per block
    # (bitsandbytes blockwise int8 maps absmax to ±127): (1 − 1/bs)·Δ_b²/12 per element.
    pred_int8 = (1 - 1 / bs) * (absmax / 127.0) ** 2 / 12.0
    ratio = (
        (np.asarray(quantize(x, "int8", block_size=bs), np.float64).reshape(-1, bs) - blocks) ** 2
    ).mean(axis=1) / pred_int8
    r_mean, r_se, r_ci = mean_ci(ratio)
    mc["int8_vs_additive"] = {"ratio": r_mean, "se": r_se, "ci": r_ci}
    return {"config": {"n_blocks": config.n_blocks, "block_size": bs}, "exact": exact, "mc": mc}


def verdicts(res: dict) -> list[Verdict]:
    """Verdicts on the reference distortions, the ordering and NF4's claimed optimality."""
    out = []
    ex, mc = res["exact"], res["mc"]
    cond = (
        f"x ~ N(0,1); blockwise absmax, block {res['config']['block_size']}, "
        f"{res['config']['n_blocks']} blocks"
    )
    # Exact (integral) numbers vs Max (1960): tolerance = the quote's half unit only.
    lm = ex["lloyd_max"]
    for name, measured in (
        ("lloyd_max", lm["integral"]),
        ("optimal_uniform", ex["optimal_uniform"]["distortion"]),
    ):
        ref, dig, src = REFERENCES[name]
        v, tol = decide_reference(measured, 0.0, ref, digits=dig)
        out.append(
            Verdict(
                claim=f"{src}: 4-bit {name.replace('_', ' ')} distortion of N(0,1) = {ref}",
                verdict=v,
                predicted=ref,
                measured=measured,
                ci=None,
                conditions="exact integral over the code's cells",
                source=src,
                details={
                    "tolerance": tol,
                    "solver_reported": lm["reported"],
                    "own_lloyd_iteration": lm["own_iteration"],
                },
            )
        )
    n_ref = 3
    for name in ("nf4_block", "int4_block", "fp4_block"):
        ref, dig, src = REFERENCES[name]
        m = mc[name]
        v, tol = decide_reference(m["distortion"], m["se"], ref, digits=dig, n_tests=n_ref)
        out.append(
            Verdict(
                claim=f"{name.split('_')[0].upper()} blockwise distortion of N(0,1) ≈ {ref}",
                verdict=v,
                predicted=ref,
                measured=m["distortion"],
                ci=m["ci"],
                conditions=cond,
                source=src,
                details={"tolerance": tol, "se": m["se"]},
            )
        )
    r = mc["int8_vs_additive"]
    out.append(
        Verdict(
            claim="int8 blockwise error variance = (1 − 1/64)·Δ²/12 (absmax element exact)",
            verdict=decide_interval(1.0, r["ci"]),
            predicted=1.0,
            measured=r["ratio"],
            ci=r["ci"],
            conditions=cond + "; Δ = absmax/127 per block",
            source="DESIGN.md §2",
        )
    )
    # Ordering NF4 < int4 < FP4: each gap must be significant (z* over 2 comparisons).
    zc = critical_z(2)
    n, i, f = mc["nf4_block"], mc["int4_block"], mc["fp4_block"]
    gaps = [
        (i["distortion"] - n["distortion"]) / math.hypot(i["se"], n["se"]),
        (f["distortion"] - i["distortion"]) / math.hypot(f["se"], i["se"]),
    ]
    out.append(
        Verdict(
            claim="blockwise distortion order NF4 < int4 < FP4 on Gaussian weights",
            verdict="holds" if min(gaps) > zc else "fails",
            predicted="NF4 < int4 < FP4",
            measured=[n["distortion"], i["distortion"], f["distortion"]],
            conditions=cond,
            source="DESIGN.md §2; seed 002 (why FP4 underperforms NF4)",
            details={"z_gaps": gaps, "z_critical": zc},
        )
    )
    # Seed 002 / QLoRA: "NF4 is information-theoretically optimal for normally distributed
    # weights". In the MSE sense the optimum is Lloyd–Max; NF4 at its best global scale is
    # compared with it exactly (no MC).
    nf = ex["nf4_best_scale"]["distortion"]
    out.append(
        Verdict(
            claim="NF4 code is MSE-optimal for N(0,1) weights (QLoRA: "
            "'information-theoretically optimal')",
            verdict="holds" if nf <= lm["integral"] * (1 + 1e-9) else "fails",
            predicted=lm["integral"],
            measured=nf,
            ci=None,
            conditions="fixed global scale, exact integral; NF4 bins are "
            "equal-probability (entropy-optimal), not MSE-optimal",
            source="seed 002 §1 (QLoRA quote)",
            details={
                "nf4_scale": ex["nf4_best_scale"]["scale"],
                "blockwise_nf4_mc": n["distortion"],
            },
        )
    )
    lmu = ex["optimal_uniform"]["distortion"]
    out.append(
        Verdict(
            claim="an optimal non-uniform quantizer beats the optimal uniform one on Gaussian data",
            verdict="holds" if lm["integral"] < lmu else "fails",
            predicted="Lloyd–Max < optimal uniform",
            measured=[lm["integral"], lmu],
            conditions="16 levels, N(0,1), exact integrals",
            source="seed 002 §4",
        )
    )
    return out
