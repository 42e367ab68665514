"""Gradient variance of the LoRA student at fixed parameters (Theorem 3.3's two sources).

The gradient is g(B, A) = ∇_{(B,A)} (1/k)·Σ_{i≤k} ‖y_i − W_q·x_i‖², W_q = W0 + s·Q(B)·Q(A), with
a straight-through Q (identity gradient). Its "variance" is the total variance — the trace of
the covariance of the flattened (∇_B, ∇_A) — measured two ways:

- across mini-batches (fresh (x, y) each draw, no quantization): Var[∇L];
- across quantization-noise draws on one fixed batch (SR or the additive model): the part
  that quantization adds;
- jointly (fresh batch and fresh noise): Var[∇L_q], the left side of Theorem 3.3.

For Gaussian x the mini-batch variance is known in closed form (:func:`analytic_batch_variance`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from quantbounds.teacher_student import Problem, fake_quant, sample_data, ste


def _weight(problem, B, A, s, kind, bits, key, granularity):
    if kind is not None:
        axB, axA = (None, None) if granularity == "tensor" else (0, 1)
        kB, kA = jax.random.split(key) if key is not None else (None, None)
        B = ste(B, fake_quant(B, kind=kind, bits=bits, key=kB, axis=axB))
        A = ste(A, fake_quant(A, kind=kind, bits=bits, key=kA, axis=axA))
    return problem.W0 + s * (B @ A)


def lora_grad(problem: Problem, B, A, s, X, Y, *, kind=None, bits=None, key=None,
              granularity: str = "tensor"):
    """Flattened (∇_B, ∇_A) of the batch loss (1/k)·Σ‖y_i − W_q·x_i‖² (B, A already masked).

    X: (k, n), Y: (k, m). Returns a vector of length m·r + r·n. Also returns the loss.
    """
    def loss(BA):
        W = _weight(problem, BA[0], BA[1], s, kind, bits, key, granularity)
        E = Y - X @ W.T
        return jnp.mean(jnp.sum(E * E, axis=1))

    val, (gB, gA) = jax.value_and_grad(loss)((B, A))
    return jnp.concatenate([gB.ravel(), gA.ravel()]), val


def _total_var(G):
    """Σ_j unbiased sample variance of column j of G (draws × coordinates)."""
    return jnp.sum(jnp.var(G, axis=0, ddof=1))


def measure_grad_variance(problem: Problem, B, A, s, key, *, batch_size: int, n_draws: int,
                          kind: str, bits, granularity: str = "tensor") -> dict:
    """Gradient variance three ways at fixed (B, A) (masked), see the module docstring.

    Returns var_batch, var_noise, var_joint (total variances), loss (mean full-precision
    batch loss over the draws), x_norm2 (mean ‖x‖²), R = max(max|B|, max|A|).
    kind: "sr" or "additive" (a quantizer with randomness; RTN has no noise to draw).
    """
    kb, kn, kj = jax.random.split(key, 3)
    bkeys = jax.random.split(kb, n_draws)
    nkeys = jax.random.split(kn, n_draws)

    def fp_draw(k):
        X, Y = sample_data(k, problem, batch_size)
        g, val = lora_grad(problem, B, A, s, X, Y)
        return g, val, jnp.mean(jnp.sum(X * X, axis=1))

    Gb, losses, xn = jax.vmap(fp_draw)(bkeys)
    X0, Y0 = sample_data(kj, problem, batch_size)
    Gn, _ = jax.vmap(lambda k: lora_grad(problem, B, A, s, X0, Y0, kind=kind, bits=bits, key=k,
                                         granularity=granularity))(nkeys)

    def joint(kb_, kn_):
        X, Y = sample_data(kb_, problem, batch_size)
        return lora_grad(problem, B, A, s, X, Y, kind=kind, bits=bits, key=kn_,
                         granularity=granularity)[0]

    Gj = jax.vmap(joint)(jax.random.split(jax.random.fold_in(kj, 1), n_draws), nkeys)
    return {"var_batch": _total_var(Gb), "var_noise": _total_var(Gn), "var_joint": _total_var(Gj),
            "loss": jnp.mean(losses), "x_norm2": jnp.mean(xn),
            "R": jnp.maximum(jnp.max(jnp.abs(B)), jnp.max(jnp.abs(A)))}


def analytic_batch_variance(problem: Problem, B, A, s, batch_size):
    """Exact total variance of the full-precision batch gradient for x ~ N(0, Σ).

    Per sample g_W = 2·e·xᵀ with e = W·x − y = D·x − σ·ξ, D = W − W*. With C = Cov(x, e) = Σ·Dᵀ
    and S = Cov(e) = D·Σ·Dᵀ + σ²·I, Isserlis' theorem gives Cov(g_ji, g_lk) = 4·(S_jl·Σ_ik + C_kj·C_il),
    hence for ∇_B = s·g_W·Aᵀ and ∇_A = s·Bᵀ·g_W:

        tr Cov(∇_B) = 4s²·(tr S·tr(A·Σ·Aᵀ) + ‖A·C‖_F²)
        tr Cov(∇_A) = 4s²·(tr Σ·tr(Bᵀ·S·B) + ‖C·B‖_F²)

    divided by the batch size k (independent samples). B: (m, r), A: (r, n), masked.
    """
    W = problem.W0 + s * (B @ A)
    D = W - problem.Wstar
    Sig = problem.Sigma
    C = Sig @ D.T
    S = D @ Sig @ D.T + problem.label_noise ** 2 * jnp.eye(D.shape[0], dtype=D.dtype)
    vB = jnp.trace(S) * jnp.trace(A @ Sig @ A.T) + jnp.sum((A @ C) ** 2)
    vA = jnp.trace(Sig) * jnp.trace(B.T @ S @ B) + jnp.sum((C @ B) ** 2)
    return 4.0 * s ** 2 * (vB + vA) / batch_size
