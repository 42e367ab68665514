"""The Monte Carlo engine's compute layer: Gram numerics, noise, work units, device sharding.

``quantbounds.epsba.montecarlo`` is the public face (what is estimated, validation, statistics);
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

Noise. Sample t of grid cell c draws from its own key, fold_in(fold_in(key, c), t), and
within it ε_B from fold_in(·, 0), ε_A from fold_in(·, 1), row by row (:func:`uniform_blocks`):
Threefry-2x32-20 at counters (0, i), both 32-bit output words used, each split into two
16-bit draws in float32 (one 32-bit draw each in float64). One hash thus feeds four columns,
delivered as four column blocks that the Gram products consume block by block (nothing is
concatenated). The draws are exact discrete uniforms on 2^16 (2^32) midpoints: see
``montecarlo`` for what that changes (the variance, by a relative 2^−32).

Work units. The engine cuts its work into units, one chunk of S samples of one grid cell
(rank × bit-width). Units are independent, and since every sample has its own key, the
numbers depend neither on which device ran a unit nor on S: the same key gives the same
samples on one CPU, on 8 GPUs, or on several hosts joined with
``jax.distributed.initialize()``, up to the rounding of the GEMMs (they do depend on the
PRNG implementation of the key). S is chosen per platform (:func:`chunk_for`): small on CPU,
so that a unit's noise stays in cache while its GEMMs read it.

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
from quantbounds._numerics import threefry2x32 as _threefry2x32

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
                        f"(see quantbounds.epsba.sharding.device_mesh), got {mesh!r}")
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


# Noise bytes one work unit may hold, per platform; a throughput/memory trade-off measured
# with benchmarks/bench_montecarlo.py on 2 cores, not a correctness constant. CPU: a unit's
# noise should stay in cache while its GEMMs read it (4096×4096, r = 64: 64 MB units ran at
# ~0.6 of the rate of 2–8 MB units; at m = n = 1024, r = 16, 8 MB units were ~1.1× 3 MB
# ones); accelerators: large units amortise launches.
CHUNK_BYTES = {"cpu": 8 * 2**20}
CHUNK_BYTES_ACCELERATOR = 256 * 2**20
MAX_CHUNK = {"cpu": 64}
MAX_CHUNK_ACCELERATOR = 512


# ------------------------------------------------------------------ per-sample numerics
def _self_gram(x):
    """x[s]·x[s]ᵀ for each s: (S, r, K) -> (S, r, r), one batched dot_general.

    With cache-sized units (CHUNK_BYTES) the batched form is as fast as a scan of 2-D GEMMs
    at 4096×4096, r = 64, and up to 1.7× faster at small r (benchmarks/bench_montecarlo.py,
    2 cores).
    """
    return jnp.einsum("srk,stk->srt", x, x)


def _as_blocks(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def gram_terms(B, A, GB, GA, eps_Bt, eps_A):
    """Per-sample ‖B·ε_A‖², ‖ε_B·A‖², ‖ε_B·ε_A‖², ‖ε_BA‖² by the Gram form (module docstring).

    B: (m, r); A: (r, n); GB = BᵀB, GA = A·Aᵀ: (r, r). eps_Bt: the S samples of ε_B stored
    transposed, (S, r, m), or a list of nb column blocks (S, r, q) with nb·q = m (then B's
    rows are split alike: F = Σᵢ Pᵢ·Pᵢᵀ, Cᵀ = Σᵢ Pᵢ·Bᵢ); eps_A: (S, r, n) or column blocks
    likewise. Blocks are how :func:`draw_noise` delivers the noise (one Threefry hash feeds
    one column of each block, so nothing is concatenated). Returns (S, 4) in the order of
    :class:`EpsBAMoments`.
    """
    PB, PA = _as_blocks(eps_Bt), _as_blocks(eps_A)
    S, r, qB = PB[0].shape
    qA = PA[0].shape[-1]
    if len(PB) * qB != B.shape[0] or len(PA) * qA != A.shape[1]:
        raise ValueError(f"noise blocks ({len(PB)}×{qB}, {len(PA)}×{qA}) must tile B's "
                         f"{B.shape[0]} rows and A's {A.shape[1]} columns")
    F = sum(_self_gram(P) for P in PB)                                       # ε_Bᵀε_B
    Ct = sum((P.reshape(S * r, qB) @ B[i * qB:(i + 1) * qB]).reshape(S, r, r)
             for i, P in enumerate(PB))                                      # Cᵀ = ε_Bᵀ·B
    E = sum(_self_gram(P) for P in PA)                                       # ε_A·ε_Aᵀ
    Dt = sum((P.reshape(S * r, qA) @ A[:, i * qA:(i + 1) * qA].T).reshape(S, r, r)
             for i, P in enumerate(PA))                                      # Dᵀ = ε_A·Aᵀ
    t1 = jnp.einsum("kl,skl->s", GB, E)
    t2 = jnp.einsum("skl,kl->s", F, GA)
    t3 = jnp.einsum("skl,skl->s", F, E)
    x12 = jnp.einsum("slk,skl->s", Ct, Dt)                          # tr(C·D)  = ⟨B·ε_A, ε_B·A⟩
    x13 = jnp.einsum("skl,skl->s", Ct, E)                           # tr(C·E)  = ⟨B·ε_A, ε_B·ε_A⟩
    x23 = jnp.einsum("skl,skl->s", F, Dt)                           # tr(F·Dᵀ) = ⟨ε_B·A, ε_B·ε_A⟩
    return jnp.stack([t1, t2, t3, t1 + t2 + t3 + 2 * (x12 + x13 + x23)], axis=-1)


def _key_words(keys):
    """(S, 2) uint32 key words of S threefry keys; keys of another PRNG implementation are
    first hashed to threefry keys by ``jax.random.bits(key, (2,))``."""
    if str(jax.random.key_impl(keys)) == "threefry2x32":
        return jax.random.key_data(keys)
    return jax.vmap(lambda k: jax.random.bits(k, (2,), jnp.uint32))(keys)


def random_words(keys, r: int, W: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Both output words (b0, b1), each (S, r, W) uint32, of Threefry-2x32-20: element
    (s, k, w) hashes the counter (0, k·W + w) under keys[s] (keys: S PRNG keys, shape (S,)).

    One key per sample, so a sample's noise does not depend on how samples are chunked; row
    k's words do not depend on r, so a rank padded with extra rows sees exactly the unpadded
    rank's noise in its first rows.
    """
    if r * W >= 2 ** 32:
        raise ValueError(f"a sample may draw at most 2^32 counters, got {r}×{W}")
    kd = _key_words(keys)
    shape = (kd.shape[0], r, W)
    k, w = (jax.lax.broadcasted_iota(jnp.uint32, shape, i) for i in (1, 2))
    idx = k * np.uint32(W) + w
    return _threefry2x32(kd[:, 0, None, None], kd[:, 1, None, None], jnp.zeros_like(idx), idx)


