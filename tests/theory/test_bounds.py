"""Bounds and bit-width rules (quantbounds.theory.bounds) against independent evaluations."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import brentq, minimize_scalar

from quantbounds.theory.bounds import (
    excess_risk_bound,
    generalization_term,
    grad_variance_bound,
    optimal_bits,
    quantization_term,
)

pos = st.floats(min_value=0.05, max_value=20.0)


def test_excess_risk_bound_hand_case():
    # C1·√(r/N) + C2·r·4^{−b}·σ² = 3·√(4/100) + 5·4·(1/16)·2 = 0.6 + 2.5
    assert excess_risk_bound(4, 100, 2, sigma_g2=2.0, C1=3.0, C2=5.0) == pytest.approx(
        3.1, rel=1e-15
    )
    assert generalization_term(4, 100, C1=3.0) == pytest.approx(0.6, rel=1e-15)
    assert quantization_term(4, 2, sigma_g2=2.0, C2=5.0) == pytest.approx(2.5, rel=1e-15)


def test_paper_rule_as_stated():
    # ½log₂4 + ½log₂64 + ½log₂4 + 1 = 1 + 3 + 1 + 1
    assert optimal_bits(4, 64, sigma_g2=4.0, C=1.0) == pytest.approx(6.0, abs=1e-14)
    # r = 16, N = 1000, C = 0, σ² = 1: ½log₂16000 = 2 + ½log₂1000 = 6.98289…
    b = float(optimal_bits(16, 1000))
    assert b == pytest.approx(2 + 0.5 * math.log2(1000), abs=1e-14)


@settings(deadline=None, max_examples=60)
@given(r=st.integers(1, 256), N=st.integers(1, 10**6), s2=pos, C1=pos, C2=pos)
def test_balanced_rule_is_the_balance_point(r, N, s2, C1, C2):
    b = float(optimal_bits(r, N, sigma_g2=s2, rule="balanced", C1=C1, C2=C2))
    # independent: root of (generalization − quantization) in b found by scipy (terms written out
    # here, so the rule and the bound functions are not used to check themselves)
    diff = lambda x: C1 * math.sqrt(r / N) - C2 * r * 4.0**-x * s2  # noqa: E731
    root = brentq(diff, b - 40, b + 40, xtol=1e-13)
    assert b == pytest.approx(root, abs=1e-9)
    if 1 <= b <= 16:
        g = generalization_term(r, N, C1=C1)
        q = quantization_term(r, b, sigma_g2=s2, C2=C2)
        assert g == pytest.approx(q, rel=1e-10)


@settings(deadline=None, max_examples=60)
@given(
    r=st.integers(1, 256),
    N=st.integers(1, 10**6),
    s2=pos,
    C1=pos,
    C2=pos,
    target=st.floats(min_value=2.0, max_value=15.0),
)
def test_cost_rule_minimises_bound_plus_lambda_b(r, N, s2, C1, C2, target):
    # choose λ so that the minimiser lies inside [1, 16]; scipy then finds it independently
    lam = C2 * r * s2 * 4.0**-target
    f = lambda b: float(excess_risk_bound(r, N, b, sigma_g2=s2, C1=C1, C2=C2)) + lam * b  # noqa: E731
    res = minimize_scalar(f, bounds=(1.0, 16.0), method="bounded", options={"xatol": 1e-10})
    b = float(optimal_bits(r, N, sigma_g2=s2, rule="cost", C1=C1, C2=C2, lam=lam))
    # a minimiser is located only to √(2·ε·|f|/f″) by comparing f values in floating point;
    # f″ = λ·ln 4 at the optimum (d²/db² of C2·r·σ²·4^{−b}, where C2·r·σ²·ln4·4^{−b} = λ)
    eps = np.finfo(float).eps
    tol = 1e-8 + 10 * math.sqrt(2 * eps * abs(res.fun) / (lam * math.log(4)))
    assert b == pytest.approx(res.x, abs=tol)
    assert f(b) <= res.fun + 4 * eps * abs(res.fun)


def test_bound_is_monotone_in_bits_so_paper_rule_is_no_minimiser():
    b = np.linspace(1, 16, 301)
    f = excess_risk_bound(16, 1000, b, sigma_g2=1.0)
    assert np.all(np.diff(f) < 0)
    res = minimize_scalar(
        lambda x: float(excess_risk_bound(16, 1000, x, sigma_g2=1.0)),
        bounds=(1, 16),
        method="bounded",
    )
    assert res.x > 15.99  # the boundary, not ½log₂(rN)
    assert abs(res.x - float(optimal_bits(16, 1000))) > 8


def test_grad_variance_bound_hand_case():
    # 1 + 2²·3·4·4^{−1}·0.5² = 1 + 3
    assert grad_variance_bound(1.0, 2.0, 3.0, 4, 1, 0.5) == pytest.approx(4.0, rel=1e-15)
    # exactly a factor 4 per bit in the added term, linear in r
    a = grad_variance_bound(0.0, 1.0, 1.0, 3, np.arange(1, 17), 1.0)
    np.testing.assert_allclose(a[:-1] / a[1:], 4.0, rtol=1e-14)
    np.testing.assert_allclose(
        grad_variance_bound(0.0, 1.0, 1.0, np.array([1, 2, 8]), 4, 1.0),
        np.array([1, 2, 8]) / 256.0,
        rtol=1e-15,
    )


def test_vectorised_over_every_argument_equals_loop():
    r = np.array([1, 4, 16])[:, None, None]
    N = np.array([10, 1000])[None, :, None]
    b = np.array([2.0, 4.5, 8.0, 16.0])[None, None, :]
    out = excess_risk_bound(r, N, b, sigma_g2=0.5, C1=2.0, C2=3.0)
    assert out.shape == (3, 2, 4)
    for i, j, k in np.ndindex(out.shape):
        ref = 2.0 * math.sqrt(r[i, 0, 0] / N[0, j, 0]) + 3.0 * r[i, 0, 0] * 4.0 ** -b[0, 0, k] * 0.5
        assert out[i, j, k] == pytest.approx(ref, rel=1e-14)
    for rule, kw in (("paper", {"C": 0.3}), ("balanced", {}), ("cost", {"lam": 0.01})):
        vec = optimal_bits(r[:, :, 0], N[:, :, 0], sigma_g2=np.array([0.5, 2.0]), rule=rule, **kw)
        for i, j in np.ndindex(vec.shape):
            one = optimal_bits(
                int(r[i, 0, 0]), int(N[0, j, 0]), sigma_g2=[0.5, 2.0][j], rule=rule, **kw
            )
            assert vec[i, j] == pytest.approx(float(one), abs=1e-13)
    gv = grad_variance_bound(np.array([0.0, 1.0]), 2.0, np.array([[1.0], [3.0]]), 4, 2, 1.0)
    assert gv.shape == (2, 2)
    assert gv[1, 1] == pytest.approx(1.0 + 4 * 3 * 4 / 16, rel=1e-15)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: excess_risk_bound(4, 0, 4, sigma_g2=1.0), r"N .* ≥ 1"),
        (lambda: excess_risk_bound(0, 10, 4, sigma_g2=1.0), r"r .* ≥ 1"),
        (
            lambda: excess_risk_bound(17, 10, 4, sigma_g2=1.0, shape=(16, 32)),
            r"r must be ≤ min\(m, n\) = 16",
        ),
        (lambda: excess_risk_bound(4, 10, 0, sigma_g2=1.0), r"bits .* \[1, 16\]"),
        (lambda: excess_risk_bound(4, 10, 17, sigma_g2=1.0), r"bits .* \[1, 16\]"),
        (lambda: excess_risk_bound(4, 10, [4, 20], sigma_g2=1.0), r"bits"),
        (lambda: excess_risk_bound(4, 10, 4, sigma_g2=0.0), r"sigma_g2 .* > 0"),
        (lambda: excess_risk_bound(4, 10, 4, sigma_g2=-1.0), r"sigma_g2"),
        (lambda: optimal_bits(4, 10, rule="cost"), r"rule='cost' needs lam"),
        (lambda: optimal_bits(4, 10, rule="cost", lam=0.0), r"lam must be > 0"),
        (lambda: optimal_bits(4, 10, rule="best"), r"rule must be one of"),
        (lambda: optimal_bits(4, 0), r"N .* ≥ 1"),
        (lambda: optimal_bits(4, 10, sigma_g2=0.0), r"sigma_g2"),
        (lambda: optimal_bits(64, 10, shape=(32, 32)), r"r must be ≤ min\(m, n\) = 32"),
        (lambda: optimal_bits(4, 10, rule="balanced", C1=0.0), r"C1 must be > 0"),
        (lambda: grad_variance_bound(1.0, 1.0, 1.0, 4, 0, 1.0), r"bits"),
        (lambda: grad_variance_bound(-1.0, 1.0, 1.0, 4, 4, 1.0), r"var0 must be ≥ 0"),
    ],
)
def test_bad_input_raises_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
