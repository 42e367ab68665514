"""Tests of the `quantbounds validate` main job (simulations/*): decision rules (each must be
able to say "fails"), the formulas the experiments add (against independent references),
and one end-to-end run on the hidden tiny scale (schema, identities, figures, CLI errors)."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from quantbounds.verdicts.registry import registry
from quantbounds.verdicts.results import VERDICTS, load_verdicts
from simulations import breakdown, codebooks, decomposition, moments_mc, slopes
from simulations.factors import (
    FactorSpec,
    gaussian_factors,
    make_factors,
    peft_init_factors,
    student_t4,
    trained_like_factors,
)
from simulations.validate import ValidateConfig, config_for, main


# ----------------------------------------------------------------------------- end to end (tiny)
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("validate")
    rc = main(
        [
            "--scale",
            "tiny",
            "--out",
            str(d / "validation.json"),
            "--figures",
            str(d / "figs"),
            "--no-progress",
        ]
    )
    return rc, d


def test_tiny_run_writes_schema(tiny_run):
    rc, d = tiny_run
    assert rc == 0
    data = json.loads((d / "validation.json").read_text())
    assert data["schema"] == "quantbounds.validation/1" and data["scale"] == "tiny"
    verdicts = load_verdicts(d / "validation.json")  # checks the required keys
    assert len(verdicts) >= 15
    assert {v["verdict"] for v in verdicts} <= set(VERDICTS)
    assert set(data["experiments"]) == {
        "decomposition",
        "moments",
        "slopes",
        "breakdown",
        "codebooks",
    }
    assert all(v["details"]["experiment"] in data["experiments"] for v in verdicts)
    # every verdict names a registry claim with its kind, and was through Holm's step
    reg = registry()
    assert all(v["claim_id"] in reg and v["kind"] == reg[v["claim_id"]].kind for v in verdicts)
    assert all("raw_verdict" in v and "p_adjusted" in v for v in verdicts)
    # one Holm step: the single verdicts' and every reading's (p_holds, p_fails)
    n_read = sum(len(v["details"].get("readings_p_adjusted") or {}) for v in verdicts)
    n_single = sum(v["p_adjusted"] is not None for v in verdicts)
    assert data["family"]["tests"] == 2 * (n_single + n_read)
    # implementation checks carry no p-values (kept out of the family) and are identities
    for v in verdicts:
        if v["kind"] == "identity":
            assert v["p_holds"] is None and v["p_adjusted"] is None
    ids = {v["claim_id"] for v in verdicts}
    for cid in ("s001.eq6.decomposition", "toolkit.zero_b", "toolkit.moments.fro",
                "toolkit.variance_bound.additive"):
        assert cid in ids and reg[cid].kind == "identity"


def test_tiny_run_identities_and_moments_hold(tiny_run):
    _, d = tiny_run
    data = json.loads((d / "validation.json").read_text())
    rows = data["experiments"]["decomposition"]["rows"]
    assert rows and all(r["finite"] and r["max_ratio"] <= 1.0 for r in rows)
    assert all(
        r["max_abs_eps_ba"] == 0.0 for r in data["experiments"]["decomposition"]["peft_zero_b"]
    )
    vs = data["verdicts"]
    dec = [v for v in vs if v["claim_id"] == "s001.eq6.decomposition"]
    assert len(dec) == 1 and dec[0]["verdict"] == "holds"  # tiny: float64 only
    assert next(v for v in vs if v["claim_id"] == "toolkit.moments.fro")["verdict"] == "holds"
    # the engine's own additive prediction equals our float64 recomputation
    for c in data["experiments"]["moments"]["cells"]:
        assert c["engine_predicted_total"] == pytest.approx(c["exact"][3], rel=1e-5, abs=1e-30)


def test_tiny_run_figures(tiny_run):
    _, d = tiny_run
    figs = sorted(p.name for p in (d / "figs").glob("validation_*.png"))
    assert figs == [
        "validation_breakdown.png",
        "validation_codebooks.png",
        "validation_decomposition.png",
        "validation_moments.png",
        "validation_slopes.png",
    ]
    assert all((d / "figs" / f).stat().st_size > 10_000 for f in figs)


# ----------------------------------------------------------------------------- factor families
def test_factor_families_shapes_and_peft_init():
    # shapes/dtypes the tiny run already compiled, where possible (compiles dominate)
    B, A = peft_init_factors(jax.random.key(0), 128, 64, 4, dtype=jnp.float64)
    assert B.shape == (128, 4) and A.shape == (4, 64)
    assert float(jnp.max(jnp.abs(B))) == 0.0
    assert float(jnp.max(jnp.abs(A))) <= 1 / math.sqrt(64)
    for fam in ("gaussian", "trained_like", "peft_init"):
        B, A = make_factors(jax.random.key(1), FactorSpec(family=fam, m=64, n=64, r=2))
        assert B.shape == (64, 2) and A.shape == (2, 64) and B.dtype == jnp.float32
    with pytest.raises(ValueError, match="r"):
        FactorSpec(family="gaussian", m=16, n=8, r=9)
    with pytest.raises(ValueError, match="family"):
        FactorSpec(family="lognormal", m=16, n=8, r=2)


def test_trained_like_spectrum_is_exactly_k_to_minus_half_per_factor():
    # Same key, decay 1 vs 0: column k of B (row k of A) is scaled by exactly k^{−1/2}.
    k = jax.random.key(3)
    B1, A1 = trained_like_factors(k, 40, 30, 5, dtype=jnp.float64, decay=1.0)
    B0, A0 = trained_like_factors(k, 40, 30, 5, dtype=jnp.float64, decay=0.0)
    s = np.arange(1, 6) ** -0.5
    np.testing.assert_allclose(np.asarray(B1), np.asarray(B0) * s[None, :], rtol=1e-14)
    np.testing.assert_allclose(np.asarray(A1), np.asarray(A0) * s[:, None], rtol=1e-14)


def test_nested_factors_are_prefixes_of_one_draw():
    from simulations.factors import nested_factors

    (B2, A2), (B4, A4) = nested_factors(jax.random.key(1), "gaussian", 64, 64, [2, 4])
    assert B2.shape == (64, 2) and A4.shape == (4, 64)
    np.testing.assert_array_equal(np.asarray(B2), np.asarray(B4)[:, :2])
    np.testing.assert_array_equal(np.asarray(A2), np.asarray(A4)[:2])


def test_student_t4_matches_the_t4_cdf():
    # Empirical CDF at fixed points vs scipy's t₄; each F̂ has sd √(F(1−F)/n): 5 sd tolerance.
    n = 200_000
    x = np.asarray(student_t4(jax.random.key(4), (n,), dtype=jnp.float64))
    for q in (-3.0, -1.0, 0.0, 0.5, 2.0, 4.0):
        F = stats.t.cdf(q, 4)
        assert abs(np.mean(x <= q) - F) <= 5 * math.sqrt(F * (1 - F) / n)


# ----------------------------------------------------------------------------- decomposition
def test_identity_check_exact_and_nan_detected():
    rng = np.random.default_rng(5)
    B, A = rng.normal(size=(8, 3)), rng.normal(size=(3, 6))
    # dyadic "quantizers" on dyadic inputs: every product is exact in float64 → ratio 0
    B, A = np.round(B * 64) / 64, np.round(A * 64) / 64
    QB, QA = np.round(B * 4) / 4, np.round(A * 4) / 4
    res = decomposition.identity_check(B, A, QB, QA)
    assert res["max_ratio"] == 0.0 and res["finite"]
    # the ε_BA it reports equals the dense difference
    assert res["max_abs_eps_ba"] == pytest.approx(np.abs(QB @ QA - B @ A).max())
    # a quantizer that returns NaN (e.g. 0/0 in a zero block's scale) must fail the verdict
    QA_bad = QA.copy()
    QA_bad[0, 0] = np.nan
    bad = decomposition.identity_check(B, A, QB, QA_bad)
    assert not bad["finite"]
    v = decomposition.verdicts(
        {
            "rows": [
                {
                    "dtype": "float64",
                    "max_ratio": bad["max_ratio"],
                    "finite": False,
                    "resid_ulps": 0.0,
                    "m": 8,
                    "n": 6,
                    "r": 3,
                }
            ],
            "peft_zero_b": [{"max_abs_eps_ba": 0.0, "max_abs_b_epsA": 0.0, "finite": True}],
        }
    )
    assert v[0].verdict == "fails" and v[1].verdict == "holds"


def test_identity_bound_is_respected_in_float32_on_random_factors():
    # float32 with a non-trivial quantizer: residual below the Higham bound (ratio ≤ 1) but
    # not zero (so the check is measuring rounding, not comparing identical arrays).
    rng = np.random.default_rng(6)
    B = rng.normal(size=(64, 16)).astype(np.float32)
    A = rng.normal(size=(16, 48)).astype(np.float32)
    QB = (np.round(B * 3.1) / 3.1).astype(np.float32)
    QA = (np.round(A * 2.7) / 2.7).astype(np.float32)
    res = decomposition.identity_check(B, A, QB, QA)
    assert 0.0 < res["max_ratio"] <= 1.0


def test_peft_zero_b_verdict_fails_when_eps_ba_nonzero():
    v = decomposition.verdicts(
        {
            "rows": [
                {
                    "dtype": "float32",
                    "max_ratio": 0.1,
                    "finite": True,
                    "resid_ulps": 0.1,
                    "m": 8,
                    "n": 8,
                    "r": 2,
                }
            ],
            "peft_zero_b": [{"max_abs_eps_ba": 1e-9, "max_abs_b_epsA": 0.0, "finite": True}],
        }
    )
    assert [x.verdict for x in v] == ["holds", "fails"]


# ----------------------------------------------------------------------------- breakdown helpers
@pytest.mark.parametrize(
    "gran,kw", [("tensor", {}), ("channel", {"axis": 0}), ("block64", {"block_size": 64})]
)
def test_group_absmax_matches_montecarlo_ranges(gran, kw):
    from quantbounds.epsba.montecarlo import ranges

    x = jax.random.normal(jax.random.key(7), (32, 16), dtype=jnp.float64)
    np.testing.assert_array_equal(
        np.asarray(breakdown.group_absmax(x, gran)),
        np.broadcast_to(ranges(np.asarray(x), **kw), x.shape),
    )


@pytest.mark.parametrize("gran", ["tensor", "channel", "block64"])
def test_step_size_is_the_quantizers_step(gran):
    # RTN on the mid-tread grid has |error| ≤ Δ/2 for every entry of every group, with our Δ;
    # the paper grid clips +R to R − Δ, so there |error| ≤ Δ. Both also attained (tight).
    from quantbounds.quant.quantizers import quantize

    x = jax.random.normal(jax.random.key(8), (32, 16), dtype=jnp.float64)
    kw = decomposition.granularity_kwargs(gran)
    for step, lim in (("midtread", 0.5), ("paper", 1.0)):
        d = breakdown.step_size(3, breakdown.group_absmax(x, gran), step)
        err = np.abs(np.asarray(quantize(x, "uniform", bits=3, step=step, **kw) - x))
        assert np.all(err <= lim * np.asarray(d) * (1 + 1e-12))
        assert np.max(err / np.asarray(d)) >= 0.45
    assert float(breakdown.step_size(3, jnp.asarray(1.0), "paper")) == 0.25  # 2^{1−3}
    assert float(breakdown.step_size(3, jnp.asarray(1.0), "midtread")) == pytest.approx(1 / 3)


# ----------------------------------------------------------------------------- slopes
def test_model_totals_match_eps_ba_moments():
    from quantbounds.epsba.moments import eps_ba_moments
    from quantbounds.quant.noise import uniform_noise_variance

    B, A = gaussian_factors(jax.random.key(9), 20, 30, 4, dtype=jnp.float64)
    bits = [2, 5, 9]
    got = slopes.model_totals(B, A, bits)
    RA, RB = float(jnp.max(jnp.abs(A))), float(jnp.max(jnp.abs(B)))
    want = [
        float(
            eps_ba_moments(B, A, uniform_noise_variance(b, RA), uniform_noise_variance(b, RB)).total
        )
        for b in bits
    ]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_real_totals_match_dense_numpy_and_padding_is_exact():
    from quantbounds.quant.quantizers import quantize

    B, A = gaussian_factors(jax.random.key(10), 24, 20, 3, dtype=jnp.float64)
    bits = jnp.asarray([2, 6], jnp.int32)
    got = np.asarray(slopes.real_totals(B[None], A[None], bits))[0]
    for b, g in zip((2, 6), got):
        QB = np.asarray(quantize(B, "uniform", bits=b))
        QA = np.asarray(quantize(A, "uniform", bits=b))
        dense = np.sum((QB @ QA - np.asarray(B) @ np.asarray(A)) ** 2)
        assert g == pytest.approx(dense, rel=1e-9)
    # zero-padding the rank (how run() buckets ranks) changes no term beyond rounding
    Bp, Ap = jnp.pad(B, ((0, 0), (0, 5))), jnp.pad(A, ((0, 5), (0, 0)))
    np.testing.assert_allclose(
        np.asarray(slopes.real_terms(Bp[None], Ap[None], bits)),
        np.asarray(slopes.real_terms(B[None], A[None], bits)),
        rtol=1e-13,
    )


# ----------------------------------------------------------------------------- codebooks
def test_gaussian_code_distortion_closed_forms():
    # two levels ±c: D(c) = 1 − 2c·√(2/π) + c² (E x² − 2c·E|x| + c²)
    for c in (0.3, 0.7978845608, 1.5):
        assert codebooks.gaussian_code_distortion([-c, c]) == pytest.approx(
            1 - 2 * c * math.sqrt(2 / math.pi) + c * c, rel=1e-12
        )
    # one level at 0: D = Var x = 1; Lloyd's 2-level optimum is ±√(2/π), D = 1 − 2/π
    assert codebooks.gaussian_code_distortion([0.0]) == pytest.approx(1.0, rel=1e-12)
    np.testing.assert_allclose(
        codebooks.lloyd_levels(2), [-math.sqrt(2 / math.pi), math.sqrt(2 / math.pi)], rtol=1e-10
    )
    d, step = codebooks.best_scale_distortion(codebooks.uniform_levels(2))
    assert d == pytest.approx(1 - 2 / math.pi, rel=1e-9)
    assert step == pytest.approx(2 * math.sqrt(2 / math.pi), rel=1e-6)  # levels ±step/2


@settings(deadline=None, max_examples=15)
@given(st.lists(st.floats(-3, 3), min_size=2, max_size=6, unique=True))
def test_gaussian_code_distortion_vs_monte_carlo(levels):
    # MC of (x − nearest level)² with n draws: |mean − D| ≤ 5·sd/√n with the sample sd.
    rng = np.random.default_rng(13)
    x = rng.normal(size=100_000)
    y = np.sort(levels)
    e2 = np.min((x[:, None] - y[None, :]) ** 2, axis=1)
    assert abs(e2.mean() - codebooks.gaussian_code_distortion(y)) <= 5 * e2.std() / math.sqrt(
        x.size
    )


# ----------------------------------------------------------------------------- configs and CLI
def test_configs_validate_themselves():
    with pytest.raises(ValueError, match="bits"):
        decomposition.DecompositionConfig(bits=(0,))
    with pytest.raises(ValueError, match="multiples of 64"):
        breakdown.BreakdownConfig(m=100, n=100, r=3)
    with pytest.raises(ValueError, match="≥ 3"):
        slopes.SlopesConfig(ranks=(1, 2))
    with pytest.raises(ValueError, match="peft_init"):
        slopes.SlopesConfig(families=("peft_init",))
    with pytest.raises(ValueError, match="n_samples"):
        moments_mc.MomentsConfig(n_samples=1)
    with pytest.raises(ValueError, match="scale"):
        ValidateConfig(scale="huge")
    with pytest.raises(TypeError, match="slopes"):
        ValidateConfig(slopes=moments_mc.MomentsConfig())
    with pytest.raises(ValueError, match="scale"):
        config_for("huge")


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--scale", "huge"], "--scale"),
        (["--seed", "-1"], "--seed"),
        (["--seed", "x"], "--seed"),
        (["--quick", "--scale", "full"], "--quick"),
        (["--bogus"], "--bogus"),
    ],
)
def test_cli_rejects_bad_options(argv, needle, capsys):
    assert main(argv) == 2
    assert needle in capsys.readouterr().err
