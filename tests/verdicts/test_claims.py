"""quantbounds.verdicts.claims: each real-run verdict fed synthetic records that agree and that
disagree with its claim (holds, fails and inconclusive all reached), hand cases of the
degradation, of the storage accounting and of the family step, and the coverage of the
correlation interval at the sample sizes used."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from quantbounds.calib.fit_results import Calibration, LocoResult, ParamEstimate, TermFit
from quantbounds.calib.pairing import pair_runs
from quantbounds.calib.synthetic import SyntheticTruth, synthetic_records
from quantbounds.verdicts import standard
from quantbounds.verdicts.claims import (
    claim_verdicts,
    codebook_verdicts,
    correlation_verdicts,
    data_size_verdicts,
    degradation,
    fit_usability,
    fit_verdicts,
    grad_var_verdicts,
    guideline_verdicts,
    llama_size_reduction,
    nf4_model_bytes,
    rank_verdicts,
    size_reduction_verdicts,
    thm33_verdicts,
)
from quantbounds.verdicts.registry import registry
from quantbounds.verdicts.results import Verdict, finalize_verdicts

SEEDS8 = tuple(range(8))


def _by(vs, cid, arm=None):
    return [v for v in vs if v.claim_id == cid and (arm is None or v.details.get("arm") == arm)]


def _one(vs, cid, arm=None) -> Verdict:
    hits = _by(vs, cid, arm)
    assert len(hits) == 1, [(v.claim_id, v.details.get("arm")) for v in vs]
    return hits[0]


def _recs(seed=0, *, truth=None, **kw):
    args = dict(ranks=(4, 16, 64), bits=(2, 4, 8), n_trains=(1000,), seeds=SEEDS8,
                base_arms=("base_int8", "base_nf4", "base_fp4"))
    args.update(kw)
    return synthetic_records(seed=seed, truth=truth or SyntheticTruth(), **args)


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


def test_every_verdict_names_its_claim_and_the_file_is_writable(tmp_path):
    """claim_id + the registry's kind on every verdict; statistical ones carry p-values (or are
    inconclusive with a reason); write_results accepts the whole family."""
    from quantbounds.verdicts.results import write_results

    recs = _recs(1, extra_adapter_arms=(("adapter_sr", 0.5, 4.0), ("adapter_noise", 0.5, 4.0)),
                 n_trains=(300, 1000), seeds=(0, 1, 2))
    vs, notes = claim_verdicts(recs)
    reg = registry()
    assert len({v.claim_id for v in vs}) >= 12
    for v in vs:
        assert v.claim_id in reg and v.kind == reg[v.claim_id].kind
        assert v.details.get("decision") or v.details.get("readings_reason")
        if v.p_holds is None and "readings_p" not in v.details:  # decided without a test
            assert v.verdict == "inconclusive" or v.kind in ("no_effect",)
    path = write_results(tmp_path / "c.json", {"verdicts": [v.to_dict() for v in vs]})
    assert path.exists()
    # the same with a PairedRuns: one pairing, same verdicts
    again, notes2 = claim_verdicts(pair_runs(recs))
    assert [v.to_dict() for v in again] == [v.to_dict() for v in vs] and notes2 == notes


# ----------------------------------------------------------------------------- guideline table
def _raw(v: Verdict) -> str:
    """The decision at the claim's own α (before the file's family step)."""
    return v.verdict


def test_guideline_8bit_holds_when_8bit_is_harmless_and_fails_when_it_is_not():
    good = _recs(2, truth=SyntheticTruth(C2=0.5, noise_sd=0.002, seed_sd=0.01))
    vs = guideline_verdicts(pair_runs(good), [])
    for cid in ("s003.guideline.r_le_8", "s003.guideline.r_9_16"):
        v = _one(vs, cid, "adapter_rtn")
        assert _raw(v) == "holds", v.details
        assert set(v.details["readings"]) == {"relative perplexity", "relative eval loss"}
    # 8-bit adds ≈ 0.3 nats (35 % perplexity) at every rank: both rows fail
    bad = _recs(2, truth=SyntheticTruth(C2=80.0, rho=2.0, beta=0.0, noise_sd=0.002))
    vs = guideline_verdicts(pair_runs(bad), [])
    for cid in ("s003.guideline.r_le_8", "s003.guideline.r_9_16"):
        assert _raw(_one(vs, cid, "adapter_rtn")) == "fails"
    # r > 16: the high-rank claim holds when 8-bit degrades > 10 % there
    assert _raw(_one(vs, "s003.guideline.r_gt_16", "adapter_rtn")) in ("holds", "conditional")
    v = _one(vs, "s003.guideline.r_gt_16", "adapter_rtn")
    assert v.details["readings"][next(iter(v.details["readings"]))] == "holds"


def test_guideline_is_inconclusive_with_power_stated_when_two_seeds_are_noisy():
    recs = _recs(3, truth=SyntheticTruth(C2=0.5, noise_sd=0.05, seed_sd=0.01), seeds=(0, 1))
    v = _one(guideline_verdicts(pair_runs(recs), []), "s003.guideline.r_le_8", "adapter_rtn")
    assert v.verdict == "inconclusive" and "G = 2 seeds" in v.details["power"]


def test_one_seed_never_decides():
    recs = _recs(0, truth=SyntheticTruth(C2=50.0), ranks=(2, 8), seeds=(0,))
    vs, _ = claim_verdicts(recs)
    assert vs and all(v.verdict == "inconclusive" or v.kind == "no_effect" and
                      v.claim_id == "s002.abstract.size_reduction" for v in vs), \
        [(v.claim_id, v.verdict) for v in vs]


def test_avoid_4bit_holds_when_4bit_is_severe_at_high_rank_and_fails_otherwise():
    severe = _recs(4, truth=SyntheticTruth(C2=40.0, rho=2.0, beta=0.5, noise_sd=0.002))
    v = _one(guideline_verdicts(pair_runs(severe), []), "s001.s4_3.avoid_4bit_gt_8", "adapter_rtn")
    assert list(v.details["readings"].values())[0] == "holds"
    mild = _recs(4, truth=SyntheticTruth(C2=0.5, noise_sd=0.002))
    v = _one(guideline_verdicts(pair_runs(mild), []), "s001.s4_3.avoid_4bit_gt_8", "adapter_rtn")
    assert list(v.details["readings"].values())[0] == "fails"


# ----------------------------------------------------------------------------- seed 002
def _shifts(nf4, fp4):
    return (("base_int8", 0.0), ("base_nf4", nf4), ("base_fp4", fp4))


def test_nf4_matches_and_fp4_underperforms_both_ways():
    same = _recs(5, truth=SyntheticTruth(base_shift=_shifts(0.0, 0.05), noise_sd=0.002))
    vs = codebook_verdicts(pair_runs(same), [])
    assert _raw(_one(vs, "s002.abstract.nf4_matches_fp16", "base_nf4")) in ("holds", "conditional")
    assert _one(vs, "s002.abstract.nf4_matches_fp16", "base_nf4").details["readings"][
        "perplexity"] == "holds"
    assert _raw(_one(vs, "s002.abstract.fp4_underperforms")) in ("holds", "conditional")
    worse = _recs(5, truth=SyntheticTruth(base_shift=_shifts(0.1, 0.0), noise_sd=0.002))
    vs = codebook_verdicts(pair_runs(worse), [])
    assert _one(vs, "s002.abstract.nf4_matches_fp16", "base_nf4").details["readings"][
        "perplexity"] == "fails"
    assert _one(vs, "s002.abstract.fp4_underperforms").details["readings"]["perplexity"] == "fails"


def test_regularization_holds_when_nf4_gap_is_smaller_and_fails_when_larger():
    for shift, want in ((-0.05, "holds"), (0.05, "fails"), (0.0, "inconclusive")):
        recs = _recs(6, truth=SyntheticTruth(gap_shift=(("base_nf4", shift),), noise_sd=0.002),
                     base_arms=("base_nf4",))
        v = _one(codebook_verdicts(pair_runs(recs), []), "s002.abstract.regularization")
        assert v.verdict == want, (shift, v.details)
        assert "eval_loss_difference_nf4_minus_fp16" in v.details


# ----------------------------------------------------------------------------- rank dependence
def test_w0_rank_independence_is_a_tost_not_a_ci_containing_zero():
    flat = _recs(7, truth=SyntheticTruth(noise_sd=0.001), base_arms=("base_nf4",))
    v = _one(rank_verdicts(pair_runs(flat), []), "toolkit.w0_rank_independence", "base_nf4")
    assert v.verdict == "holds" and v.kind == "no_effect"
    grows = _recs(7, truth=SyntheticTruth(noise_sd=0.001, base_rank_slope=(("base_nf4", 0.05),)),
                  base_arms=("base_nf4",))
    v = _one(rank_verdicts(pair_runs(grows), []), "toolkit.w0_rank_independence", "base_nf4")
    assert v.verdict == "fails"
    # noisy with two seeds: the interval contains 0 and the margin — inconclusive, not holds
    noisy = _recs(7, truth=SyntheticTruth(noise_sd=0.05), base_arms=("base_nf4",), seeds=(0, 1))
    v = _one(rank_verdicts(pair_runs(noisy), []), "toolkit.w0_rank_independence", "base_nf4")
    assert v.verdict == "inconclusive" and v.ci[0] < 0 < v.ci[1]


def test_adapter_rank_exponent_is_judged_in_the_runs_convention():
    # runs under s = α/r whose excess falls like 1/r: holds in the runs' convention; the s = 1
    # prediction (+1) beside it fails
    t = SyntheticTruth(scale="alpha_r", beta=-1.0, C2=20.0, noise_sd=0.0005)
    v = _one(rank_verdicts(pair_runs(_recs(8, truth=t, base_arms=())), []),
             "s001.s4_2.degradation_linear_rank", "adapter_rtn")
    assert v.verdict == "holds" and v.predicted == -1.0
    assert v.details["s_one"]["predicted"] == 1.0 and v.details["s_one"]["verdict"] == "fails"
    # the same runs' excess growing like r under α/r: fails
    t = SyntheticTruth(scale="alpha_r", beta=1.0, C2=0.5, noise_sd=0.0005)
    v = _one(rank_verdicts(pair_runs(_recs(8, truth=t, base_arms=())), []),
             "s001.s4_2.degradation_linear_rank", "adapter_rtn")
    assert v.verdict == "fails"


# ----------------------------------------------------------------------------- correlation
def test_correlation_uses_the_runs_convention_and_shows_s_one_beside_it():
    t = SyntheticTruth(scale="alpha_r", beta=-1.0, C2=20.0, noise_sd=0.0005)
    recs = _recs(9, truth=t, bits=(2, 3, 4), base_arms=())
    v = _one(correlation_verdicts(pair_runs(recs), []), "s003.validation.correlation")
    assert v.verdict == "holds" and v.ci[0] > 0.9
    s1 = v.details["s_one"]
    assert s1["pooled_R"] < v.details["pooled_R"] and s1["verdict"] != "holds"
    # an excess flat in b: the prediction does not track it
    flat = _recs(9, truth=SyntheticTruth(rho=1.0 + 1e-9, C2=0.02), bits=(2, 3, 4), base_arms=())
    v = _one(correlation_verdicts(pair_runs(flat), []), "s003.validation.correlation")
    assert v.verdict == "fails" and v.ci[1] < 0.9


def test_fisher_z_interval_over_seeds_covers_at_the_sample_sizes_used():
    """The correlation interval: per-seed Pearson R of n pairs → z = atanh R, t interval over
    G seeds (cluster_mean). Bivariate normal with ρ = 0.85, n = 9 pairs per seed (the embedded
    sweep's 12 − 3 b = 16 runs), G = 2, 3, 6: coverage of the 95 % interval ≥ 93 % over 3000
    worlds (binomial sd of a 95 % rate at 3000: 0.4 %)."""
    from quantbounds.verdicts.intervals import cluster_mean

    rng = np.random.default_rng(0)
    rho, n, worlds = 0.85, 9, 3000
    for G in (2, 3, 6):
        x = rng.standard_normal((worlds, G, n))
        y = rho * x + math.sqrt(1 - rho ** 2) * rng.standard_normal((worlds, G, n))
        xc, yc = x - x.mean(-1, keepdims=True), y - y.mean(-1, keepdims=True)
        r = (xc * yc).sum(-1) / np.sqrt((xc ** 2).sum(-1) * (yc ** 2).sum(-1))
        z = np.arctanh(r)
        hit = 0
        for k in range(worlds):
            lo, hi = cluster_mean(z[k], np.arange(G))["ci"]
            hit += lo <= math.atanh(rho) <= hi
        assert hit / worlds >= 0.93, (G, hit / worlds)


# ----------------------------------------------------------------------------- gradient variance
def _gv_recs(seed, **truth):
    t = SyntheticTruth(scale="alpha_r", beta=-1.0, **truth)
    return _recs(seed, truth=t, adapter_arm="adapter_sr", bits=(2, 3, 4, 6), base_arms=(),
                 seeds=(0, 1, 2, 3))


def test_grad_var_bits_and_rank_hold_and_fail_by_construction():
    vs = grad_var_verdicts(pair_runs(_gv_recs(10, gv_rho=4.0, gv_beta=-1.0, gv_sd=0.05)), [])
    assert _one(vs, "s001.s4_2.grad_var_bits").verdict == "holds"
    v = _one(vs, "s001.s4_2.grad_var_rank")
    assert v.verdict == "holds" and v.predicted == -1.0 and v.details["s_one"]["verdict"] == "fails"
    vs = grad_var_verdicts(pair_runs(_gv_recs(10, gv_rho=2.0, gv_beta=1.0, gv_sd=0.05)), [])
    assert _one(vs, "s001.s4_2.grad_var_bits").verdict == "fails"
    assert _one(vs, "s001.s4_2.grad_var_rank").verdict == "fails"
    # per-seed fit recovers the factor: log₂ρ = 1 for ρ = 2, within 5 clustered se
    v = _one(vs, "s001.s4_2.grad_var_bits")
    se = (v.ci[1] - v.ci[0]) / (2 * stats.t.ppf(0.975, 3))
    assert abs(v.measured - 1.0) <= 5 * se


def test_thm33_holds_below_the_bound_fails_above_and_reports_tightness():
    vs = thm33_verdicts(pair_runs(_gv_recs(11, gv_C=1e-6, gv_sd=0.05)), [])
    v = _one(vs, "s001.thm3_3.bound")
    assert v.verdict == "holds" and len(v.details["readings"]) == 4
    tight = v.details["tightness"]
    assert all(0 < t["max_ratio"] < 1 for t in tight.values())
    # bound = L²·‖x‖²·r·4^{−b}·R² (L ≈ 2.5, ‖x‖² = 4, R = 0.2): a variance 10⁴× above it fails
    vs = thm33_verdicts(pair_runs(_gv_recs(11, gv_C=1e3, gv_rho=1.5, gv_sd=0.05)), [])
    v = _one(vs, "s001.thm3_3.bound")
    assert v.verdict == "fails", v.details["readings"]


def test_thm33_ratio_is_the_hand_computed_one():
    recs = _gv_recs(12, gv_C=1e-6, gv_sd=0.0)
    r = next(x for x in recs if x["arm"] == "adapter_sr" and x["bits"] == 2 and x["rank"] == 4)
    from quantbounds.verdicts.claims import _ratio_cells

    cells = _ratio_cells([r], loss="eval", with_scale=False)
    layer = "l0.attn"
    bound = r["eval_loss"] ** 2 * 4.0 * 4 * 4.0 ** -2 * 0.2 ** 2
    want = math.log(r["grad_var_noise_layers"][layer] / bound)
    assert cells[(4, 2, layer)][r["seed"]] == pytest.approx(want, rel=1e-12)


# ----------------------------------------------------------------------------- data size
def test_larger_data_holds_when_the_excess_falls_with_n_and_fails_when_it_grows():
    for gamma, want in ((1.0, "holds"), (-1.0, "fails")):
        recs = _recs(13, truth=SyntheticTruth(gamma=gamma, C2=20.0, noise_sd=0.0005),
                     n_trains=(250, 1000, 4000), ranks=(16,), bits=(2,), base_arms=())
        v = _one(data_size_verdicts(pair_runs(recs), []), "s001.s5_1.larger_data_lower_precision")
        assert v.verdict == want, v.details["readings"]
        assert len(v.details["readings"]) == 2


# ----------------------------------------------------------------------------- size reduction
def test_llama_accounting_by_hand():
    """Llama 3.2-1B: 16 layers × (2·2048² + 2·2048·512 + 3·2048·8192) linear weights, tied
    128256×2048 embedding, 33 norms of 2048: 1 235 814 400 parameters (the published 1.24 B)."""
    n_q = 16 * (2 * 2048 ** 2 + 2 * 2048 * 512 + 3 * 2048 * 8192)
    n_o = 128256 * 2048 + 2048 * 33
    assert n_q + n_o == 1_235_814_400
    off = llama_size_reduction(double_quant=False)
    nf4 = n_q / 2 + 4 * n_q / 64 + 16 * 7 * 64 + 2 * n_o
    assert off["reduction"] == pytest.approx(1 - nf4 / (2 * (n_q + n_o)), rel=1e-12)
    on = llama_size_reduction(double_quant=True)
    assert 0.56 < off["reduction"] < on["reduction"] < 0.59
    assert nf4_model_bytes(128, 0, n_tensors=1, quant_state=False) == 64


def _stand_in_records(nf4_bytes):
    base = dict(schema="quantbounds.run/1", model="embedded", dataset="d", rank=4, seed=0,
                n_train=10, steps=1, scale="alpha_r", lora_alpha=16.0, base_quant="none",
                eval_loss=5.0, perplexity=math.exp(5.0), f1=0.0, exact_match=0.0, grad_var=1.0,
                eps_ba_fro2=0.0, wall_s=0.0, eps_ba_layers={f"l{i}": 0.0 for i in range(16)})
    fp = dict(base, run_id="a", arm="fp16", bits=16, total_params=1104640, model_bytes=4418560)
    nf = dict(base, run_id="b", arm="base_nf4", bits=16, base_quant="nf4", total_params=711424,
              model_bytes=nf4_bytes, double_quant=False)
    return [fp, nf]


def test_size_reduction_needs_the_accounting_to_reproduce_model_bytes():
    # the embedded records: 318 208 fp32 params + 786 432 codes at ½ byte = 1 666 048 B
    v = _one(size_reduction_verdicts(pair_runs(_stand_in_records(1666048)), []),
             "s002.abstract.size_reduction")
    assert v.verdict == "holds" and v.details["stand_in"]["reproduces"].startswith("codes only")
    assert "absmax" in v.conditions
    v = _one(size_reduction_verdicts(pair_runs(_stand_in_records(1666049)), []),
             "s002.abstract.size_reduction")
    assert v.verdict == "inconclusive"
    # a claimed 70 % would fail both readings: the decision is exact (identity on the margin)
    d = standard.identity([abs(llama_size_reduction(double_quant=True)["reduction"] - 0.70)
                           / 0.03])
    assert d.verdict == "fails"


# ----------------------------------------------------------------------------- fits
def _fit(params: dict, *, weak=(), r2=0.5, scale="alpha_r") -> Calibration:
    """A Calibration whose quantization term has (θ, se, dof) per parameter (θ = ln value for
    the per-bit factor)."""
    est = {}
    for k, (theta, se, dof) in params.items():
        log = k == "per_bit_factor"
        est[k] = ParamEstimate(value=math.exp(theta) if log else theta, fixed=False, se=se,
                               dof=dof, theta=theta, log_scale=log)
    loco = LocoResult(n_configs=5, n_held_out=5, skipped=(), rmse=0.1, rmse_null_mean=0.2, r2=r2,
                      predictions=np.zeros(3))
    term = TermFit(model="hand", params=est, theta=np.zeros(3), size_key="n_pairs", n=10,
                   n_boot_ok=0, r2_in_sample=0.9, weakly_identified=tuple(weak), loco=loco,
                   n_clusters=6)
    return Calibration(quant=term, gen=None, arm="adapter_rtn", scale=scale)


def test_fit_verdicts_hold_fail_and_refuse_unusable_fits():
    ln4 = math.log(4.0)
    good = _fit({"per_bit_factor": (ln4, 0.01, 5), "exponent_r": (-1.0, 0.02, 5)})
    v = {x.details["parameter"]: x.verdict for x in fit_verdicts(good)}
    assert v == {"per_bit_factor": "holds", "exponent_r": "holds"}
    off = _fit({"per_bit_factor": (math.log(2.0), 0.01, 5), "exponent_r": (1.0, 0.02, 5)})
    v = {x.details["parameter"]: x.verdict for x in fit_verdicts(off)}
    assert v == {"per_bit_factor": "fails", "exponent_r": "fails"}
    # the embedded sweep's 4.25 [2.0, 202]: a wide interval is inconclusive, never holds
    wide = _fit({"per_bit_factor": (math.log(4.25), 1.2, 5), "exponent_r": (-0.81, 8.0, 5)})
    v = {x.details["parameter"]: x.verdict for x in fit_verdicts(wide)}
    assert v == {"per_bit_factor": "inconclusive", "exponent_r": "inconclusive"}
    # weakly identified, or held-out R² < 0: never decides, says why
    for cal in (_fit({"per_bit_factor": (ln4, 0.01, 5)}, weak=("C2",)),
                _fit({"per_bit_factor": (ln4, 0.01, 5)}, r2=-1.12)):
        (x,) = fit_verdicts(cal)
        assert x.verdict == "inconclusive" and not x.details["usable"]
        assert "not usable" in x.details["decision"]
    assert fit_usability(_fit({}, r2=-1.12))["quantization"][0] is False


# ----------------------------------------------------------------------------- family
def test_one_family_step_decides_readings_with_the_rest_of_the_file():
    d_hold = standard.comparison(2.5, 1.0, dof=30)  # p ≈ 0.009: holds at α, not in the family
    d_strong = standard.comparison(12.0, 1.0, dof=30)  # p ≈ 1e-13
    single = [Verdict.from_decision("s002.abstract.fp4_underperforms", d_strong, claim="x",
                                    predicted=0, measured=0) for _ in range(3)]
    from quantbounds.verdicts.claims import _with_readings

    multi = _with_readings("s002.abstract.regularization",
                           {"a": d_hold, "b": standard.comparison(0.0, 1.0, dof=30)},
                           claim="y", predicted=0, measured=0)
    assert multi.verdict == "conditional" and multi.p_holds is None
    # K = 3·2 single + 2·2 readings = 10 hypotheses in one Holm step at 0.05: reading a's
    # p ≈ 0.009 is multiplied by ≥ 4 (it is the 7th smallest of 10) → not held
    out = finalize_verdicts(single + [multi])
    assert [o["verdict"] for o in out[:3]] == ["holds"] * 3
    assert out[-1]["verdict"] == "inconclusive" and out[-1]["raw_verdict"] == "conditional"
    assert out[-1]["details"]["readings_raw"] == {"a": "holds", "b": "inconclusive"}
    assert set(out[-1]["details"]["readings_p_adjusted"]) == {"a", "b"}
    # a reading strong enough survives the family
    multi = _with_readings("s002.abstract.regularization", {"a": d_strong, "b": d_strong},
                           claim="y", predicted=0, measured=0)
    assert multi.verdict == "holds" and multi.p_holds is None
    assert finalize_verdicts(single + [multi])[-1]["verdict"] == "holds"


def test_claims_on_runs_without_any_quantized_arm_are_empty_not_errors():
    recs = [r for r in _recs(0, seeds=(0, 1)) if r["arm"] == "fp16"]
    vs, notes = claim_verdicts(recs)
    assert vs == [] and isinstance(notes, list)


def test_size_reduction_reads_logical_counts_and_a_double_counted_fp16_record():
    """Records with ``quantized_params`` (logical 4-bit counts, bytes with bitsandbytes'
    per-block absmax) and an fp16 record whose total counted the adapters twice
    (model_bytes = 4·(total − trainable)): the accounting with float32 absmax reproduces the
    NF4 bytes exactly, from the shapes: 786 432 quantized weights in 16 tensors, 318 208 others
    (of which 12 288 are adapter parameters)."""
    n_q, n_o, t = 786432, 318208, 12288
    nf4 = n_q // 2 + 4 * n_q // 64 + 16 * 64 + 4 * n_o
    fp, nf = _stand_in_records(nf4)
    fp.update(total_params=n_q + n_o + t, trainable_params=t, model_bytes=4 * (n_q + n_o))
    nf.update(total_params=n_q + n_o, trainable_params=t, quantized_params=n_q)
    v = _one(size_reduction_verdicts(pair_runs([fp, nf]), []), "s002.abstract.size_reduction")
    s = v.details["stand_in"]
    assert s["quantized_weights"] == n_q and s["other_params"] == n_o
    assert s["reproduces"] == "codes + float32 absmax" and v.verdict == "holds"
