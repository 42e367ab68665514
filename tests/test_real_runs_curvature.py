"""quantbounds.moments.eps_ba_curvature_moment against a Kronecker re-computation and Monte Carlo."""

import numpy as np
import pytest

from quantbounds.epsba.moments import eps_ba_curvature_moment, eps_ba_output_moment


def _psd(rng, k):
    M = rng.standard_normal((k, k))
    return M @ M.T / k


def _case(seed=0, m=5, r=3, n=4):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((m, r)),
        rng.standard_normal((r, n)),
        _psd(rng, n),
        _psd(rng, m),
        rng,
    )


def test_linear_terms_equal_the_kronecker_quadratic_form():
    # E vec(X)ᵀ(Σ⊗G)vec(X) for vec(B ε_A) = (I⊗B)vec(ε_A), vec(ε_B A) = (Aᵀ⊗I)vec(ε_B) (column-major vec)
    B, A, Sx, G, _ = _case()
    m, r = B.shape
    n = A.shape[1]
    sa, sb, s = 0.3, 0.7, 1.9
    H = np.kron(Sx, G)  # vec(ΔW)ᵀ (Σ_x ⊗ G) vec(ΔW) = tr(ΔW Σ_x ΔWᵀ G) for symmetric Σ_x, G
    JA = np.kron(np.eye(n), B)
    JB = np.kron(A.T, np.eye(m))
    t1 = sa * np.trace(JA.T @ H @ JA)
    t2 = sb * np.trace(JB.T @ H @ JB)
    # product term: vec(ε_B ε_A) = (I⊗ε_B)vec(ε_A); E over ε_A gives σ_A²·tr((I⊗ε_B)ᵀH(I⊗ε_B)),
    # and E over ε_B of that, entry by entry (ε_B = unit matrices weighted by σ_B²):
    t3 = 0.0
    for i in range(m):
        for k in range(r):
            Eik = np.zeros((m, r))
            Eik[i, k] = 1.0
            J = np.kron(np.eye(n), Eik)
            t3 += sb * sa * np.trace(J.T @ H @ J)
    got = eps_ba_curvature_moment(B, A, Sx, G, sa, sb, scale=s)
    assert float(got.b_epsA) == pytest.approx(s * s * t1, rel=1e-12)
    assert float(got.epsB_A) == pytest.approx(s * s * t2, rel=1e-12)
    assert float(got.epsB_epsA) == pytest.approx(s * s * t3, rel=1e-12)
    assert float(got.total) == pytest.approx(
        float(got.b_epsA + got.epsB_A + got.epsB_epsA), rel=1e-12
    )


def test_monte_carlo_with_per_entry_variances():
    B, A, Sx, G, rng = _case(seed=1)
    m, r = B.shape
    n = A.shape[1]
    VA = rng.uniform(0.1, 1.0, (r, n))
    VB = rng.uniform(0.1, 1.0, (m, r))
    K = 200_000
    eA = rng.uniform(-1, 1, (K, r, n)) * np.sqrt(3 * VA)  # uniform noise, variance V_A per entry
    eB = rng.uniform(-1, 1, (K, m, r)) * np.sqrt(3 * VB)
    E = B @ eA + eB @ A + eB @ eA  # K × m × n
    q = np.einsum("kij,jl,kpl,pi->k", E, Sx, E, G)  # tr(E Σ Eᵀ G)
    want = float(eps_ba_curvature_moment(B, A, Sx, G, VA, VB).total)
    assert abs(q.mean() - want) <= 5 * q.std(ddof=1) / np.sqrt(K)


def test_identity_curvature_is_the_output_moment():
    B, A, _, _, rng = _case(seed=2)
    x = rng.standard_normal(A.shape[1])
    got = eps_ba_curvature_moment(B, A, np.outer(x, x), np.eye(B.shape[0]), 0.2, 0.5, scale=0.5)
    assert float(got.total) == pytest.approx(
        float(eps_ba_output_moment(B, A, x, 0.2, 0.5, scale=0.5)), rel=1e-12
    )


def test_bad_shapes():
    B, A, Sx, G, _ = _case()
    with pytest.raises(ValueError, match="Sigma_x"):
        eps_ba_curvature_moment(B, A, G, G, 0.1, 0.1)
    with pytest.raises(ValueError, match="G must"):
        eps_ba_curvature_moment(B, A, Sx, Sx, 0.1, 0.1)
