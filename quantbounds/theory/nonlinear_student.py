"""Nonlinear (one-hidden-layer) teacher–student experiment: what changes off the linear case.

Teacher: f*(x) = W2·φ(W1*·x), W1* = W1⁰ + D (h×n, D of rank r*, ‖D‖_F = teacher_norm), inputs
x ~ N(0, Σ) (Σ = Q·diag(λ)·Qᵀ, λ geometric from 1 to 1/cond, Q Haar, as in
quantbounds.theory.teacher_student), labels y = f*(x) + σ·ξ, ξ ~ N(0, I_m). W1⁰ ~ N(0, gain²/n)
entrywise
(gain sets how far into φ's saturation the pre-activations go), W2 ~ N(0, 1/h), both frozen.
Student: f(x) = W2·φ(W1·x) with W1 = W1⁰ + Q(B)·Q(A) (LoRA on the hidden layer, scale s = 1, the
seed paper's convention; B (h×r) zero-initialised, A (r×n) ~ N(0, 1/n)); W1⁰ and W2 are shared
with the teacher, so the teacher is representable iff r ≥ r*. φ = erf (default) or tanh.

Excess risk. The label noise is independent of x with zero mean, so the Bayes risk is m·σ²
exactly and L(f) − L(f*) = E_x‖f(x) − f*(x)‖². Off the linear case this is not a quadratic form
in the weights, but for φ = erf it is still exact (Williams 1997, "Computing with infinite
networks"): for x ~ N(0, Σ)

    K(u, v) = E[erf(uᵀx)·erf(vᵀx)] = (2/π)·arcsin(2uᵀΣv / √((1 + 2uᵀΣu)·(1 + 2vᵀΣv)))
    E‖W2a·φ(W1a·x) − W2b·φ(W1b·x)‖² = ⟨G_aa, K_aa⟩ − 2·⟨G_ab, K_ab⟩ + ⟨G_bb, K_bb⟩,

G_ab = W2aᵀ·W2b, K_ab[i, j] = K(W1a[i], W1b[j]). For any φ it is estimated on a fresh test set
of n_test points: the mean of d_i = ‖f(x_i) − f*(x_i)‖² (label noise integrated out exactly),
standard error sd(d)/√n_test (CLT; d is bounded for bounded φ), or from labels as
mean ‖y_i − f(x_i)‖² − m·σ² with SE sd(ℓ)/√n_test (larger by 4σ²·E d + 2mσ⁴ in variance).

Arms: "fp"; "ste_rtn", "ste_sr" (B and A fake-quantized by ``quant.fake_quant.fake_quantize``
in the forward pass, uniform "paper" grid, per-tensor absmax, straight-through gradient);
"additive" (the paper's noise model: U(−Δ/2, Δ/2),
Δ = 2^{1−b}·R, drawn afresh every step). Deployed with RTN (ste_rtn, additive), SR (ste_sr) or
not at all (fp); post-training RTN at every b of cfg.bits is evaluated for every arm.
Training: full-batch Adam (cosine-decayed lr) on (1/N)·Σ‖y_i − f(x_i)‖² (+ the optional ridge
λ·(‖B‖² + ‖A‖²)); the fp arm is then finished by L-BFGS (optax.lbfgs) until the gradient norm is
≤ cfg.grad_tol or cfg.lbfgs_steps iterations have run (cfg.lbfgs_steps = 0: Adam only, the
early-stopped reading). The quantized arms keep Adam's fixed budget: their straight-through
objective is piecewise constant in (B, A) (RTN) or random (SR, additive), so it has no stationary
point to converge to; their straight-through gradient norm is still recorded. At small N the
training loss of the fp arm need not attain its infimum: L-BFGS then drives ‖B·A‖ up (erf units
saturating into steps) while the loss and the excess level off; such fits come back with
converged = 0 and a large weight_norm (see :func:`fit_diagnostics`).

Precision. The grid (quantbounds.theory.nl_grid) runs in cfg.dtype, float64 by default, with x64
scoped to its call: the quantized arms are chaotic in the rounding of RTN decisions, and in float32
their fits moved with the CPU's vector ISA. The exact excess aa − 2ab + bb cancels (at 8-bit PTQ
the result is ~10⁻⁶ of its terms), so :func:`function_distance_erf` always computes it in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

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
from quantbounds.conventions import KIND_INDEX
from quantbounds.quant.fake_quant import fake_quantize
from quantbounds.theory.teacher_student import ste

ARMS = ("fp", "ste_rtn", "ste_sr", "additive")
ACTIVATIONS = ("erf", "tanh")
DTYPES = ("float64", "float32")
FINISHED_ARMS = ("fp",)  # the arms whose Adam phase is finished by L-BFGS (cfg.lbfgs_steps > 0)
# quantizer in the forward pass and at deployment, as indices into conventions.KINDS (the one
# numbering): the additive arm is deployed with a real round-to-nearest quantizer
_TRAIN_KIND = {
    "fp": KIND_INDEX["none"],
    "ste_rtn": KIND_INDEX["rtn"],
    "ste_sr": KIND_INDEX["sr"],
    "additive": KIND_INDEX["additive"],
}
_DEPLOY_KIND = {
    "fp": KIND_INDEX["none"],
    "ste_rtn": KIND_INDEX["rtn"],
    "ste_sr": KIND_INDEX["sr"],
    "additive": KIND_INDEX["rtn"],
}
KINDS_USED = ("none", "rtn", "sr", "additive")  # the kinds a traced index may take here


@dataclass(frozen=True, kw_only=True)
class NonlinearConfig:
    """Grid and problem of the nonlinear experiment; validates itself.

    n, h, m: input, hidden and output widths; r_star: rank of the teacher's change D; ranks,
    bits, Ns: the grid (bits: post-training RTN bit-widths; train_bits: bit-widths the quantized
    arms are trained at, None = bits); seeds: replicates (data, init, noise); label_noise: σ;
    cond: condition number of Σ; gain: std·√n of W1⁰'s entries; teacher_norm: ‖D‖_F; steps, lr:
    Adam with cosine decay; lbfgs_steps, grad_tol: the fp arm's L-BFGS finish (at most lbfgs_steps
    iterations, stopped when ‖∇‖₂ ≤ grad_tol; 0 steps: Adam only); weight_decay: λ of the ridge
    λ·(‖B‖² + ‖A‖²) added to every arm's training objective (0: plain least squares); arms: subset
    of ARMS; activation: "erf" (exact excess) or "tanh" (Monte Carlo excess); n_test: size of the
    fresh test set; teacher_per_seed: each seed draws its own teacher (the seeds' spread, hence the
    CIs, include teacher-to-teacher variation) or all share one; dtype: "float64" (default) or
    "float32", the precision the grid runs in (x64 scoped to the grid's call); key: the
    experiment's seed.
    """

    n: int = 10
    h: int = 16
    m: int = 4
    r_star: int = 2
    ranks: tuple = (1, 2, 4, 8)
    bits: tuple = (2, 3, 4, 5, 6, 8)
    train_bits: tuple | None = (2, 4, 6)
    Ns: tuple = (128, 256, 512, 1024)
    seeds: int = 8
    label_noise: float = 0.5
    cond: float = 10.0
    gain: float = 1.5
    teacher_norm: float = 4.0
    steps: int = 300
    lr: float = 0.03
    lbfgs_steps: int = 1000
    grad_tol: float = 1e-8
    weight_decay: float = 0.0
    arms: tuple = ("fp", "ste_rtn", "additive")
    activation: str = "erf"
    n_test: int = 4096
    teacher_per_seed: bool = True
    dtype: str = "float64"
    key: int = 0

    def __post_init__(self):
        for name in ("n", "h", "m"):
            check_int_range(getattr(self, name), name, 1)
        rmax = min(self.h, self.n)
        check_rank(self.r_star, "r_star", max_rank=rmax)
        if not self.ranks or not self.bits or not self.Ns or not self.arms:
            raise ValueError("ranks, bits, Ns and arms must each be non-empty")
        for r in self.ranks:
            check_rank(r, "ranks entry", max_rank=rmax)
        for b in self.bits + tuple(self.train_bits or ()):
            check_bits(b, "bits/train_bits entry")
        if self.train_bits is not None and not self.train_bits:
            raise ValueError("train_bits must be None or non-empty")
        for N in self.Ns:
            check_int_range(N, "Ns entry (N)", 1)
        check_int_range(self.seeds, "seeds", 1)
        check_int_range(self.steps, "steps", 1)
        check_int_range(self.lbfgs_steps, "lbfgs_steps", 0)
        check_positive(self.grad_tol, "grad_tol")
        check_positive(self.weight_decay, "weight_decay", allow_zero=True)
        check_choice(self.dtype, "dtype", DTYPES)
        check_int_range(self.n_test, "n_test", 2)
        check_positive(self.label_noise, "label_noise", allow_zero=True)
        for name in ("lr", "gain", "teacher_norm"):
            check_positive(getattr(self, name), name)
        if not (self.cond >= 1.0 and math.isfinite(self.cond)):
            raise ValueError(f"cond must be finite and ≥ 1, got {self.cond!r}")
        for a in self.arms:
            check_choice(a, "arms entry", ARMS)
        check_choice(self.activation, "activation", ACTIVATIONS)
        if not isinstance(self.teacher_per_seed, bool):
            raise TypeError(
                f"teacher_per_seed must be True or False, got {self.teacher_per_seed!r}"
            )

    @property
    def r_max(self) -> int:
        return max(self.ranks)

    @property
    def trained_bits(self) -> tuple:
        return self.bits if self.train_bits is None else self.train_bits


def _threefry_serial():
    """Context: draw with the non-partitionable threefry (same generator and keys, a different
    mapping of counters to array positions). XLA-CPU compile time of the partitionable default
    grows with the array shape: measured here, uniform of shape (6, 1024, 10) compiled in 13 s
    against 0.9 s, (4096, 10) in 4.6 s against 0.4 s (jax 0.10, 2-core CPU). Nothing here is
    sharded, so partitionability buys nothing."""
    return jax.threefry_partitionable(False)


class NonlinearProblem(NamedTuple):
    """W1_0, W1_star (h×n), W2 (m×h), Σ and Σ^{1/2} (n×n), σ."""

    W1_0: jnp.ndarray
    W1_star: jnp.ndarray
    W2: jnp.ndarray
    Sigma: jnp.ndarray
    Sigma_half: jnp.ndarray
    label_noise: float


def make_nonlinear_problem(cfg: NonlinearConfig, *, dtype=None, seeds=None) -> NonlinearProblem:
    """The teacher of ``cfg``, drawn from PRNGKey(cfg.key). With ``seeds`` (a number S): S teachers,
    W1_0, W1_star, Σ, Σ^{1/2} stacked on a leading axis, teacher j's drawn from
    fold_in(PRNGKey(cfg.key), j) when cfg.teacher_per_seed (else S copies of the one teacher's);
    W2, the frozen head, is teacher 0's for all (the teachers differ in the adapted layer and
    in Σ)."""
    dt = dtype or jnp.result_type(float)
    n, h, m = cfg.n, cfg.h, cfg.m

    sizes = (h * n, m * h, h * cfg.r_star, cfg.r_star * n, n * n)

    def draw(key):
        # one draw sliced five ways: each normal draw site costs ~0.5 s of XLA compile time
        Z = jnp.split(jax.random.normal(key, (sum(sizes),), dt), np.cumsum(sizes)[:-1])
        W1 = cfg.gain * Z[0].reshape(h, n) / math.sqrt(n)
        W2 = Z[1].reshape(m, h) / math.sqrt(h)
        D = Z[2].reshape(h, cfg.r_star) @ Z[3].reshape(cfg.r_star, n)
        D = D * (cfg.teacher_norm / jnp.linalg.norm(D))
        Q, Rq = jnp.linalg.qr(Z[4].reshape(n, n))
        Q = Q * jnp.sign(jnp.diag(Rq))[None, :]  # Haar-distributed orthogonal (Mezzadri 2007)
        lam = cfg.cond ** (-jnp.arange(n, dtype=dt) / max(n - 1, 1))
        return W1, W1 + D, W2, (Q * lam) @ Q.T, (Q * jnp.sqrt(lam)) @ Q.T

    build = jax.jit(jax.vmap(draw))  # one compilation instead of one per eager operation
    key = jax.random.PRNGKey(cfg.key)
    with _threefry_serial():
        if seeds is None:
            return NonlinearProblem(*(x[0] for x in build(key[None])), float(cfg.label_noise))
        keys = (
            jax.vmap(lambda j: jax.random.fold_in(key, j))(jnp.arange(seeds))
            if cfg.teacher_per_seed
            else jnp.broadcast_to(key, (seeds,) + key.shape)
        )
        W1, W1s, W2, S, Sh = build(keys)
        return NonlinearProblem(W1, W1s, W2[0], S, Sh, float(cfg.label_noise))


_PER_TEACHER = ("W1_0", "W1_star", "Sigma", "Sigma_half")  # W2, the frozen head, is shared


def teacher_of(problems: NonlinearProblem, j) -> NonlinearProblem:
    """Teacher j (may be traced) of a stack from make_nonlinear_problem(…, seeds=S)."""
    return problems._replace(**{f: getattr(problems, f)[j] for f in _PER_TEACHER})


def _phi(activation: str):
    check_choice(activation, "activation", ACTIVATIONS)
    return jax.scipy.special.erf if activation == "erf" else jnp.tanh


def forward(W1, W2, X, *, activation: str = "erf"):
    """f(X) = φ(X·W1ᵀ)·W2ᵀ: X (N, n), W1 (h, n), W2 (m, h) → (N, m)."""
    return _phi(activation)(X @ W1.T) @ W2.T


def sample_nonlinear(key, problem: NonlinearProblem, N: int, *, activation: str = "erf"):
    """N samples: X (N×n), rows x ~ N(0, Σ); Y (N×m) = f*(X) + σ·ξ."""
    check_int_range(N, "N", 1)
    n, m, dt = problem.Sigma.shape[0], problem.W2.shape[0], problem.Sigma.dtype
    with _threefry_serial():
        Z = jax.random.normal(key, (N, n + m), dt)  # x's and ξ's standard normals, one draw
    X = Z[:, :n] @ problem.Sigma_half
    Y = forward(problem.W1_star, problem.W2, X, activation=activation)
    return X, Y + problem.label_noise * Z[:, n:]


def erf_kernel(U, V, Sigma):
    """K[i, j] = E[erf(U_i·x)·erf(V_j·x)], x ~ N(0, Σ) (arcsine kernel, module docstring).

    U: (p, n), V: (q, n), Sigma: (n, n) → (p, q). Exact.
    """
    US, VS = U @ Sigma, V @ Sigma
    cross = US @ V.T
    du = 1.0 + 2.0 * jnp.sum(US * U, axis=1)
    dv = 1.0 + 2.0 * jnp.sum(VS * V, axis=1)
    c = 2.0 * cross / jnp.sqrt(du[:, None] * dv[None, :])
    return (2.0 / math.pi) * jnp.arcsin(jnp.clip(c, -1.0, 1.0))


def function_distance_erf(W1a, W2a, W1b, W2b, Sigma):
    """Exact E‖W2a·erf(W1a·x) − W2b·erf(W1b·x)‖², x ~ N(0, Σ) (module docstring). Scalar, in the
    inputs' dtype, computed in float64 whatever that dtype (x64 scoped to this call, also under a
    float32 jit).

    aa − 2ab + bb cancels: each term is O(‖W2‖²) while the distance between a student and its
    8-bit quantization is ~10⁻⁶ of that, so float32 (relative rounding 6·10⁻⁸ per term, summed over
    h² kernel entries) was 3.7 % off at b = 8; float64 leaves ~10⁻¹⁰ relative there
    (tests/theory/test_nl_precision.py checks it against mpmath and a float64 Monte Carlo).
    """
    dt = jnp.result_type(W1a, W2a, W1b, W2b, Sigma)
    with jax.enable_x64(True):
        W1a, W2a, W1b, W2b, Sigma = (
            jnp.asarray(x, jnp.float64) for x in (W1a, W2a, W1b, W2b, Sigma)
        )
        aa = jnp.sum((W2a.T @ W2a) * erf_kernel(W1a, W1a, Sigma))
        ab = jnp.sum((W2a.T @ W2b) * erf_kernel(W1a, W1b, Sigma))
        bb = jnp.sum((W2b.T @ W2b) * erf_kernel(W1b, W1b, Sigma))
        return (aa - 2.0 * ab + bb).astype(dt)


def mean_and_se(values):
    """(mean, standard error sd/√n with ddof = 1) of a 1-D sample (the CLT estimate of its SE)."""
    n = values.shape[0]
    return jnp.mean(values), jnp.std(values, ddof=1) / math.sqrt(n)


def function_distance_mc(W1a, W2a, W1b, W2b, X, *, activation: str = "erf"):
    """(estimate, SE) of E‖f_a(x) − f_b(x)‖² on the sample X (n_test, n): mean and sd/√n_test."""
    d = forward(W1a, W2a, X, activation=activation) - forward(W1b, W2b, X, activation=activation)
    return mean_and_se(jnp.sum(d * d, axis=1))


def excess_risk_from_labels(W1, problem: NonlinearProblem, X, Y, *, activation: str = "erf"):
    """(estimate, SE) of L(f) − L(f*) as test risk − Bayes risk: mean ‖y_i − f(x_i)‖² − m·σ²."""
    r = Y - forward(W1, problem.W2, X, activation=activation)
    est, se = mean_and_se(jnp.sum(r * r, axis=1))
    return est - Y.shape[1] * problem.label_noise**2, se


def quantize_factor(x, kind, bits, u):
    """Q(x) for a (possibly traced) kind index into ``conventions.KINDS`` among KINDS_USED:
    0 none, 1 RTN, 2 SR, 4 additive U(−Δ/2, Δ/2) — ``quant.fake_quant.fake_quantize``.

    Per-tensor absmax R = max|x|, the "paper" grid Δ = 2^{1−b}·R, levels k·Δ with
    k ∈ {−2^{b−1}, …, 2^{b−1} − 1}: RTN clip(round(x/Δ))·Δ (ties to even), SR clip(⌊x/Δ + u⌋)·Δ,
    additive x + Δ·(u − ½); R = 0 gives 0. A traced kind shares R, Δ and x/Δ and one select
    picks the arm: under vmap every branch is computed, and a few small shared ops compile and
    run far faster than a switch over whole quantizers (XLA compile time dominated this
    experiment's cost).
    """
    return fake_quantize(x, kind, bits=bits, u=u, kinds=KINDS_USED)


class HiddenLoRA(nn.Module):
    """W1 = W1⁰ + Q(B⊙mask)·Q(A⊙mask); B: (h, r_max) zeros, A: (r_max, n) ~ N(0, 1/n)."""

    h: int
    n: int
    r_max: int

    @nn.compact
    def __call__(self, W1_0, mask, quant=None):
        B = self.param("B", nn.initializers.zeros, (self.h, self.r_max), W1_0.dtype)
        A = self.param(
            "A",
            nn.initializers.normal(stddev=1.0 / math.sqrt(self.n)),
            (self.r_max, self.n),
            W1_0.dtype,
        )
        B, A = B * mask[None, :], A * mask[:, None]
        if quant is not None:  # re-mask: additive noise would touch the padded entries
            B, A = quant(B, 0) * mask[None, :], quant(A, 1) * mask[:, None]
        return W1_0 + B @ A


def init_params(key, h: int, n: int, r_max: int, *, dtype=None):
    """HiddenLoRA's parameters drawn as its initializers do (B = 0, A ~ N(0, 1/n)), without
    flax's init pass, whose key handling cost ~1–2 s of XLA compile time per training loop."""
    dt = dtype or jnp.result_type(float)
    with _threefry_serial():
        A = jax.random.normal(key, (r_max, n), dt) / math.sqrt(n)
    return {"B": jnp.zeros((h, r_max), dt), "A": A}


def _mask(r, r_max, dt):
    return (jnp.arange(r_max) < r).astype(dt)


def draw_uniforms(key, h: int, r_max: int, n: int, *, shape=(), dtype=None):
    """U[0, 1) noise for B (h×r_max) and A (r_max×n), flattened into one trailing axis of
    h·r_max + r_max·n (B's entries first); ``shape`` prepends axes (e.g. (steps,))."""
    with _threefry_serial():
        return jax.random.uniform(
            key, tuple(shape) + (h * r_max + r_max * n,), dtype or jnp.result_type(float)
        )


def hidden_weight(
    problem: NonlinearProblem, params, r, *, kind=0, bits=16, u=None, straight_through=False
):
    """W1⁰ + Q(B)·Q(A) for params {"B", "A"} (padded to r_max, masked to rank r); kind: an index
    into ``conventions.KINDS`` as in :func:`quantize_factor` (0: the latent full-precision weight);
    u: the uniforms of SR/additive
    noise from :func:`draw_uniforms` (None: ½, which only kinds 0 and 1 may use)."""
    h, rm = params["B"].shape
    n = params["A"].shape[1]
    dt = problem.W1_0.dtype
    u = jnp.full((h * rm + rm * n,), 0.5, dt) if u is None else u
    us = (u[: h * rm].reshape(h, rm), u[h * rm :].reshape(rm, n))

    def quant(x, which):
        q = quantize_factor(x, kind, jnp.asarray(bits, x.dtype), us[which])
        return ste(x, q) if straight_through else q

    return HiddenLoRA(h, n, rm).apply({"params": params}, problem.W1_0, _mask(r, rm, dt), quant)


def training_loss(
    problem: NonlinearProblem,
    params,
    X,
    Y,
    r,
    *,
    kind=0,
    bits=16,
    u=None,
    weights=None,
    cfg: NonlinearConfig,
):
    """The training objective (1/N)·Σ‖y_i − f(x_i)‖² + λ·(‖B‖² + ‖A‖²) (λ = cfg.weight_decay, on the
    rank-r part) with B, A quantized by ``kind`` in the forward pass (straight-through gradient;
    kind 0: the latent fp objective), u as in :func:`hidden_weight`; ``weights`` (per row of X)
    replace the mean's 1/N (zero-padded rows get weight 0)."""
    W1 = hidden_weight(problem, params, r, kind=kind, bits=bits, u=u, straight_through=True)
    res = Y - forward(W1, problem.W2, X, activation=cfg.activation)
    sq = jnp.sum(res * res, axis=1)
    loss = jnp.mean(sq) if weights is None else jnp.sum(weights * sq)
    if cfg.weight_decay:
        mask = _mask(r, cfg.r_max, W1.dtype)
        B, A = params["B"] * mask[None, :], params["A"] * mask[:, None]
        loss = loss + cfg.weight_decay * (jnp.sum(B * B) + jnp.sum(A * A))
    return loss


def train_nonlinear(
    problem: NonlinearProblem, X, Y, r, kind, bits, init_key, noise_key, *, cfg: NonlinearConfig
):
    """Adam phase of one student on (X, Y) (N = X.shape[0], static); r, kind, bits, keys may be
    traced. (The fp arm's L-BFGS finish is :func:`finish_nonlinear`; the grid applies it.)

    Full-batch Adam, cfg.steps steps, lr cosine-decayed from cfg.lr, on :func:`training_loss` with
    B, A quantized by ``kind`` in the forward pass (straight-through gradient), the SR/additive
    noise drawn afresh every step: for block j of ``_block(steps)`` consecutive steps, in one call
    from fold_in(noise_key, j) (a generator inside the step loop tripled XLA's compile time; one
    draw for all steps would hold rows × steps × (h + n)·r_max numbers under the grid's vmap).
    """
    dt = problem.W1_0.dtype
    params = init_params(init_key, cfg.h, cfg.n, cfg.r_max, dtype=dt)
    opt = optax.adam(optax.cosine_decay_schedule(cfg.lr, cfg.steps))
    block = _block(cfg.steps)

    def loss(p, u):
        return training_loss(problem, p, X, Y, r, kind=kind, bits=bits, u=u, cfg=cfg)

    def step(carry, u):
        p, st = carry
        upd, st = opt.update(jax.grad(loss)(p, u), st, p)
        return (optax.apply_updates(p, upd), st), None

    def run_block(carry, j):
        U = draw_uniforms(
            jax.random.fold_in(noise_key, j), cfg.h, cfg.r_max, cfg.n, shape=(block,), dtype=dt
        )
        return jax.lax.scan(step, carry, U)[0], None

    (params, _), _ = jax.lax.scan(
        run_block, (params, opt.init(params)), jnp.arange(cfg.steps // block)
    )
    return params


def _flatten(params):
    return jnp.concatenate([params["B"].ravel(), params["A"].ravel()])


@partial(jax.jit, static_argnames=("cfg",))
def _lbfgs(problem, params, X, Y, weights, r, *, cfg):
    """optax.lbfgs on sum_i weights_i·‖y_i − f(x_i)‖² (+ ridge): see :func:`finish_nonlinear`."""

    def loss(p):
        return training_loss(problem, p, X, Y, r, weights=weights, cfg=cfg)

    opt = optax.lbfgs()  # memory 10, zoom line search (strong Wolfe conditions)
    value_and_grad = optax.value_and_grad_from_state(loss)

    def go_on(carry):
        _, state, k = carry
        g = optax.tree_utils.tree_get(state, "grad")  # ∇ at the current iterate (0 before the 1st)
        return (k < cfg.lbfgs_steps) & ((k == 0) | (jnp.linalg.norm(_flatten(g)) > cfg.grad_tol))

    def step(carry):
        p, state, k = carry
        value, grad = value_and_grad(p, state=state)
        upd, state = opt.update(grad, state, p, value=value, grad=grad, value_fn=loss)
        return optax.apply_updates(p, upd), state, k + 1

    g0 = jax.grad(loss)(params)
    k0 = jnp.where(jnp.linalg.norm(_flatten(g0)) <= cfg.grad_tol, cfg.lbfgs_steps, 0)
    params, _, k = jax.lax.while_loop(go_on, step, (params, opt.init(params), k0))
    return params, jnp.where(k0 > 0, 0, k)


def finish_nonlinear(problem: NonlinearProblem, params, X, Y, r, *, cfg: NonlinearConfig):
    """L-BFGS on the fp objective (:func:`training_loss`, kind 0) from ``params`` (Adam's end):
    optax.lbfgs (memory 10, zoom line search) until ‖∇‖₂ ≤ cfg.grad_tol or cfg.lbfgs_steps
    iterations, one fit per call (r, params may be concrete or traced). Returns (params,
    iterations run; 0 when ``params`` already met the tolerance).

    One fit per call, not vmapped: under vmap a while_loop runs every row until the slowest has
    stopped, and at small N the slowest never stops (the loss's infimum is not attained: module
    docstring), so each fp row paid cfg.lbfgs_steps iterations of a vmapped zoom line search,
    ~5× the cost per row-iteration of this unbatched loop (measured: 170 s for 300 iterations on
    the default grid). X is zero-padded to max(cfg.Ns) rows with weights 1/N on the real ones, so
    that one compilation serves every N.
    """
    if cfg.lbfgs_steps == 0:
        return params, 0
    return _lbfgs(problem, params, *pad_rows(X, Y, max(cfg.Ns)), r, cfg=cfg)


def pad_rows(X, Y, rows: int):
    """(X, Y) zero-padded to ``rows`` rows (at least their own N) and the weights 1/N on the N real
    rows, 0 on the padding: sum_i weights_i·ℓ_i is the mean of ℓ over the real rows."""
    N = X.shape[0]
    pad = max(rows, N) - N
    weights = jnp.concatenate([jnp.full((N,), 1.0 / N, X.dtype), jnp.zeros((pad,), X.dtype)])
    Xp = jnp.concatenate([X, jnp.zeros((pad, X.shape[1]), X.dtype)])
    Yp = jnp.concatenate([Y, jnp.zeros((pad, Y.shape[1]), Y.dtype)])
    return Xp, Yp, weights


def fit_diagnostics(problem: NonlinearProblem, params, X, Y, r, kind, bits, *, weights=None, cfg):
    """Training loss, ‖∇‖₂ of the training objective and ‖B·A‖_F (rank-r part) at ``params``
    (``weights``: as in :func:`training_loss`, for rows padded by :func:`pad_rows`).

    kind: the arm's training quantizer (0: the latent fp objective; otherwise the straight-through
    gradient of the noise-free forward, u = ½: for the additive arm that is the latent objective,
    for SR rounding half up). A large weight_norm with a gradient above cfg.grad_tol marks a fit
    whose training loss has no minimiser at finite weights (erf units saturating).
    """
    value, grad = jax.value_and_grad(
        lambda p: training_loss(problem, p, X, Y, r, kind=kind, bits=bits, weights=weights, cfg=cfg)
    )(params)
    mask = _mask(r, cfg.r_max, problem.W1_0.dtype)
    BA = (params["B"] * mask[None, :]) @ (params["A"] * mask[:, None])
    return {
        "train_loss": value,
        "grad_norm": jnp.linalg.norm(_flatten(grad)),
        "weight_norm": jnp.linalg.norm(BA),
    }


def training_description(cfg: NonlinearConfig, arm: str = "fp", *, early_stopped=False) -> str:
    """How ``arm`` was trained, in words (for the conditions of a verdict); early_stopped: the
    Adam-phase fits of an arm in FINISHED_ARMS (the grid's arm + "_adam")."""
    check_choice(arm, "arm", ARMS)
    ridge = f" + {cfg.weight_decay:g}·(‖B‖² + ‖A‖²)" if cfg.weight_decay else ""
    adam = f"{cfg.steps} full-batch Adam steps (lr {cfg.lr:g}, cosine decay) on the squared loss"
    adam += ridge
    if arm in FINISHED_ARMS and cfg.lbfgs_steps and not early_stopped:
        return (
            adam + f", then L-BFGS to ‖∇‖₂ ≤ {cfg.grad_tol:g} (at most {cfg.lbfgs_steps} "
            f"iterations; converged flag per fit), {cfg.dtype}"
        )
    if arm in FINISHED_ARMS:
        return adam + f" (early-stopped: no convergence criterion), {cfg.dtype}"
    return adam + f" (fixed budget: no stationary point to converge to), {cfg.dtype}"


def _block(steps: int, most: int = 64) -> int:
    """The largest divisor of ``steps`` that is ≤ ``most`` (steps per noise draw)."""
    return max(d for d in range(1, min(steps, most) + 1) if steps % d == 0)


def latent_excess(problem: NonlinearProblem, params, r, X_test, *, cfg: NonlinearConfig):
    """E‖f − f*‖² of the latent (unquantized) student: exact for erf, Monte Carlo on X_test for
    tanh (as excess_latent of :func:`evaluate_nonlinear`)."""
    W1, W2 = hidden_weight(problem, params, r), problem.W2
    if cfg.activation == "erf":
        return function_distance_erf(W1, W2, problem.W1_star, W2, problem.Sigma)
    return function_distance_mc(W1, W2, problem.W1_star, W2, X_test, activation=cfg.activation)[0]


def evaluate_nonlinear(
    problem: NonlinearProblem, params, r, deploy, bits, deploy_u, X_test, *, cfg: NonlinearConfig
):
    """Excess risks of one trained student (deployed with quantizer ``deploy`` at ``bits``, noise
    deploy_u from :func:`draw_uniforms`). Returns a dict of scalars (ptq_* over cfg.bits):

    excess_latent, excess_deployed (E‖f − f*‖², exact for erf, Monte Carlo on X_test for tanh);
    excess_latent_mc, excess_latent_se (Monte Carlo estimate on X_test and its SE, any φ);
    ptq_excess[b] = E‖f_q − f*‖², ptq_qexcess[b] = E‖f_q − f‖² (the change due to quantization
    alone) after post-training RTN at b; R_A, R_B (absmax of the trained factors).
    """
    W2 = problem.W2

    def dist(Wa, Wb):
        if cfg.activation == "erf":
            return function_distance_erf(Wa, W2, Wb, W2, problem.Sigma)
        return function_distance_mc(Wa, W2, Wb, W2, X_test, activation=cfg.activation)[0]

    W1 = hidden_weight(problem, params, r)
    Wd = hidden_weight(problem, params, r, kind=deploy, bits=bits, u=deploy_u)
    mc, se = function_distance_mc(W1, W2, problem.W1_star, W2, X_test, activation=cfg.activation)
    out = {
        "excess_latent": dist(W1, problem.W1_star),
        "excess_deployed": dist(Wd, problem.W1_star),
        "excess_latent_mc": mc,
        "excess_latent_se": se,
    }

    def ptq(b):
        Wq = hidden_weight(problem, params, r, kind=KIND_INDEX["rtn"], bits=b)
        return dist(Wq, problem.W1_star), dist(Wq, W1)

    out["ptq_excess"], out["ptq_qexcess"] = jax.vmap(ptq)(jnp.asarray(cfg.bits, W1.dtype))
    mask = _mask(r, cfg.r_max, W1.dtype)
    out["R_B"] = jnp.max(jnp.abs(params["B"] * mask[None, :]))
    out["R_A"] = jnp.max(jnp.abs(params["A"] * mask[:, None]))
    return out
