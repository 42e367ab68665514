"""bitsandbytes-exact NF4 and FP4: the code tables and the blockwise absmax quantizer.

"Bit for bit" means: equal to bitsandbytes' pure-torch reference path (``backends/default``:
its ``quantize_4bit`` and ``_dequantize_4bit_compute``), which computes the same on every CPU.
bitsandbytes 0.50's native CPU ``dequantize_4bit`` kernel depends on the instruction set and
the shape (DESIGN.md §2); it is compared value for value only where it is right
(``real_runs/bnb_reference.py``, ``benchmarks/bnb_native_parity.py``).

bitsandbytes NF4/FP4 (reference path, bitsandbytes 0.50):
    absmax = max|x| per block (float32);  s = clamp(x·(1/max(absmax, 1e−38)), −1, 1)
    (the last, shorter block uses s = clamp(x/max(absmax, 1e−38), −1, 1) — a division, as bnb does,
    and stores the clamped absmax);  i = #{midpoints < s} (torch.bucketize, right=False: a value
    exactly on a midpoint goes to the LOWER code);  x̂ = table[i]·absmax (float32).
    FP4's sorted table holds +0 (bnb code 0) and "−0" (bnb code 8); s ∈ (0, 0.0026] maps to code 8.
    Sign of zero, the one convention: code 8 dequantizes to +0.0, as the reference path does
    (bnb's table stores it as the integer 0). The native kernel returns −0.0 for it on AVX2 and
    in AVX-512's scalar tail, +0.0 in AVX-512's vector path: a difference of sign only.
    Subnormal inputs (|x| < 1.18e−38) are not bit-matched: XLA CPU flushes subnormals to zero,
    torch does not. All-zero blocks are handled explicitly (codes and zeros as bnb).
The public entry point is ``quantizers.quantize(x, "nf4" | "fp4", block_size=...)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from quantbounds._numerics import true_div as _div

# bitsandbytes 0.50 functional.get_4bit_type("nf4"): the float32 NF4 table (ascending), QLoRA.
_NF4_TABLE = (
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
)
# bitsandbytes 0.50 functional.get_4bit_type("fp4"): e2m1, bias 2, in bit-pattern order
# (index = the 4-bit code); divided by the max (12) in float32 by bnb.
_FP4_RAW = (
    0.0,
    0.0625,
    8.0,
    12.0,
    4.0,
    6.0,
    2.0,
    3.0,
    -0.0,
    -0.0625,
    -8.0,
    -12.0,
    -4.0,
    -6.0,
    -2.0,
    -3.0,
)
# bnb's clamp floor for absmax (backends/default/ops.py, quantize_4bit).
_BNB_ABSMAX_FLOOR = 1e-38
_DEFAULT_BLOCK = 64  # bitsandbytes' default blocksize


def _nf4_bnb_table() -> np.ndarray:
    return np.asarray(_NF4_TABLE, dtype=np.float32)


def _fp4_bnb_table() -> np.ndarray:
    """FP4 values in bnb code order, computed as bnb does: float32(v) / float32(12)."""
    raw = np.asarray(_FP4_RAW, dtype=np.float32)
    # bnb builds the table from a Python int/float list in which "-0" is the integer 0,
    # so code 8 holds +0.0 in the table, and the reference path dequantizes it to +0.0.
    raw[8] = 0.0
    return raw / np.float32(12.0)


def _bnb_sorted(table: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order, sorted values, float32 midpoints) as bnb's _get_4bit_quantize_bounds.

    The stable argsort puts code 0 (+0) before code 8 (−0), which is the order bnb's torch
    argsort produces on CPU (checked in tests/test_bnb_parity.py).
    """
    order = np.argsort(table, kind="stable")
    srt = table[order]
    mids = (srt[:-1] + srt[1:]) / np.float32(2.0)
    return order.astype(np.int32), srt, mids.astype(np.float32)


def nf4_code() -> jax.Array:
    """bitsandbytes' NF4 code, shape (16,), float32, ascending: 7 negative, 0, 8 positive."""
    return jnp.asarray(_nf4_bnb_table())


def fp4_code() -> jax.Array:
    """bitsandbytes' FP4 code, shape (16,), float32, ascending.

    Magnitudes {0, 0.0625, 2, 3, 4, 6, 8, 12}/12 with both signs; +0 and −0 are both stored
    as 0.0, so 0.0 appears twice. The smallest nonzero magnitude is 0.0625/12 (bnb's subnormal),
    not OCP E2M1's 0.5/6.
    """
    order, srt, _ = _bnb_sorted(_fp4_bnb_table())
    return jnp.asarray(srt)


def _quantize_4bit_core(x, scheme: str, block_size: int):
    """bnb quantize_4bit + reference dequantize_4bit in float32; returns (codes, x̂, absmax)."""
    table = _nf4_bnb_table() if scheme == "nf4" else _fp4_bnb_table()
    order, _, mids = _bnb_sorted(table)
    xf = x.astype(jnp.float32).reshape(-1)
    n = xf.shape[0]
    rem = n % block_size
    full = n - rem
    parts_s, parts_a = [], []
    if full:
        A = xf[:full].reshape(-1, block_size)
        am = jnp.max(jnp.abs(A), axis=1)
        inv = jnp.float32(1.0) / jnp.maximum(am, jnp.float32(_BNB_ABSMAX_FLOOR))
        s_full = jnp.clip(A * inv[:, None], -1.0, 1.0)
        # all-zero block: bnb gets 0·(1/1e−38) = 0; XLA CPU flushes the subnormal 1e−38 to 0
        # (1/0 = inf, 0·inf = NaN), so set s = 0 there explicitly
        parts_s.append(jnp.where(am[:, None] > 0, s_full, 0.0).reshape(-1))
        parts_a.append(am)
    if rem:
        tail = xf[full:]
        m_t = jnp.max(jnp.abs(tail))
        am_t = jnp.maximum(m_t, jnp.float32(_BNB_ABSMAX_FLOOR))
        s_tail = jnp.clip(_div(tail, am_t), -1.0, 1.0)
        parts_s.append(jnp.where(m_t > 0, s_tail, 0.0))
        parts_a.append(am_t[None])
    s = jnp.concatenate(parts_s) if len(parts_s) > 1 else parts_s[0]
    absmax = jnp.concatenate(parts_a) if len(parts_a) > 1 else parts_a[0]
    # torch.bucketize(s, mids, right=False) == searchsorted side="left": ties go to the lower code
    idx = jnp.searchsorted(jnp.asarray(mids), s, side="left")
    codes = jnp.asarray(order)[idx]
    per_elem = _per_element(absmax, block_size, n)
    xhat = jnp.asarray(table)[codes] * per_elem
    return codes.reshape(x.shape), xhat.reshape(x.shape).astype(x.dtype), absmax


def _per_element(v, block_size: int, n: int):
    """v (n_blocks,) repeated block_size times, cut to n entries: a broadcast and a reshape.
    (jnp.repeat builds its gather indices from a cumulative sum that XLA:GPU constant-folds,
    ~8–16 s of compile time per call at 2^22 entries, seen on an H100.)"""
    return jnp.broadcast_to(v[:, None], (v.shape[0], block_size)).reshape(-1)[:n]
