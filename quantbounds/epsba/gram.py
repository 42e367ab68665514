"""The Gram algebra of ε_BA: per-sample squared norms without forming an m×n matrix.

With X = [B, ε_B] (m×2r) and Y = [ε_A; A + ε_A] (2r×n), ε_BA = X·Y exactly and
‖X·Y‖_F² = tr((XᵀX)(YYᵀ)). Per sample only four r×r products depend on the noise,
F = ε_Bᵀε_B, C = Bᵀε_B, E = ε_A·ε_Aᵀ, D = A·ε_Aᵀ; the noise-free Grams G_B = BᵀB and
G_A = A·Aᵀ are computed once per rank. Then
    ‖B·ε_A‖² = ⟨G_B, E⟩,  ‖ε_B·A‖² = ⟨F, G_A⟩,  ‖ε_B·ε_A‖² = ⟨F, E⟩,
    ‖ε_BA‖² = the three + 2·(tr(C·D) + tr(C·E) + tr(F·Dᵀ)),
with ⟨X, Y⟩ = Σ X∘Y: 4·r²·(m+n) flops for the four products (the rest is O(r²)) and
O(r·(m+n)) memory per sample. The tempting form X = [B + ε_B, −B] cancels catastrophically
in float32 above ~10 bits and is not used. ε_B is held transposed, (r, m) per sample, so
that C and D are single large GEMMs against the shared B and A.
"""

from __future__ import annotations

import jax.numpy as jnp


def _self_gram(x):
    """x[s]·x[s]ᵀ for each s: (S, r, K) -> (S, r, r), one batched dot_general.

    With cache-sized units (CHUNK_BYTES) the batched form is as fast as a scan of 2-D GEMMs
    at 4096×4096, r = 64, and up to 1.7× faster at small r (benchmarks/bench_montecarlo.py,
    2 cores).
    """
    return jnp.einsum("srk,stk->srt", x, x)


def _as_blocks(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def gram_terms(B, A, GB, GA, eps_Bt, eps_A):
    """Per-sample ‖B·ε_A‖², ‖ε_B·A‖², ‖ε_B·ε_A‖², ‖ε_BA‖² by the Gram form (module docstring).

    B: (m, r); A: (r, n); GB = BᵀB, GA = A·Aᵀ: (r, r). eps_Bt: the S samples of ε_B stored
    transposed, (S, r, m), or a list of nb column blocks (S, r, q) with nb·q = m (then B's
    rows are split alike: F = Σᵢ Pᵢ·Pᵢᵀ, Cᵀ = Σᵢ Pᵢ·Bᵢ); eps_A: (S, r, n) or column blocks
    likewise. Blocks are how ``noise_draws.draw_noise`` delivers the noise (one Threefry hash feeds
    one column of each block, so nothing is concatenated). Returns (S, 4) in the order of
    :class:`EpsBAMoments`.
    """
    PB, PA = _as_blocks(eps_Bt), _as_blocks(eps_A)
    S, r, qB = PB[0].shape
    qA = PA[0].shape[-1]
    if len(PB) * qB != B.shape[0] or len(PA) * qA != A.shape[1]:
        raise ValueError(
            f"noise blocks ({len(PB)}×{qB}, {len(PA)}×{qA}) must tile B's "
            f"{B.shape[0]} rows and A's {A.shape[1]} columns"
        )
    F = sum(_self_gram(P) for P in PB)  # ε_Bᵀε_B
    Ct = sum(
        (P.reshape(S * r, qB) @ B[i * qB : (i + 1) * qB]).reshape(S, r, r) for i, P in enumerate(PB)
    )  # Cᵀ = ε_Bᵀ·B
    E = sum(_self_gram(P) for P in PA)  # ε_A·ε_Aᵀ
    Dt = sum(
        (P.reshape(S * r, qA) @ A[:, i * qA : (i + 1) * qA].T).reshape(S, r, r)
        for i, P in enumerate(PA)
    )  # Dᵀ = ε_A·Aᵀ
    t1 = jnp.einsum("kl,skl->s", GB, E)
    t2 = jnp.einsum("skl,kl->s", F, GA)
    t3 = jnp.einsum("skl,skl->s", F, E)
    x12 = jnp.einsum("slk,skl->s", Ct, Dt)  # tr(C·D)  = ⟨B·ε_A, ε_B·A⟩
    x13 = jnp.einsum("skl,skl->s", Ct, E)  # tr(C·E)  = ⟨B·ε_A, ε_B·ε_A⟩
    x23 = jnp.einsum("skl,skl->s", F, Dt)  # tr(F·Dᵀ) = ⟨ε_B·A, ε_B·ε_A⟩
    return jnp.stack([t1, t2, t3, t1 + t2 + t3 + 2 * (x12 + x13 + x23)], axis=-1)
