"""The Monte Carlo engine's additive noise: ε = Δ·u, u exact discrete uniforms from Threefry.

Sample t of grid cell c draws from its own key, fold_in(fold_in(key, c), t), and within it
ε_B from fold_in(·, 0), ε_A from fold_in(·, 1), row by row (:func:`uniform_blocks`):
Threefry-2x32-20 at counters (0, i) (``quantbounds._prng.hash_counters``), both 32-bit output
words used, each split into two 16-bit draws in float32 (one 32-bit draw each in float64). One
hash thus feeds four columns, delivered as four column blocks that the Gram products
(``gram.gram_terms``) consume block by block (nothing is concatenated). The draws are exact
discrete uniforms on 2^16 (2^32) midpoints: see ``montecarlo`` for what that changes (the
variance, by a relative 2^−32).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from quantbounds._prng import hash_counters


def n_noise_blocks(dtype) -> int:
    """Column blocks per Threefry hash: 4 draws of 16 bits (float32), 2 of 32 bits (float64)."""
    return 4 if jnp.dtype(dtype) == jnp.float32 else 2


def block_width(cols: int, dtype) -> int:
    """Columns q of each noise block: ⌈cols / nb⌉ (the blocks tile nb·q ≥ cols columns)."""
    return -(-cols // n_noise_blocks(dtype))


def uniform_blocks(keys, r: int, cols: int, dtype) -> list[jnp.ndarray]:
    """nb column blocks (S, r, q) of draws u = (j + ½)/2^k − ½, j uniform on 0…2^k−1, one
    sample per key of keys (shape (S,)).

    Block i, column c is column i·q + c of the (S, r, nb·q) draw (:func:`uniform_grid`).
    float32: k = 16, nb = 4: the low and high halves of b0, then of b1 (one hash, four
    draws); u = bits(0x3F800000 | j·2⁷) − (1.5 − 2⁻¹⁷), i.e. 1 + j/2^16 built in the
    mantissa, exact. float64: k = 32, nb = 2: b0 then b1, (j − 2³¹ + ½)·2⁻³², exact.
    Symmetric, |u| < ½, Var u = (1 − 4^{−k})/12 (``montecarlo``).
    """
    q = block_width(cols, dtype)
    b0, b1 = hash_counters(keys, r, q)
    if jnp.dtype(dtype) == jnp.float32:

        def f32(j):
            one_plus = jax.lax.bitcast_convert_type(
                (j << np.uint32(7)) | np.uint32(0x3F800000), jnp.float32
            )
            return one_plus - np.float32(1.5 - 2.0**-17)

        u = jnp.stack(
            [
                f32(b0 & np.uint32(0xFFFF)),
                f32(b0 >> np.uint32(16)),
                f32(b1 & np.uint32(0xFFFF)),
                f32(b1 >> np.uint32(16)),
            ]
        )
    else:
        u = jnp.stack([(w.astype(jnp.float64) - 2147483647.5) * (2.0**-32) for w in (b0, b1)])
    # one stacked conversion, materialised, then sliced: with the blocks converted
    # separately XLA:CPU fused the whole 20-round hash into every block's conversion and
    # every consumer's copy of it (8 hashes per side per sample, seen in the compiled HLO
    # and a profile; a barrier on the words did not stop it); stacked, the compiled HLO
    # holds one hash per side, though that fusion runs on one thread and takes ~1.5× the
    # words-only hash (simulate_eps_ba at 4096², r = 64: 376 vs 317 samples/s in one run)
    u = jax.lax.optimization_barrier(u)
    return [u[i] for i in range(u.shape[0])]


def uniform_grid(keys, r: int, cols: int, dtype) -> jnp.ndarray:
    """(S, r, cols): the blocks of :func:`uniform_blocks` side by side, cut to cols."""
    return jnp.concatenate(uniform_blocks(keys, r, cols, dtype), axis=-1)[..., :cols]


def draw_noise(keys, r: int, m: int, n: int, dtype, delta_Bt, delta_A):
    """One unit's additive noise ε = Δ·u as column blocks: (ε_Bᵀ blocks, ε_A blocks).

    u from :func:`uniform_blocks` (nb blocks of (S, r, q), q = ⌈cols/nb⌉; keys: (S,) sample
    keys), ε_B's from fold_in(key, 0), ε_A's from fold_in(key, 1) of each sample's key.
    delta_Bt, delta_A: steps Δ, either
    broadcastable to (r, 1) (per tensor, cols a multiple of nb) or of width nb·q, zero in the
    columns past m (n) so that the padding draws vanish (:func:`pad_steps`). Two independent
    draws rather than one: XLA:CPU may run each fusion on one thread, and independent fusions
    run concurrently.
    """

    def blocks(i, cols, delta):
        u = uniform_blocks(jax.vmap(lambda k: jax.random.fold_in(k, i))(keys), r, cols, dtype)
        q = u[0].shape[-1]
        if delta.ndim == 0 or delta.shape[-1] == 1:
            return [x * delta for x in u]
        return [x * delta[..., i * q : (i + 1) * q] for i, x in enumerate(u)]

    # materialise each block once: its two consumers (the self-Gram and the product with the
    # factor) would otherwise each get their own copy of the conversion fused in
    return jax.lax.optimization_barrier(
        (blocks(0, m, jnp.asarray(delta_Bt)), blocks(1, n, jnp.asarray(delta_A)))
    )


def pad_steps(R, cols: int, dtype) -> np.ndarray:
    """Ranges (or steps) R of shape (..., 1) or (..., cols) laid out for :func:`draw_noise`:
    unchanged when per tensor and cols is a multiple of nb, else broadcast to width nb·q with
    zeros past cols."""
    R = np.asarray(R)
    width = n_noise_blocks(dtype) * block_width(cols, dtype)
    if R.shape[-1] == 1 and width == cols:
        return R
    out = np.zeros(R.shape[:-1] + (width,), R.dtype)
    out[..., :cols] = np.broadcast_to(R, R.shape[:-1] + (cols,))
    return out
