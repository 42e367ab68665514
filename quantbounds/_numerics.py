"""Elementwise arithmetic that XLA would otherwise rewrite: exact division (the quantizers).

(The unrolled Threefry hash lives in ``quantbounds._prng``.)
"""

from __future__ import annotations

import jax.numpy as jnp


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
