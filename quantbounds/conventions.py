"""LoRA scale conventions: W = W0 + s·B·A.

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
