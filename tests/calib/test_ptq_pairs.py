"""quantbounds.calib.ptq_pairs and calibrate_pairs: PTQ records as paired data, the fit on them,
and the verdicts built on them (quantbounds.verdicts.ptq_claims), on hand-built records."""

import math

import numpy as np
import pytest

from quantbounds.calib.calibration import CalibrationError, calibrate_pairs, quant_model
from quantbounds.calib.pairing import Pairs
from quantbounds.calib.ptq_pairs import ptq_pairs, ratio_interval
from quantbounds.calib.records import make_ptq_record
from quantbounds.verdicts.ptq_claims import form_verdict, prediction_verdict, r2_difference


def _rec(adapter, seed, rank, bits, dl, *, scheme="sr_tensor", draw=0, plug=None, first=0.0,
         half=None, ref=3.0):
    plug = dl if plug is None else plug
    half = abs(dl) * 0.05 if half is None else half
    return make_ptq_record(
        run_id=f"{adapter}-{scheme}-{bits}-{draw}", arm="fp16", rank=rank, seed=seed, bits=bits,
        ptq_scheme=scheme, ptq_draw=draw, eval_loss=ref + dl, eval_loss_ref=ref, delta_loss=dl,
        delta_loss_ci=[dl - half, dl + half], pred_plugin=plug, pred_first_order=first,
        pred_moment=None, eps_ba_fro2=1.0, eps_ba_x2=1.0, layers={}, eval_tokens=1000,
        ptq_of=adapter, scale="alpha_r", lora_alpha=16.0)


def test_pairs_average_draws_and_look_up_n_train():
    recs = [_rec("a", 0, 8, 2, 0.010, draw=0), _rec("a", 0, 8, 2, 0.014, draw=1),
            _rec("a", 0, 8, 16, 1e-9), _rec("b", 1, 4, 3, 0.002),
            _rec("b", 1, 4, 3, -0.5, scheme="rtn_tensor")]
    runs = [{"run_id": "a", "n_train": 200}]
    pp = ptq_pairs(recs, runs, scheme="sr_tensor")
    # b = 16 is left out (max_bits 15); adapters in (rank, seed) order: b (r = 4) before a
    assert len(pp) == 2 and pp.adapters == ("b", "a")
    p = pp.pairs
    assert p.arm == "ptq_sr_tensor"
    assert p.excess.tolist() == pytest.approx([0.012, 0.002])
    assert p.n_train.tolist() == [200, -1] and p.group.tolist() == [1, 0]
    assert p.s.tolist() == pytest.approx([2.0, 4.0])  # α/r
    assert pp.pred.tolist() == pytest.approx([0.012, 0.002])
    assert len(ptq_pairs(recs, scheme="sr_tensor", max_bits=None)) == 3
    with pytest.raises(ValueError, match="scheme"):
        ptq_pairs(recs, scheme="rtn")
    with pytest.raises(ValueError, match="prediction"):
        ptq_pairs(recs, scheme="sr_tensor", prediction="third")


def test_signed_ratio_interval():
    """A negative measured sum (the first-order term lowers the loss) gives a positive ratio
    when the prediction has the same sign; R = Σ P / Σ M exactly."""
    recs = [_rec("a", 0, 8, 2, -0.010, plug=0.002, first=-0.014),
            _rec("b", 1, 8, 2, -0.020, plug=0.002, first=-0.020)]
    R, lo, hi, g = ratio_interval(recs, lambda r: r["pred_plugin"] + r["pred_first_order"])
    assert R == pytest.approx(-0.030 / -0.030) and g == 2 and lo < R < hi


def _grouped(rec, D, P1, windows):
    rec.update(delta_loss_groups=list(map(float, D)), first_order_groups=list(map(float, P1)),
               group_windows=list(windows), eval_groups=len(windows),
               delta_loss=float(np.sum(D)), pred_first_order=float(np.sum(P1)))
    return rec


