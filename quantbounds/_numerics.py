"""Elementwise arithmetic that XLA would otherwise rewrite or lower slowly: exact division
(the quantizers) and the unrolled Threefry-2x32 hash (the Monte Carlo engine, the teacher–student
noise)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def true_div(a, b):
    """a / b, correctly rounded elementwise, b broadcast against a (a finite).

    XLA's algebraic simplifier rewrites a / broadcast(b) into a · broadcast(1/b) (two roundings),
    which differs from numpy/torch division in a large fraction of elements (tests compare with
    numpy bit for bit). Adding a·0 makes the divisor a full-shape computed array that the
    rewrite does not match (XLA does not fold a·0 for floats: inf·0 is NaN), also under vmap,
    where an optimization barrier alone is bypassed by the batching rule's broadcast.
    For finite a, b + a·0 = b exactly.
    """
    return a / (jnp.asarray(b, a.dtype) + a * 0)


def threefry2x32(k1, k2, x0, x1):
    """Threefry-2x32, 20 rounds (Salmon et al., SC'11 "Parallel random numbers: as easy as
    1, 2, 3"; the hash behind jax.random's default PRNG), written out unrolled.

    Returns both 32-bit output words. JAX lowers its threefry on CPU as a rolled 5-step loop
    (to save compile time), which XLA cannot fuse; unrolled, the whole hash is one
    elementwise fusion, ~7× faster on the 2-core CPU and bit for bit the same numbers as
    ``jax.extend.random.threefry_2x32`` (tests, with Random123's known-answer vectors).
    """
    rot = ((13, 15, 26, 6), (17, 29, 16, 24))          # Threefry-2x32 rotation constants
    ks = (k1, k2, k1 ^ k2 ^ np.uint32(0x1BD11BDA))     # key schedule parity (Skein spec)
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for i in range(5):
        for d in rot[i % 2]:
            x0 = x0 + x1
            x1 = x0 ^ ((x1 << np.uint32(d)) | (x1 >> np.uint32(32 - d)))
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x0, x1
