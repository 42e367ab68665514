"""The one Threefry: Threefry-2x32-20 written out unrolled, and what is built on it.

Every generator here is bit for bit a function of jax.random's default (threefry2x32) keys:

    threefry2x32(k1, k2, x0, x1)   the hash itself (Salmon et al., SC'11), both output words
    key_words(keys)                (S, 2) uint32 words of S keys (other PRNGs hashed first)
    hash_counters(keys, r, W)      the words at counters (0, k·W + w): the Monte Carlo noise
    uniform_at(key, index, dtype)  jax.random.uniform(key, shape).ravel()[index]
    fold_in_raw(key, data)         jax.random.fold_in(key, d) for every d, as raw keys

Why unrolled: JAX lowers its threefry on CPU as a rolled 5-step loop (to save compile time),
which XLA cannot fuse; unrolled, the whole hash is one elementwise fusion, ~7× faster on the
2-core CPU, and the numbers are those of ``jax.extend.random.threefry_2x32`` (tests, with
Random123's known-answer vectors).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))  # Threefry-2x32 rotation constants (Random123)
_KEY_PARITY = 0x1BD11BDA  # key schedule parity constant (Skein spec)


def threefry2x32(k1, k2, x0, x1):
    """Threefry-2x32, 20 rounds, of the counter (x0, x1) under the key (k1, k2): both 32-bit
    output words. uint32 arguments, broadcast elementwise."""
    schedule = (k1, k2, k1 ^ k2 ^ np.uint32(_KEY_PARITY))
    x0, x1 = x0 + schedule[0], x1 + schedule[1]
    for block in range(5):  # 5 blocks of 4 rounds, a key injection after each
        for rot in _ROTATIONS[block % 2]:
            x0 = x0 + x1
            x1 = x0 ^ ((x1 << np.uint32(rot)) | (x1 >> np.uint32(32 - rot)))
        x0 = x0 + schedule[(block + 1) % 3]
        x1 = x1 + schedule[(block + 2) % 3] + np.uint32(block + 1)
    return x0, x1


def _raw_key(key):
    """Raw uint32 key words of a typed threefry key; raw keys pass through."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key)
    return key


def key_words(keys):
    """(S, 2) uint32 key words of S keys (shape (S,)); keys of another PRNG implementation are
    first hashed to threefry keys by ``jax.random.bits(key, (2,))``."""
    if str(jax.random.key_impl(keys)) == "threefry2x32":
        return jax.random.key_data(keys)
    return jax.vmap(lambda k: jax.random.bits(k, (2,), jnp.uint32))(keys)


def hash_counters(keys, rows: int, width: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Both output words (w0, w1), each (S, rows, width) uint32: element (s, k, w) hashes the
    counter (0, k·width + w) under keys[s] (keys: S PRNG keys, shape (S,)).

    One key per sample, so a sample's words do not depend on how samples are chunked; row k's
    words do not depend on ``rows``, so a rank padded with extra rows sees exactly the unpadded
    rank's words in its first rows.
    """
    if rows * width >= 2**32:
        raise ValueError(f"a sample may draw at most 2^32 counters, got {rows}×{width}")
    words = key_words(keys)
    shape = (words.shape[0], rows, width)
    row, col = (jax.lax.broadcasted_iota(jnp.uint32, shape, axis) for axis in (1, 2))
    counter = row * np.uint32(width) + col
    return threefry2x32(
        words[:, 0, None, None], words[:, 1, None, None], jnp.zeros_like(counter), counter
    )


def uniform_at(key, index, dtype):
    """jax.random.uniform(key, shape, dtype).ravel()[index] for a threefry key, computed for the
    requested flat indices only (``index``: uint32 array, any shape; each < 2³²).

    jax's partitionable threefry (jax_threefry_partitionable, the default) gives element k of a
    draw the hash of the counter (0, k), so a sub-block of a padded draw is the hash of its
    counters. key: a raw uint32[2] key or a typed threefry key.
        float32: u = bits(0x3F800000 | (w0 ⊕ w1) >> 9) − 1     (23 random mantissa bits)
        float64: u = bits(0x3FF0… | (w0·2³² + w1) >> 12) − 1   (52 random mantissa bits)
    """
    key = _raw_key(key)
    if not jax.config.jax_threefry_partitionable:
        raise RuntimeError(
            "uniform_at reproduces jax.random only with jax_threefry_partitionable=True"
        )
    index = jnp.asarray(index, jnp.uint32)
    w0, w1 = threefry2x32(key[0], key[1], jnp.zeros_like(index), index)
    dt = jnp.dtype(dtype)
    if dt == jnp.float32:  # 32 random bits → 23 mantissa bits, as jax.random.uniform
        mantissa = (w0 ^ w1) >> np.uint32(32 - 23)
        one = np.float32(1.0)
        return jax.lax.bitcast_convert_type(mantissa | one.view(np.uint32), dt) - one
    if dt == jnp.float64:  # 64 random bits (w0 high, w1 low) → 52 mantissa bits
        word = (w0.astype(jnp.uint64) << np.uint64(32)) | w1.astype(jnp.uint64)
        mantissa = word >> np.uint64(64 - 52)
        return jax.lax.bitcast_convert_type(mantissa | np.float64(1.0).view(np.uint64), dt) - 1.0
    raise TypeError(f"dtype must be float32 or float64, got {dt}")


def fold_in_raw(key, data):
    """jax.random.fold_in(key, d) for every d in ``data`` (uint32 array), as raw uint32 keys of
    shape data.shape + (2,): the threefry hash of the counter (0, d) under the key (jax's
    threefry fold_in). key: raw (..., 2) uint32 (broadcast against data) or a typed threefry
    key."""
    key = _raw_key(key)
    data = jnp.asarray(data, jnp.uint32)
    w0, w1 = threefry2x32(key[..., 0], key[..., 1], jnp.zeros_like(data), data)
    return jnp.stack([w0, w1], axis=-1)
