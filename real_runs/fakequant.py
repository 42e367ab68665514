"""Torch port of the JAX quantizers (``quantbounds.quant.quantizers``), for fake-quantizing LoRA factors.

Same definitions and the same float operation order as the JAX core (its module docstring is
the contract), so that for float32 inputs — and the same uniforms u for stochastic rounding —
the result is bit-identical (tested in ``tests/test_real_runs_fakequant.py``). Summary:

Uniform symmetric b-bit quantizer, h = 2^{b−1}, range R = max|x| per tensor / channel / block:

    step "paper"     Δ = 2^{1−b}·R,        q ∈ {−h, …, h−1}   (seed paper eq. 2; +R clips to R − Δ)
    step "midtread"  Δ = R/(2^{b−1} − 1),  q ∈ {−(h−1), …, h−1}
    nearest          q = clip(round_half_even(x/Δ))
    stochastic       q = clip(⌊x/Δ + u⌋),   u ~ U[0, 1)
    x̂ = q·Δ ("paper"),  x̂ = R·(q/(2^{b−1}−1)) ("midtread")
    R = 0 gives x̂ = 0.

NF4 / FP4 (bitsandbytes 0.50 quantize_4bit + its reference-path dequantize), per block of 64 by default
(a shorter last block allowed): s = clamp(x·(1/max(absmax, 1e−38)), −1, 1) (last short block:
x/max(absmax, 1e−38)), i = #{midpoints < s} (ties to the LOWER code), x̂ = table[i]·absmax.
The tables and midpoints are taken from ``quantbounds.quant.quantizers`` itself, so both sides use
literally the same float32 numbers.

Blocks partition x.ravel() (C order) into consecutive runs of ``block_size`` elements.

Straight-through estimator: :func:`ste` returns Q(x) in the forward pass and passes the
incoming gradient unchanged to x (∂Q/∂x := I), via a custom autograd Function so that the
forward value is exactly Q(x) (``x + (Q(x) − x).detach()`` can differ from Q(x) in the last bit).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

import torch

from quantbounds._checks import check_bits, check_block_size, check_choice, check_int_range

SCHEMES = ("uniform", "nf4", "fp4")
STEPS = ("paper", "midtread")
ROUNDINGS = ("nearest", "stochastic")
_BNB_ABSMAX_FLOOR = (
    1e-38  # bitsandbytes' clamp floor for absmax (as in quantbounds.quant.quantizers)
)


@lru_cache(maxsize=None)
def _code_tables(code: str):
    """(dequantization table in bnb code order, sort order, float32 midpoints) as numpy arrays.

    Built by the JAX core's own helpers (imported lazily: that import loads jax).
    """
    from quantbounds.quant import quantizers as qz

    table = qz._nf4_bnb_table() if code == "nf4" else qz._fp4_bnb_table()
    order, _, mids = qz._bnb_sorted(table)
    # table[code]·absmax as bnb's reference path (FP4 code 8 → +0.0; quantbounds.quant.bnb4)
    return table.copy(), order.astype("int64"), mids


@lru_cache(maxsize=None)
def _code_tensors(code: str, device: str):
    """(dequantization table, sort order, midpoints) as torch tensors on ``device`` (cached)."""
    deq, order, mids = _code_tables(code)
    return (
        torch.as_tensor(deq, device=device),
        torch.as_tensor(order, device=device),
        torch.as_tensor(mids, device=device),
    )


def _group_absmax(x: torch.Tensor, axis: int | None, block_size: int | None):
    """(xg, R): x reshaped so that R (keepdims) broadcasts against it."""
    if block_size is not None:
        check_block_size(x.numel(), block_size)
        xg = x.reshape(-1, block_size)
        return xg, xg.abs().amax(dim=1, keepdim=True)
    if axis is not None:
        ax = check_int_range(axis, "axis", -x.dim(), x.dim() - 1) % x.dim()
        other = tuple(i for i in range(x.dim()) if i != ax)
        return x, x.abs().amax(dim=other, keepdim=True) if other else x.abs()
    return x, x.abs().amax()


def quantize_uniform(
    x: torch.Tensor,
    *,
    bits: int,
    axis: int | None = None,
    block_size: int | None = None,
    step: str = "paper",
    u: torch.Tensor | None = None,
) -> torch.Tensor:
    """Uniform symmetric b-bit quantizer x̂ (module docstring); x's shape and dtype.

    x: floating, any shape; bits: 1…16 (2…16 for "midtread"); at most one of axis / block_size
    (block_size must divide x.numel()); u: None (round to nearest) or uniforms in [0, 1) of
    x's shape (stochastic rounding ⌊x/Δ + u⌋).
    """
    bits = check_bits(bits)
    check_choice(step, "step", STEPS)
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    if axis is not None and block_size is not None:
        raise ValueError(
            f"give at most one of axis and block_size, got {axis!r} and {block_size!r}"
        )
    if step == "midtread" and bits < 2:
        raise ValueError(f"bits must be in 2…16 for step='midtread', got {bits}")
    if u is not None and u.shape != x.shape:
        raise ValueError(f"u must have x's shape {tuple(x.shape)}, got {tuple(u.shape)}")
    xg, R = _group_absmax(x, axis, block_size)
    h = 2.0 ** (bits - 1)
    if step == "paper":
        # Δ = 2^{1−b}·R (exact); k ∈ {−h, …, h−1}
        delta, lo, hi = R * (2.0 ** (1 - bits)), -h, h - 1
    else:
        # Δ = R/(2^{b−1}−1); k ∈ {−(h−1), …, h−1}
        delta, lo, hi = R / (h - 1), -(h - 1), h - 1
    nonzero = R > 0
    safe = torch.where(nonzero, delta, torch.ones_like(delta))
    t = xg / safe
    q = torch.round(t) if u is None else torch.floor(t + u.reshape(xg.shape))
    q = torch.clamp(q, lo, hi)
    # x̂ = q·Δ ("paper") or R·(q/(2^{b−1}−1)) ("midtread": ±R and 0 exact), as the core
    deq = q * safe if step == "paper" else R * (q / (h - 1))
    xhat = torch.where(nonzero, deq, torch.zeros_like(xg))
    return xhat.reshape(x.shape)


def quantize_code(x: torch.Tensor, *, code: str, block_size: int = 64) -> torch.Tensor:
    """bitsandbytes NF4 / FP4 blockwise quantize + dequantize, in float32, cast back to x.dtype."""
    check_choice(code, "code", ("nf4", "fp4"))
    block_size = check_int_range(block_size, "block_size", 1)
    deq_t, order_t, mids_t = _code_tensors(code, str(x.device))
    xf = x.to(torch.float32).reshape(-1)
    n = xf.numel()
    rem = n % block_size
    full = n - rem
    parts_s, parts_a = [], []
    floor = torch.tensor(_BNB_ABSMAX_FLOOR, dtype=torch.float32, device=x.device)
    if full:
        A = xf[:full].reshape(-1, block_size)
        am = A.abs().amax(dim=1)
        inv = 1.0 / torch.maximum(am, floor)
        parts_s.append(torch.clamp(A * inv[:, None], -1.0, 1.0).reshape(-1))
        parts_a.append(am)
    if rem:
        tail = xf[full:]
        am_t = torch.maximum(tail.abs().amax(), floor)
        parts_s.append(torch.clamp(tail / am_t, -1.0, 1.0))
        parts_a.append(am_t[None])
    s = torch.cat(parts_s)
    absmax = torch.cat(parts_a)
    idx = torch.searchsorted(mids_t, s, right=False)  # ties go to the lower code
    per_elem = absmax.repeat_interleave(block_size)[:n]
    xhat = deq_t[order_t[idx]] * per_elem
    return xhat.reshape(x.shape).to(x.dtype)


def quantize(
    x: torch.Tensor,
    scheme: str,
    *,
    bits: int | None = None,
    block_size: int | None = None,
    axis: int | None = None,
    rounding: str = "nearest",
    generator: torch.Generator | None = None,
    step: str = "paper",
) -> torch.Tensor:
    """Q(x) for a scheme, as ``quantbounds.quant.quantizers.quantize`` (a torch Generator for SR)."""
    check_choice(scheme, "scheme", SCHEMES)
    check_choice(rounding, "rounding", ROUNDINGS)
    if scheme != "uniform":
        if bits not in (None, 4):
            raise ValueError(f"bits must be None or 4 for scheme {scheme!r}, got {bits!r}")
        if rounding != "nearest" or axis is not None:
            raise ValueError(f"scheme {scheme!r} is blockwise round-to-nearest only")
        return quantize_code(x, code=scheme, block_size=64 if block_size is None else block_size)
    if bits is None:
        raise ValueError("bits is required for the uniform quantizer (an integer in 1…16)")
    u = None
    if rounding == "stochastic":
        u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return quantize_uniform(x, bits=bits, axis=axis, block_size=block_size, step=step, u=u)


class _STE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, q):  # noqa: D401 - autograd protocol
        return q

    @staticmethod
    def backward(ctx, g):
        return g, None


def ste(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Forward value q (exactly), gradient passed straight through to x."""
    return _STE.apply(x, q.detach())