def test_grouped_ratio_interval_is_the_paired_delta_method_by_hand():
    from quantbounds.calib.ptq_pairs import PREDICTION_GROUPS, PREDICTIONS
    from quantbounds.verdicts.intervals import grouped_total

    rng = np.random.default_rng(5)
    windows = [3, 4, 2, 5, 3, 4]
    recs = []
    for k, a in enumerate("abc"):
        D = rng.normal(0.002, 0.001, 6)
        P1 = D - rng.normal(0.0005, 0.0002, 6)
        recs.append(_grouped(_rec(a, k, 8, 2, 0.0, plug=0.003 + 0.001 * k), D, P1, windows))
    fn = PREDICTIONS["first+2nd"]
    R, lo, hi, g = ratio_interval(recs, fn, pred_groups=PREDICTION_GROUPS["first+2nd"])
    P = np.array([fn(r) for r in recs])
    M = np.array([r["delta_loss"] for r in recs])
    assert R == pytest.approx(P.sum() / M.sum(), rel=1e-12) and g == 3
    u = sum(np.array(r["first_order_groups"]) - R * np.array(r["delta_loss_groups"])
            for r in recs)
    se_e = grouped_total(u, windows)["se"] / abs(M.sum())
    z = (P - R * M) / M.mean()
    se_b = z.std(ddof=1) / math.sqrt(3)
    from scipy import stats

    half = stats.t.ppf(0.975, 2) * math.sqrt(se_b**2 + se_e**2)
    assert [lo, hi] == pytest.approx([R - half, R + half], rel=1e-12)
    # groups of different layouts are not paired: the conservative path is taken
    recs[0]["group_windows"] = [21]
    R2, lo2, hi2, _ = ratio_interval(recs, fn, pred_groups=PREDICTION_GROUPS["first+2nd"])
    assert R2 == pytest.approx(R) and (lo2, hi2) != (lo, hi)


def test_paired_first_order_interval_covers_and_is_narrower_than_the_unpaired_one():
    """G = 3 adapters scored on the same K = 20 eval groups; the first-order term P₁ is
    measured on those groups and shares their sampling error e_j, which dominates ΔL's error;
    the target is R = Σ(P₁ + P₂)/Σ ΔL without eval error. Coverage ≥ 93 % over 1500 worlds
    (binomial sd of a 95 % estimate 0.56 %), and the paired interval is narrower than the one
    built from ΔL's own intervals (which the first-order term's shared error would leave in)."""
    from quantbounds.calib.ptq_pairs import PREDICTION_GROUPS, PREDICTIONS
    from quantbounds.verdicts.intervals import grouped_total

    rng = np.random.default_rng(13)
    K, trials, hits, narrower = 20, 1500, 0, 0
    windows = rng.integers(3, 12, size=K).tolist()
    w = np.array(windows) / sum(windows)
    fn = PREDICTIONS["first+2nd"]
    for t in range(trials):
        e = rng.normal(0, 0.004, K) * np.sqrt(w)  # common eval error, per group
        recs, truth_p, truth_m = [], 0.0, 0.0
        for k in range(3):
            p1 = rng.normal(-0.01, 0.002)  # a first-order term (RTN: lowers the loss)
            p2 = 0.015 * (1 + rng.normal(0, 0.05))
            m = (p1 + p2) * 0.9
            D = m * w + e + rng.normal(0, 0.0002, K) * np.sqrt(w)
            P1 = p1 * w + e
            r = _grouped(_rec(f"w{t}-{k}", k, 8, 2, 0.0, plug=p2), D, P1, windows)
            half = 1.96 * grouped_total(D, windows)["se"]
            r["delta_loss_ci"] = [r["delta_loss"] - half, r["delta_loss"] + half]
            recs.append(r)
            truth_p += p1 + p2
            truth_m += m
        R, lo, hi, _ = ratio_interval(recs, fn, pred_groups=PREDICTION_GROUPS["first+2nd"])
        hits += lo <= truth_p / truth_m <= hi
        for r in recs:
            r.pop("group_windows")
        _, lo0, hi0, _ = ratio_interval(recs, fn)
        narrower += (hi - lo) < (hi0 - lo0)
    assert hits / trials >= 0.93, hits / trials
    assert narrower / trials > 0.9, narrower / trials


def _world(rho=4.0, beta=-1.0, c2=2.0, noise=0.0, seed=0, ranks=(4, 8, 16, 32),
           bits=(2, 3, 4, 5, 6), seeds=(0, 1, 2)):
    rng = np.random.default_rng(seed)
    cols = {k: [] for k in ("rank", "bits", "n_train", "seed", "group", "q", "base")}
    g = 0
    for s in seeds:
        for r in ranks:
            for b in bits:
                y = c2 * r**beta * rho ** (-b) * math.exp(noise * rng.normal())
                for k, v in zip(cols, (r, b, 200, s, g, 3.0 + y, 3.0)):
                    cols[k].append(v)
            g += 1
    arr = {k: np.asarray(v, float if k in ("q", "base") else int) for k, v in cols.items()}
    return Pairs(arm="ptq_sr_tensor", baseline_arm="fp16", metric="eval_loss", **arr), g


