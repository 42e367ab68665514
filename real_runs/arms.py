"""Arms: the ways quantization enters a LoRA fine-tune, built with PEFT and bitsandbytes.

An arm = how the frozen base W0 is stored × what happens to the LoRA factors B, A:

    arm                    base W0                      B, A in the forward pass
    fp16                   16-bit (fp32 CPU, bf16 GPU)  full precision
    base_int8              bnb Linear8bitLt             full precision
    base_nf4 / base_fp4    bnb Linear4bit (NF4 / FP4)   full precision
    adapter_rtn / _sr      16-bit                       Q_b(B), Q_b(A): uniform absmax, RTN / SR, STE
    adapter_nf4            16-bit                       NF4 code, per-block absmax (block 64), STE
    adapter_noise          16-bit                       B + ε_B, A + ε_A, ε ~ U(−Δ/2, Δ/2), Δ = 2^{1−b}·R
    base_nf4_adapter_rtn   bnb NF4                      Q_b(B), Q_b(A) RTN, STE

The adapted layer computes W0·x + s·Q(B)·Q(A)·x with s the LoRA scale (α/r, α/√r or 1).

Why ``torch.nn.utils.parametrize`` on the PEFT ``lora_A``/``lora_B`` weights (rather than
forward pre-hooks or hand-written LoRA layers): the parametrized ``.weight`` *is* Q(weight)
for every consumer — PEFT's forward for plain and bitsandbytes LoRA layers alike, merging,
and our ε_BA measurement — while the full-precision master copy stays the one trainable
parameter the optimizer updates (``parametrizations.weight.original``). A pre-hook cannot
substitute a module's weight without swapping attributes in and out around every call.
``parametrize.cached()`` evaluates Q once for a whole evaluation pass.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from quantbounds._checks import check_bits, check_choice, check_rank
from quantbounds.calib.records import ARMS
from quantbounds.conventions import SCALES
from real_runs.fakequant import make_quantizer, ste, uniform_noise

DEFAULT_TARGETS = ("c_attn", "c_proj", "c_fc")  # GPT-2's attention qkv/out and MLP in/out

# arm → (base_quant, adapter kind or None)
ARM_SPECS: dict[str, tuple[str, str | None]] = {
    "fp16": ("none", None),
    "base_int8": ("int8", None),
    "base_nf4": ("nf4", None),
    "base_fp4": ("fp4", None),
    "adapter_rtn": ("none", "rtn"),
    "adapter_sr": ("none", "sr"),
    "adapter_nf4": ("none", "nf4"),
    "adapter_noise": ("none", "noise"),
    "base_nf4_adapter_rtn": ("nf4", "rtn"),
}
assert tuple(ARM_SPECS) == ARMS, "ARM_SPECS must list quantbounds.calib.records.ARMS in order"

STOCHASTIC_KINDS = ("sr", "noise")


def arm_spec(arm: str) -> tuple[str, str | None]:
    """(base_quant, adapter kind) of an arm name; ValueError naming the allowed arms."""
    check_choice(arm, "arm", ARMS)
    return ARM_SPECS[arm]


def check_arm_bits(arm: str, bits: int) -> int:
    """Bits must be 1…16; 16 for arms without adapter quantization; 4 for adapter_nf4."""
    bits = check_bits(bits)
    kind = arm_spec(arm)[1]
    if kind is None and bits != 16:
        raise ValueError(
            f"bits must be 16 for arm {arm!r} (its adapters are not quantized), got {bits}"
        )
    if kind == "nf4" and bits != 4:
        raise ValueError(
            f"bits must be 4 for arm 'adapter_nf4' (the NF4 code has 16 values), got {bits}"
        )
    return bits


class AdapterQuant(nn.Module):
    """Parametrization W ↦ Q(W) (STE) or W + ε (noise) for one LoRA factor.

    ``enabled = False`` makes it the identity (used to read the full-precision factor).
    """

    def __init__(
        self,
        kind: str,
        *,
        bits: int,
        block_size: int | None,
        step: str = "paper",
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        check_choice(kind, "kind", ("rtn", "sr", "nf4", "noise"))
        self.kind, self.bits, self.block_size = kind, check_bits(bits), block_size
        self.generator = generator
        self.enabled = True
        self._q = (
            None
            if kind == "noise"
            else make_quantizer(
                kind, bits=bits, block_size=block_size, step=step, generator=generator
            )
        )

    def forward(self, W: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return W
        if self.kind == "noise":
            return uniform_noise(
                W, bits=self.bits, block_size=self.block_size, generator=self.generator
            )
        return ste(W, self._q(W.detach()))

    def extra_repr(self) -> str:
        return f"kind={self.kind}, bits={self.bits}, block_size={self.block_size}"


def resolve_device(device: str) -> str:
    check_choice(device, "device", ("auto", "cpu", "cuda"))
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' requested but CUDA is not available")
    return device


def load_base(
    model: str,
    *,
    base_quant: str,
    double_quant: bool = False,
    device: str = "cpu",
    embedded=None,
    cache_dir=None,
    progress: bool = True,
):
    """(causal LM with W0 stored as ``base_quant``, tokenizer).

    ``model``: "embedded" (an embedded GPT-2 named by ``embedded``, see real_runs.embedded), a local directory,
    or a hub name (needs the weights in the HF cache or network). 16-bit base: fp32 on CPU,
    bf16 on GPU. int8 / nf4 / fp4 go through transformers' ``BitsAndBytesConfig``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    check_choice(base_quant, "base_quant", ("none", "int8", "nf4", "fp4"))
    if model == "embedded":
        from real_runs.embedded import resolve_embedded

        # a name ("chitchat" shipped + hash-checked, "pydoc"/"tiny" built once) or a pydoc config
        path = str(resolve_embedded(embedded, cache_dir=cache_dir, progress=progress).path)
    else:
        path = model
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    kw: dict = {"dtype": dtype}
    if base_quant == "int8":
        kw["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    elif base_quant in ("nf4", "fp4"):
        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=base_quant,
            bnb_4bit_use_double_quant=bool(double_quant),
            bnb_4bit_compute_dtype=dtype,
        )
    if base_quant != "none":
        kw["device_map"] = {"": device}
    try:
        tok = AutoTokenizer.from_pretrained(path)
        lm = AutoModelForCausalLM.from_pretrained(path, **kw)
    except (OSError, ValueError) as err:
        where = "a local directory" if Path(path).is_dir() else "not a local directory"
        raise ValueError(
            f"unknown model {model!r} ({where}, and it could not be loaded: "
            f"{str(err).splitlines()[0]}); use 'embedded', a local path or a hub "
            f"name whose weights are available"
        ) from err
    if base_quant == "none":
        lm = lm.to(device)
    elif base_quant in ("nf4", "fp4"):
        from real_runs.bnb_reference import check_4bit_layers

        check_4bit_layers(lm)  # refuse layers the native CPU kernel dequantizes wrongly
        keep_4bit_layout(lm)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return lm, tok


