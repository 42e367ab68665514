"""Monte Carlo engine for ε_BA = Q(B)·Q(A) − B·A (DESIGN.md §2), vmapped and sharded.

Each sample yields the three terms ‖B·ε_A‖_F², ‖ε_B·A‖_F², ‖ε_B·ε_A‖_F² and ‖ε_BA‖_F² (which
also holds the three cross terms, zero in expectation under independent zero-mean noise).

Below this module, one layer each: ``epsba.units`` (what a work unit computes; a grid cut
into units), ``epsba.noise_draws`` (the additive noise ε = Δ·u), ``epsba.gram`` (per sample,
four r×r products of the noise with [B, ε_B] and [A, ε_A], never an m×n matrix, so 4096×4096
layers at rank 256 fit; the noise-free Grams BᵀB and A·Aᵀ once per rank) and
``epsba.sharding`` (the units over the devices).

Modes.
  "additive": the paper's model (seed eq. 2–3): ε entries independent, U(−Δ/2, Δ/2) with
      Δ = 2^{1−b}·R ("paper" step) or R/(2^{b−1}−1) ("midtread" step), R the absmax of the
      tensor, of each channel (``axis=k``: one R per index along axis k) or of each block of
      ``block_size`` consecutive row-major entries (the groupings of ``quantizers.quantize``).
      Noise is ε = Δ·u with u = (j + ½)/2^k − ½, j uniform on 0…2^k−1 from the 32-bit output
      words of Threefry-2x32-20 (the hash of JAX's default PRNG, computed unrolled; k = 16,
      two draws per word, in float32; k = 32 in float64): exactly symmetric (all odd moments
      0), |u| < ½, Var u = (1 − 4^{−k})/12 — a relative deficit of 2.3·10⁻¹⁰ at k = 16, below
      float32 resolution, ignored by the exact moments (E u⁴ likewise differs from 1/80 by a
      relative O(4^{−k})).
  "real": ε = Q(X) − X with ``quantizers.quantize`` (uniform RTN or stochastic rounding, NF4,
      FP4, int8; per tensor/channel/block). Deterministic quantizers (everything but
      rounding="stochastic") give one exact draw: n_samples is 1 and the standard error 0.

Work is cut into units (one chunk of ``chunk_size`` samples of one rank × bit-width cell) and
spread over every visible JAX device by ``quantbounds.epsba.sharding``; sample t of cell c draws
from fold_in(fold_in(key, c), t), so results depend neither on the device count nor on
chunk_size (up to GEMM rounding).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from quantbounds._checks import (
    check_bits,
    check_block_size,
    check_choice,
    check_finite,
    check_int_range,
    check_lora_factors,
)
from quantbounds.conventions import MODES, ROUNDINGS, SCALES, SCHEMES, STEPS, lora_scale
from quantbounds.epsba.gram import gram_terms
from quantbounds.epsba.moments import EpsBAMoments, eps_ba_moments
from quantbounds.epsba.units import run_additive, run_real
from quantbounds.quant.noise import step_ratio

FACTORS = ("gaussian", "peft")


class EpsBASimulation(NamedTuple):
    """Monte Carlo means and standard errors (each an :class:`EpsBAMoments`), n samples."""

    mean: EpsBAMoments
    stderr: EpsBAMoments
    n_samples: int


def eps_ba_terms(B: Any, A: Any, eps_B: Any, eps_A: Any) -> EpsBAMoments:
    """One sample's ‖B·ε_A‖_F², ‖ε_B·A‖_F², ‖ε_B·ε_A‖_F², ‖ε_BA‖_F² (Gram form, scale 1).

    B: (m, r); A: (r, n); eps_B: (m, r); eps_A: (r, n). Works for any errors, e.g.
    eps_B = Q(B) − B from a real quantizer. Returns 0-d arrays.
    """
    B, A, eps_B, eps_A = (jnp.asarray(x) for x in (B, A, eps_B, eps_A))
    if eps_B.shape != B.shape or eps_A.shape != A.shape:
        raise ValueError(
            f"eps_B must have B's shape {B.shape} and eps_A A's shape {A.shape}, "
            f"got {eps_B.shape} and {eps_A.shape}"
        )
    return EpsBAMoments(*_terms_one(B, A, eps_B, eps_A))


@jax.jit
def _terms_one(B, A, eps_B, eps_A):
    return gram_terms(B, A, B.T @ B, A @ A.T, eps_B.T[None], eps_A[None])[0]


def ranges(x: Any, *, block_size: int | None = None, axis: int | None = None) -> np.ndarray:
    """Quantization range R per entry of x, broadcastable to x's shape.

    Per tensor: max|x| (shape (1, 1)); per channel (``axis=k``): one R per index along axis k,
    the max over the other axes (keepdims); per block: max|x| of each ``block_size``
    consecutive row-major entries (bitsandbytes' layout). As ``quantizers.quantize``.
    """
    x = np.abs(np.asarray(x))
    if block_size is not None:
        bs = check_block_size(x.size, block_size)
        return np.repeat(x.reshape(-1, bs).max(axis=1), bs).reshape(x.shape)
    if axis is not None:
        k = check_int_range(axis, "axis", -x.ndim, x.ndim - 1) % x.ndim
        return x.max(axis=tuple(i for i in range(x.ndim) if i != k), keepdims=True)
    return x.max(keepdims=True)


def _key_parts(key) -> tuple[np.ndarray, str]:
    """(raw key data, PRNG implementation name) of a typed key or a legacy uint32 PRNGKey."""
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"key must be a single PRNG key, got shape {key.shape}")
        return np.asarray(jax.random.key_data(key)), str(jax.random.key_impl(key))
    arr = np.asarray(key)
    if arr.dtype != np.uint32 or arr.shape != (2,):
        raise TypeError(
            "key must be a jax.random.key(...) or a legacy PRNGKey (uint32, shape "
            f"(2,)), got {getattr(arr, 'dtype', type(key))} of shape {arr.shape}"
        )
    return arr, str(jax.random.key_impl(jax.random.wrap_key_data(arr)))


def _dtype(dtype) -> str:
    name = jnp.dtype(dtype).name
    check_choice(name, "dtype", ("float32", "float64"))
    if name == "float64" and not jax.config.jax_enable_x64:
        raise ValueError(
            "dtype=float64 needs jax_enable_x64 (jax.config.update('jax_enable_x64', True))"
        )
    return name


def summarize(samples: np.ndarray, scale2: Any = 1.0) -> tuple[EpsBAMoments, EpsBAMoments]:
    """Means and standard errors (sample sd, ddof 1, ÷ √n; 0 for one sample) over axis −2."""
    x = np.asarray(samples, np.float64) * np.asarray(scale2, np.float64)[..., None, None]
    n = x.shape[-2]
    se = x.std(axis=-2, ddof=1) / np.sqrt(n) if n > 1 else np.zeros_like(x[..., 0, :])
    mean = x.mean(axis=-2)
    return EpsBAMoments(*np.moveaxis(mean, -1, 0)), EpsBAMoments(*np.moveaxis(se, -1, 0))


def check_options(*, mode, scheme, rounding, block_size, axis, step) -> None:
    """Validate the quantizer options shared by :func:`simulate_eps_ba` and ``simulate_grid``."""
    check_choice(mode, "mode", MODES)
    check_choice(scheme, "scheme", SCHEMES)
    check_choice(rounding, "rounding", ROUNDINGS)
    check_choice(step, "step", STEPS)
    if mode == "additive" and (scheme != "uniform" or rounding != "nearest"):
        raise ValueError(
            "mode='additive' is the paper's uniform noise model: scheme must be "
            "'uniform' and rounding 'nearest' (use mode='real' for real quantizers)"
        )
    if block_size is not None and axis is not None:
        raise ValueError("give at most one of block_size (per block) and axis (per channel)")


def simulate_eps_ba(
    key: Any,
    B: Any,
    A: Any,
    *,
    bits: int,
    n_samples: int,
    mode: str = "additive",
    scheme: str = "uniform",
    rounding: str = "nearest",
    block_size: int | None = None,
    axis: int | None = None,
    step: str = "paper",
    scale: float = 1.0,
    dtype: Any = jnp.float32,
    chunk_size: int | None = None,
    mesh: Any = None,
) -> EpsBASimulation:
    """Monte Carlo estimate of E‖B·ε_A‖², E‖ε_B·A‖², E‖ε_B·ε_A‖², E‖ε_BA‖² (all × s²).

    key: a JAX PRNG key. B: (m, r); A: (r, n) (finite). bits: b in 1…16 (ignored for nf4/fp4/
    int8). n_samples ≥ 2 (mode "additive" or stochastic rounding); deterministic real
    quantizers use one exact draw (returned n_samples 1, stderr 0). See the module docstring
    for modes, ranges (``block_size`` / ``axis``), the noise generator and the Gram form.
    mesh: a 1-D mesh from ``sharding.device_mesh`` (default all devices).
    In "additive" mode the result estimates ``moments.eps_ba_moments`` with per-entry
    variances (Δ_entry)²/12 (exact for that model); in "real" mode it measures the real error.
    """
    check_options(
        mode=mode, scheme=scheme, rounding=rounding, block_size=block_size, axis=axis, step=step
    )
    m, r, n = check_lora_factors(B, A)
    bits = check_bits(bits)
    if step == "midtread" and bits < 2:
        raise ValueError("step='midtread' needs bits in 2…16 (R/(2^{b−1}−1) is undefined at b = 1)")
    random = mode == "additive" or rounding == "stochastic"
    n_samples = check_int_range(n_samples, "n_samples", 2 if random else 1)
    check_finite(scale, "scale")
    dtype = _dtype(dtype)
    keydata, impl = _key_parts(key)
    B, A = np.asarray(B, dtype), np.asarray(A, dtype)
    if mode == "additive":
        RBt = ranges(B, block_size=block_size, axis=axis).T  # ranges of ε_Bᵀ
        RA = ranges(A, block_size=block_size, axis=axis)
        if block_size is not None or axis is not None:  # one compiled shape for every grouping
            RBt, RA = np.broadcast_to(RBt, B.T.shape), np.broadcast_to(RA, A.shape)
        samples = run_additive(
            keydata,
            impl,
            [bits],
            B[None],
            A[None],
            RBt[None],
            RA[None],
            n_samples=n_samples,
            step=step,
            dtype=dtype,
            chunk_size=chunk_size,
            mesh=mesh,
        )[0, 0]
    else:
        samples = run_real(
            keydata,
            impl,
            [bits],
            B,
            A,
            n_samples=n_samples,
            scheme=scheme,
            rounding=rounding,
            block_size=block_size,
            axis=axis,
            step=step,
            dtype=dtype,
            chunk_size=chunk_size,
            mesh=mesh,
        )[0]
    mean, se = summarize(samples, float(scale) ** 2)
    return EpsBASimulation(mean, se, int(samples.shape[0]))


# ------------------------------------------------------------------ grids over ranks × bits
class EpsBAGrid(NamedTuple):
    """:func:`simulate_grid`'s result. Moments are :class:`EpsBAMoments` of (R, K) arrays × s².

    ranks (R,), bits (K,); mean, stderr: Monte Carlo means and standard errors; predicted:
    the additive model's exact moments (``moments.eps_ba_moments`` with per-entry variance
    Δ²/12 for the same factors and ranges; NaN for NF4/FP4, which have no single Δ);
    scale (R,): the LoRA scale s per rank; range_A, range_B (R,): per-tensor absmax of A, B;
    n_samples: samples per cell (1 for deterministic real quantizers).
    """

    ranks: np.ndarray
    bits: np.ndarray
    mean: EpsBAMoments
    stderr: EpsBAMoments
    predicted: EpsBAMoments
    scale: np.ndarray
    range_A: np.ndarray
    range_B: np.ndarray
    n_samples: int


def grid_factors(
    key: Any, *, m: int, n: int, ranks, factors: Any = "gaussian", dtype: Any = np.float64
) -> list[tuple[np.ndarray, np.ndarray]]:
    """LoRA factors (B, A) for each rank, as host arrays of ``dtype``.

    "gaussian": B, A entries i.i.d. N(0, 1), nested (rank r uses the first r columns of B and
    rows of A drawn once at the largest rank). "peft": PEFT's initialisation, B = 0 and A
    ~ U(−1/√n, 1/√n) (nn.init.kaiming_uniform_(a=√5) on A's (r × n) weight: gain √(1/3) times
    √(3/fan_in) = 1/√n), nested. A callable factors(key, m, r, n) -> (B, A) is called per rank
    with fold_in(key, r).
    """
    rmax = max(ranks)
    if callable(factors):
        out = []
        for r in ranks:
            B, A = factors(jax.random.fold_in(key, r), m, r, n)
            if check_lora_factors(B, A) != (m, r, n):
                raise ValueError(
                    f"factors(key, m, r, n) must return B ({m}×{r}) and A ({r}×{n}),"
                    f" got {np.shape(B)} and {np.shape(A)}"
                )
            out.append((np.asarray(B, dtype), np.asarray(A, dtype)))
        return out
    check_choice(factors, "factors (or a callable)", FACTORS)
    kB, kA = jax.random.split(key)
    if factors == "gaussian":
        B = jax.random.normal(kB, (m, rmax), jnp.float32)
        A = jax.random.normal(kA, (rmax, n), jnp.float32)
    else:
        B = jnp.zeros((m, rmax), jnp.float32)
        A = jax.random.uniform(kA, (rmax, n), jnp.float32, -1.0, 1.0) / np.sqrt(n)
    B, A = np.asarray(B, dtype), np.asarray(A, dtype)
    return [(B[:, :r], A[:r]) for r in ranks]


@dataclasses.dataclass(frozen=True, kw_only=True)
class GridConfig:
    """What :func:`simulate_grid` estimates and how; validates itself (frozen, keyword-only).

    m, n: layer shape (≥ 1); ranks: ranks r, each 1…min(m, n); bits: bit-widths, each 1…16
    (2…16 with step "midtread"); n_samples: samples per cell (≥ 2 when the noise is random:
    mode "additive" or rounding "stochastic"; else ≥ 1); factors: see :func:`grid_factors`;
    mode, scheme, rounding, block_size, axis, step: as :func:`simulate_eps_ba`; scale: a
    number s, or a convention of ``conventions.SCALES`` giving s per rank with lora_alpha;
    dtype: float32 or float64 (needs jax_enable_x64); chunk_size: samples per work unit
    (None: per platform, ``units.chunk_for``); pad: "pow2" or "max" (additive mode, see
    :func:`simulate_grid`); mesh: a 1-D mesh from ``sharding.device_mesh`` (None: all
    devices); progress: a progress bar over the compiled programs.
    ranks and bits may be given as any 1-D sequences; they are stored as tuples of ints.
    """

    m: int
    n: int
    ranks: Any
    bits: Any
    n_samples: int
    factors: str | Callable = "gaussian"
    mode: str = "additive"
    scheme: str = "uniform"
    rounding: str = "nearest"
    block_size: int | None = None
    axis: int | None = None
    step: str = "paper"
    scale: float | str = 1.0
    lora_alpha: float = 1.0
    dtype: Any = jnp.float32
    chunk_size: int | None = None
    pad: str = "pow2"
    mesh: Any = None
    progress: bool = False

    def __post_init__(self):
        check_options(
            mode=self.mode,
            scheme=self.scheme,
            rounding=self.rounding,
            block_size=self.block_size,
            axis=self.axis,
            step=self.step,
        )
        m, n = check_int_range(self.m, "m", 1), check_int_range(self.n, "n", 1)
        ranks = tuple(check_int_range(r, "ranks", 1, min(m, n)) for r in np.ravel(self.ranks))
        bits = tuple(check_bits(b, "bits") for b in np.ravel(self.bits))
        if not ranks or not bits:
            raise ValueError("ranks and bits must be non-empty")
        if self.step == "midtread" and min(bits) < 2:
            raise ValueError(
                "step='midtread' needs bits in 2…16 (R/(2^{b−1}−1) is undefined at b = 1)"
            )
        random = self.mode == "additive" or self.rounding == "stochastic"
        n_samples = check_int_range(self.n_samples, "n_samples", 2 if random else 1)
        check_choice(self.pad, "pad", ("max", "pow2"))
        if isinstance(self.scale, str):
            check_choice(self.scale, "scale", SCALES)
        else:
            check_finite(self.scale, "scale")
        for name, value in (
            ("m", m),
            ("n", n),
            ("ranks", ranks),
            ("bits", bits),
            ("n_samples", n_samples),
            ("dtype", _dtype(self.dtype)),
        ):
            object.__setattr__(self, name, value)

    def scales(self) -> np.ndarray:
        """The LoRA scale s of each rank, shape (len(ranks),)."""
        if isinstance(self.scale, str):
            return np.array([lora_scale(self.scale, self.lora_alpha, r) for r in self.ranks])
        return np.full(len(self.ranks), float(self.scale))


def _padded(fac, rpad, *, block_size, axis, dtype):
    """Stack factors zero-padded to rank rpad, with the ranges of ε_Bᵀ and ε_A (0 in padding)."""
    m, n = fac[0][0].shape[0], fac[0][1].shape[1]
    per_tensor = block_size is None and axis is None
    Bs = np.zeros((len(fac), m, rpad), dtype)
    As = np.zeros((len(fac), rpad, n), dtype)
    RBt = np.zeros((len(fac), rpad, 1 if per_tensor else m), dtype)
    RA = np.zeros((len(fac), rpad, 1 if per_tensor else n), dtype)
    for i, (B, A) in enumerate(fac):
        r = B.shape[1]
        Bs[i, :, :r], As[i, :r] = B, A
        RBt[i, :r] = np.broadcast_to(
            ranges(B, block_size=block_size, axis=axis).T, RBt[i, :r].shape
        )
        RA[i, :r] = np.broadcast_to(ranges(A, block_size=block_size, axis=axis), RA[i, :r].shape)
    return Bs, As, RBt, RA


def _predicted(B, A, bits, *, scheme, step, block_size, axis, s):
    """The additive model's exact moments with the ranges/step the quantizer would use:
    ``moments.eps_ba_moments`` with per-entry variances (Δ/R·R)²/12."""
    if scheme in ("nf4", "fp4"):
        return [np.nan] * 4
    if scheme == "int8":
        step, bits = "midtread", 8
        block_size = 64 if axis is None and block_size is None else block_size  # quantize's default
    ratio = float(step_ratio(bits, step))
    var_A = (ratio * ranges(A, block_size=block_size, axis=axis)) ** 2 / 12
    var_B = (ratio * ranges(B, block_size=block_size, axis=axis)) ** 2 / 12
    return [float(v) for v in eps_ba_moments(B, A, var_A, var_B, scale=s)]


def _maybe_track(items: list, progress: bool, description: str):
    if not progress:
        return items
    from rich.progress import track

    return track(items, description=description, transient=True)


def padded_rank(config: GridConfig, r: int) -> int:
    """The rank r is run at in additive mode: the grid's largest rank (pad "max") or the next
    power of two (pad "pow2")."""
    return max(config.ranks) if config.pad == "max" else 1 << (r - 1).bit_length()


def _rank_buckets(config: GridConfig) -> dict[int, list[int]]:
    """{padded rank: indices of the ranks run at it} (:func:`padded_rank`)."""
    buckets: dict[int, list[int]] = {}
    for i, r in enumerate(config.ranks):
        buckets.setdefault(padded_rank(config, r), []).append(i)
    return buckets


def _additive_samples(config: GridConfig, fac, noise_key, impl) -> list:
    """Per-rank samples (n_bits, n_samples, 4) of the additive model, one program per bucket."""
    samples: list[Any] = [None] * len(config.ranks)
    n_bits = len(config.bits)
    keydata = np.asarray(jax.random.key_data(noise_key))
    buckets = list(_rank_buckets(config).items())
    for rpad, idx in _maybe_track(buckets, config.progress, "ε_BA grid (buckets)"):
        Bs, As, RBt, RA = _padded(
            [fac[i] for i in idx],
            rpad,
            block_size=config.block_size,
            axis=config.axis,
            dtype=config.dtype,
        )
        cells = [i * n_bits + j for i in idx for j in range(n_bits)]  # global cell ids
        out = run_additive(
            keydata,
            impl,
            list(config.bits),
            Bs,
            As,
            RBt,
            RA,
            n_samples=config.n_samples,
            step=config.step,
            dtype=config.dtype,
            chunk_size=config.chunk_size,
            mesh=config.mesh,
            cell_ids=cells,
        )
        for j, i in enumerate(idx):
            samples[i] = out[j]
    return samples


def real_rank_samples(config: GridConfig, B, A, noise_key, rank: int, impl):
    """Samples (n_bits, n_samples, 4) of one rank's factors B (m, r), A (r, n) under a real
    quantizer, noise keyed fold_in(noise_key, rank); also the unit of a grid split into jobs."""
    keydata = np.asarray(jax.random.key_data(jax.random.fold_in(noise_key, rank)))
    return run_real(keydata, impl, list(config.bits), B, A, n_samples=config.n_samples,
                    scheme=config.scheme, rounding=config.rounding,
                    block_size=config.block_size, axis=config.axis, step=config.step,
                    dtype=config.dtype, chunk_size=config.chunk_size, mesh=config.mesh)


def _real_samples(config: GridConfig, fac, noise_key, impl) -> list:
    """Per-rank samples (n_bits, n_samples, 4) of a real quantizer, one program per rank."""
    samples = []
    ranked = list(enumerate(fac))
    for i, (B, A) in _maybe_track(ranked, config.progress, "ε_BA grid (ranks)"):
        samples.append(real_rank_samples(config, B, A, noise_key, config.ranks[i], impl))
    return samples


def simulate_grid(key: Any, config: GridConfig | None = None, **options) -> EpsBAGrid:
    """Monte Carlo of the ε_BA terms over ranks × bit-widths (× samples, reduced).

    ``simulate_grid(key, m=…, n=…, ranks=…, bits=…, n_samples=…, ...)`` with the fields of
    :class:`GridConfig` as keywords, or ``simulate_grid(key, config)`` (keywords then replace
    the config's fields).

    Additive mode: ranks are zero-padded to the next power of two (``pad="pow2"``, one sharded
    program per bucket: ranks 1, 2, 4, …, 256 cost ≈ Σ r² rather than 9·256²) or all to the
    largest rank (``pad="max"``, a single program), with zero ranges in the padding. This is
    exact: padded rows/columns contribute 0 to every term, and each cell's noise is keyed by
    its cell and row, so both paddings give the same numbers. Units (chunk × cell) are
    vmapped over samples and spread over all devices.
    Real mode: one sharded program per rank (quantizer ranges depend on the true shape), with
    cells = bit-widths.
    Keys: the factors from split(key)[0] (:func:`grid_factors`), the noise from split(key)[1]
    (additive: cell i·n_bits + j of rank i, bits j; real: fold_in(·, r) per rank).
    """
    config = grid_config(config, **options)
    keydata, impl = _key_parts(key)
    k_fac, k_noise = jax.random.split(jax.random.wrap_key_data(keydata, impl=impl))
    fac = grid_factors(
        k_fac,
        m=config.m,
        n=config.n,
        ranks=list(config.ranks),
        factors=config.factors,
        dtype=config.dtype,
    )
    run = _additive_samples if config.mode == "additive" else _real_samples
    return grid_result(config, fac, np.stack(run(config, fac, k_noise, impl)))


def grid_config(config: GridConfig | None = None, **options) -> GridConfig:
    """:func:`simulate_grid`'s options as one :class:`GridConfig`: ``config``, with the
    keywords replacing its fields, or the keywords alone."""
    if config is None:
        return GridConfig(**options)
    return dataclasses.replace(config, **options) if options else config


def grid_result(config: GridConfig, fac, samples: np.ndarray) -> EpsBAGrid:
    """The :class:`EpsBAGrid` of per-sample terms ``samples`` (R, K, n_samples, 4) of the
    factors ``fac`` (one (B, A) per rank): means and standard errors × s² (:func:`summarize`),
    the additive model's exact moments for the same factors and ranges, the ranges.
    ``simulate_grid``'s reduction, also the merge of a grid split into jobs
    (``epsba.grid_jobs``), so the two agree bit for bit on the same samples."""
    s = config.scales()
    mean, se = summarize(samples, (s**2)[:, None])
    pred = np.array(
        [
            [
                _predicted(
                    B,
                    A,
                    b,
                    scheme=config.scheme,
                    step=config.step,
                    block_size=config.block_size,
                    axis=config.axis,
                    s=s[i],
                )
                for b in config.bits
            ]
            for i, (B, A) in enumerate(fac)
        ]
    )  # (R, K, 4)
    return EpsBAGrid(
        np.array(config.ranks),
        np.array(config.bits),
        mean,
        se,
        EpsBAMoments(*np.moveaxis(pred, -1, 0)),
        s,
        np.array([np.abs(A).max() for _, A in fac]),
        np.array([np.abs(B).max() for B, _ in fac]),
        int(samples.shape[2]),
    )
