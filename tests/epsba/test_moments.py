"""Exact moments of ε_BA (quantbounds.epsba.moments) against independent references.

References: the scalar closed forms of DESIGN.md §2 recomputed in numpy (the module evaluates
the per-entry form), explicit index sums, brute-force dense Monte Carlo in float64 with
tolerance 5·σ/√n (σ the sample standard deviation), hand-computed cases.
"""

import math

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings

from quantbounds.epsba.moments import (
    EpsBAMoments,
    eps_ba_entry_variance,
    eps_ba_moments,
    eps_ba_output_moment,
    eps_ba_variance_bound,
)
from quantbounds.conventions import lora_scale

shapes = st.tuples(st.integers(1, 7), st.integers(1, 4), st.integers(1, 6))


def _factors(seed, m, r, n):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(m, r)), rng.normal(size=(r, n)), rng


@settings(deadline=None, max_examples=12)
@given(shapes, st.integers(0, 10**6), st.floats(0, 3), st.floats(0, 3), st.floats(-4, 4))
def test_moments_equal_scalar_closed_forms(shape, seed, vA, vB, s):
    m, r, n = shape
    B, A, _ = _factors(seed, m, r, n)
    got = eps_ba_moments(B, A, vA, vB, scale=s)
    fro_B, fro_A = np.sum(B**2), np.sum(A**2)
    want = [s * s * n * vA * fro_B, s * s * m * vB * fro_A, s * s * m * n * r * vA * vB]
    np.testing.assert_allclose([float(x) for x in got[:3]], want, rtol=1e-12, atol=1e-300)
    assert float(got.total) == pytest.approx(sum(want), rel=1e-12, abs=1e-300)


@settings(deadline=None, max_examples=10)
@given(shapes, st.integers(0, 10**6))
def test_per_entry_variances_equal_index_sums(shape, seed):
    """Var[(ε_BA)_ij] = Σ_k B_ik²·VA_kj + VB_ik·A_kj² + VB_ik·VA_kj, written as explicit loops."""
    m, r, n = shape
    B, A, rng = _factors(seed, m, r, n)
    VA, VB = rng.uniform(0, 2, size=(r, n)), rng.uniform(0, 2, size=(m, r))
    ref = np.zeros((m, n))
    for i in range(m):
        for j in range(n):
            ref[i, j] = sum(
                B[i, k] ** 2 * VA[k, j] + VB[i, k] * A[k, j] ** 2 + VB[i, k] * VA[k, j]
                for k in range(r)
            )
    got = np.asarray(eps_ba_entry_variance(B, A, VA, VB))
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    mom = eps_ba_moments(B, A, VA, VB)
    assert float(mom.total) == pytest.approx(ref.sum(), rel=1e-12)
    # the three terms, as index sums
    t1 = sum(B[i, k] ** 2 * VA[k, j] for i in range(m) for j in range(n) for k in range(r))
    t3 = sum(VB[i, k] * VA[k, j] for i in range(m) for j in range(n) for k in range(r))
    assert float(mom.b_epsA) == pytest.approx(t1, rel=1e-12)
    assert float(mom.epsB_epsA) == pytest.approx(t3, rel=1e-12)


def test_scalar_entry_variance_formula():
    B, A, _ = _factors(1, 5, 3, 4)
    vA, vB = 0.3, 0.7
    want = vA * np.sum(B**2, axis=1)[:, None] + vB * np.sum(A**2, axis=0)[None, :] + 3 * vA * vB
    np.testing.assert_allclose(np.asarray(eps_ba_entry_variance(B, A, vA, vB)), want, rtol=1e-12)


