"""bitsandbytes 4-bit dequantization: the reference path, and where the native CPU kernel leaves it.

Parity in this toolkit means equality with bitsandbytes' pure-torch reference path
(``bitsandbytes.backends.default``): ``quantize_4bit`` (on CPU bitsandbytes 0.50 has no native
quantizer, so this is what ``bitsandbytes.functional.quantize_4bit`` runs everywhere) and
``_dequantize_4bit_compute``, x̂ = code[q]·absmax[block] in float32, then cast to the requested
dtype. That path has no instruction-set dependence. We call its eager function
(``inspect.unwrap`` of the ``torch.compile`` wrapper): a gather and one float32 product per
element, exactly rounded whichever way it is compiled, and no compile time in the tests.

bitsandbytes 0.50's native CPU ``dequantize_4bit`` (``libbitsandbytes_cpu``) is taken for even
last dimensions, except blocks ≥ 2048 on AVX-512 (those fall back to the reference path). It
depends on the instruction set. Measured (``benchmarks/bnb_native_parity.py`` reproduces it):

- AVX2: equals the reference path in value on every shape tested; FP4 code 8 ("−0") comes out
  −0.0 where the reference path gives +0.0.
- AVX-512: when the last dimension n is a multiple of 16 (the vector path), elements of rows
  after the first are scaled by the wrong block's absmax whenever n is not a multiple of the
  block size and x has more than one block, e.g. (64, 96) or (4, 96) at block 64, (33, 64) at
  block 128, (768, 2304) at block 512 (:func:`native_known_bad` is this rule; the diagnostic
  checks it against the kernel). FP4 code 8 is +0.0 in the vector path and −0.0 in the scalar
  path (n not a multiple of 16), which is otherwise right.

These are findings about bitsandbytes, never the definition of correct. The torch bridge
refuses to train on a 4-bit layer that the native kernel dequantizes wrongly
(:func:`check_4bit_layers`), comparing the layer's own weights against the reference path.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

QUANT_TYPES = ("nf4", "fp4")


def cpu_isa() -> str:
    """The instruction set of bitsandbytes' native CPU kernel here: "avx512" when its library
    reports AVX-512F (``lib.has_avx512f_cpu()``, a run-time CPUID check inside
    ``libbitsandbytes_cpu``), else torch's CPU capability in lower case ("avx2", "default", …)."""
    try:
        from bitsandbytes.cextension import lib

        if int(lib.has_avx512f_cpu()):
            return "avx512"
    except (ImportError, AttributeError, OSError):  # pragma: no cover - no native CPU library
        pass
    return str(torch.backends.cpu.get_cpu_capability()).lower()


def routes_avx512() -> bool:
    """bitsandbytes' own Python-side routing flag (``backends/cpu/ops.py: _has_avx512``), which
    follows torch's CPU capability (so ``ATEN_CPU_CAPABILITY=avx2`` turns it off) and decides
    whether blocks ≥ 2048 avoid the native kernel; the kernel itself still checks the CPU."""
    try:
        from bitsandbytes.backends.cpu import ops as cpu_ops
    except ImportError:  # pragma: no cover
        return False
    return bool(getattr(cpu_ops, "_has_avx512", False))


def reference_dequantize_4bit(packed: torch.Tensor, state) -> torch.Tensor:
    """bitsandbytes' reference-path dequantization of ``quantize_4bit``'s (packed, state).

    x̂ = code[q]·absmax[⌊i/blocksize⌋] in float32 (the last block may be short), in
    ``state.shape`` and ``state.dtype``; identical on every CPU. A double-quantized (nested)
    absmax is first restored exactly as ``dequantize_4bit`` does it (dequantize_blockwise +
    offset), so a comparison isolates the 4-bit step.
    """
    import bitsandbytes.functional as F
    from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
    from bitsandbytes.backends.utils import _get_4bit_code

    compute = inspect.unwrap(_dequantize_4bit_compute)
    codes = packed.view(torch.uint8).reshape(-1)
    code = _get_4bit_code(state.quant_type, packed.device)
    if state.nested:
        absmax = F.dequantize_blockwise(state.absmax, state.state2) + state.offset
    else:
        absmax = state.absmax
    absmax = absmax.float()
    return compute(codes, absmax, code, state.blocksize, tuple(state.shape), state.dtype)


def native_dequantize_4bit(packed: torch.Tensor, state) -> torch.Tensor:
    """What ``bitsandbytes.functional.dequantize_4bit`` returns on this machine (the native
    kernel where bitsandbytes takes it)."""
    import bitsandbytes.functional as F

    return F.dequantize_4bit(packed, state)


def takes_native_path(shape: tuple[int, ...], block_size: int,
                      avx512_routing: bool | None = None) -> bool:
    """Whether bitsandbytes 0.50 routes this dequantization to its native CPU kernel: an even
    last dimension, and not a block ≥ 2048 under AVX-512 routing (``backends/cpu/ops.py``)."""
    avx512_routing = routes_avx512() if avx512_routing is None else avx512_routing
    return shape[-1] % 2 == 0 and not (avx512_routing and block_size >= 2048)


