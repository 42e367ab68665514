"""The Monte Carlo engine's work units: what one unit computes, and how a grid is cut into them.

A unit is one chunk of S samples of one grid cell (rank × bit-width). Units are independent,
and since every sample has its own key, the numbers depend neither on which device ran a
unit nor on S: the same key gives the same samples on one CPU, on 8 GPUs, or on several hosts
joined with ``jax.distributed.initialize()``, up to the rounding of the GEMMs (they do depend
on the PRNG implementation of the key). S is chosen per platform (:func:`chunk_for`): small on
CPU, so that a unit's noise stays in cache while its GEMMs read it.

Down the layers, one additive unit is: its sample keys (:func:`sample_keys`) → the step
Δ = (Δ/R)·R (``quant.noise.step_ratio``) → the noise ε = Δ·u (``noise_draws.draw_noise``) →
the four terms (``gram.gram_terms``). The units are spread over the devices by
``sharding.map_units``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from quantbounds._checks import check_int_range
from quantbounds.epsba.gram import gram_terms
from quantbounds.epsba.noise_draws import block_width, draw_noise, n_noise_blocks, pad_steps
from quantbounds.epsba.sharding import build_unit_runner, check_mesh, map_units
from quantbounds.quant.noise import step_ratio

# Noise bytes one work unit may hold, per platform; a throughput/memory trade-off measured
# with benchmarks/bench_montecarlo.py on 2 cores, not a correctness constant. CPU: a unit's
# noise should stay in cache while its GEMMs read it (4096×4096, r = 64: 64 MB units ran at
# ~0.6 of the rate of 2–8 MB units; at m = n = 1024, r = 16, 8 MB units were ~1.1× 3 MB
# ones); accelerators: large units amortise launches.
CHUNK_BYTES = {"cpu": 8 * 2**20}
CHUNK_BYTES_ACCELERATOR = 256 * 2**20
MAX_CHUNK = {"cpu": 64}
MAX_CHUNK_ACCELERATOR = 512


@dataclasses.dataclass(frozen=True, kw_only=True)
class UnitConfig:
    """Static configuration of a compiled unit runner (internal; validated by the callers)."""

    mode: str
    m: int
    n: int
    r: int
    S: int  # samples per unit (units per cell and bit-widths per rank are traced)
    dtype: str
    step: str
    impl: str  # PRNG implementation name of the key
    scheme: str = "uniform"
    rounding: str = "nearest"
    block_size: int | None = None
    axis: int | None = None


def sample_keys(cfg: UnitConfig, keydata, cell_id, chunk):
    """The S keys of unit (cell, chunk): sample t = chunk·S + s of the cell draws from
    fold_in(fold_in(key, cell_id), t), whatever the chunking."""
    key = jax.random.fold_in(jax.random.wrap_key_data(keydata, impl=cfg.impl), cell_id)
    t = chunk * cfg.S + jnp.arange(cfg.S)
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(t)


def _additive_unit(
    cfg: UnitConfig, unit, n_chunks, keydata, cell_ids, bits, Bs, As, GBs, GAs, ranges_Bt, ranges_A
):
    """Unit ``unit`` of an additive grid: stacks over ranks padded to r with zero ranges.

    Its noise comes from fold_in(fold_in(key, cell_ids[cell]), chunk), row by row, so it does
    not depend on the padding, the bucketing of ranks or the device that runs it.
    """
    cell, chunk = unit // n_chunks, unit % n_chunks
    rank_i, bits_i = cell // bits.shape[0], cell % bits.shape[0]
    ratio = step_ratio(bits[bits_i], cfg.step, cfg.dtype)  # Δ/R
    keys = sample_keys(cfg, keydata, cell_ids[cell], chunk)
    eps_Bt, eps_A = draw_noise(
        keys, cfg.r, cfg.m, cfg.n, cfg.dtype, ratio * ranges_Bt[rank_i], ratio * ranges_A[rank_i]
    )
    return gram_terms(Bs[rank_i], As[rank_i], GBs[rank_i], GAs[rank_i], eps_Bt, eps_A)


def _real_unit(cfg: UnitConfig, unit, n_chunks, keydata, bits, B, A, GB, GA):
    """Unit ``unit`` of a real-quantizer run on one (B, A); cells are bit-widths."""
    from quantbounds.quant.quantizers import quantize

    b = bits[unit // n_chunks] if cfg.scheme == "uniform" else None
    opts = dict(bits=b, block_size=cfg.block_size, axis=cfg.axis, rounding=cfg.rounding)
    if cfg.scheme == "uniform":
        opts["step"] = cfg.step

    def one(k):
        kB, kA = jax.random.split(k)
        stoch = cfg.rounding == "stochastic"
        qB = quantize(B, cfg.scheme, key=kB if stoch else None, **opts)
        qA = quantize(A, cfg.scheme, key=kA if stoch else None, **opts)
        return (qB - B).T, qA - A

    eps_Bt, eps_A = jax.vmap(one)(sample_keys(cfg, keydata, unit // n_chunks, unit % n_chunks))
    return gram_terms(B, A, GB, GA, eps_Bt.astype(cfg.dtype), eps_A.astype(cfg.dtype))


@functools.lru_cache(maxsize=64)
def runner_for(cfg: UnitConfig, mesh: Mesh):
    """The compiled runner of ``cfg``'s units on ``mesh`` (cached: calls do not re-trace)."""
    fn = _additive_unit if cfg.mode == "additive" else _real_unit
    return build_unit_runner(functools.partial(fn, cfg), mesh)