def test_calibrate_pairs_recovers_an_exact_world():
    pairs, g = _world()
    cal = calibrate_pairs(pairs, n_groups=g, scale="alpha_r", n_boot=20)
    p = cal.quant.params
    assert p["per_bit_factor"].value == pytest.approx(4.0, rel=1e-5)
    assert p["exponent_r"].value == pytest.approx(-1.0, abs=1e-5)
    assert p["C2"].value == pytest.approx(2.0, rel=1e-4)
    assert cal.quant.loco.r2 == pytest.approx(1.0, abs=1e-8) and cal.gen is None
    assert cal.arm == "ptq_sr_tensor"


def test_calibrate_pairs_bad_input():
    pairs, g = _world()
    with pytest.raises(ValueError, match="n_groups"):
        calibrate_pairs(pairs, n_groups=0, scale="alpha_r")
    with pytest.raises(ValueError, match="pairs.group"):
        calibrate_pairs(pairs, n_groups=g - 1, scale="alpha_r")
    few, _ = _world(ranks=(4,), bits=(2, 3), seeds=(0,))
    with pytest.raises(CalibrationError, match="pairs"):
        calibrate_pairs(few, n_groups=1, scale="alpha_r")


def test_r2_difference_hand_case_and_jackknife():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    pred = y.copy()                                   # perfect: R² = 1
    loco = np.array([2.0, 2.0, 3.0, 3.0])             # R² = 1 − 2/5
    adapter = np.array([0, 0, 1, 1])
    D, se, G, n = r2_difference(y, pred, loco, adapter)
    assert D == pytest.approx(2 / 5) and G == 2 and n == 4
    # leave adapter 0 out: y = [3, 4], SST 0.5, SSE_loco 1 → 2; leave 1 out: y = [1, 2] → 2
    assert se == pytest.approx(0.0)
    D2, _, _, n2 = r2_difference(y, pred, np.array([np.nan, 2.0, 3.0, 3.0]), adapter)
    assert n2 == 3  # pairs without a held-out prediction are left out of both R²


def test_form_verdict_prefers_the_prediction_when_the_form_is_wrong():
    """A world whose cost falls like 2^(−b)·(1 + sign flips with r): the fitted C2·r^β·ρ^(−b)
    cannot follow it, the exact prediction can: holds."""
    pairs, g = _world(noise=0.0)
    y = pairs.excess * np.where(pairs.rank % 16 == 0, -1.0, 1.0) * 2.0 ** pairs.bits
    bad = Pairs(**{**pairs.__dict__, "q": pairs.base + y})
    from quantbounds.calib.ptq_pairs import PtqPairs

    pp = PtqPairs(scheme="rtn_tensor", prediction="first+2nd", pairs=bad, pred=y.copy(),
                  adapters=tuple(range(g)), records=())
    pp_noisy = PtqPairs(scheme="sr_tensor", prediction="first+2nd", pairs=bad,
                        pred=y * (1 + 0.05 * np.random.default_rng(1).normal(size=y.size)),
                        adapters=tuple(range(g)), records=())
    fits = {s: (q, calibrate_pairs(q.pairs, n_groups=g, scale="alpha_r", n_boot=0))
            for s, q in (("rtn_tensor", pp), ("sr_tensor", pp_noisy))}
    v = form_verdict(fits)
    assert v.claim_id == "toolkit.ptq.prediction_vs_form"
    assert v.verdict == "holds", v.details


def test_prediction_verdict_holds_on_an_exact_prediction_and_fails_on_a_wrong_sign():
    good = [_rec(f"a{k}", k, 8, b, 0.01 * 4.0 ** (2 - b) * (1 + 0.01 * k), half=1e-6)
            for k in range(3) for b in (2, 3)]
    v = prediction_verdict(good)
    assert v.claim_id == "toolkit.curvature.loss_prediction" and v.verdict == "holds", v.details
    wrong = [_rec(f"a{k}", k, 8, 2, 0.01 * (1 + 0.01 * k), plug=-0.01, half=1e-6)
             for k in range(3)]
    assert prediction_verdict(wrong).verdict == "fails"
    noise = [_rec("a", 0, 8, 2, 1e-5, half=1e-4)]
    assert prediction_verdict(noise) is None  # no cell above noise