def native_known_bad(shape: tuple[int, ...], block_size: int, isa: str | None = None,
                     avx512_routing: bool | None = None) -> bool:
    """The measured rule for shapes whose native CPU dequantization is wrong in value.

    AVX-512 kernel, vector path (n = shape[-1] a multiple of 16): wrong when n is not a
    multiple of the block, there are at least two rows and at least two blocks. No value error
    was found on AVX2. Sign-of-zero differences are not counted (they are not value errors).
    ``isa`` and ``avx512_routing`` default to this machine's (:func:`cpu_isa`,
    :func:`routes_avx512`).
    """
    isa = cpu_isa() if isa is None else isa
    if isa != "avx512" or not takes_native_path(shape, block_size, avx512_routing):
        return False
    n = shape[-1]
    rows = 1
    for d in shape[:-1]:
        rows *= d
    n_blocks = -(-(rows * n) // block_size)
    return n % 16 == 0 and n % block_size != 0 and rows > 1 and n_blocks > 1


@dataclass(frozen=True, kw_only=True)
class NativeComparison:
    """Native kernel against the reference path for one quantized tensor.

    n: elements; n_value: elements whose values differ (−0.0 = +0.0); n_sign_only: elements
    equal in value but not in sign (±0.0); max_abs: the largest |native − reference|;
    mean_abs_err_native, mean_abs_err_reference: mean |x̂ − x| of each against the input.
    """

    quant_type: str
    shape: tuple[int, ...]
    block_size: int
    dtype: str
    n: int
    n_value: int
    n_sign_only: int
    max_abs: float
    mean_abs_err_native: float
    mean_abs_err_reference: float

    @property
    def values_agree(self) -> bool:
        return self.n_value == 0


def compare_native(x: torch.Tensor, quant_type: str, block_size: int) -> NativeComparison:
    """Quantize x with bitsandbytes (CPU) and dequantize it both ways; count what differs."""
    import bitsandbytes.functional as F

    if quant_type not in QUANT_TYPES:
        raise ValueError(f"quant_type must be one of {QUANT_TYPES}, got {quant_type!r}")
    packed, state = F.quantize_4bit(x, blocksize=block_size, quant_type=quant_type)
    native = native_dequantize_4bit(packed, state).float().reshape(-1)
    ref = reference_dequantize_4bit(packed, state).float().reshape(-1)
    value = (native + 0.0) != (ref + 0.0)  # + 0.0 maps −0.0 to +0.0 and changes nothing else
    bits_differ = native.view(torch.int32) != ref.view(torch.int32)
    xf = x.float().reshape(-1)
    return NativeComparison(
        quant_type=quant_type, shape=tuple(x.shape), block_size=block_size,
        dtype=str(x.dtype).replace("torch.", ""), n=x.numel(), n_value=int(value.sum()),
        n_sign_only=int((bits_differ & ~value).sum()),
        max_abs=float((native - ref).abs().max()) if x.numel() else 0.0,
        mean_abs_err_native=float((native - xf).abs().mean()),
        mean_abs_err_reference=float((ref - xf).abs().mean()))


class NativeKernelMismatch(RuntimeError):
    """A 4-bit layer whose native CPU dequantization differs in value from the reference path."""


def check_4bit_layers(model: torch.nn.Module) -> int:
    """Refuse a model with a bitsandbytes 4-bit layer that the native kernel gets wrong.

    For every ``bnb.nn.Linear4bit`` on the CPU, its own packed weight is dequantized by the
    native kernel and by the reference path; any value difference raises
    :class:`NativeKernelMismatch` naming the layers, shapes and block sizes, before training
    could silently use wrongly dequantized weights. Returns the number of layers checked.
    """
    import bitsandbytes as bnb

    bad, checked = [], 0
    for name, module in model.named_modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        weight = module.weight
        state = getattr(weight, "quant_state", None)
        if state is None or weight.device.type != "cpu":
            continue
        checked += 1
        native = native_dequantize_4bit(weight.data, state).float()
        ref = reference_dequantize_4bit(weight.data, state).float()
        n_value = int(((native + 0.0) != (ref + 0.0)).sum())
        if n_value:
            bad.append(f"{name}: shape {tuple(state.shape)}, {state.quant_type} block "
                       f"{state.blocksize}: {n_value} of {native.numel()} values wrong")
    if bad:
        raise NativeKernelMismatch(
            f"bitsandbytes' native CPU dequantize_4bit ({cpu_isa()}) disagrees with its reference "
            "path on these layers, so training would use wrong weights: " + "; ".join(bad)
            + ". Use a block size that divides the layer's last dimension, run on CUDA, or see "
            "benchmarks/bnb_native_parity.py.")
    return checked