def chunk_for(
    m: int,
    n: int,
    r: int,
    dtype: str,
    n_samples: int,
    chunk_size: int | None,
    *,
    platform: str | None = None,
) -> int:
    """Samples per work unit: ``chunk_size``, or as many as fit CHUNK_BYTES of noise for the
    platform (default: JAX's default backend), ≤ MAX_CHUNK, ≤ n_samples."""
    if chunk_size is not None:
        return min(check_int_range(chunk_size, "chunk_size", 1), n_samples)
    platform = platform or jax.default_backend()
    per_sample = r * (m + n) * jnp.dtype(dtype).itemsize
    budget = CHUNK_BYTES.get(platform, CHUNK_BYTES_ACCELERATOR)
    cap = MAX_CHUNK.get(platform, MAX_CHUNK_ACCELERATOR)
    return int(max(1, min(budget // per_sample, cap, n_samples)))


def _pad_to_blocks(Bs, As, ranges_Bt, ranges_A, *, m, n, dtype):
    """Factors padded with zero rows (columns) to nb·q and ranges with zeros, so that the
    noise's column blocks (``noise_draws.uniform_blocks``) tile them and the padding draws
    vanish."""
    nb = n_noise_blocks(dtype)
    Bs = np.pad(Bs, ((0, 0), (0, nb * block_width(m, dtype) - m), (0, 0)))
    As = np.pad(As, ((0, 0), (0, 0), (0, nb * block_width(n, dtype) - n)))
    ranges_Bt = pad_steps(np.asarray(ranges_Bt, dtype), m, dtype)
    ranges_A = pad_steps(np.asarray(ranges_A, dtype), n, dtype)
    return Bs, As, ranges_Bt, ranges_A


def run_additive(
    keydata,
    impl,
    bits,
    Bs,
    As,
    ranges_Bt,
    ranges_A,
    *,
    n_samples,
    step,
    dtype,
    chunk_size=None,
    mesh=None,
    cell_ids=None,
) -> np.ndarray:
    """Per-sample terms of the additive model on a padded grid: (n_ranks, n_bits, n_samples, 4).

    cell_ids: (n_ranks·n_bits,) ids keying each cell's noise (default 0, 1, …); a rank run
    alone with its id from a larger grid reproduces that grid's samples exactly.
    Bs: (R, m, r), As: (R, r, n) factors zero-padded to a common r; ranges_Bt: ranges of ε_Bᵀ,
    broadcastable to (R, r, m); ranges_A: of ε_A, broadcastable to (R, r, n); zero ranges in
    the padding make ε vanish there, so padded ranks give exactly the unpadded ε_BA.
    """
    n_ranks, m, r = Bs.shape
    n = As.shape[-1]
    mesh = check_mesh(mesh)
    S = chunk_for(m, n, r, dtype, n_samples, chunk_size, platform=mesh.devices.flat[0].platform)
    n_chunks = -(-n_samples // S)
    cfg = UnitConfig(mode="additive", m=m, n=n, r=r, S=S, dtype=dtype, step=step, impl=impl)
    Bs, As = np.asarray(Bs, dtype), np.asarray(As, dtype)
    GBs = np.einsum("xmk,xml->xkl", Bs, Bs)
    GAs = np.einsum("xkn,xln->xkl", As, As)
    Bs, As, ranges_Bt, ranges_A = _pad_to_blocks(Bs, As, ranges_Bt, ranges_A, m=m, n=n, dtype=dtype)
    cells = np.arange(n_ranks * len(bits)) if cell_ids is None else np.ravel(cell_ids)
    if cells.shape != (n_ranks * len(bits),):
        raise ValueError(f"cell_ids must hold n_ranks·n_bits = {n_ranks * len(bits)} ids")
    shared = (
        np.int32(n_chunks),
        keydata,
        cells.astype(np.int32),
        np.asarray(bits, np.float32),
        Bs,
        As,
        GBs,
        GAs,
        np.asarray(ranges_Bt, dtype),
        np.asarray(ranges_A, dtype),
    )
    n_units = n_ranks * len(bits) * n_chunks
    out = map_units(runner_for(cfg, mesh), n_units, shared, mesh=mesh)
    return out.reshape(n_ranks, len(bits), n_chunks * S, 4)[:, :, :n_samples]


def run_real(
    keydata,
    impl,
    bits,
    B,
    A,
    *,
    n_samples,
    scheme,
    rounding,
    block_size,
    axis,
    step,
    dtype,
    chunk_size=None,
    mesh=None,
) -> np.ndarray:
    """Per-sample terms with a real quantizer on one (B, A): (n_bits, n_samples, 4)."""
    m, r = B.shape
    n = A.shape[-1]
    if rounding != "stochastic":
        n_samples = 1  # deterministic quantizer: one draw is exact
    mesh = check_mesh(mesh)
    S = chunk_for(m, n, r, dtype, n_samples, chunk_size, platform=mesh.devices.flat[0].platform)
    n_chunks = -(-n_samples // S)
    cfg = UnitConfig(
        mode="real",
        m=m,
        n=n,
        r=r,
        S=S,
        dtype=dtype,
        step=step,
        impl=impl,
        scheme=scheme,
        rounding=rounding,
        block_size=block_size,
        axis=axis,
    )
    B, A = np.asarray(B, dtype), np.asarray(A, dtype)
    shared = (np.int32(n_chunks), keydata, np.asarray(bits, np.int32), B, A, B.T @ B, A @ A.T)
    out = map_units(runner_for(cfg, mesh), len(bits) * n_chunks, shared, mesh=mesh)
    return out.reshape(len(bits), n_chunks * S, 4)[:, :n_samples]
