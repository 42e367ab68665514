"""Widrow diagnostics: does a real quantizer on given weights behave like the additive model?

Widrow's quantization theorem (Widrow 1956; Widrow & Kollár 2008, ch. 4–5): for a uniform
grid of step Δ, the error ε = Q(w) − w is U(−Δ/2, Δ/2) and uncorrelated with w when the
characteristic function of w, φ_w(u) = E[e^{iuw}], vanishes at u = 2πk/Δ, k ≠ 0. When it does
not (coarse grids: Δ comparable to the spread of w), the error variance departs from Δ²/12 and
the error correlates with the weight (DESIGN.md §2: ratio ≈ 0.63, corr ≈ −0.6 for a 3-level
grid Δ = R ≈ 4σ). For a Gaussian N(0, σ²), |φ_w(2π/Δ)| = exp(−2π²σ²/Δ²).

For each element i the diagnostics use the local step Δ_i: the step of its group (uniform,
int8) or, for NF4/FP4, the width of its code's cell (cells between midpoints of the code,
clipped to [−1, 1]) times the block absmax — so that mean Δ_i²/12 is the high-resolution
codebook-aware variance Σ p_i·Δ_i²/12 measured on these weights. Elements of all-zero groups
(Δ_i = 0, error 0) are left out of the ratios.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import stats

from quantbounds.quant.bnb4 import _bnb_sorted, _fp4_bnb_table, _nf4_bnb_table
from quantbounds.quant.quantizers import quantize_codes


class WidrowDiagnostics(NamedTuple):
    """Diagnostics of ε = Q(w) − w over the n elements with Δ_i > 0.

    variance_ratio      mean(ε²) / mean(Δ_i²/12)   (1 under the additive model; the absmax element
                        of a group is exact for grids containing ±R, giving ≈ absmax_factor)
    mse                 mean(ε²);  reference_variance  mean(Δ_i²/12)
    error_mean          mean(ε)
    correlation         Pearson correlation of ε and w (0 under the additive model)
    char_fn             |mean_i exp(2πi·w_i/Δ_i)|: the empirical |φ_w(2π/Δ)| (Widrow's condition
                        needs it ≈ 0; its sampling noise is ≈ 1/√n)
    ks_statistic, ks_pvalue   Kolmogorov–Smirnov test of ε_i/Δ_i against U(−½, ½) (scipy)
    zero_error_fraction fraction of elements with ε = 0 exactly
    group_size          elements sharing one range R (tensor size, channel size or block size)
    absmax_factor       1 − 1/group_size: the expected variance_ratio when each group's absmax
                        element is exact and the rest follow the additive model
    absmax_exact        whether the grid contains ±R (midtread, int8, NF4, FP4); the "paper" grid
                        has −R but clips +R to R − Δ
    n                   number of elements used
    """

    variance_ratio: float
    mse: float
    reference_variance: float
    error_mean: float
    correlation: float
    char_fn: float
    ks_statistic: float
    ks_pvalue: float
    zero_error_fraction: float
    group_size: int
    absmax_factor: float
    absmax_exact: bool
    n: int


def _local_steps_4bit(qt) -> np.ndarray:
    """Per-element Δ_i for NF4/FP4: width of the code's cell within [−1, 1], times absmax."""
    table = _nf4_bnb_table() if qt.scheme == "nf4" else _fp4_bnb_table()
    order, srt, mids = _bnb_sorted(table)
    edges = np.concatenate([[-1.0], mids.astype(float), [1.0]])
    width_sorted = np.diff(edges)
    # bnb code → ascending position → cell width (FP4's ±0 share one cell: both positions
    # 7 and 8 sit on 0.0; give each the union of the two zero cells)
    pos = np.empty(16, dtype=int)
    pos[order] = np.arange(16)
    width = width_sorted[pos]
    if qt.scheme == "fp4":
        zero_cell = width_sorted[7] + width_sorted[8]
        width[order[7]] = width[order[8]] = zero_cell
    codes = np.asarray(qt.codes).reshape(-1)
    absmax = np.repeat(np.asarray(qt.steps, dtype=float), qt.block_size)[: codes.size]
    return width[codes] * absmax


def widrow_diagnostics(
    w,
    *,
    scheme="uniform",
    bits=None,
    block_size=None,
    axis=None,
    rounding="nearest",
    key=None,
    step="paper",
) -> WidrowDiagnostics:
    """Quantize w with quantbounds.quant.quantizers.quantize_codes(w, scheme, ...) and diagnose ε.

    w: weights, any shape (floating). The other arguments are passed to quantize_codes
    unchanged (same validation and defaults). Returns :class:`WidrowDiagnostics`.
    Float64 statistics are computed with numpy/scipy on host.
    """
    qt = quantize_codes(
        w,
        scheme,
        bits=bits,
        block_size=block_size,
        axis=axis,
        rounding=rounding,
        key=key,
        step=step,
    )
    w64 = np.asarray(w, dtype=np.float64).reshape(-1)
    e = np.asarray(qt.dequantize(), dtype=np.float64).reshape(-1) - w64
    size = w64.size
    if scheme in ("nf4", "fp4"):
        d = _local_steps_4bit(qt)
        group = qt.block_size
        exact = True
    else:
        steps = np.asarray(qt.steps, dtype=np.float64)
        if qt.block_size is not None:
            d = np.repeat(steps, qt.block_size)
            group = qt.block_size
        elif qt.axis is not None:
            shp = [1] * len(qt.shape)
            shp[qt.axis] = -1
            d = np.broadcast_to(steps.reshape(shp), qt.shape).reshape(-1)
            group = size // qt.shape[qt.axis]
        else:
            d = np.full(size, float(steps))
            group = size
        exact = (step == "midtread") or scheme == "int8"
    keep = d > 0
    e, wk, d = e[keep], w64[keep], d[keep]
    n = int(e.size)
    if n < 2:
        raise ValueError("w needs at least two elements in groups with a nonzero range")
    mse = float(np.mean(e * e))
    ref = float(np.mean(d * d) / 12)
    corr = float(np.corrcoef(e, wk)[0, 1]) if np.std(e) > 0 and np.std(wk) > 0 else 0.0
    cf = float(np.abs(np.mean(np.exp(2j * np.pi * wk / d))))
    ks = stats.kstest(e / d, stats.uniform(loc=-0.5, scale=1.0).cdf)
    return WidrowDiagnostics(
        variance_ratio=mse / ref,
        mse=mse,
        reference_variance=ref,
        error_mean=float(np.mean(e)),
        correlation=corr,
        char_fn=cf,
        ks_statistic=float(ks.statistic),
        ks_pvalue=float(ks.pvalue),
        zero_error_fraction=float(np.mean(e == 0.0)),
        group_size=int(group),
        absmax_factor=1.0 - 1.0 / group,
        absmax_exact=bool(exact),
        n=n,
    )
