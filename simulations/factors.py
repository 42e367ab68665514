"""LoRA factor families the validation job draws B ∈ ℝ^{m×r} and A ∈ ℝ^{r×n} from.

Every moment and bound of ε_BA depends on the factors only through ‖B‖_F², ‖A‖_F², their
absmax ranges R_B, R_A and (per channel/block) how the mass is spread. The families below
span what those look like in practice:

``gaussian``
    B_ik ~ N(0, 1), A_kj ~ N(0, 1), i.i.d. The textbook case; light tails, so absmax ranges
    are ≈ √(2·ln(size)) standard deviations and Widrow's theorem fails only at b ≤ 2.
``peft_init``
    PEFT's initialisation of a LoRA layer: A = kaiming_uniform_(a=√5) on the (r, n) weight,
    i.e. A_kj ~ U(−1/√n, 1/√n) (gain √(2/(1+a²)) = √(1/3) times √(3/fan_in), fan_in = n;
    torch.nn.init, peft/tuners/lora/layer.py ``reset_lora_parameters``), and B = 0. With B = 0
    the absmax quantizers return Q(B) = 0, so ε_B = 0 and B·ε_A = 0: ε_BA ≡ 0 at step 0.
``trained_like``
    Factors shaped like trained adapters: a power-law singular spectrum σ_k = k^{−γ} (γ = 1,
    our choice: trained LoRA updates have a few dominant directions) split evenly between B
    and A, with heavy-tailed entries (Student-t, ν = 4, scaled to unit variance; trained
    weights are heavy-tailed, Martin & Mahoney 2021). Concretely
        B = T_B · diag(√σ) / √m,   A = diag(√σ) · T_A / √n,
    T_B ∈ ℝ^{m×r}, T_A ∈ ℝ^{r×n} i.i.d. t₄/√2, so BA ≈ Σ_k σ_k u_k v_kᵀ with near-orthogonal
    u_k, v_k. Heavy tails make R² ≫ mean square, which is what loosens the absmax bound.

All generators take an explicit ``key`` and return float arrays of the requested dtype.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from quantbounds._checks import check_choice, check_int_range, check_positive, check_rank

FAMILIES = ("gaussian", "peft_init", "trained_like")

# Student-t degrees of freedom for trained-like entries: ν = 4, the heaviest integer-ν tail
# whose variance is finite (ν > 2); the fourth moment is (just) infinite, so ranges are
# dominated by a few large entries, as in trained weights.
TRAINED_T_DOF = 4.0
# Power-law exponent of the trained-like singular spectrum σ_k = k^{−γ} (our choice, see above).
TRAINED_DECAY = 1.0


@dataclass(frozen=True, kw_only=True)
class FactorSpec:
    """Which LoRA factors to draw: a family and a layer shape (m, n) at rank r."""

    family: str
    m: int
    n: int
    r: int

    def __post_init__(self):
        check_choice(self.family, "family", FAMILIES)
        check_int_range(self.m, "m", 1)
        check_int_range(self.n, "n", 1)
        check_rank(self.r, "r", max_rank=min(self.m, self.n))


# Generators are jitted with static shapes: one compiled program per (family, shape, dtype)
# instead of one per primitive op in eager mode (which dominated small runs).
_jit_shapes = functools.partial(jax.jit, static_argnums=(1, 2, 3), static_argnames=("dtype",))


@_jit_shapes
def gaussian_factors(key, m: int, n: int, r: int, *, dtype=jnp.float32):
    """B ~ N(0,1)^{m×r}, A ~ N(0,1)^{r×n} i.i.d. Returns (B, A)."""
    kb, ka = jax.random.split(key)
    return (jax.random.normal(kb, (m, r), dtype=dtype),
            jax.random.normal(ka, (r, n), dtype=dtype))


@_jit_shapes
def peft_init_factors(key, m: int, n: int, r: int, *, dtype=jnp.float32):
    """PEFT's LoRA init: A ~ U(−1/√n, 1/√n)^{r×n} (kaiming_uniform_, a = √5), B = 0^{m×r}."""
    bound = 1.0 / math.sqrt(n)
    A = jax.random.uniform(key, (r, n), dtype=dtype, minval=-bound, maxval=bound)
    return jnp.zeros((m, r), dtype=dtype), A


@functools.partial(jax.jit, static_argnums=(1,), static_argnames=("dtype",))
def student_t4(key, shape, *, dtype=jnp.float32):
    """Student-t with ν = 4: Z/√(χ²₄/4), χ²₄ = Σ_{i=1}^{4} Z_i² (exact construction from five
    normals; avoids jax.random.t's gamma sampler, which is slow to compile)."""
    kz, kc = jax.random.split(key)
    z = jax.random.normal(kz, shape, dtype=dtype)
    c = jax.random.normal(kc, (4,) + tuple(shape), dtype=dtype)
    return z / jnp.sqrt(jnp.sum(c * c, axis=0) / 4)


@_jit_shapes
def trained_like_factors(key, m: int, n: int, r: int, *, dtype=jnp.float32,
                         decay: float = TRAINED_DECAY):
    """B = T_B·diag(√σ)/√m, A = diag(√σ)·T_A/√n, σ_k = k^{−decay}, T ~ t₄/√2 (unit variance)."""
    check_positive(decay, "decay", allow_zero=True)   # skipped when traced
    kb, ka = jax.random.split(key)
    unit = math.sqrt((TRAINED_T_DOF - 2.0) / TRAINED_T_DOF)  # t_ν has variance ν/(ν−2)
    sq = jnp.arange(1, r + 1, dtype=dtype) ** (-0.5 * decay)
    TB = student_t4(kb, (m, r), dtype=dtype) * unit
    TA = student_t4(ka, (r, n), dtype=dtype) * unit
    return TB * sq[None, :] / math.sqrt(m), sq[:, None] * TA / math.sqrt(n)


_GENERATORS = {
    "gaussian": gaussian_factors,
    "peft_init": peft_init_factors,
    "trained_like": trained_like_factors,
}


def make_factors(key, spec: FactorSpec, *, dtype=jnp.float32):
    """Draw (B, A) for a :class:`FactorSpec`; B is (m, r), A is (r, n)."""
    return _GENERATORS[spec.family](key, spec.m, spec.n, spec.r, dtype=dtype)


def nested_factors(key, family: str, m: int, n: int, ranks, *, dtype=jnp.float32):
    """Factors for several ranks from ONE draw at r_max = max(ranks): rank r gets the first r
    columns of B and rows of A. For every family this has exactly the distribution of a fresh
    rank-r draw (i.i.d. columns; the trained-like spectrum σ_k = k^{−γ} depends on k only),
    but the ranks share their leading columns (fits over r must treat one nested draw as one
    unit). One compiled generator per (family, m, n, r_max) instead of one per rank.
    Returns a list of (B, A) in the order of ``ranks``."""
    rmax = max(int(r) for r in ranks)
    B, A = make_factors(key, FactorSpec(family=family, m=m, n=n, r=rmax), dtype=dtype)
    return [(B[:, :int(r)], A[:int(r)]) for r in ranks]