def test_prediction_verdict_reads_the_full_hessian_moment_where_records_carry_it():
    """K-FAC 40 % short of the cost (fails its ±25 %), the full-Hessian expected term right:
    the two readings disagree → conditional, each named; without pred_hessian_moment there is
    no such reading and K-FAC alone decides (fails)."""
    base = [_rec(f"a{k}", k, 8, b, 0.01 * 4.0 ** (2 - b) * (1 + 0.01 * k), half=1e-6)
            for k in range(3) for b in (2, 3)]
    short = [{**r, "pred_plugin": 0.6 * r["delta_loss"]} for r in base]
    kfac_only = prediction_verdict(short)
    assert kfac_only.verdict == "fails"
    assert "first+E_Hessian" not in kfac_only.details["cells"]
    both = prediction_verdict([{**r, "pred_hessian_moment": r["delta_loss"]} for r in short])
    assert both.verdict == "conditional"
    assert set(both.details["cells"]) == {"second", "first+2nd", "first+E_Hessian"}
    assert all(abs(c["ratio"] - 1) < 1e-6
               for c in both.details["cells"]["first+E_Hessian"].values())
    assert both.details["readings"] == {"second": "fails", "first+2nd": "fails",
                                        "first+E_Hessian": "holds"}


def test_quant_model_is_the_fitted_form():
    # the pairs' fit is the module's one formula: C2·r^β·ρ^(−b) with θ = (ln C2, β, ln ρ)
    theta = np.array([math.log(2.0), -1.0, math.log(4.0)])
    assert quant_model(theta, np.array([8.0]), np.array([3.0]))[0] == pytest.approx(2 / 8 / 64)


def test_calibrate_command_reads_the_ptq_records_beside_the_run_records(tmp_path):
    """``quantbounds calibrate runs.jsonl`` finds runs.ptq.jsonl, fits the quantization term per
    PTQ scheme and adds the PTQ verdicts (their claim ids are in the registry); ``--ptq ''``
    turns it off."""
    import json

    from quantbounds.calib.synthetic import synthetic_records
    from quantbounds.cli.calibrate import _ptq_path, main

    runs = tmp_path / "runs.jsonl"
    runs.write_text("".join(json.dumps(r) + "\n" for r in synthetic_records(seed=3)))
    assert _ptq_path(runs, None) is None
    ptq = [_rec(f"a{k}-{r}", k, r, b, 0.02 * 4.0 ** (2 - b) * 8 / r * (1 + 0.02 * k), half=1e-6)
           for k in range(3) for r in (4, 8, 16) for b in (2, 3, 4, 5)]
    (tmp_path / "runs.ptq.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ptq))
    assert _ptq_path(runs, None) == tmp_path / "runs.ptq.jsonl"
    assert _ptq_path(runs, "") is None
    out = tmp_path / "cal.json"
    assert main([str(runs), "--out", str(out), "--figures", "", "--n-boot", "20"]) == 0
    got = json.loads(out.read_text())
    sr = got["fits"]["ptq"]["sr_tensor"]
    assert sr["per_bit_factor"]["value"] == pytest.approx(4.0, rel=0.02)
    assert sr["exponent_r"]["value"] == pytest.approx(-1.0, abs=0.02)
    ids = {v["claim_id"] for v in got["verdicts"]}
    assert {"toolkit.curvature.loss_prediction", "toolkit.ptq.prediction_vs_form"} <= ids
    assert got["ptq_records_file"].endswith("runs.ptq.jsonl")
    assert main([str(runs), "--out", str(out), "--figures", "", "--n-boot", "0",
                 "--ptq", ""]) == 0
    assert "ptq" not in json.loads(out.read_text())["fits"]


def test_measured_interval_pairs_records_on_shared_groups():
    from quantbounds.calib.ptq_pairs import measured_interval
    from quantbounds.verdicts.intervals import grouped_total

    windows = [2, 3, 4]
    a = _grouped(_rec("a", 0, 8, 2, 0.0), [0.01, -0.002, 0.004], [0, 0, 0], windows)
    b = _grouped(_rec("b", 1, 8, 2, 0.0), [0.008, 0.001, 0.003], [0, 0, 0], windows)
    assert measured_interval([a, b]) == pytest.approx(
        tuple(grouped_total([0.018, -0.001, 0.007], windows)["ci"]), rel=1e-12)
    b["group_windows"] = [9]  # other groups: the records' own intervals, summed
    lo = a["delta_loss_ci"][0] + b["delta_loss_ci"][0]
    hi = a["delta_loss_ci"][1] + b["delta_loss_ci"][1]
    assert measured_interval([a, b]) == pytest.approx((lo, hi))
