"""quantbounds.verdicts.claims: verdicts on the seeds' empirical claims from paired runs, fed
synthetic records that agree and that disagree with each claim, hand cases of the degradation
and of the rules, and scipy re-computations of the intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from quantbounds.calib.calibration import Calibration, ParamEstimate, TermFit, calibrate
from quantbounds.calib.pairing import pair_runs, paired_excess
from quantbounds.calib.synthetic import SyntheticTruth, synthetic_records
from quantbounds.verdicts.claims import (
    claim_verdicts,
    correlation_verdict,
    degradation,
    fit_verdicts,
    grad_var_verdicts,
    rank_dependence_verdicts,
)


def _by_claim(vs, text):
    return [v for v in vs if text in v.claim]


def _quant_fit(params: dict, *, weak=(), fixed=(), scale="one") -> Calibration:
    """A Calibration whose quantization term has the given (value, ci) per parameter."""
    estimates = {k: ParamEstimate(value=v, fixed=False, ci=ci) for k, (v, ci) in params.items()}
    estimates.update({k: ParamEstimate(value=1.0, fixed=True) for k in fixed})
    term = TermFit(
        model="hand",
        params=estimates,
        theta=np.zeros(3),
        size_key="n_pairs",
        n=0,
        n_boot_ok=0,
        r2_in_sample=float("nan"),
        weakly_identified=tuple(weak),
    )
    return Calibration(quant=term, gen=None, arm="adapter_rtn", scale=scale)


# ----------------------------------------------------------------------------- hand cases
def test_degradation_hand_cases_and_zero_baseline():
    # ppl 11 vs 10 → +10 %; F1 0.45 vs 0.5 → +10 % worse; a better run is negative
    assert degradation([11.0], [10.0], metric="perplexity")[0] == pytest.approx(0.1)
    assert degradation([0.45], [0.5], metric="f1")[0] == pytest.approx(0.1)
    assert degradation([9.0], [10.0], metric="eval_loss")[0] == pytest.approx(-0.1)
    with pytest.raises(ValueError, match="zeros"):
        degradation([1.0], [0.0], metric="f1")
    with pytest.raises(ValueError, match="metric"):
        degradation([1.0], [1.0], metric="bleu")


def test_claims_accept_records_or_the_shared_pairing():
    recs = synthetic_records(
        seed=4,
        ranks=(4, 16),
        bits=(4, 8),
        n_trains=(1000,),
        seeds=(0, 1, 2, 3),
        base_arms=("base_nf4", "base_fp4"),
    )
    a, notes_a = claim_verdicts(recs, n_boot=200)
    b, notes_b = claim_verdicts(pair_runs(recs), n_boot=200)
    assert [v.to_dict() for v in a] == [v.to_dict() for v in b] and notes_a == notes_b


# ----------------------------------------------------------------------------- claims on runs
def test_verdicts_fail_on_disagreeing_data():
    # strong quantization effect: 8-bit costs a lot, FP4 better than NF4, NF4 much worse
    truth = SyntheticTruth(C2=20.0, rho=2.0, base_shift=(("base_nf4", 0.2), ("base_fp4", 0.05)))
    recs = synthetic_records(
        seed=5,
        truth=truth,
        ranks=(4, 16),
        bits=(4, 8),
        n_trains=(1000,),
        seeds=(0, 1, 2, 3),
        base_arms=("base_nf4", "base_fp4"),
    )
    vs, _ = claim_verdicts(recs, n_boot=500)
    g = _by_claim(vs, "8-bit gives")
    assert g and all(v.verdict == "fails" for v in g)
    assert all(
        v.verdict == "fails" for v in _by_claim(vs, "NF4 matches or beats 16-bit on perplexity")
    )
    assert _by_claim(vs, "FP4 underperforms NF4 on perplexity")[0].verdict == "fails"
    cal = calibrate(recs, n_boot=100)
    pb = [v for v in fit_verdicts(cal) if v.details["parameter"] == "per_bit_factor"]
    assert pb[0].verdict == "fails" and pb[0].ci[1] < 4


def test_verdicts_hold_on_agreeing_data_and_w0_rank_dependence_fails_when_present():
    recs = synthetic_records(
        seed=6,
        ranks=(2, 8, 32),
        bits=(2, 8),
        n_trains=(1000,),
        seeds=(0, 1, 2, 3),
        base_arms=("base_nf4",),
    )
    vs = rank_dependence_verdicts(recs, n_boot=500)
    assert _by_claim(vs, "quantizing W0")[0].verdict == "holds"
    assert _by_claim(vs, "quantizing B, A")[0].verdict == "holds"
    for r in recs:  # now make the W0 arm's excess grow with rank
        if r["arm"] == "base_nf4":
            r["eval_loss"] += 0.05 * math.log2(r["rank"])
    vs = rank_dependence_verdicts(recs, n_boot=500)
    assert _by_claim(vs, "quantizing W0")[0].verdict == "fails"


def test_rank_prediction_follows_scale_convention():
    recs = synthetic_records(
        seed=7, ranks=(2, 8, 32), bits=(2,), n_trains=(1000,), seeds=(0, 1, 2), base_arms=()
    )
    for r in recs:
        r["scale"] = (
            "alpha_r"  # the data still increase with r; under α/r the theory predicts a decrease
        )
    v = _by_claim(rank_dependence_verdicts(recs, n_boot=300), "quantizing B, A")[0]
    assert "decreasing" in v.claim and v.verdict == "fails"


def test_correlation_verdict_holds_then_fails_when_excess_ignores_bits():
    recs = synthetic_records(
        seed=8, ranks=(2, 8, 32), bits=(2, 3, 4), n_trains=(1000,), seeds=(0, 1, 2, 3), base_arms=()
    )
    assert correlation_verdict(recs, arm="adapter_rtn", n_boot=300).verdict == "holds"
    # excess ∝ rank only, flat in b: r·4^(−b) no longer predicts it
    flat = synthetic_records(
        seed=8,
        truth=SyntheticTruth(rho=1.0 + 1e-9, C2=0.02),
        ranks=(2, 8, 32),
        bits=(2, 3, 4),
        n_trains=(1000,),
        seeds=(0, 1, 2, 3),
        base_arms=(),
    )
    v = correlation_verdict(flat, arm="adapter_rtn", n_boot=300)
    assert v.verdict == "fails" and v.ci[1] < 0.9


def test_zero_f1_baselines_are_left_out_with_a_note():
    recs = synthetic_records(
        seed=0, ranks=(4,), bits=(8,), n_trains=(100,), seeds=(0, 1, 2), base_arms=("base_nf4",)
    )
    for r in recs:
        r["f1"] = 0.0
    vs, notes = claim_verdicts(recs, n_boot=100)
    assert not _by_claim(vs, "on f1")
    assert any("baseline f1 = 0" in n for n in notes)
    assert _by_claim(vs, "NF4 matches or beats 16-bit on perplexity")


def test_too_few_pairs_never_give_a_decisive_verdict():
    """One seed, two ranks: every paired verdict must be "conditional" (no spread estimate)."""
    recs = synthetic_records(
        seed=0,
        truth=SyntheticTruth(C2=50.0),
        ranks=(2, 8),
        bits=(2, 8),
        n_trains=(100,),
        seeds=(0,),
        base_arms=("base_nf4",),
    )
    vs, _ = claim_verdicts(recs, n_boot=200)
    assert vs and all(v.verdict == "conditional" for v in vs), [(v.claim, v.verdict) for v in vs]


def test_rank_slope_interval_matches_scipy_t_interval():
    recs = synthetic_records(
        seed=12, ranks=(2, 8, 32), bits=(2,), n_trains=(1000,), seeds=(0, 1), base_arms=()
    )
    v = _by_claim(rank_dependence_verdicts(recs), "quantizing B, A")[0]
    P = paired_excess(recs, arm="adapter_rtn", bits=2)
    x, y = np.log2(P.rank.astype(float)), P.excess
    slope, icpt = np.polyfit(x, y, 1)  # reference: by hand, not linregress
    se = math.sqrt(np.sum((y - icpt - slope * x) ** 2) / (len(x) - 2) / np.sum((x - x.mean()) ** 2))
    half = stats.t.ppf(0.975, len(x) - 2) * se
    assert v.measured == pytest.approx(slope, rel=1e-10)
    assert v.ci == pytest.approx([slope - half, slope + half], rel=1e-9)


def test_fit_verdict_is_conditional_when_interval_also_holds_no_effect():
    cal = _quant_fit(
        {
            "per_bit_factor": (3.0, (0.9, 9.0)),  # holds 4 and 1
            "exponent_r": (1.0, (0.5, 1.5)),
        }
    )  # holds 1, not 0
    v = {x.details["parameter"]: x.verdict for x in fit_verdicts(cal)}
    assert v == {"per_bit_factor": "conditional", "exponent_r": "holds"}


def test_fit_verdict_is_conditional_when_weakly_identified_or_unbounded():
    """An interval that contains the prediction only because it is unbounded (or the parameter
    lies on a flat direction of the fit) is no test: seen on the embedded sweep
    (4 ∈ [2.03, inf])."""
    params = {"per_bit_factor": (6.3, (2.03, float("inf"))), "exponent_r": (1.0, (0.5, 1.5))}
    v = {x.details["parameter"]: x.verdict for x in fit_verdicts(_quant_fit(params))}
    assert v == {"per_bit_factor": "conditional", "exponent_r": "holds"}
    v = {
        x.details["parameter"]: x.verdict
        for x in fit_verdicts(_quant_fit(params, weak=("exponent_r",)))
    }
    assert v == {"per_bit_factor": "conditional", "exponent_r": "conditional"}
    # an interval that excludes the prediction still fails, however weak
    params["exponent_r"] = (1.0, (2.0, float("inf")))
    v = {
        x.details["parameter"]: x.verdict
        for x in fit_verdicts(_quant_fit(params, weak=("exponent_r",)))
    }
    assert v["exponent_r"] == "fails"


def test_fit_verdict_skips_fixed_parameters_and_uses_the_scale_convention():
    cal = _quant_fit(
        {"per_bit_factor": (4.0, (3.5, 4.5)), "exponent_r": (-1.0, (-1.2, -0.8))}, scale="alpha_r"
    )
    v = {x.details["parameter"]: x.verdict for x in fit_verdicts(cal)}
    assert v == {"per_bit_factor": "holds", "exponent_r": "holds"}  # β = −1 under α/r
    cal = _quant_fit({"per_bit_factor": (4.0, (3.5, 4.5))}, fixed=("exponent_r",))
    assert [x.details["parameter"] for x in fit_verdicts(cal)] == ["per_bit_factor"]


def test_grad_var_verdict_recovers_per_bit_factor_and_fails_otherwise():
    rng = np.random.default_rng(0)
    base = synthetic_records(
        seed=0,
        ranks=(2, 8, 32),
        bits=(2, 3, 4, 6),
        n_trains=(100,),
        seeds=(0, 1),
        adapter_arm="adapter_sr",
        base_arms=(),
    )
    for rho, want in ((4.0, "holds"), (2.0, "fails")):
        recs = [dict(r) for r in base]
        for r in recs:
            if r["arm"] == "adapter_sr":  # v = 0.3·r·ρ^(−b)·lognormal(σ = 0.1)
                r["grad_var_noise"] = (
                    0.3 * r["rank"] * rho ** -r["bits"] * math.exp(rng.normal(0, 0.1))
                )
        v = grad_var_verdicts(recs)[0]
        assert v.verdict == want and v.ci[0] <= rho <= v.ci[1]
        # balanced design (ln r ⟂ b): SE(β) = σ/√Σ(ln r − mean)², σ = 0.1; allow 5·SE
        lr = np.log([r["rank"] for r in recs if r["arm"] == "adapter_sr"])
        assert v.details["exponent_r"] == pytest.approx(
            1.0, abs=5 * 0.1 / math.sqrt(np.sum((lr - lr.mean()) ** 2))
        )