@pytest.mark.parametrize("noise", ["uniform", "rademacher"])
def test_moments_match_dense_monte_carlo(noise):
    """Brute force: draw ε_A, ε_B, form Q(B)Q(A) − BA densely, average; tolerance 5σ/√n.

    Any independent zero-mean noise with the stated variances must match (the formulas use
    only second moments), so a ±σ Rademacher noise is checked as well as the uniform one.
    """
    m, r, n, N = 6, 3, 5, 40_000
    B, A, rng = _factors(7, m, r, n)
    dA = 0.8 * np.linspace(0.5, 1.5, r * n).reshape(r, n)  # per-entry steps Δ
    dB = 0.6 * np.linspace(1.5, 0.5, m * r).reshape(m, r)
    if noise == "uniform":
        eA = rng.uniform(-0.5, 0.5, size=(N, r, n)) * dA
        eB = rng.uniform(-0.5, 0.5, size=(N, m, r)) * dB
    else:
        eA = rng.choice([-1.0, 1.0], size=(N, r, n)) * dA / math.sqrt(12)
        eB = rng.choice([-1.0, 1.0], size=(N, m, r)) * dB / math.sqrt(12)
    VA, VB = dA**2 / 12, dB**2 / 12
    s = 0.5
    terms = (
        s
        * s
        * np.stack(
            [
                np.sum((B @ eA) ** 2, axis=(1, 2)),
                np.sum((eB @ A) ** 2, axis=(1, 2)),
                np.sum((eB @ eA) ** 2, axis=(1, 2)),
                np.sum(((B + eB) @ (A + eA) - B @ A) ** 2, axis=(1, 2)),
            ],
            axis=1,
        )
    )
    exact = eps_ba_moments(B, A, VA, VB, scale=s)
    for j, name in enumerate(EpsBAMoments._fields):
        x = terms[:, j]
        tol = 5 * x.std(ddof=1) / math.sqrt(N)
        assert abs(x.mean() - float(exact[j])) <= tol, (name, x.mean(), float(exact[j]), tol)
    # per entry
    err = (B + eB) @ (A + eA) - B @ A
    sq = err**2 * s * s
    tol = 5 * sq.std(axis=0, ddof=1) / math.sqrt(N)
    assert np.all(
        np.abs(sq.mean(axis=0) - np.asarray(eps_ba_entry_variance(B, A, VA, VB, scale=s))) <= tol
    )
    # output moment, one input and a batch of two
    x1 = rng.normal(size=n)
    X = rng.normal(size=(n, 2))
    for x in (x1, X):
        out = np.sum(np.einsum("sij,j...->si...", err, x).reshape(N, -1) ** 2, axis=1) * s * s
        want = float(eps_ba_output_moment(B, A, x, VA, VB, scale=s))
        assert abs(out.mean() - want) <= 5 * out.std(ddof=1) / math.sqrt(N)


@settings(deadline=None, max_examples=10)
@given(shapes, st.integers(0, 10**6), st.floats(0.01, 2), st.floats(0.01, 2))
def test_output_moment_formula_and_batches(shape, seed, vA, vB):
    m, r, n = shape
    B, A, rng = _factors(seed, m, r, n)
    x = rng.normal(size=n)
    want = vA * (x @ x) * np.sum(B**2) + m * vB * np.sum((A @ x) ** 2) + m * r * vA * vB * (x @ x)
    assert float(eps_ba_output_moment(B, A, x, vA, vB)) == pytest.approx(want, rel=1e-11)
    # e_j inputs sum to E‖ε_BA‖_F² (the columns of ε_BA)
    cols = sum(float(eps_ba_output_moment(B, A, np.eye(n)[j], vA, vB)) for j in range(n))
    assert cols == pytest.approx(float(eps_ba_moments(B, A, vA, vB).total), rel=1e-11)
    X = rng.normal(size=(n, 3))
    batch = float(eps_ba_output_moment(B, A, X, vA, vB))
    assert batch == pytest.approx(
        sum(float(eps_ba_output_moment(B, A, X[:, k], vA, vB)) for k in range(3)), rel=1e-11
    )


@pytest.mark.parametrize(
    "convention,alpha,r", [("alpha_r", 16.0, 8), ("rslora", 16.0, 8), ("one", 16.0, 8)]
)
def test_scale_multiplies_every_moment_by_s_squared(convention, alpha, r):
    B, A, rng = _factors(3, 9, r, 7)
    s = lora_scale(convention, alpha, r)
    base = eps_ba_moments(B, A, 0.2, 0.3)
    scaled = eps_ba_moments(B, A, 0.2, 0.3, scale=s)
    np.testing.assert_allclose(np.array(scaled, float), s * s * np.array(base, float), rtol=1e-12)
    x = rng.normal(size=7)
    assert float(eps_ba_output_moment(B, A, x, 0.2, 0.3, scale=s)) == pytest.approx(
        s * s * float(eps_ba_output_moment(B, A, x, 0.2, 0.3)), rel=1e-12
    )
    np.testing.assert_allclose(
        np.asarray(eps_ba_entry_variance(B, A, 0.2, 0.3, scale=s)),
        s * s * np.asarray(eps_ba_entry_variance(B, A, 0.2, 0.3)),
        rtol=1e-12,
    )
    bound = eps_ba_variance_bound(9, 7, r, 4, 1.0, 1.0, scale=s)
    assert bound == pytest.approx(s * s * eps_ba_variance_bound(9, 7, r, 4, 1.0, 1.0), rel=1e-12)


