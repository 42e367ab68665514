"""Linear teacher–student experiment with exact excess risk (issue 3, DESIGN.md §2).

Teacher: W* = W0 + B*·A* ∈ ℝ^{m×n} of known rank r*; inputs x ~ N(0, Σ) with a non-isotropic
Σ = Q·diag(λ)·Qᵀ (λ geometric from 1 to 1/cond, Q Haar-orthogonal); labels y = W*·x + σ·ξ,
ξ ~ N(0, I_m). Student: W = W0 + s·B·A, W0 frozen, B (m×r) zero-initialised and A (r×n)
N(0, 1/n)-initialised (PEFT's convention), trained by full-batch Adam on the empirical risk
of N samples.

    L̂(W) = (1/N)·Σ_i ‖y_i − W·x_i‖² = tr(W·Σ̂·Wᵀ) − 2·⟨W, Ĉ⟩ + (1/N)·Σ_i ‖y_i‖²,
    Σ̂ = (1/N)·Σ_i x_i·x_iᵀ,  Ĉ = (1/N)·Σ_i y_i·x_iᵀ

— an identity, so full-batch training needs only (Σ̂, Ĉ) and its cost does not grow with N.
The population excess risk is exact, never estimated:

    L(W) − L(W*) = ‖(W − W*)·Σ^{1/2}‖_F² = tr((W − W*)·Σ·(W − W*)ᵀ).

Arms (how quantization enters training): "fp" (full precision); "ste_rtn", "ste_sr",
"ste_nf4" (B and A fake-quantized in the forward pass, straight-through gradient
x + stop_gradient(Q(x) − x)); "additive" (the paper's model: B + ε_B, A + ε_A with
ε ~ U(−Δ/2, Δ/2), Δ = 2^{1−b}·R, drawn afresh every step); and post-training quantization
("ptq": fp training, then round-to-nearest) which `run_grid` derives from the fp arm.

Ranks. A concrete rank r trains the unpadded m×r and r×n factors (what ``ts_grid.run_grid``
runs: one vmapped loop per arm and rank); a traced rank trains factors of width r_max under
a 0/1 rank mask (the one-compilation path ``ts_grid.run_loop`` uses as the grid's reference).
Masked columns/rows are exactly zero, contribute nothing, get zero gradient and leave the
absmax range unchanged, so both give the same result. Parameters are returned (and evaluated)
at width r_max either way.

Quantizers: ``quant.fake_quant.fake_quantize`` (kinds numbered in ``conventions.KINDS``);
PRNG: ``quantbounds._prng`` (the noise of the trained entries, hashed directly).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from quantbounds._checks import (
    check_bits,
    check_choice,
    check_int_range,
    check_positive,
    check_rank,
)
from quantbounds._prng import fold_in_raw, uniform_at  # noqa: F401  (uniform_at: public here)
from quantbounds.conventions import KIND_INDEX, KINDS, SCALES  # noqa: F401  (KIND_INDEX: importers)
from quantbounds.epsba.moments import eps_ba_covariance_moment
from quantbounds.quant.fake_quant import fake_quantize, static_kind

ARMS = ("fp", "ste_rtn", "ste_sr", "ste_nf4", "additive")
_ARM_KIND = {"ste_rtn": "rtn", "ste_sr": "sr", "ste_nf4": "nf4", "additive": "additive"}
# what the model is deployed with after training: the additive arm is deployed with a real
# round-to-nearest quantizer (the noise is only the paper's model of it)
_DEPLOY_KIND = {"ste_rtn": "rtn", "ste_sr": "sr", "ste_nf4": "nf4", "additive": "rtn"}


@dataclass(frozen=True, kw_only=True)
class TeacherStudentConfig:
    """The experiment's grid and problem; validates itself.

    m, n: weight shape; r_star: teacher rank; ranks/bits/Ns: the grid; seeds: number of
    seeds (data, initialisation and quantization noise); label_noise: σ; cond: condition
    number of Σ; teacher_norm: ‖B*·A*‖_F; steps, lr: Adam with cosine decay; scale: LoRA
    scale convention of the trained arms; conventions: conventions the fp/ptq arms are run
    under; lora_alpha: α of "alpha_r"/"rslora"; granularity: absmax per "tensor" (the paper's
    single range R) or per rank "channel" (uniform/additive; NF4 stays per tensor); key: the
    teacher's seed; teacher_per_seed: one teacher (W0, B*·A*, Σ) per seed (:func:`make_problems`),
    so that the seeds — the units every interval resamples — are independent draws of teacher,
    data, initialisation and noise; False: one teacher for every seed (:func:`make_problem`).
    """

    m: int = 16
    n: int = 24
    r_star: int = 2
    ranks: tuple = (1, 2, 4, 8, 16)
    bits: tuple = (2, 3, 4, 5, 6, 8)
    Ns: tuple = (64, 128, 256, 512, 1024)
    seeds: int = 8
    label_noise: float = 0.5
    cond: float = 10.0
    teacher_norm: float = 3.0
    steps: int = 400
    lr: float = 0.03
    arms: tuple = ARMS
    scale: str = "one"
    conventions: tuple = ("one", "alpha_r", "rslora")
    lora_alpha: float = 4.0
    granularity: str = "tensor"
    key: int = 0
    teacher_per_seed: bool = False

    def __post_init__(self):
        check_int_range(self.m, "m", 1)
        check_int_range(self.n, "n", 1)
        rmax = min(self.m, self.n)
        check_rank(self.r_star, "r_star", max_rank=rmax)
        if not self.ranks or not self.bits or not self.Ns:
            raise ValueError("ranks, bits and Ns must each be non-empty")
        for r in self.ranks:
            check_rank(r, "ranks entry", max_rank=rmax)
        for b in self.bits:
            check_bits(b, "bits entry")
        for N in self.Ns:
            check_int_range(N, "Ns entry (N)", 1)
        check_int_range(self.seeds, "seeds", 1)
        check_int_range(self.steps, "steps", 1)
        check_positive(self.label_noise, "label_noise", allow_zero=True)
        check_positive(self.lr, "lr")
        check_positive(self.teacher_norm, "teacher_norm")
        check_positive(self.lora_alpha, "lora_alpha")
        if not (self.cond >= 1.0 and math.isfinite(self.cond)):
            raise ValueError(f"cond must be finite and ≥ 1, got {self.cond!r}")
        for a in self.arms:
            check_choice(a, "arms entry", ARMS)
        check_choice(self.scale, "scale", SCALES)
        for c in self.conventions:
            check_choice(c, "conventions entry", SCALES)
        check_choice(self.granularity, "granularity", ("tensor", "channel"))
        if not isinstance(self.teacher_per_seed, bool):
            raise ValueError(f"teacher_per_seed must be a bool, got {self.teacher_per_seed!r}")

    @property
    def r_max(self) -> int:
        return max(self.ranks)


class Problem(NamedTuple):
    """W0, W* (m×n), Σ (n×n), Σ^{1/2} (n×n, symmetric), σ (label noise)."""

    W0: jnp.ndarray
    Wstar: jnp.ndarray
    Sigma: jnp.ndarray
    Sigma_half: jnp.ndarray
    label_noise: float


def _build_problem(key, cfg: TeacherStudentConfig, dtype):
    """(W0, D = B*·A*, Σ, Σ^{1/2}) of one teacher drawn from ``key`` (traceable)."""
    m, n, r_star, cond, norm = cfg.m, cfg.n, cfg.r_star, cfg.cond, cfg.teacher_norm
    k0, kb, ka, kq = jax.random.split(key, 4)
    W0 = jax.random.normal(k0, (m, n), dtype) / math.sqrt(n)
    D = jax.random.normal(kb, (m, r_star), dtype) @ jax.random.normal(ka, (r_star, n), dtype)
    D = D * (norm / jnp.linalg.norm(D))
    Q, Rq = jnp.linalg.qr(jax.random.normal(kq, (n, n), dtype))
    Q = Q * jnp.sign(jnp.diag(Rq))[None, :]  # Haar-distributed orthogonal (Mezzadri 2007)
    lam = cond ** (-jnp.arange(n, dtype=dtype) / max(n - 1, 1))
    return W0, D, (Q * lam) @ Q.T, (Q * jnp.sqrt(lam)) @ Q.T


def make_problem(cfg: TeacherStudentConfig, *, dtype=None) -> Problem:
    """The teacher of ``cfg`` (deterministic in ``cfg.key``): one teacher for every seed."""
    dtype = dtype or jnp.result_type(float)
    build = jax.jit(lambda key: _build_problem(key, cfg, dtype))  # one compilation
    W0, D, Sigma, Sigma_half = build(jax.random.PRNGKey(cfg.key))
    return Problem(W0, W0 + D, Sigma, Sigma_half, float(cfg.label_noise))


def make_problems(cfg: TeacherStudentConfig, *, dtype=None) -> Problem:
    """One teacher per seed: a Problem whose arrays have a leading axis of length cfg.seeds,
    teacher j drawn from fold_in(PRNGKey(cfg.key), j) (W0, B*·A* and Σ all redrawn; the
    distribution of each is that of :func:`make_problem`)."""
    dtype = dtype or jnp.result_type(float)
    base = jax.random.PRNGKey(cfg.key)

    @jax.jit
    def build(js):
        return jax.vmap(lambda j: _build_problem(jax.random.fold_in(base, j), cfg, dtype))(js)

    W0, D, Sigma, Sigma_half = build(jnp.arange(cfg.seeds))
    return Problem(W0, W0 + D, Sigma, Sigma_half, float(cfg.label_noise))


def is_stacked(problem: Problem) -> bool:
    """Whether ``problem`` holds one teacher per seed (:func:`make_problems`)."""
    return problem.W0.ndim == 3


def problem_at(problem: Problem, j) -> Problem:
    """Teacher ``j`` (may be traced) of a stacked problem; a single problem is returned as is."""
    if not is_stacked(problem):
        return problem
    return Problem(*(x[j] for x in problem[:4]), problem.label_noise)


def problems_for(cfg: TeacherStudentConfig, *, dtype=None) -> Problem:
    """:func:`make_problems` when cfg.teacher_per_seed, else :func:`make_problem`."""
    return (make_problems if cfg.teacher_per_seed else make_problem)(cfg, dtype=dtype)


def rank_r_floor(problem: Problem, ranks) -> np.ndarray:
    """The excess risk of the best rank-r adapter, min over rank(M) ≤ r of
    L(W0 + M) − L(W*) = ‖(M − D)·Σ^{1/2}‖_F² = Σ_{i>r} σ_i(D·Σ^{1/2})², D = W* − W0
    (Eckart–Young, M·Σ^{1/2} ranging over all rank-r matrices as M does, Σ^{1/2} invertible).

    It is 0 for r ≥ r* (the teacher is a rank-r* update) and the approximation floor, constant
    in N, for r < r*: L(θ̂) − L(θ*_r) = excess against the teacher − this floor. Returns an
    array (len(ranks),), or (seeds, len(ranks)) for a stacked problem; float64 numpy.
    """
    D = np.asarray(problem.Wstar, np.float64) - np.asarray(problem.W0, np.float64)
    half = np.asarray(problem.Sigma_half, np.float64)
    sv = np.linalg.svd(D @ half, compute_uv=False)  # (..., min(m, n)), descending
    tail = np.cumsum((sv**2)[..., ::-1], axis=-1)[..., ::-1]  # tail[i] = Σ_{k ≥ i} σ_k²
    tail = np.concatenate([tail, np.zeros(tail.shape[:-1] + (1,))], axis=-1)
    return np.stack([tail[..., min(int(r), sv.shape[-1])] for r in ranks], axis=-1)


def excess_risk(W, Wstar, Sigma):
    """Exact population excess risk tr((W − W*)·Σ·(W − W*)ᵀ) = ‖(W − W*)·Σ^{1/2}‖_F².

    W, Wstar: (m, n); Sigma: (n, n) covariance of x. Returns a scalar. Exact for any x with
    covariance Σ and zero mean (the squared loss is quadratic in W).
    """
    D = W - Wstar
    return jnp.sum(D * (D @ Sigma))


def sample_data(key, problem: Problem, N: int):
    """N samples: X (N×n) with rows x ~ N(0, Σ), Y (N×m) = X·W*ᵀ + σ·ξ."""
    kx, ky = jax.random.split(key)
    n = problem.Sigma.shape[0]
    dt = problem.Sigma.dtype
    X = jax.random.normal(kx, (N, n), dt) @ problem.Sigma_half
    Y = X @ problem.Wstar.T + problem.label_noise * jax.random.normal(
        ky, (N, problem.W0.shape[0]), dt
    )
    return X, Y


def sufficient_stats(X, Y, N):
    """(Σ̂, Ĉ, ‖y‖²-mean) of the first N rows (N may be traced; rows ≥ N are masked out)."""
    w = (jnp.arange(X.shape[0]) < N).astype(X.dtype) / N
    return (X.T * w) @ X, (Y.T * w) @ X, jnp.sum(w * jnp.sum(Y * Y, axis=1))


@jax.custom_vjp
def _quadratic_risk(W, Sxx, Cyx, yy):
    return jnp.sum(W * (W @ Sxx)) - 2.0 * jnp.sum(W * Cyx) + yy


def _quadratic_risk_fwd(W, Sxx, Cyx, yy):
    WS = W @ Sxx
    return jnp.sum(W * WS) - 2.0 * jnp.sum(W * Cyx) + yy, (WS, Cyx, Sxx, yy)


def _quadratic_risk_bwd(res, g):
    # ∇_W = 2·(W·Σ̂ − Ĉ) for symmetric Σ̂: one m×n×n product instead of autodiff's three;
    # the statistics are data (never differentiated), their cotangents are zero
    WS, Cyx, Sxx, yy = res
    return (2.0 * g * (WS - Cyx), jnp.zeros_like(Sxx), jnp.zeros_like(Cyx), jnp.zeros_like(yy))


_quadratic_risk.defvjp(_quadratic_risk_fwd, _quadratic_risk_bwd)


def empirical_risk(W, stats):
    """(1/N)·Σ‖y_i − W·x_i‖² from the sufficient statistics (see the module docstring).

    Its gradient in W is 2·(W·Σ̂ − Ĉ) (custom VJP; exact because Σ̂ is symmetric). W: (m, n).
    """
    Sxx, Cyx, yy = stats
    return _quadratic_risk(W, Sxx, Cyx, yy)


def _uniforms_for(x, kind, key, u):
    """The uniforms a kind needs: ``u`` if given, else jax.random.uniform(key, x.shape) when the
    kind (a name or index; a traced index may be any kind) is stochastic; None otherwise."""
    if u is not None or key is None:
        return u
    if static_kind(kind) in ("none", "rtn", "nf4"):
        return None
    return jax.random.uniform(key, x.shape, x.dtype)


def fake_quant(x, *, kind: str, bits=None, key=None, axis=None, u=None):
    """Dequantized Q(x) (same shape) by the project's quantizer for ``kind`` (a name of
    ``conventions.KINDS``): ``quant.fake_quant.fake_quantize``, where the kinds are defined.

    "rtn"/"sr": uniform b-bit "paper" grid Δ = 2^{1−b}·R, round to nearest / stochastic;
    "nf4": bitsandbytes NF4, one block = the whole tensor (bits ignored); "additive":
    x + Δ·(u − ½), the paper's noise model. R = max|x| over the tensor (axis=None) or per index
    along ``axis`` (uniform/additive only). bits may be traced; u (x's shape, in [0, 1))
    replaces the draw jax.random.uniform(key, x.shape) for "sr" and "additive".
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return fake_quantize(x, kind, bits=bits, axis=axis, u=_uniforms_for(x, kind, key, u))


def fake_quant_indexed(x, kind_idx, bits, key, axis=None, u=None):
    """fake_quant with the kind given as a (possibly traced) index into ``conventions.KINDS``
    (0 = none): one compiled training loop or evaluation serves every arm (R, Δ and x/Δ are
    shared, one select picks the kind)."""
    return fake_quantize(x, kind_idx, bits=bits, axis=axis, u=_uniforms_for(x, kind_idx, key, u))


def ste(x, q):
    """Straight-through estimator: value q, gradient of the identity in x."""
    return x + jax.lax.stop_gradient(q - x)


def scale_value(convention, r, alpha: float):
    """LoRA scale s for a (possibly traced) rank r: α/r, α/√r or 1 (quantbounds.conventions).

    convention: a name in quantbounds.conventions.SCALES or its (possibly traced) index there.
    """
    idx = SCALES.index(convention) if isinstance(convention, str) else convention
    vals = jnp.stack([alpha / r, alpha / jnp.sqrt(r), jnp.ones_like(r)])  # order of SCALES
    return vals[idx]


class LoRAStudent(nn.Module):
    """W = W0 + s·Q(B⊙mask)·Q(A⊙mask) with B: (m, r_max) zeros, A: (r_max, n) ~ N(0, 1/n)."""

    m: int
    n: int
    r_max: int

    @nn.compact
    def __call__(self, W0, mask, scale, quant: Callable | None = None):
        B = self.param("B", nn.initializers.zeros, (self.m, self.r_max), W0.dtype)
        A = self.param(
            "A",
            nn.initializers.normal(stddev=1.0 / math.sqrt(self.n)),
            (self.r_max, self.n),
            W0.dtype,
        )
        B = B * mask[None, :]
        A = A * mask[:, None]
        if quant is not None:
            B = quant(B, 0) * mask[None, :]
            A = quant(A, 1) * mask[:, None]
        return W0 + scale * (B @ A)


def _quant_fn(kind, bits, key, granularity, *, straight_through=True):
    """A closure Q(x, which) for LoRAStudent; which = 0 for B, 1 for A. ``kind`` is a name,
    None (no quantization) or a traced index into ``conventions.KINDS``."""
    if kind is None:
        return None
    if key is None:
        key = jax.random.PRNGKey(0)  # unused by the deterministic kinds

    def q(x, which):
        # per "channel" = one range per rank component: columns of B, rows of A
        axis = None if granularity == "tensor" else (1 if which == 0 else 0)
        b = jnp.asarray(4 if bits is None else bits, x.dtype)  # NF4 ignores bits
        out = fake_quant_indexed(x, kind, b, jax.random.fold_in(key, which), axis)
        return ste(x, out) if straight_through else out

    return q


def _static_int(r):
    """r as a Python int when it is concrete, else None (traced)."""
    try:
        return int(r)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return None


class TrainSetup(NamedTuple):
    """What training needs besides the factors' updates (:func:`train_setup`): init {"B", "A"}
    (padded to r_max), s (LoRA scale), keys (steps, 2, 2) uint32 (step i: B's and A's noise
    keys), Pt = (W0·Σ̂ − Ĉ)ᵀ (n×m), Sxx = Σ̂."""

    init: dict
    s: jnp.ndarray
    keys: jnp.ndarray
    Pt: jnp.ndarray
    Sxx: jnp.ndarray


def train_setup(
    problem: Problem, stats, r, init_key, noise_key, *, cfg: TeacherStudentConfig, convention=None
) -> TrainSetup:
    """The per-configuration inputs of :func:`train_core` (every argument but cfg may be traced;
    no dependence on the arm, so one vmapped call serves a whole grid). Keys of step i:
    fold_in(fold_in(noise_key, i), w), w = 0 for B and 1 for A."""
    dt = problem.W0.dtype
    rm = cfg.r_max
    s = scale_value(
        cfg.scale if convention is None else convention, jnp.asarray(r, dt), cfg.lora_alpha
    )
    init = LoRAStudent(cfg.m, cfg.n, rm).init(init_key, problem.W0, jnp.ones(rm, dt), s)["params"]
    k_i = fold_in_raw(noise_key, jnp.arange(cfg.steps, dtype=jnp.uint32))  # (steps, 2)
    keys = fold_in_raw(k_i[:, None, :], jnp.arange(2, dtype=jnp.uint32)[None, :])  # (steps, 2, 2)
    Sxx, Cyx, _ = stats
    return TrainSetup(init, s, keys, (problem.W0 @ Sxx - Cyx).T, Sxx)


def train_student(
    problem: Problem,
    stats,
    r,
    bits,
    init_key,
    noise_key,
    *,
    arm,
    cfg: TeacherStudentConfig,
    convention=None,
):
    """Train one student; every argument except ``cfg`` may be traced.

    arm: a name in ARMS, or a traced index into ``conventions.KINDS`` (0 = full precision);
    convention: a name in SCALES or a traced index into it (None: cfg.scale). A concrete rank r
    trains the unpadded m×r and r×n factors; a traced r trains the r_max-padded ones under a
    0/1 mask
    (exact: masked entries are zero and get zero gradient). Both give the same result.

    Returns (params, s): flax params {"B", "A"} (padded to r_max: B's extra columns zero, A's
    extra rows at their initial values, as masked training leaves them) and the LoRA scale s.
    Full-batch Adam (optax, cosine-decayed lr) for cfg.steps steps on L̂ (:func:`train_core`).
    """
    setup = train_setup(problem, stats, r, init_key, noise_key, cfg=cfg, convention=convention)
    return train_core(setup, r, bits, arm=arm, cfg=cfg), setup.s


def _training_quantizer(kind, bits, dtype, *, cfg: TeacherStudentConfig, width: int):
    """Q(x, which, key) of :func:`train_core` for Bᵀ (which = 0) and A (which = 1), ``width``
    rows trained: kind None (identity), a name or a traced index of ``conventions.KINDS``.
    The uniforms are those of jax.random.uniform(key, padded shape) at the trained entries'
    flat indices in the padded (m, r_max) and (r_max, n) draws (:func:`uniform_at`)."""
    rm = cfg.r_max
    draws = kind is not None and (not isinstance(kind, str) or kind in ("sr", "additive"))
    b = jnp.asarray(4 if bits is None else bits, dtype)  # NF4 ignores bits
    idx_B = (jnp.arange(width)[:, None] + jnp.arange(cfg.m)[None, :] * rm).astype(jnp.uint32)
    idx_A = jnp.arange(width * cfg.n, dtype=jnp.uint32).reshape(width, cfg.n)
    axis = None if cfg.granularity == "tensor" else 0  # per channel: rows of Bᵀ and of A

    def q(x, which, key):
        if kind is None:
            return x
        u = uniform_at(key, idx_B if which == 0 else idx_A, dtype) if draws else None
        return fake_quantize(x, kind, bits=b, axis=axis, u=u)

    return q


def train_core(setup: TrainSetup, r, bits, *, arm, cfg: TeacherStudentConfig):
    """Full-batch Adam on L̂ from ``setup`` (see :func:`train_student`); returns {"B", "A"}.

    The gradient is written out (one pass instead of autodiff's):

        ∇_W L̂ = 2·(W·Σ̂ − Ĉ) = 2·(P + s·Q(B)·Q(A)·Σ̂),  P = W0·Σ̂ − Ĉ (fixed),
        ∇_B = s·∇_W·Q(A)ᵀ,  ∇_A = s·Q(B)ᵀ·∇_W   (straight-through Q).

    B is held transposed (Bᵀ, r×m) so that every product is a plain or right-transposed matrix
    product, which XLA's CPU backend runs as one fast batched kernel under vmap (a contraction
    over both operands' leading axis, like Q(B)ᵀ·∇_W, is several times slower):

        (∇_W)ᵀ = 2·(Pᵀ + s·(Σ̂·Q(A)ᵀ)·Q(Bᵀ)),  ∇_{Bᵀ} = s·Q(A)·(∇_W)ᵀ,  ∇_A = s·Q(Bᵀ)·((∇_W)ᵀ)ᵀ
    (Σ̂ symmetric). Q acts elementwise or per tensor, or per rank component (granularity
    "channel": columns of B = rows of Bᵀ), so Q(Bᵀ) = Q(B)ᵀ.

    Quantization noise of step i: the uniforms of jax.random.uniform(setup.keys[i, w], padded
    shape) (w = 0 for B, 1 for A), restricted to the trained entries (:func:`uniform_at`).
    """
    init, s, keys, Pt, Sxx = setup
    rm = cfg.r_max
    rs = _static_int(r)
    rr = rm if rs is None else rs  # trained width
    mask = None if rs is not None else (jnp.arange(rm) < r).astype(Pt.dtype)
    kind = _ARM_KIND.get(arm) if isinstance(arm, str) else arm
    q = _training_quantizer(kind, bits, Pt.dtype, cfg=cfg, width=rr)
    opt = optax.adam(optax.cosine_decay_schedule(cfg.lr, cfg.steps))
    mc = None if mask is None else mask[:, None]  # rows of Bᵀ and A

    def grads(p, keys):
        Bt, A = p["Bt"], p["A"]
        if mc is not None:
            Bt, A = Bt * mc, A * mc
        QB, QA = q(Bt, 0, keys[0]), q(A, 1, keys[1])
        if mc is not None:
            QB, QA = QB * mc, QA * mc
        Gt = 2.0 * (Pt + s * ((Sxx @ QA.T) @ QB))  # (∇_W L̂)ᵀ, n×m
        gB, gA = s * (QA @ Gt), s * (QB @ Gt.T)
        if mc is not None:
            gB, gA = gB * mc, gA * mc
        return {"A": gA, "Bt": gB}

    def step(carry, keys):
        p, st = carry
        upd, st = opt.update(grads(p, keys), st, p)
        return (optax.apply_updates(p, upd), st), None

    p0 = {"A": init["A"][:rr], "Bt": init["B"][:, :rr].T}
    (p, _), _ = jax.lax.scan(step, (p0, opt.init(p0)), keys)
    p = {"A": p["A"], "B": p["Bt"].T}
    if rs is None:
        return p
    return {"A": init["A"].at[:rr].set(p["A"]), "B": init["B"].at[:, :rr].set(p["B"])}


def student_weight(
    problem: Problem, params, r, s, *, kind=None, bits=None, key=None, granularity="tensor"
):
    """W0 + s·Q(B)·Q(A) for trained params (kind=None: the latent full-precision weight)."""
    mask = (jnp.arange(params["B"].shape[1]) < r).astype(problem.W0.dtype)
    m, rm = params["B"].shape
    model = LoRAStudent(m, params["A"].shape[1], rm)
    q = _quant_fn(kind, bits, key, granularity, straight_through=False)
    return model.apply({"params": params}, problem.W0, mask, s, q)


def additive_prediction(problem: Problem, params, r, s, bits):
    """The additive model's E‖s·ε_BA·Σ^{1/2}‖_F² for the trained factors (per-tensor ranges):
    ``epsba.moments.eps_ba_covariance_moment`` with σ² = R²·4^{−b}/3 (= Δ²/12,
    ``quant.noise.uniform_noise_variance``), R = max|A| and max|B| over the first r components.
    """
    dt = problem.W0.dtype
    mask = (jnp.arange(params["B"].shape[1]) < r).astype(dt)
    B = params["B"] * mask[None, :]
    A = params["A"] * mask[:, None]
    # σ² written as R²·4^{−b}/3, not as uniform_noise_variance's Δ·Δ/12: under XLA the two
    # differ in the last bit for some R (a division by a constant becomes a multiplication by
    # its rounded reciprocal), and the committed audit was computed with this form
    var_A, var_B = (
        jnp.max(jnp.abs(X)) ** 2 * 4.0 ** (-jnp.asarray(bits, dt)) / 3.0 for X in (A, B)
    )
    return eps_ba_covariance_moment(B, A, problem.Sigma, var_A, var_B, scale=s, rank=r)
