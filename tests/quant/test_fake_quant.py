"""quantbounds.quant.fake_quant: one quantizer for every kind, against the quantizers it must
equal bit for bit (quantize_uniform, quantize), hand cases, and its own static path (a traced
index under jit/vmap against the kind given by name)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quantbounds.conventions import KIND_INDEX, KINDS
from quantbounds.quant.fake_quant import fake_quantize, static_kind
from quantbounds.quant.quantizers import quantize, quantize_uniform


def _data(shape=(6, 5), seed=0):
    x = jax.random.normal(jax.random.PRNGKey(seed), shape)
    u = jax.random.uniform(jax.random.PRNGKey(seed + 1), shape)
    return x, u


@pytest.mark.parametrize("axis", [None, 1])
@pytest.mark.parametrize("bits", [1, 3, 16])
def test_each_kind_is_the_projects_quantizer_bit_for_bit(bits, axis):
    x, u = _data()
    ref = {
        "none": x,
        "rtn": quantize_uniform(x, bits=bits, axis=axis),
        "sr": quantize_uniform(x, bits=bits, axis=axis, u=u),
    }
    R = np.max(np.abs(np.asarray(x)), axis=None if axis is None else 1 - axis, keepdims=True)
    ref["additive"] = np.asarray(x) + R * 2.0 ** (1 - bits) * (np.asarray(u) - 0.5)
    for name, want in ref.items():
        got = jax.jit(lambda x, u, name=name: fake_quantize(x, name, bits=bits, axis=axis, u=u))(
            x, u
        )
        if name == "additive":  # XLA may fuse x + Δ·(u − ½) into one FMA: one rounding, not two
            eps = np.finfo(np.asarray(x).dtype).eps
            np.testing.assert_allclose(
                np.asarray(got), want, rtol=0, atol=2 * eps * np.max(np.abs(want))
            )
        else:
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=name)
    nf4 = fake_quantize(x, "nf4")
    np.testing.assert_array_equal(
        np.asarray(nf4), np.asarray(quantize(x, "nf4", block_size=x.size))
    )


def test_traced_index_selects_the_same_values_as_the_name():
    x, u = _data((4, 7), seed=3)
    idx = jnp.arange(len(KINDS))
    for bits in (2.0, 5.0):
        by_index = jax.jit(jax.vmap(lambda k: fake_quantize(x, k, bits=bits, u=u)))(idx)
        for name in KINDS:
            want = fake_quantize(x, name, bits=bits, u=u)
            np.testing.assert_array_equal(
                np.asarray(by_index[KIND_INDEX[name]]), np.asarray(want), err_msg=name
            )
    # a restricted set of kinds (what the nonlinear student compiles) selects alike
    sub = ("none", "rtn", "sr", "additive")
    got = jax.jit(jax.vmap(lambda k: fake_quantize(x, k, bits=3.0, u=u, kinds=sub)))(
        jnp.asarray([KIND_INDEX[k] for k in sub])
    )
    for i, name in enumerate(sub):
        np.testing.assert_array_equal(
            np.asarray(got[i]), np.asarray(fake_quantize(x, name, bits=3.0, u=u))
        )


def test_hand_cases_ties_clipping_zero():
    x = jnp.array([1.0, 0.3, -0.26, 0.25, 0.0, -1.0, 0.74])
    # b = 2, R = 1: Δ = 0.5, levels {−1, −0.5, 0, 0.5}; +R clips to R − Δ; 0.25 is a tie → 0 (even)
    np.testing.assert_array_equal(
        np.asarray(fake_quantize(x, "rtn", bits=2)), [0.5, 0.5, -0.5, 0.0, 0.0, -1.0, 0.5]
    )
    # SR with u = 0.5 rounds half up; u → 0 floors
    u = jnp.full(x.shape, 0.5)
    np.testing.assert_array_equal(
        np.asarray(fake_quantize(x, "sr", bits=2, u=u)), [0.5, 0.5, -0.5, 0.5, 0.0, -1.0, 0.5]
    )
    # additive with u = ½ is the identity
    np.testing.assert_array_equal(
        np.asarray(fake_quantize(x, "additive", bits=2, u=u)), np.asarray(x)
    )
    z = jnp.zeros((2, 3))
    for name in KINDS:  # R = 0: zero, no NaN
        np.testing.assert_array_equal(
            np.asarray(fake_quantize(z, name, bits=3, u=jnp.zeros((2, 3)))), 0.0
        )


def test_one_numbering_of_kinds():
    from quantbounds.theory import nonlinear_student, teacher_student

    assert KINDS[0] == "none" and KIND_INDEX[None] == 0
    assert teacher_student.KIND_INDEX is KIND_INDEX
    for arm, idx in nonlinear_student._TRAIN_KIND.items():
        assert (
            KINDS[idx]
            == {"fp": "none", "ste_rtn": "rtn", "ste_sr": "sr", "additive": "additive"}[arm]
        )
    assert static_kind(3) == "nf4" and static_kind(None) == "none"
    with pytest.raises(ValueError, match="kind must be one of"):
        static_kind("rnd")