def test_variance_bound_hand_case():
    # m = n = r = 1, b = 1, R = 1: σ² = 4^{-1}/3 = 1/12 each; B = A = 1 attains the bound:
    # 1/12 + 1/12 + 1/144 = 25/144 = ⅔·¼ + ⅑·1/16
    assert eps_ba_variance_bound(1, 1, 1, 1, 1.0, 1.0) == pytest.approx(25 / 144, rel=1e-15)
    assert float(eps_ba_moments([[1.0]], [[1.0]], 1 / 12, 1 / 12).total) == pytest.approx(25 / 144)
    # a factor of 4 per bit in the 4^{-b} terms, exactly 16 in the last
    b = np.arange(1, 17)
    v = eps_ba_variance_bound(3, 5, 2, b, 1.0, 1.0)
    want = 3 * 5 * 2 * (2 / 3 * 4.0**-b + 1 / 9 * 16.0**-b)
    np.testing.assert_allclose(v, want, rtol=1e-14)


@settings(deadline=None, max_examples=15)
@given(shapes, st.integers(0, 10**6), st.integers(1, 16))
def test_variance_bound_dominates_exact_moment_for_absmax_ranges(shape, seed, bits):
    m, r, n = shape
    B, A, _ = _factors(seed, m, r, n)
    RA, RB = np.abs(A).max(), np.abs(B).max()
    var = lambda R: R**2 * 4.0 ** (-bits) / 3  # noqa: E731  (Δ²/12 with Δ = 2^{1−b}R)
    exact = float(eps_ba_moments(B, A, var(RA), var(RB)).total)
    bound = eps_ba_variance_bound(m, n, r, bits, RA, RB)
    assert exact <= bound * (1 + 1e-12)
    # attained when every entry is ±absmax
    Bs, As = RB * np.sign(B), RA * np.sign(A)
    tight = float(eps_ba_moments(Bs, As, var(RA), var(RB)).total)
    assert tight == pytest.approx(bound, rel=1e-12)


def test_peft_zero_B_makes_B_epsA_vanish():
    A = np.random.default_rng(0).uniform(-0.1, 0.1, size=(4, 6))
    B = np.zeros((5, 4))
    mom = eps_ba_moments(B, A, 0.01, 0.02)
    assert float(mom.b_epsA) == 0.0
    assert float(mom.epsB_A) == pytest.approx(5 * 0.02 * np.sum(A**2), rel=1e-12)
    assert float(mom.epsB_A) > 0
    assert float(mom.epsB_epsA) == pytest.approx(5 * 6 * 4 * 0.01 * 0.02, rel=1e-12)


def test_bad_inputs_name_the_argument():
    B, A, _ = _factors(0, 4, 3, 5)
    with pytest.raises(ValueError, match="do not multiply"):
        eps_ba_moments(B, A[:2], 0.1, 0.1)
    with pytest.raises(ValueError, match="rank"):
        eps_ba_moments(np.zeros((4, 0)), np.zeros((0, 5)), 0.1, 0.1)
    with pytest.raises(ValueError, match="B must be finite"):
        eps_ba_moments(np.where(B > 0, np.nan, B), A, 0.1, 0.1)
    with pytest.raises(ValueError, match="A must be finite"):
        eps_ba_entry_variance(B, np.full_like(A, np.inf), 0.1, 0.1)
    with pytest.raises(ValueError, match="var_A"):
        eps_ba_moments(B, A, -0.1, 0.1)
    with pytest.raises(ValueError, match="var_B"):
        eps_ba_moments(B, A, 0.1, np.ones((2, 2)))
    with pytest.raises(ValueError, match="scale"):
        eps_ba_moments(B, A, 0.1, 0.1, scale=np.nan)
    with pytest.raises(ValueError, match="x must have shape"):
        eps_ba_output_moment(B, A, np.ones(4), 0.1, 0.1)
    with pytest.raises(ValueError, match="bits"):
        eps_ba_variance_bound(4, 5, 3, 17, 1.0, 1.0)
    with pytest.raises(ValueError, match="bits"):
        eps_ba_variance_bound(4, 5, 3, 0, 1.0, 1.0)
    with pytest.raises(ValueError, match="r must be"):
        eps_ba_variance_bound(4, 5, 0, 4, 1.0, 1.0)
    with pytest.raises(ValueError, match="R_A"):
        eps_ba_variance_bound(4, 5, 3, 4, -1.0, 1.0)
    with pytest.raises(ValueError, match="must be a 2-D"):
        eps_ba_moments(np.ones(3), A, 0.1, 0.1)