def uniform_noise(
    x: torch.Tensor,
    *,
    bits: int,
    block_size: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The paper's additive model: x + ε, ε_ij i.i.d. U(−Δ/2, Δ/2), Δ = 2^{1−b}·R (R detached).

    Var[ε] = Δ²/12 = R²·4^{−b}/3. The gradient with respect to x is the identity.
    """
    bits = check_bits(bits)
    xg, R = _group_absmax(x.detach(), None, block_size)
    delta = R * (2.0 ** (1 - bits))
    e = torch.rand(xg.shape, generator=generator, dtype=x.dtype, device=x.device) - 0.5
    return x + (e * delta).reshape(x.shape)


def make_quantizer(
    kind: str,
    *,
    bits: int,
    block_size: int | None,
    step: str = "paper",
    generator: torch.Generator | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """x ↦ Q(x) for an adapter quantization kind: "rtn", "sr", "nf4", "fp4" (no gradient)."""
    check_choice(kind, "kind", ("rtn", "sr", "nf4", "fp4"))
    bits = check_bits(bits)
    if kind in ("rtn", "sr"):
        rounding = "nearest" if kind == "rtn" else "stochastic"
        return lambda x: quantize(
            x,
            "uniform",
            bits=bits,
            block_size=block_size,
            step=step,
            rounding=rounding,
            generator=generator,
        )
    return lambda x: quantize_code(x, code=kind, block_size=block_size or 64)
