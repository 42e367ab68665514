"""Quantizers: uniform symmetric b-bit (RTN / stochastic), bitsandbytes NF4 and FP4, int8 absmax.

Every quantizer returns the DEQUANTIZED tensor Q(x) = x + ε (same shape and dtype as x);
:func:`quantize_codes` returns the integer codes and scales as well. All are pure JAX
(jit- and vmap-able once the Python options are fixed); the public wrappers validate concrete
arguments and skip traced ones.

Range R (the "absmax") of a group of elements, three granularities (uniform and int8):
    per tensor   axis=None, block_size=None   one R = max|x| over all of x
    per channel  axis=k                       one R per index along axis k (max over the other axes)
    per block    block_size=k                 contiguous blocks of k elements of x.ravel()
                                              (C order);
                                              k must divide x.size
NF4/FP4 are always per block (default 64) and, like bitsandbytes, accept a shorter last block.

Uniform grids (b = bits, h = 2^{b−1}), both symmetric-range and named by ``step``:
    "paper"    Δ = 2^{1−b}·R (the seed paper's eq. 2). Levels k·Δ with k ∈ {−h, …, h−1}: the
               two's-complement b-bit integers, 2^b levels, zero exact. −R = −h·Δ is a level;
               +R = h·Δ is not and clips to R − Δ (error −Δ). Any b in 1…16.
    "midtread" Δ = R/(2^{b−1}−1) (the integer grid of int8/LLM.int8 absmax). Levels k·Δ with
               k ∈ {−(h−1), …, h−1}: 2^b − 1 levels, zero and ±R exact, no clipping for |x| ≤ R.
               Needs b ≥ 2.
Float op order (in x's dtype; this is the contract the torch port in real_runs copies):
    R  = max|x| over the group                       (exact)
    Δ  = R·2^{1−b}  (exact, power of two)  or  R/(2^{b−1}−1)   (one correctly rounded division)
    t  = x/Δ                                         (one division)
    q  = round_half_even(t)   (rounding="nearest": ties k+½ go to the even integer, as jnp.round)
       = floor(t + u)         (rounding="stochastic", u ~ U[0,1): one addition, then floor)
    q  = clip(q, k_min, k_max)
    x̂  = q·Δ            for "paper"     (one multiplication; equals R·(q·2^{1−b}) exactly)
    x̂  = R·(q/(2^{b−1}−1))  for "midtread"  (one division, one multiplication: q = ±(2^{b−1}−1)
                                            gives exactly ±R, so the absmax element is exact)
    R = 0 (an all-zero group) gives x̂ = 0, not NaN. (XLA CPU flushes subnormals to zero, so a
    group whose absmax is subnormal, < 1.18e−38 in float32, also gives 0; torch would not.)
Stochastic rounding gives E[x̂] = x exactly (up to the rounding of t + u) wherever the clip is
inactive: |x| ≤ R for "midtread"; x ∈ [−R, R − Δ] for "paper" (in the top cell (R−Δ, R] it is
biased towards R − Δ). Var[x̂ | x] = Δ²·p(1−p) with p = t − ⌊t⌋.

bitsandbytes NF4/FP4: see ``quantbounds.quant.bnb4`` (bit for bit with bnb 0.50 on CPU).
"int8": the "midtread" grid with b = 8: q = round(x/Δ), Δ = absmax/127, x̂ = absmax·(q/127), per
    block (default 64) or per channel (axis=0 of an (out, in) matrix: LLM.int8's row-wise absmax).
    LLM.int8 (bnb int8_vectorwise_quant) computes round(x·(127/absmax)): t is rounded differently,
    so a code can differ by one where t is within an ulp or two of k + ½. bnb's 8-bit *blockwise*
    quantizer (quantize_blockwise) uses a non-linear dynamic code by default: not this quantizer.
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from quantbounds._numerics import true_div as _div
from quantbounds.quant.bnb4 import (  # noqa: F401  (re-exported: importers of quantizers)
    _BNB_ABSMAX_FLOOR,
    _DEFAULT_BLOCK,
    _bnb_sorted,
    _fp4_bnb_table,
    _nf4_bnb_table,
    _per_element,
    _quantize_4bit_core,
    fp4_code,
    nf4_code,
)
from quantbounds._checks import (
    _is_traced,
    check_bits,
    check_bits_array,
    check_block_size,
    check_choice,
    check_finite,
    check_int_range,
)

from quantbounds.conventions import ROUNDINGS, SCHEMES, STEPS  # noqa: E402  (the one table)


class QuantizedTensor(NamedTuple):
    """Codes and scales of a quantized tensor, and what dequantizes them.

    codes     int32, x's shape. Uniform/int8: the integer k with x̂ = k·Δ. NF4/FP4: bitsandbytes'
              4-bit code (index into ``codebook``; for FP4 this is bnb's bit pattern, not the
              ascending position).
    scales    float, one R (absmax) per group: shape () per tensor, (x.shape[axis],) per channel,
              (n_blocks,) per block.
    steps     the per-group multiplier: Δ (uniform/int8) or absmax (NF4/FP4), same shape as scales.
    codebook  (16,) float32 table in bnb code order (NF4/FP4), or None (uniform/int8).
    scheme, bits, step, axis, block_size, shape, dtype: static metadata (not jit outputs).
    """

    codes: jax.Array
    scales: jax.Array
    steps: jax.Array
    codebook: jax.Array | None
    scheme: str
    bits: Any
    step: str | None
    axis: int | None
    block_size: int | None
    shape: tuple
    dtype: Any

    def dequantize(self) -> jax.Array:
        """x̂ (x's shape and dtype), identical to ``quantize`` on the same input."""
        return _dequantize(self)


# --------------------------------------------------------------------------------------------
# grouping: reshape so that the group's R broadcasts


def _group_absmax(x: jax.Array, axis: int | None, block_size: int | None):
    """Return (xg, R, restore): xg is x reshaped so that R (keepdims) broadcasts against it."""
    if block_size is not None:
        xg = x.reshape(-1, block_size)
        R = jnp.max(jnp.abs(xg), axis=1, keepdims=True)
        return xg, R, lambda y: y.reshape(x.shape)
    if axis is not None:
        other = tuple(i for i in range(x.ndim) if i != axis)
        R = jnp.max(jnp.abs(x), axis=other, keepdims=True)
        return x, R, lambda y: y
    R = jnp.max(jnp.abs(x))
    return x, R, lambda y: y


def _uniform_core(xg, R, bits, step: str, u):
    """Codes q and x̂ = q·Δ for the uniform grid (see module docstring for the op order)."""
    dt = xg.dtype
    # integer b and ldexp: exact powers of two (jnp.exp2 is not exact on CPU, e.g. exp2(7.) ≠ 128)
    bi = jnp.asarray(bits).astype(jnp.int32)
    h = jnp.ldexp(jnp.ones((), dt), bi - 1)
    if step == "paper":
        # Δ = 2^{1−b}·R (exact); levels k·Δ, k ∈ {−h, …, h−1}
        delta = jnp.ldexp(R, 1 - bi)
        lo, hi = -h, h - 1
    else:
        # Δ = R/(2^{b−1}−1); levels k·Δ, k ∈ {−(h−1), …, h−1}
        delta = _div(R, h - 1)
        lo, hi = -(h - 1), h - 1
    nonzero = R > 0
    safe = jnp.where(nonzero, delta, jnp.ones_like(delta))
    t = _div(xg, safe)
    if u is None:
        q = jnp.round(t)  # half to even
    else:
        q = jnp.floor(t + u)
    q = jnp.clip(q, lo, hi)
    xhat = jnp.where(nonzero, _dequant_uniform(q, R, safe, h, step), jnp.zeros_like(xg))
    return q, xhat, jnp.where(nonzero, delta, jnp.zeros_like(delta))


def _dequant_uniform(q, R, delta, h, step: str):
    """x̂ = q·Δ ("paper": exact power-of-two scaling of R) or R·(q/(h−1)) ("midtread": the
    code-table form, so that q = ±(h−1) gives ±R and q = 0 gives 0 exactly)."""
    if step == "paper":
        return q * delta
    return R * _div(q, h - 1)


@partial(jax.jit, static_argnames=("scheme", "axis", "block_size", "step"))
def _quantize_impl(x, bits, u, *, scheme, axis, block_size, step):
    """(codes, x̂, R per group, Δ per group); jitted so eager calls cost one dispatch.

    ``bits`` is a traced argument (changing it does not recompile)."""
    if scheme in ("nf4", "fp4"):
        codes, xhat, absmax = _quantize_4bit_core(x, scheme, block_size)
        return codes, xhat, absmax, absmax
    xg, R, restore = _group_absmax(x, axis, block_size)
    ug = None if u is None else u.reshape(xg.shape)
    q, xhat, delta = _uniform_core(xg, R, bits, step, ug)
    if block_size is not None:
        R, delta = R[:, 0], delta[:, 0]
    elif axis is not None:
        R, delta = R.reshape(-1), delta.reshape(-1)
    return restore(q).astype(jnp.int32), restore(xhat), R, delta


# --------------------------------------------------------------------------------------------
# validation (concrete values only)


def _as_float_array(x, name="x") -> jax.Array:
    if not hasattr(x, "dtype"):
        x = np.asarray(x)
        if x.dtype.kind in "iub":
            raise TypeError(f"{name} must be a floating-point array, got dtype {x.dtype}")
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating-point array, got dtype {x.dtype}")
    return x


def _check_bits_value(bits, name="bits"):
    if _is_traced(bits):
        return bits
    if np.ndim(bits) == 0 and not hasattr(bits, "dtype"):
        return check_bits(bits, name)
    arr = check_bits_array(bits, name)
    if np.any(np.asarray(arr) != np.round(np.asarray(arr))):
        raise ValueError(f"{name} must be integers in 1…16, got {bits!r}")
    return bits


def _check_grouping(x, axis, block_size, *, default_block=None):
    if axis is not None and block_size is not None:
        raise ValueError(
            "give at most one of axis (per channel) and block_size (per block), "
            f"got axis={axis!r} and block_size={block_size!r}"
        )
    if axis is not None:
        ax = check_int_range(axis, "axis", -max(x.ndim, 1), max(x.ndim - 1, 0))
        if x.ndim == 0:
            raise ValueError("axis needs an array with at least one dimension, got a scalar")
        return ax % x.ndim, None
    if block_size is None:
        block_size = default_block
    if block_size is not None:
        block_size = check_block_size(int(np.size(x)), block_size, "block_size")
    return None, block_size


def _uniform_validate(x, bits, axis, block_size, step, *, default_block=None):
    x = _as_float_array(x)
    check_finite(x, "x")
    if bits is None:
        raise ValueError("bits is required for the uniform quantizer (an integer in 1…16)")
    _check_bits_value(bits)
    check_choice(step, "step", STEPS)
    if step == "midtread" and not _is_traced(bits) and np.any(np.asarray(bits) < 2):
        raise ValueError(
            f"bits must be in 2…16 for step='midtread' (Δ = R/(2^(b−1)−1)), got {bits!r}"
        )
    axis, block_size = _check_grouping(x, axis, block_size, default_block=default_block)
    return x, axis, block_size


def quantize_uniform(x, *, bits, axis=None, block_size=None, step="paper", u=None) -> jax.Array:
    """Uniform symmetric b-bit quantizer, rounding chosen by ``u`` (module docstring: grids, op
    order).

    x̂ = clip(round(x/Δ)) · Δ           (u=None: round to nearest, ties to even)
    x̂ = clip(⌊x/Δ + u⌋) · Δ            (u given: stochastic rounding with these uniforms)

    x: any shape, floating; bits: int 1…16 (or a traced scalar); u: None or x's shape, in [0, 1).
    Returns x̂ with x's shape and dtype. Exists so another implementation (a torch port) can be
    compared with this one bit for bit by feeding the same u.
    """
    x, axis, block_size = _uniform_validate(x, bits, axis, block_size, step)
    if u is not None:
        u = jnp.asarray(u, dtype=x.dtype)
        if u.shape != x.shape:
            raise ValueError(f"u must have x's shape {x.shape}, got {u.shape}")
        if not _is_traced(u) and (bool(jnp.any(u < 0)) or bool(jnp.any(u >= 1))):
            raise ValueError("u must lie in [0, 1)")
    return _quantize_impl(
        x, bits, u, scheme="uniform", axis=axis, block_size=block_size, step=step
    )[1]


def _prepare(x, scheme, bits, block_size, axis, rounding, key, step):
    """Validate; return (x, bits, axis, block_size, step, u)."""
    check_choice(scheme, "scheme", SCHEMES)
    check_choice(rounding, "rounding", ROUNDINGS)
    if scheme == "uniform":
        x, axis, block_size = _uniform_validate(x, bits, axis, block_size, step)
    elif scheme == "int8":
        if bits is not None and not _is_traced(bits) and int(bits) != 8:
            raise ValueError(f"bits must be None or 8 for scheme 'int8', got {bits!r}")
        bits, step = 8, "midtread"
        x, axis, block_size = _uniform_validate(
            x,
            bits,
            axis,
            block_size,
            step,
            default_block=None if axis is not None else _DEFAULT_BLOCK,
        )
    else:
        if bits is not None and (_is_traced(bits) or int(bits) != 4):
            raise ValueError(f"bits must be None or 4 for scheme {scheme!r}, got {bits!r}")
        if axis is not None:
            raise ValueError(
                f"scheme {scheme!r} is blockwise only; axis must be None, got {axis!r}"
            )
        if rounding != "nearest":
            raise ValueError(
                f"scheme {scheme!r} supports rounding='nearest' only, got {rounding!r}"
            )
        x = _as_float_array(x)
        check_finite(x, "x")
        block_size = (
            _DEFAULT_BLOCK
            if block_size is None
            else check_int_range(block_size, "block_size", 1, None)
        )
        return x, 4, None, block_size, None, None
    u = None
    if rounding == "stochastic":
        if key is None:
            raise ValueError(
                "rounding='stochastic' needs a PRNG key: pass key=jax.random.key(seed)"
            )
        u = jax.random.uniform(key, x.shape, dtype=x.dtype)
    return x, bits, axis, block_size, step, u


def quantize(
    x, scheme, *, bits=None, block_size=None, axis=None, rounding="nearest", key=None, step="paper"
) -> jax.Array:
    """Q(x): the dequantized tensor, same shape and dtype as x.

    scheme "uniform": symmetric b-bit, bits 1…16 required (may be traced), range per tensor /
        channel (axis) / block (block_size), step "paper" (Δ = 2^{1−b}R) or "midtread"
        (Δ = R/(2^{b−1}−1)); rounding "nearest" (ties to even) or "stochastic" (needs key;
        x̂ = ⌊x/Δ + u⌋·Δ, u ~ U[0,1)).
    scheme "nf4" / "fp4": bitsandbytes' blockwise absmax 4-bit codes (block_size default 64),
        bit for bit as bnb's reference-path quantize_4bit/dequantize_4bit; bits None or 4;
        computed in float32 and cast back to x's dtype.
    scheme "int8": the midtread uniform quantizer with b = 8 (Δ = absmax/127), per block
        (default 64) or per channel (axis).
    See the module docstring for grids, clipping, ties and the float op order.
    """
    x, bits, axis, block_size, step, u = _prepare(
        x, scheme, bits, block_size, axis, rounding, key, step
    )
    return _quantize_impl(x, bits, u, scheme=scheme, axis=axis, block_size=block_size, step=step)[1]


def quantize_codes(
    x, scheme, *, bits=None, block_size=None, axis=None, rounding="nearest", key=None, step="paper"
) -> QuantizedTensor:
    """Like :func:`quantize` but returns a :class:`QuantizedTensor` (codes, scales, steps).

    ``quantize_codes(...).dequantize()`` equals ``quantize(...)`` with the same arguments (and key).
    Not jittable as a whole (the result carries static metadata); use ``quantize`` under jit.
    """
    x, bits, axis, block_size, step, u = _prepare(
        x, scheme, bits, block_size, axis, rounding, key, step
    )
    codes, _, R, delta = _quantize_impl(
        x, bits, u, scheme=scheme, axis=axis, block_size=block_size, step=step
    )
    if scheme in ("nf4", "fp4"):
        table = _nf4_bnb_table() if scheme == "nf4" else _fp4_bnb_table()
        return QuantizedTensor(
            codes,
            R,
            delta,
            jnp.asarray(table),
            scheme,
            4,
            None,
            None,
            block_size,
            tuple(x.shape),
            x.dtype,
        )
    return QuantizedTensor(
        codes, R, delta, None, scheme, bits, step, axis, block_size, tuple(x.shape), x.dtype
    )


def _dequantize(qt: QuantizedTensor) -> jax.Array:
    if qt.codebook is not None:
        # NF4/FP4: table[code]·absmax in float32 (bnb's reference path; FP4 code 8 → +0.0)
        table = np.asarray(qt.codebook)
        n = int(np.prod(qt.shape))
        per = _per_element(qt.steps, qt.block_size, n)
        return (jnp.asarray(table)[qt.codes.reshape(-1)] * per).reshape(qt.shape).astype(qt.dtype)
    q = qt.codes.astype(qt.dtype)
    step = "midtread" if qt.scheme == "int8" else qt.step
    h = jnp.ldexp(jnp.ones((), qt.dtype), jnp.asarray(qt.bits).astype(jnp.int32) - 1)
    R, d = qt.scales, qt.steps
    if qt.block_size is not None:
        q, R, d = q.reshape(-1, qt.block_size), R[:, None], d[:, None]
    elif qt.axis is not None:
        shp = [1] * len(qt.shape)
        shp[qt.axis] = -1
        R, d = R.reshape(shp), d.reshape(shp)
    out = jnp.where(R > 0, _dequant_uniform(q, R, d, h, step), 0)
    return out.reshape(qt.shape).astype(qt.dtype)
