"""Argument validation shared by every public function.

Every check raises ``ValueError`` (or ``TypeError``) whose message names the argument, the
allowed range and the value received. Checks run only on concrete Python/NumPy values; under
``jax.jit`` traced arrays are skipped (validate before tracing, in the public wrapper).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

BITS_MIN, BITS_MAX = 1, 16


def _is_traced(x: Any) -> bool:
    try:
        import jax

        return isinstance(x, jax.core.Tracer)
    except Exception:  # pragma: no cover
        return False


def check_int_range(value: Any, name: str, lo: int, hi: int | None = None) -> int:
    """Require an integer in [lo, hi] (hi=None: unbounded)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            value = int(value)
        else:
            rng = f"{lo}…{hi}" if hi is not None else f"≥ {lo}"
            raise TypeError(f"{name} must be an integer in {rng}, got {value!r}")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        rng = f"{lo}…{hi}" if hi is not None else f"≥ {lo}"
        raise ValueError(f"{name} must be in {rng}, got {value}")
    return value


def check_bits(bits: Any, name: str = "bits") -> int:
    """Bit-width b: an integer in 1…16."""
    return check_int_range(bits, name, BITS_MIN, BITS_MAX)


def check_bits_array(bits: Any, name: str = "bits") -> np.ndarray:
    """Bit-widths as an array (any shape); every entry an integer in 1…16.

    Non-integer values are allowed only where a formula is continuous in b; this check
    is for discrete bit-widths. Use :func:`check_real_range` for continuous b.
    """
    if _is_traced(bits):
        return bits
    arr = np.asarray(bits)
    if arr.dtype.kind not in "iuf" or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite numbers in {BITS_MIN}…{BITS_MAX}, got {bits!r}")
    if np.any(arr < BITS_MIN) or np.any(arr > BITS_MAX):
        bad = arr[(arr < BITS_MIN) | (arr > BITS_MAX)].ravel()[0]
        raise ValueError(f"{name} must be in {BITS_MIN}…{BITS_MAX}, got {bad}")
    return arr


def check_rank(r: Any, name: str = "r", *, max_rank: int | None = None) -> int:
    """LoRA rank r: an integer ≥ 1 (and ≤ min(m, n) when max_rank is given)."""
    return check_int_range(r, name, 1, max_rank)


def check_positive(value: Any, name: str, *, allow_zero: bool = False) -> Any:
    """A finite number (or array of them) > 0 (≥ 0 with allow_zero)."""
    if _is_traced(value):
        return value
    arr = np.asarray(value, dtype=float)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if allow_zero and np.any(arr < 0):
        raise ValueError(f"{name} must be ≥ 0, got {value!r}")
    if not allow_zero and np.any(arr <= 0):
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return value


def check_real_range(value: Any, name: str, lo: float, hi: float) -> Any:
    """Finite number(s) in [lo, hi]."""
    if _is_traced(value):
        return value
    arr = np.asarray(value, dtype=float)
    if not np.all(np.isfinite(arr)) or np.any(arr < lo) or np.any(arr > hi):
        raise ValueError(f"{name} must be finite and in [{lo}, {hi}], got {value!r}")
    return value


def check_finite(x: Any, name: str) -> Any:
    """Weights must be finite (no NaN/inf). Skipped for traced arrays."""
    if _is_traced(x):
        return x
    arr = np.asarray(x)
    if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
        n_bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"{name} must be finite; it has {n_bad} non-finite entries")
    return x


def check_matrix(x: Any, name: str) -> tuple[int, int]:
    """A 2-D array; returns its shape."""
    shape = np.shape(x)
    if len(shape) != 2:
        raise ValueError(f"{name} must be a 2-D matrix, got shape {shape}")
    return int(shape[0]), int(shape[1])


def check_lora_factors(B: Any, A: Any) -> tuple[int, int, int]:
    """B: (m, r), A: (r, n) with matching r; returns (m, r, n)."""
    m, rb = check_matrix(B, "B")
    ra, n = check_matrix(A, "A")
    if rb != ra:
        raise ValueError(
            f"shapes do not multiply: B is {m}×{rb} and A is {ra}×{n}; "
            f"B's columns must equal A's rows (the rank r)")
    check_rank(rb, "rank (B.shape[1])")
    check_finite(B, "B")
    check_finite(A, "A")
    return m, rb, n


def check_block_size(size: int, block_size: Any, name: str = "block_size") -> int:
    """A block size ≥ 1 that divides the number of elements it partitions."""
    bs = check_int_range(block_size, name, 1, None)
    if size % bs != 0:
        raise ValueError(
            f"{name}={bs} does not divide the {size} elements it must partition; "
            f"choose a divisor of {size}")
    return bs


def check_choice(value: Any, name: str, choices) -> Any:
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(map(str, choices))}, got {value!r}")
    return value


def check_probability(value: Any, name: str) -> float:
    v = float(value)
    if not (0.0 < v < 1.0) or math.isnan(v):
        raise ValueError(f"{name} must be in (0, 1), got {value!r}")
    return v