def n_noise_blocks(dtype) -> int:
    """Column blocks per Threefry hash: 4 draws of 16 bits (float32), 2 of 32 bits (float64)."""
    return 4 if jnp.dtype(dtype) == jnp.float32 else 2


def block_width(cols: int, dtype) -> int:
    """Columns q of each noise block: ⌈cols / nb⌉ (the blocks tile nb·q ≥ cols columns)."""
    return -(-cols // n_noise_blocks(dtype))


def uniform_blocks(keys, r: int, cols: int, dtype) -> list[jnp.ndarray]:
    """nb column blocks (S, r, q) of draws u = (j + ½)/2^k − ½, j uniform on 0…2^k−1, one
    sample per key of keys (shape (S,)).

    Block i, column c is column i·q + c of the (S, r, nb·q) draw (:func:`uniform_grid`).
    float32: k = 16, nb = 4: the low and high halves of b0, then of b1 (one hash, four
    draws); u = bits(0x3F800000 | j·2⁷) − (1.5 − 2⁻¹⁷), i.e. 1 + j/2^16 built in the
    mantissa, exact. float64: k = 32, nb = 2: b0 then b1, (j − 2³¹ + ½)·2⁻³², exact.
    Symmetric, |u| < ½, Var u = (1 − 4^{−k})/12 (``montecarlo``).
    """
    q = block_width(cols, dtype)
    b0, b1 = random_words(keys, r, q)
    if jnp.dtype(dtype) == jnp.float32:
        def f32(j):
            one_plus = jax.lax.bitcast_convert_type((j << np.uint32(7)) | np.uint32(0x3F800000),
                                                    jnp.float32)
            return one_plus - np.float32(1.5 - 2.0 ** -17)
        u = jnp.stack([f32(b0 & np.uint32(0xFFFF)), f32(b0 >> np.uint32(16)),
                       f32(b1 & np.uint32(0xFFFF)), f32(b1 >> np.uint32(16))])
    else:
        u = jnp.stack([(w.astype(jnp.float64) - 2147483647.5) * (2.0 ** -32) for w in (b0, b1)])
    # one stacked conversion, materialised, then sliced: with the blocks converted
    # separately XLA:CPU fused the whole 20-round hash into every block's conversion and
    # every consumer's copy of it (8 hashes per side per sample, seen in the compiled HLO
    # and a profile; a barrier on the words did not stop it); stacked, the compiled HLO
    # holds one hash per side, though that fusion runs on one thread and takes ~1.5× the
    # words-only hash (simulate_eps_ba at 4096², r = 64: 376 vs 317 samples/s in one run)
    u = jax.lax.optimization_barrier(u)
    return [u[i] for i in range(u.shape[0])]


def uniform_grid(keys, r: int, cols: int, dtype) -> jnp.ndarray:
    """(S, r, cols): the blocks of :func:`uniform_blocks` side by side, cut to cols."""
    return jnp.concatenate(uniform_blocks(keys, r, cols, dtype), axis=-1)[..., :cols]


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


def sample_keys(cfg: _Config, keydata, cell_id, chunk):
    """The S keys of unit (cell, chunk): sample t = chunk·S + s of the cell draws from
    fold_in(fold_in(key, cell_id), t), whatever the chunking."""
    key = jax.random.fold_in(jax.random.wrap_key_data(keydata, impl=cfg.impl), cell_id)
    t = chunk * cfg.S + jnp.arange(cfg.S)
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(t)


def _additive_unit(cfg: _Config, u, n_chunks, keydata, cell_ids, bits, Bs, As, GBs, GAs, RBts,
                   RAs):
    """Unit u of an additive grid: stacks over ranks padded to r with zero ranges.

    Its noise comes from fold_in(fold_in(key, cell_ids[cell]), chunk), row by row, so it does
    not depend on the padding, the bucketing of ranks or the device that runs it.
    """
    cell, chunk = u // n_chunks, u % n_chunks
    ri, bi = cell // bits.shape[0], cell % bits.shape[0]
    fac = step_factor(bits[bi], cfg.step, cfg.dtype)
    keys = sample_keys(cfg, keydata, cell_ids[cell], chunk)
    eps_Bt, eps_A = draw_noise(keys, cfg.r, cfg.m, cfg.n, cfg.dtype,
                               fac * RBts[ri], fac * RAs[ri])
    return gram_terms(Bs[ri], As[ri], GBs[ri], GAs[ri], eps_Bt, eps_A)


def draw_noise(keys, r: int, m: int, n: int, dtype, delta_Bt, delta_A):
    """One unit's additive noise ε = Δ·u as column blocks: (ε_Bᵀ blocks, ε_A blocks).

    u from :func:`uniform_blocks` (nb blocks of (S, r, q), q = ⌈cols/nb⌉; keys: (S,) sample
    keys), ε_B's from fold_in(key, 0), ε_A's from fold_in(key, 1) of each sample's key. delta_Bt, delta_A: steps Δ, either
    broadcastable to (r, 1) (per tensor, cols a multiple of nb) or of width nb·q, zero in the
    columns past m (n) so that the padding draws vanish (:func:`pad_steps`). Two independent
    draws rather than one: XLA:CPU may run each fusion on one thread, and independent fusions
    run concurrently.
    """
    def blocks(i, cols, delta):
        u = uniform_blocks(jax.vmap(lambda k: jax.random.fold_in(k, i))(keys), r, cols, dtype)
        q = u[0].shape[-1]
        if delta.ndim == 0 or delta.shape[-1] == 1:
            return [x * delta for x in u]
        return [x * delta[..., i * q:(i + 1) * q] for i, x in enumerate(u)]
    # materialise each block once: its two consumers (the self-Gram and the product with the
    # factor) would otherwise each get their own copy of the conversion fused in
    return jax.lax.optimization_barrier((blocks(0, m, jnp.asarray(delta_Bt)),
                                         blocks(1, n, jnp.asarray(delta_A))))


def pad_steps(R, cols: int, dtype) -> np.ndarray:
    """Ranges (or steps) R of shape (..., 1) or (..., cols) laid out for :func:`draw_noise`:
    unchanged when per tensor and cols is a multiple of nb, else broadcast to width nb·q with
    zeros past cols."""
    R = np.asarray(R)
    width = n_noise_blocks(dtype) * block_width(cols, dtype)
    if R.shape[-1] == 1 and width == cols:
        return R
    out = np.zeros(R.shape[:-1] + (width,), R.dtype)
    out[..., :cols] = np.broadcast_to(R, R.shape[:-1] + (cols,))
    return out


def _real_unit(cfg: _Config, u, n_chunks, keydata, bits, B, A, GB, GA):
    """Unit u of a real-quantizer run on one (B, A); cells are bit-widths."""
    from quantbounds.quant.quantizers import quantize

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

    eps_Bt, eps_A = jax.vmap(one)(sample_keys(cfg, keydata, u // n_chunks, u % n_chunks))
    return gram_terms(B, A, GB, GA, eps_Bt.astype(cfg.dtype), eps_A.astype(cfg.dtype))


@functools.lru_cache(maxsize=64)
def runner_for(cfg: _Config, mesh: Mesh):
    fn = _additive_unit if cfg.mode == "additive" else _real_unit
    return build_unit_runner(functools.partial(fn, cfg), mesh)


def chunk_for(m: int, n: int, r: int, dtype: str, n_samples: int, chunk_size: int | None, *,
              platform: str | None = None) -> int:
    """Samples per work unit: ``chunk_size``, or as many as fit CHUNK_BYTES of noise for the
    platform (default: JAX's default backend), ≤ MAX_CHUNK, ≤ n_samples."""
    if chunk_size is not None:
        return min(check_int_range(chunk_size, "chunk_size", 1), n_samples)
    platform = platform or jax.default_backend()
    per_sample = r * (m + n) * jnp.dtype(dtype).itemsize
    budget = CHUNK_BYTES.get(platform, CHUNK_BYTES_ACCELERATOR)
    cap = MAX_CHUNK.get(platform, MAX_CHUNK_ACCELERATOR)
    return int(max(1, min(budget // per_sample, cap, n_samples)))


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
    mesh = check_mesh(mesh)
    S = chunk_for(m, n, r, dtype, n_samples, chunk_size, platform=mesh.devices.flat[0].platform)
    n_chunks = -(-n_samples // S)
    cfg = _Config(mode="additive", m=m, n=n, r=r, S=S, dtype=dtype, step=step, impl=impl)
    Bs, As = np.asarray(Bs, dtype), np.asarray(As, dtype)
    GBs = np.einsum("xmk,xml->xkl", Bs, Bs)
    GAs = np.einsum("xkn,xln->xkl", As, As)
    # the noise comes in nb column blocks of width q (uniform_blocks): pad the factors with
    # zero rows (columns) to nb·q and the ranges with zeros, so the padding draws vanish
    nb = n_noise_blocks(dtype)
    Bs = np.pad(Bs, ((0, 0), (0, nb * block_width(m, dtype) - m), (0, 0)))
    As = np.pad(As, ((0, 0), (0, 0), (0, nb * block_width(n, dtype) - n)))
    RBts = pad_steps(np.asarray(RBts, dtype), m, dtype)
    RAs = pad_steps(np.asarray(RAs, dtype), n, dtype)
    cells = np.arange(n_ranks * len(bits)) if cell_ids is None else np.ravel(cell_ids)
    if cells.shape != (n_ranks * len(bits),):
        raise ValueError(f"cell_ids must hold n_ranks·n_bits = {n_ranks * len(bits)} ids")
    shared = (np.int32(n_chunks), keydata, cells.astype(np.int32), np.asarray(bits, np.float32),
              Bs, As, GBs, GAs,
              np.asarray(RBts, dtype), np.asarray(RAs, dtype))
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
    mesh = check_mesh(mesh)
    S = chunk_for(m, n, r, dtype, n_samples, chunk_size, platform=mesh.devices.flat[0].platform)
    n_chunks = -(-n_samples // S)
    cfg = _Config(mode="real", m=m, n=n, r=r, S=S, dtype=dtype, step=step, impl=impl,
                  scheme=scheme, rounding=rounding, block_size=block_size, axis=axis)
    B, A = np.asarray(B, dtype), np.asarray(A, dtype)
    shared = (np.int32(n_chunks), keydata, np.asarray(bits, np.int32), B, A, B.T @ B, A @ A.T)
    out = map_units(runner_for(cfg, mesh), len(bits) * n_chunks, shared, mesh=mesh)
    return out.reshape(len(bits), n_chunks * S, 4)[:, :n_samples]
