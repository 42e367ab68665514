"""The seed paper's bounds (Theorems 3.1–3.3) and the bit-width rules, as stated and as derived.

Theorem 3.1 (seed 001, eq. 7), with its hidden constants made explicit:

    E[L(θ̂_q)] − L(θ*) ≤ C1·√(r/N) + C2·r·4^{−b}·σ_g²
                         └ generalization ┘ └ quantization ┘

Theorem 3.2 (seed 001, eq. 8), the paper's rule *as stated*:

    b* ≥ ½·log₂r + ½·log₂N + ½·log₂σ_g² + C                                ("paper")

It does not follow from 3.1 (DESIGN.md §2): f(b) = C1·√(r/N) + C2·r·4^{−b}·σ_g² is monotone
decreasing in b, so it has no minimiser. Two rules that do follow from it:

    balance the two terms, C1·√(r/N) = C2·r·4^{−b}·σ_g²:
    b = ¼·log₂r + ¼·log₂N + ½·log₂σ_g² + ½·log₂(C2/C1)                       ("balanced")

    minimise f(b) + λ·b (a memory cost of λ per bit); f′(b) = −2·ln2·C2·r·σ_g²·4^{−b} + λ = 0:
    b = ½·log₂(2·ln2·C2·r·σ_g²/λ)                 (independent of N)          ("cost")

Theorem 3.3 (seed 001, eq. 9):

    Var[∇_{BA}L_q] ≤ Var[∇_{BA}L] + L²·‖x‖²·r·4^{−b}·R²

All functions are numpy, broadcast over every array argument (so any argument may be a grid),
and validate concrete input: N ≥ 1, r ≥ 1 (≤ min(m, n) when ``shape=(m, n)`` is given),
bits in [1, 16] (continuous b is allowed: the bounds are smooth in b), σ_g² > 0.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from quantbounds._checks import BITS_MAX, BITS_MIN, check_choice, check_positive, check_real_range

RULES = ("paper", "balanced", "cost")


def _check_r_N(r: Any, N: Any, shape: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
    r_arr = np.asarray(r, dtype=float)
    N_arr = np.asarray(N, dtype=float)
    if not np.all(np.isfinite(r_arr)) or np.any(r_arr < 1):
        raise ValueError(f"r (the LoRA rank) must be finite and ≥ 1, got {r!r}")
    if shape is not None:
        if len(shape) != 2 or min(shape) < 1:
            raise ValueError(f"shape must be (m, n) with m, n ≥ 1, got {shape!r}")
        rmax = int(min(shape))
        if np.any(r_arr > rmax):
            raise ValueError(f"r must be ≤ min(m, n) = {rmax} for shape {tuple(shape)}, got {r!r}")
    if not np.all(np.isfinite(N_arr)) or np.any(N_arr < 1):
        raise ValueError(f"N (the number of training samples) must be finite and ≥ 1, got {N!r}")
    return r_arr, N_arr


def _check_bits(bits: Any) -> np.ndarray:
    check_real_range(bits, "bits", BITS_MIN, BITS_MAX)
    return np.asarray(bits, dtype=float)


def _check_sigma(sigma_g2: Any) -> np.ndarray:
    check_positive(sigma_g2, "sigma_g2 (the gradient variance σ_g²)")
    return np.asarray(sigma_g2, dtype=float)


def generalization_term(r: Any, N: Any, *, C1: Any = 1.0, shape: tuple[int, int] | None = None):
    """First term of Theorem 3.1: C1·√(r/N).

    r, N: ranks ≥ 1 and sample sizes ≥ 1 (scalars or arrays; broadcast). Returns an array
    of the broadcast shape (a 0-d array for scalar input).
    """
    r_arr, N_arr = _check_r_N(r, N, shape)
    check_positive(C1, "C1")
    return np.asarray(C1, dtype=float) * np.sqrt(r_arr / N_arr)


def quantization_term(
    r: Any, bits: Any, *, sigma_g2: Any, C2: Any = 1.0, shape: tuple[int, int] | None = None
):
    """Second term of Theorem 3.1: C2·r·4^{−b}·σ_g² (the paper writes 2^{−2b} = 4^{−b}).

    r ≥ 1, bits in [1, 16], σ_g² > 0, C2 > 0; broadcast. Returns an array.
    """
    r_arr, _ = _check_r_N(r, 1, shape)
    b = _check_bits(bits)
    s2 = _check_sigma(sigma_g2)
    check_positive(C2, "C2")
    return np.asarray(C2, dtype=float) * r_arr * np.power(4.0, -b) * s2


def excess_risk_bound(
    r: Any,
    N: Any,
    bits: Any,
    *,
    sigma_g2: Any,
    C1: Any = 1.0,
    C2: Any = 1.0,
    shape: tuple[int, int] | None = None,
):
    """Theorem 3.1 with explicit constants: C1·√(r/N) + C2·r·4^{−b}·σ_g².

    Arguments broadcast against each other (any may be an array). ``shape=(m, n)``, when
    given, also checks r ≤ min(m, n). Assumes (as the paper does) that quantization acts as
    independent additive uniform noise on B and A; the √(r/N) rate is the paper's, not the
    r(m+n)/N rate of least squares (DESIGN.md §2).
    """
    return generalization_term(r, N, C1=C1, shape=shape) + quantization_term(
        r, bits, sigma_g2=sigma_g2, C2=C2, shape=shape
    )


def optimal_bits(
    r: Any,
    N: Any,
    *,
    sigma_g2: Any = 1.0,
    rule: str = "paper",
    C: Any = 0.0,
    C1: Any = 1.0,
    C2: Any = 1.0,
    lam: Any = None,
    shape: tuple[int, int] | None = None,
):
    """Continuous optimal bit-width b* under one of three rules (see the module docstring).

    rule="paper":    ½·log₂r + ½·log₂N + ½·log₂σ_g² + C            (Theorem 3.2 as stated)
    rule="balanced": ¼·log₂r + ¼·log₂N + ½·log₂σ_g² + ½·log₂(C2/C1) (the two terms of 3.1 equal)
    rule="cost":     ½·log₂(2·ln2·C2·r·σ_g²/λ)       (argmin_b bound + λ·b; needs lam)

    Arrays broadcast. The result is continuous and is not clipped to 1…16 (a user rounds up
    and clips); it may fall outside that range, which is information, not an error.
    """
    check_choice(rule, "rule", RULES)
    r_arr, N_arr = _check_r_N(r, N, shape)
    s2 = _check_sigma(sigma_g2)
    # the paper's rule, verbatim (C is any real constant)
    if rule == "paper":
        c = np.asarray(C, dtype=float)
        if not np.all(np.isfinite(c)):
            raise ValueError(f"C must be finite, got {C!r}")
        return 0.5 * np.log2(r_arr) + 0.5 * np.log2(N_arr) + 0.5 * np.log2(s2) + c
    check_positive(C1, "C1")
    check_positive(C2, "C2")
    c1 = np.asarray(C1, dtype=float)
    c2 = np.asarray(C2, dtype=float)
    # balance point of the two terms of Theorem 3.1
    if rule == "balanced":
        return (
            0.25 * np.log2(r_arr)
            + 0.25 * np.log2(N_arr)
            + 0.5 * np.log2(s2)
            + 0.5 * np.log2(c2 / c1)
        )
    # minimiser of the bound plus a memory cost λ·b (stationary point; f is convex in b)
    if lam is None:
        raise ValueError("rule='cost' needs lam (the cost per bit, λ > 0), got lam=None")
    check_positive(lam, "lam")
    lam_arr = np.asarray(lam, dtype=float)
    out = 0.5 * np.log2(2.0 * math.log(2.0) * c2 * r_arr * s2 / lam_arr)
    return out + 0.0 * N_arr  # broadcast against N (the rule does not depend on it)


def grad_variance_bound(var0: Any, L: Any, x_norm2: Any, r: Any, bits: Any, R: Any):
    """Theorem 3.3's right-hand side: Var[∇L] + L²·‖x‖²·r·4^{−b}·R².

    var0:    gradient variance without quantization (total, i.e. trace of the covariance), ≥ 0
    L:       loss value (the paper's "L"), ≥ 0
    x_norm2: ‖x‖² of the input (e.g. the batch mean of ‖x_i‖²), ≥ 0
    r ≥ 1, bits in [1, 16], R ≥ 0 the quantization range (absmax). All broadcast.

    As stated, the added term is not in the variance's units: Var[∇_{BA}L] is ‖∇‖² (loss² per
    parameter²), the added term loss²·‖x‖²·R², and it is not invariant under rewriting the same
    W = B·A as (c·B, A/c) (the gradient's B and A parts scale by 1/c and c, R does not follow
    them). So the ratio measured ÷ added term moves with the label noise (through L) and with c;
    the audit judges it under each reading (DESIGN.md §6).
    """
    check_positive(var0, "var0", allow_zero=True)
    check_positive(L, "L", allow_zero=True)
    check_positive(x_norm2, "x_norm2", allow_zero=True)
    check_positive(R, "R", allow_zero=True)
    r_arr, _ = _check_r_N(r, 1, None)
    b = _check_bits(bits)
    L_arr = np.asarray(L, dtype=float)
    R_arr = np.asarray(R, dtype=float)
    return (
        np.asarray(var0, dtype=float)
        + L_arr**2 * np.asarray(x_norm2, dtype=float) * r_arr * np.power(4.0, -b) * R_arr**2
    )
