"""The project's one table of conventions: LoRA scales, quantizer options, fake-quant kinds.

LoRA scale conventions: W = W0 + s·B·A.

    "alpha_r": s = α/r      (PEFT default, Hu et al. 2021)
    "rslora":  s = α/√r     (rank-stabilised LoRA, Kalajdzievski 2023)
    "one":     s = 1        (the seed paper's convention)

Every second moment of ε_BA scales with s², so the rank dependence of the variance bound
m·n·r·… becomes 1/r under α/r and flat under rsLoRA (DESIGN.md §2).
"""

from __future__ import annotations

import math

SCALES = ("alpha_r", "rslora", "one")


def lora_scale(scale: str, lora_alpha: float, rank: int) -> float:
    """Numeric LoRA scale s for a convention name, α and rank r (r ≥ 1)."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    r = int(rank)
    if r < 1:
        raise ValueError(f"rank must be ≥ 1, got {rank!r}")
    if scale == "alpha_r":
        return float(lora_alpha) / r
    if scale == "rslora":
        return float(lora_alpha) / math.sqrt(r)
    return 1.0


# ---------------------------------------------------------------------------------------------
# The one table of quantizer options (quant.quantizers, the Monte Carlo engine, the students;
# real_runs' torch port takes its subset from here).

SCHEMES = ("uniform", "nf4", "fp4", "int8")  # quant.quantizers.quantize's schemes
STEPS = ("paper", "midtread")  # Δ = 2^{1−b}·R (seed eq. 2), R/(2^{b−1}−1) (int8)
ROUNDINGS = ("nearest", "stochastic")  # ties to even, or ⌊x/Δ + u⌋ with u ~ U[0, 1)
MODES = ("additive", "real")  # Monte Carlo: the paper's noise model, or a quantizer

# Fake-quantization kinds of the teacher–student experiments, numbered once: the index is what a
# traced (vmapped) kind carries (quant.quantizers.fake_quantize).
#   0 "none"      Q(x) = x
#   1 "rtn"       uniform "paper" grid, round to nearest (ties to even)
#   2 "sr"        the same grid, stochastic rounding ⌊x/Δ + u⌋
#   3 "nf4"       bitsandbytes NF4, one block = the whole tensor
#   4 "additive"  x + Δ·(u − ½): the paper's additive uniform noise model (not a quantizer)
KINDS = ("none", "rtn", "sr", "nf4", "additive")
KIND_INDEX = {None: 0, **{kind: i for i, kind in enumerate(KINDS)}}
