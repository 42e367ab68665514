"""The Monte Carlo engine's compute layer: Gram numerics, noise, work units, device sharding.

``quantbounds.montecarlo`` is the public face (what is estimated, validation, statistics);
this module is how it is computed.

Gram form (never forms an m×n matrix). With X = [B, ε_B] (m×2r) and Y = [ε_A; A + ε_A]
(2r×n), ε_BA = X·Y exactly and ‖X·Y‖_F² = tr((XᵀX)(YYᵀ)). Per sample only four r×r products
depend on the noise, F = ε_Bᵀε_B, C = Bᵀε_B, E = ε_A·ε_Aᵀ, D = A·ε_Aᵀ; the noise-free Grams
G_B = BᵀB and G_A = A·Aᵀ are computed once per rank. Then
    ‖B·ε_A‖² = ⟨G_B, E⟩,  ‖ε_B·A‖² = ⟨F, G_A⟩,  ‖ε_B·ε_A‖² = ⟨F, E⟩,
    ‖ε_BA‖² = the three + 2·(tr(C·D) + tr(C·E) + tr(F·Dᵀ)),
with ⟨X, Y⟩ = Σ X∘Y: 4·r²·(m+n) flops for the four products (the rest is O(r²)) and
O(r·(m+n)) memory per sample. The tempting form X = [B + ε_B, −B] cancels catastrophically
in float32 above ~10 bits and is not used. ε_B is drawn transposed, (r, m) per sample, so
that C and D are single large GEMMs against the shared B and A.

Work units. The engine cuts its work into units, one chunk of S samples of one grid cell
(rank × bit-width); unit (cell c, chunk j) draws its noise from fold_in(fold_in(key, c), j)
alone, row by row (:func:`uniform_grid`). Units are independent, and their results do not
depend on which device ran them: the same key gives the same numbers on one CPU, on 8 GPUs,
or on several hosts joined with ``jax.distributed.initialize()`` (they do depend on S, the
chunk size, and on the PRNG implementation of the key).

Sharding. :func:`map_units` lays the unit ids along a 1-D device mesh (``jax.sharding.Mesh``
with the axis ``"units"``), replicates the shared inputs (key data, factors, Grams, ranges) to
every device with a ``NamedSharding``, and runs ``jax.lax.map`` over each device's local ids
inside ``jax.shard_map``. Ids are padded to a multiple of the device count; padded units are
computed and dropped. Results come back to the host as numpy arrays (gathered across
processes in multi-host runs).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from quantbounds._checks import check_int_range

UNIT_AXIS = "units"   # the mesh axis the work units are laid along


def device_mesh(devices: Sequence[Any] | None = None) -> Mesh:
    """A 1-D mesh with axis ``"units"`` over ``devices`` (default: all global devices)."""
    devs = list(jax.devices() if devices is None else devices)
    if not devs:
        raise ValueError("devices must be a non-empty sequence of JAX devices")
    return Mesh(np.asarray(devs), (UNIT_AXIS,))


def check_mesh(mesh: Any) -> Mesh:
    if mesh is None:
        return device_mesh()
    if not isinstance(mesh, Mesh) or mesh.axis_names != (UNIT_AXIS,):
        raise TypeError(f"mesh must be a 1-D jax.sharding.Mesh with axis names ({UNIT_AXIS!r},) "
                        f"(see quantbounds.sharding.device_mesh), got {mesh!r}")
    return mesh


def build_unit_runner(unit_fn: Callable[..., Any], mesh: Mesh) -> Callable[..., Any]:
    """jit(shard_map(lax.map(unit_fn))) over the ``"units"`` axis of ``mesh``.

    unit_fn(unit_id, *shared) -> pytree of arrays, one unit's outputs. The returned
    function takes (unit_ids (U,), *shared) with U a multiple of the mesh size and returns
    the same pytree with a leading axis U. Build it once per configuration and keep it (the
    Monte Carlo engine caches it), so repeated calls do not re-trace.
    """
    def local(ids, *shared):
        return jax.lax.map(lambda u: unit_fn(u, *shared), ids)

    def run(ids, *shared):
        in_specs = (P(UNIT_AXIS),) + tuple(P() for _ in shared)
        return jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=P(UNIT_AXIS),
                             check_vma=False)(ids, *shared)

    return jax.jit(run)


def _to_host(x: jax.Array) -> np.ndarray:
    if jax.process_count() > 1 and not x.is_fully_addressable:  # multi-host: gather every shard
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def map_units(runner: Callable[..., Any], n_units: int, shared: Sequence[Any], *,
              mesh: Mesh) -> Any:
    """Run units 0…n_units−1 with a runner from :func:`build_unit_runner`; host numpy results.

    shared: host arrays every unit reads (raw key data, factors, ranges), replicated to each
    device (in multi-host runs every process must pass the same values). Returns the runner's
    pytree,
    each leaf a numpy array with leading axis n_units (padding units dropped).
    """
    n_dev = mesh.size
    n_pad = int(math.ceil(n_units / n_dev) * n_dev)
    ids = jax.device_put(np.arange(n_pad, dtype=np.int32), NamedSharding(mesh, P(UNIT_AXIS)))
    rep = NamedSharding(mesh, P())
    shared = [jax.device_put(np.asarray(s), rep) for s in shared]
    out = runner(ids, *shared)
    return jax.tree_util.tree_map(lambda x: _to_host(x)[:n_units], out)


# Noise bytes one work unit may hold (its fused copies roughly triple it): keeps a unit's
# working set near 100 MB on any device; a throughput/memory trade-off chosen on the 2-core
# benchmark (benchmarks/bench_montecarlo.py), not a correctness constant.
CHUNK_BYTES = 64 * 2**20
MAX_CHUNK = 64


# ------------------------------------------------------------------ per-sample numerics
def _self_gram(x):
    """x[s]·x[s]ᵀ for each s: (S, r, K) -> (S, r, r).

    A scan of 2-D GEMMs rather than one batched dot_general: on XLA:CPU each 2-D GEMM is
    multi-threaded, ~1.5× the batched form's throughput at 4096×4096, r = 64 (measured on the
    2-core CPU of the benchmark, one run, noisy). One sample: a GEMM.
    """
    if x.shape[0] == 1:
        return (x[0] @ x[0].T)[None]
    return jax.lax.map(lambda y: y @ y.T, x)


def gram_terms(B, A, GB, GA, eps_Bt, eps_A):
    """Per-sample ‖B·ε_A‖², ‖ε_B·A‖², ‖ε_B·ε_A‖², ‖ε_BA‖² by the Gram form (module docstring).

    B: (m, r); A: (r, n); GB = BᵀB, GA = A·Aᵀ: (r, r); eps_Bt: (S, r, m), the S samples of
    ε_B stored transposed (so both products below are single large GEMMs); eps_A: (S, r, n).
    Returns (S, 4) in the order of :class:`EpsBAMoments`.
    """
    S, r, m = eps_Bt.shape
    n = eps_A.shape[-1]
    F = _self_gram(eps_Bt)                                          # ε_Bᵀε_B
    Ct = (eps_Bt.reshape(S * r, m) @ B).reshape(S, r, r)            # Cᵀ = ε_Bᵀ·B
    E = _self_gram(eps_A)                                           # ε_A·ε_Aᵀ
    Dt = (eps_A.reshape(S * r, n) @ A.T).reshape(S, r, r)          # Dᵀ = ε_A·Aᵀ
    t1 = jnp.einsum("kl,skl->s", GB, E)
    t2 = jnp.einsum("skl,kl->s", F, GA)
    t3 = jnp.einsum("skl,skl->s", F, E)
    x12 = jnp.einsum("slk,skl->s", Ct, Dt)                          # tr(C·D)  = ⟨B·ε_A, ε_B·A⟩
    x13 = jnp.einsum("skl,skl->s", Ct, E)                           # tr(C·E)  = ⟨B·ε_A, ε_B·ε_A⟩
    x23 = jnp.einsum("skl,skl->s", F, Dt)                           # tr(F·Dᵀ) = ⟨ε_B·A, ε_B·ε_A⟩
    return jnp.stack([t1, t2, t3, t1 + t2 + t3 + 2 * (x12 + x13 + x23)], axis=-1)


def _threefry2x32(k1, k2, x0, x1):
    """Threefry-2x32, 20 rounds (Salmon et al., SC'11 "Parallel random numbers: as easy as
    1, 2, 3"; the hash behind jax.random's default PRNG), written out unrolled.

    JAX lowers its threefry on CPU as a rolled 5-step loop (to save compile time), which XLA
    cannot fuse; unrolled, the whole hash is one elementwise fusion, ~7× faster on the 2-core
    CPU (benchmarks/bench_montecarlo.py) and bit for bit the same numbers (tests).
    """
    rot = ((13, 15, 26, 6), (17, 29, 16, 24))          # Threefry-2x32 rotation constants
    ks = (k1, k2, k1 ^ k2 ^ np.uint32(0x1BD11BDA))     # key schedule parity (Skein spec)
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for i in range(5):
        for d in rot[i % 2]:
            x0 = x0 + x1
            x1 = x0 ^ ((x1 << np.uint32(d)) | (x1 >> np.uint32(32 - d)))
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x0, x1


def random_words(key, S: int, r: int, W: int) -> jnp.ndarray:
    """(S, r, W) uint32 words; element (s, k, w) is word k·S·W + s·W + w of the key's stream.

    For a threefry key this is exactly ``jax.random.bits(key, (r, S, W), uint32)`` with the
    first two axes swapped (other PRNG implementations are first hashed to a threefry key by
    ``jax.random.bits(key, (2,))``). Row k's words do not depend on r, so a rank padded with
    extra rows sees exactly the unpadded rank's noise in its first rows.
    """
    if S * r * W >= 2 ** 32:
        raise ValueError(f"a unit may draw at most 2^32 words, got {S}×{r}×{W}; "
                         "lower chunk_size")
    if str(jax.random.key_impl(key)) == "threefry2x32":
        kd = jax.random.key_data(key)
    else:
        kd = jax.random.bits(key, (2,), jnp.uint32)
    shape = (S, r, W)
    s, k, w = (jax.lax.broadcasted_iota(jnp.uint32, shape, i) for i in range(3))
    idx = (k * np.uint32(S) + s) * np.uint32(W) + w       # row-major index in (r, S, W)
    b0, b1 = _threefry2x32(kd[0], kd[1], jnp.zeros_like(idx), idx)
    return b0 ^ b1                                        # as jax.random.bits (partitionable)


def uniform_grid(key, S: int, r: int, cols: int, dtype) -> jnp.ndarray:
    """(S, r, cols) draws u = (j + ½)/2^k − ½ with j uniform on 0…2^k−1.

    float32: k = 16, two draws per 32-bit word of :func:`random_words` (its low halves fill the
    first ⌈cols/2⌉ columns, its high halves the rest); float64: k = 32, one word each. Both
    conversions are exact. Symmetric, |u| < ½, Var u = (1 − 4^{−k})/12 (``montecarlo``).
    """
    if jnp.dtype(dtype) == jnp.float32:
        w = random_words(key, S, r, (cols + 1) // 2)
        j = jnp.concatenate([w & 0xFFFF, w >> 16], axis=-1)[..., :cols]
        return (j.astype(jnp.float32) - 32767.5) * (2.0 ** -16)     # exact in float32
    w = random_words(key, S, r, cols)
    return (w.astype(jnp.float64) - 2147483647.5) * (2.0 ** -32)    # exact in float64


def step_factor(bits, step: str, dtype=np.float64):
    """Δ/R: 2^{1−b} ("paper", seed eq. 2) or 1/(2^{b−1} − 1) ("midtread", b ≥ 2).

    numpy (float64) for concrete bits; jnp in ``dtype`` for traced bits (inside the engine).
    """
    xp = jnp if isinstance(bits, jax.core.Tracer) else np
    b = xp.asarray(bits, dtype)
    return xp.exp2(1 - b) if step == "paper" else 1 / (xp.exp2(b - 1) - 1)


# ------------------------------------------------------------------ units and their runners
@dataclasses.dataclass(frozen=True, kw_only=True)
class _Config:
    """Static configuration of a compiled unit runner (internal; validated by the callers)."""

    mode: str
    m: int
    n: int
    r: int
    S: int            # samples per unit (units per cell and bit-widths per rank are traced)
    dtype: str
    step: str
    impl: str         # PRNG implementation name of the key
    scheme: str = "uniform"
    rounding: str = "nearest"
    block_size: int | None = None
    axis: int | None = None


def _unit_key(cfg: _Config, keydata, cell_id, chunk):
    key = jax.random.wrap_key_data(keydata, impl=cfg.impl)
    return jax.random.fold_in(jax.random.fold_in(key, cell_id), chunk)


def _additive_unit(cfg: _Config, u, n_chunks, keydata, cell_ids, bits, Bs, As, GBs, GAs, RBts,
                   RAs):
    """Unit u of an additive grid: stacks over ranks padded to r with zero ranges.

    Its noise comes from fold_in(fold_in(key, cell_ids[cell]), chunk), row by row, so it does
    not depend on the padding, the bucketing of ranks or the device that runs it.
    """
    cell, chunk = u // n_chunks, u % n_chunks
    ri, bi = cell // bits.shape[0], cell % bits.shape[0]
    fac = step_factor(bits[bi], cfg.step, cfg.dtype)
    key = _unit_key(cfg, keydata, cell_ids[cell], chunk)
    eps_Bt, eps_A = draw_noise(key, cfg.S, cfg.r, cfg.m, cfg.n, cfg.dtype,
                               fac * RBts[ri], fac * RAs[ri])
    return gram_terms(Bs[ri], As[ri], GBs[ri], GAs[ri], eps_Bt, eps_A)


def draw_noise(key, S: int, r: int, m: int, n: int, dtype, delta_Bt, delta_A):
    """One unit's additive noise: ε_Bᵀ (S, r, m) and ε_A (S, r, n), ε = Δ·u.

    u from :func:`uniform_grid`, ε_B's from fold_in(key, 0), ε_A's from fold_in(key, 1);
    delta_Bt, delta_A: steps Δ broadcastable to (r, m) and (r, n). Two independent draws
    rather than one: XLA:CPU may run each fusion on one thread, and independent fusions run
    concurrently.
    """
    eps_Bt = uniform_grid(jax.random.fold_in(key, 0), S, r, m, dtype) * delta_Bt
    eps_A = uniform_grid(jax.random.fold_in(key, 1), S, r, n, dtype) * delta_A
    return eps_Bt, eps_A


def _real_unit(cfg: _Config, u, n_chunks, keydata, bits, B, A, GB, GA):
    """Unit u of a real-quantizer run on one (B, A); cells are bit-widths."""
    from quantbounds.quantizers import quantize

    b = bits[u // n_chunks] if cfg.scheme == "uniform" else None
    opts = dict(bits=b, block_size=cfg.block_size, axis=cfg.axis, rounding=cfg.rounding)
    if cfg.scheme == "uniform":
        opts["step"] = cfg.step

    def one(k):
        kB, kA = jax.random.split(k)
        stoch = cfg.rounding == "stochastic"
        qB = quantize(B, cfg.scheme, key=kB if stoch else None, **opts)
        qA = quantize(A, cfg.scheme, key=kA if stoch else None, **opts)
        return (qB - B).T, qA - A

    key = _unit_key(cfg, keydata, u // n_chunks, u % n_chunks)
    eps_Bt, eps_A = jax.vmap(one)(jax.random.split(key, cfg.S))
    return gram_terms(B, A, GB, GA, eps_Bt.astype(cfg.dtype), eps_A.astype(cfg.dtype))


@functools.lru_cache(maxsize=64)
def runner_for(cfg: _Config, mesh: Mesh):
    fn = _additive_unit if cfg.mode == "additive" else _real_unit
    return build_unit_runner(functools.partial(fn, cfg), mesh)


def chunk_for(m: int, n: int, r: int, dtype: str, n_samples: int, chunk_size: int | None) -> int:
    """Samples per work unit: ``chunk_size`` or CHUNK_BYTES of noise, ≤ MAX_CHUNK, ≤ n_samples."""
    if chunk_size is not None:
        return min(check_int_range(chunk_size, "chunk_size", 1), n_samples)
    per_sample = r * (m + n) * jnp.dtype(dtype).itemsize
    return int(max(1, min(CHUNK_BYTES // per_sample, MAX_CHUNK, n_samples)))


def run_additive(keydata, impl, bits, Bs, As, RBts, RAs, *, n_samples, step, dtype,
                 chunk_size=None, mesh=None, cell_ids=None) -> np.ndarray:
    """Per-sample terms of the additive model on a padded grid: (n_ranks, n_bits, n_samples, 4).

    cell_ids: (n_ranks·n_bits,) ids keying each cell's noise (default 0, 1, …); a rank run
    alone with its id from a larger grid reproduces that grid's samples exactly.
    Bs: (R, m, r), As: (R, r, n) factors zero-padded to a common r; RBts: ranges of ε_Bᵀ,
    broadcastable to (R, r, m); RAs: of ε_A, broadcastable to (R, r, n); zero ranges in the
    padding make ε vanish there, so padded ranks give exactly the unpadded ε_BA.
    """
    n_ranks, m, r = Bs.shape
    n = As.shape[-1]
    S = chunk_for(m, n, r, dtype, n_samples, chunk_size)
    n_chunks = -(-n_samples // S)
    cfg = _Config(mode="additive", m=m, n=n, r=r, S=S, dtype=dtype, step=step, impl=impl)
    Bs, As = np.asarray(Bs, dtype), np.asarray(As, dtype)
    GBs = np.einsum("xmk,xml->xkl", Bs, Bs)
    GAs = np.einsum("xkn,xln->xkl", As, As)
    cells = np.arange(n_ranks * len(bits)) if cell_ids is None else np.ravel(cell_ids)
    if cells.shape != (n_ranks * len(bits),):
        raise ValueError(f"cell_ids must hold n_ranks·n_bits = {n_ranks * len(bits)} ids")
    shared = (np.int32(n_chunks), keydata, cells.astype(np.int32), np.asarray(bits, np.float32),
              Bs, As, GBs, GAs,
              np.asarray(RBts, dtype), np.asarray(RAs, dtype))
    mesh = check_mesh(mesh)
    n_units = n_ranks * len(bits) * n_chunks
    out = map_units(runner_for(cfg, mesh), n_units, shared, mesh=mesh)
    return out.reshape(n_ranks, len(bits), n_chunks * S, 4)[:, :, :n_samples]


def run_real(keydata, impl, bits, B, A, *, n_samples, scheme, rounding, block_size, axis, step,
             dtype, chunk_size=None, mesh=None) -> np.ndarray:
    """Per-sample terms with a real quantizer on one (B, A): (n_bits, n_samples, 4)."""
    m, r = B.shape
    n = A.shape[-1]
    if rounding != "stochastic":
        n_samples = 1     # deterministic quantizer: one draw is exact
    S = chunk_for(m, n, r, dtype, n_samples, chunk_size)
    n_chunks = -(-n_samples // S)
    cfg = _Config(mode="real", m=m, n=n, r=r, S=S, dtype=dtype, step=step, impl=impl,
                  scheme=scheme, rounding=rounding, block_size=block_size, axis=axis)
    B, A = np.asarray(B, dtype), np.asarray(A, dtype)
    shared = (np.int32(n_chunks), keydata, np.asarray(bits, np.int32), B, A, B.T @ B, A @ A.T)
    mesh = check_mesh(mesh)
    out = map_units(runner_for(cfg, mesh), len(bits) * n_chunks, shared, mesh=mesh)
    return out.reshape(len(bits), n_chunks * S, 4)[:, :n_samples]
