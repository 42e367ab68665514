"""Fake quantization by kind: the teacher–student experiments' one quantizer.

:func:`fake_quantize` is ``quantizers.quantize_uniform`` / ``quantizers.quantize`` (the same
functions, the same float op order) for the kinds of ``conventions.KINDS``, plus the paper's
additive noise model, in a form that a traced kind index can select among under vmap.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from quantbounds._numerics import true_div as _div
from quantbounds.conventions import KIND_INDEX, KINDS
from quantbounds.quant.bnb4 import _quantize_4bit_core
from quantbounds.quant.quantizers import _dequant_uniform, _group_absmax


def static_kind(kind) -> str | None:
    """The name of a kind given as a name, None ("none") or a concrete index into
    ``conventions.KINDS``; None for a traced index (the kind is known only at run time)."""
    if kind is None or isinstance(kind, str):
        if kind not in KIND_INDEX:
            raise ValueError(f"kind must be one of {KINDS} or None, got {kind!r}")
        return KINDS[KIND_INDEX[kind]]
    if isinstance(kind, (int, np.integer)) and not isinstance(kind, bool):
        return KINDS[int(kind)]
    return None


def fake_quantize(x, kind, *, bits=None, axis=None, u=None, kinds: tuple = KINDS):
    """Q(x) for a fake-quantization kind of ``conventions.KINDS``, same shape and dtype as x.

        "none"      Q(x) = x
        "rtn"       clip(round(x/Δ), −h, h−1)·Δ,  Δ = 2^{1−b}·R, h = 2^{b−1} (the "paper" grid,
                    ties to even; +R clips to R − Δ)
        "sr"        clip(⌊x/Δ + u⌋, −h, h−1)·Δ   (stochastic rounding, unbiased but in the top cell)
        "nf4"       bitsandbytes NF4 with ONE block = the whole tensor (bits ignored)
        "additive"  x + Δ·(u − ½): the paper's additive uniform noise model (not a quantizer)

    R = max|x| over the tensor (axis=None) or one R per index along ``axis`` (not for NF4); a
    zero range gives Q(x) = 0. Exactly ``quantizers.quantize_uniform`` / ``quantize`` for each
    kind (the same float op order; tests). x: floating array; bits: b (may be traced; unused
    by "none" and "nf4"); u: uniforms in [0, 1), x's shape, for "sr" and "additive".
    kind: a name (static: only that quantizer is computed), or its index (may be traced,
    e.g. under vmap: R, Δ and x/Δ are shared and one select picks the kind among ``kinds``,
    the static tuple of names it may take, which is far cheaper to compile than a switch
    over whole quantizers). Not validated (it runs inside jit); pure JAX.
    """
    name = static_kind(kind)
    if name is not None:
        kinds = (name,)
    chosen = kind
    if kinds == ("none",):
        return x
    if kinds == ("nf4",):
        return _quantize_4bit_core(x, "nf4", int(np.size(x)))[1]
    R = _group_absmax(x, axis, None)[1]
    bi = jnp.asarray(bits).astype(jnp.int32)
    h = jnp.ldexp(jnp.ones((), x.dtype), bi - 1)
    delta = jnp.ldexp(R, 1 - bi)  # Δ = 2^{1−b}·R, exact
    nonzero = R > 0
    safe = jnp.where(nonzero, delta, jnp.ones_like(delta))
    options = {}  # kind name -> its Q(x); a traced kind selects among them below
    # the paper's additive model: x + Δ·(u − ½)
    if "additive" in kinds:
        options["additive"] = x + delta * (u - 0.5)
    # the uniform "paper" grid, as quantizers._uniform_core: t = x/Δ correctly rounded, then
    # round half to even (RTN) or ⌊t + u⌋ (SR), clip to the 2^b levels, dequantize
    if "rtn" in kinds or "sr" in kinds:
        t = _div(x, safe)
        if "sr" not in kinds:
            code = jnp.round(t)  # half to even
        elif "rtn" not in kinds:
            code = jnp.floor(t + u)
        else:
            code = jnp.where(chosen == KIND_INDEX["sr"], jnp.floor(t + u), jnp.round(t))
        code = jnp.clip(code, -h, h - 1)
        grid = jnp.where(nonzero, _dequant_uniform(code, R, safe, h, "paper"), jnp.zeros_like(x))
        options.update({k: grid for k in ("rtn", "sr") if k in kinds})
    if "nf4" in kinds:
        options["nf4"] = _quantize_4bit_core(x, "nf4", int(np.size(x)))[1]
    if "none" in kinds:
        options["none"] = x
    if len(options) == 1:
        return next(iter(options.values()))
    out = options[kinds[0]]
    for name in kinds[1:]:
        out = jnp.where(chosen == KIND_INDEX[name], options[name], out)
    return out