def keep_4bit_layout(lm) -> int:
    """Keep every bitsandbytes 4-bit layer in its one packed layout; returns how many.

    bitsandbytes 0.50 repacks a ``Linear4bit``'s weight in place into a CPU-only layout the
    first time the layer runs in eval mode on a no-grad input, when its native library has
    AVX-512-BF16 (``support_avx512bf16_for_cpu``, set at construction from
    ``has_avx512bf16()``). A fine-tune evaluates the base before training, so on such a CPU
    the first training step then fails ("a view of a leaf Variable that requires grad is
    being used in an in-place operation"), and eval losses would come from a kernel other
    CPUs never run. Clearing the flag keeps one code path on every CPU: the one that
    :func:`real_runs.bnb_reference.check_4bit_layers` compared with the reference. No
    bitsandbytes option does this (the flag is a module attribute, not a config field).
    """
    import bitsandbytes as bnb

    n = 0
    for module in lm.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n


def attach_lora(
    lm,
    *,
    rank: int,
    lora_alpha: float,
    scale: str,
    target_modules=DEFAULT_TARGETS,
    rank_pattern: dict | None = None,
    lora_dropout: float = 0.0,
):
    """Wrap ``lm`` with PEFT LoRA adapters; returns the PeftModel (base frozen by PEFT).

    scale "alpha_r": s = α/r (PEFT default); "rslora": s = α/√r (``use_rslora=True``);
    "one": s = 1 (α set to r per module through ``alpha_pattern``).
    """
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D

    check_rank(rank, "rank")
    check_choice(scale, "scale", SCALES)
    rank_pattern = dict(rank_pattern or {})
    for k, v in rank_pattern.items():
        check_rank(v, f"rank_pattern[{k!r}]")
    alpha, alpha_pattern = float(lora_alpha), {}
    if scale == "one":
        alpha, alpha_pattern = float(rank), {k: float(v) for k, v in rank_pattern.items()}
    # GPT-2 stores c_attn/c_proj/c_fc as Conv1D (weight n×m); bnb-loaded copies are nn.Linear
    fan_in_fan_out = any(isinstance(m, Conv1D) for m in lm.modules())
    cfg = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=list(target_modules),
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        use_rslora=(scale == "rslora"),
        lora_dropout=lora_dropout,
        fan_in_fan_out=fan_in_fan_out,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(lm, cfg)


def lora_layers(peft_model, adapter: str = "default") -> dict[str, nn.Module]:
    """Adapted layers by short name ("transformer.h.0.attn.c_attn"), in model order."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, mod in peft_model.named_modules():
        if isinstance(mod, LoraLayer) and adapter in mod.lora_A:
            out[name.removeprefix("base_model.model.")] = mod
    if not out:
        raise ValueError("the model has no LoRA layers; check target_modules")
    return out


def layer_bits(name: str, bits: int, bits_pattern: dict | None) -> int:
    """Bits of one layer: the first ``bits_pattern`` key matching it (PEFT's rank_pattern rule)."""
    from peft.utils.other import get_pattern_key

    if not bits_pattern:
        return bits
    key = get_pattern_key(list(bits_pattern), name)
    return check_bits(bits_pattern[key], f"bits_pattern[{key!r}]") if key in bits_pattern else bits


def attach_adapter_quant(
    peft_model,
    *,
    kind: str,
    bits: int,
    bits_pattern: dict | None = None,
    block_size: int | None = None,
    step: str = "paper",
    generator: torch.Generator | None = None,
    adapter: str = "default",
) -> dict[str, tuple[AdapterQuant, AdapterQuant]]:
    """Parametrize every LoRA B and A with Q (kind "rtn" | "sr" | "nf4" | "noise").

    Returns {layer: (quantizer of B, quantizer of A)}. A layer whose bits resolve to 16 under
    ``bits_pattern`` is still quantized at 16 bits (a near-identity, not skipped), so per-layer
    allocations mean the same thing everywhere.
    """
    out = {}
    if kind == "nf4" and block_size is None:
        block_size = 64  # bitsandbytes' default block
    for name, layer in lora_layers(peft_model, adapter).items():
        b = layer_bits(name, bits, bits_pattern)
        qs = []
        for fac in (layer.lora_B[adapter], layer.lora_A[adapter]):
            bs = block_size
            if bs is not None and fac.weight.numel() % bs:
                raise ValueError(
                    f"block_size={bs} does not divide the {fac.weight.numel()} "
                    f"entries of a LoRA factor of {name}"
                )
            q = AdapterQuant(kind, bits=b, block_size=bs, step=step, generator=generator)
            parametrize.register_parametrization(fac, "weight", q)
            qs.append(q)
        out[name] = (qs[0], qs[1])
    return out


def factor_weights(
    layer, adapter: str = "default", *, quantized: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, A) of a LoRA layer: B m×r, A r×n; full precision, or Q(B), Q(A) as the forward sees them."""
    Bm, Am = layer.lora_B[adapter], layer.lora_A[adapter]
    if not quantized and parametrize.is_parametrized(Bm):
        return (
            Bm.parametrizations.weight.original.detach(),
            Am.parametrizations.weight.original.detach(),
        )
    return Bm.weight.detach(), Am.weight.detach()


@dataclass
class Built:
    """A built arm: the PEFT model, tokenizer, adapted layers and their quantizers."""

    model: nn.Module
    tokenizer: object
    layers: dict
    quantizers: dict
    base_quant: str
    kind: str | None
    device: str


def build_arm(
    *,
    arm: str,
    model: str = "embedded",
    rank: int,
    bits: int,
    scale: str = "alpha_r",
    lora_alpha: float = 16.0,
    target_modules=DEFAULT_TARGETS,
    rank_pattern=None,
    bits_pattern=None,
    block_size: int | None = None,
    step: str = "paper",
    double_quant: bool = False,
    lora_dropout: float = 0.0,
    seed: int = 0,
    device: str = "cpu",
    embedded=None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> Built:
    """Load the base as the arm says, attach LoRA, and fake-quantize / perturb B and A."""
    base_quant, kind = arm_spec(arm)
    bits = check_arm_bits(arm, bits)
    torch.manual_seed(seed)  # LoRA init (A Kaiming-uniform, B zero)
    lm, tok = load_base(
        model,
        base_quant=base_quant,
        double_quant=double_quant,
        device=device,
        embedded=embedded,
        cache_dir=cache_dir,
        progress=progress,
    )
    pm = attach_lora(
        lm,
        rank=rank,
        lora_alpha=lora_alpha,
        scale=scale,
        target_modules=target_modules,
        rank_pattern=rank_pattern,
        lora_dropout=lora_dropout,
    )
    quantizers = {}
    if kind is not None:
        gen = torch.Generator(device=device).manual_seed(10_007 * seed + 1)
        quantizers = attach_adapter_quant(
            pm,
            kind=kind,
            bits=bits,
            bits_pattern=bits_pattern,
            block_size=block_size,
            step=step,
            generator=gen,
        )
    return Built(
        model=pm,
        tokenizer=tok,
        layers=lora_layers(pm),
        quantizers=quantizers,
        base_quant=base_quant,
        kind=kind,
        device=device,
    )
