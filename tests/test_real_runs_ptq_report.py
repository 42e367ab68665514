"""real_runs.ptq_report: ratios and intervals on hand-built PTQ records."""

import pytest

from quantbounds.calib.records import make_ptq_record
from real_runs.ptq_report import agreement, markdown, summarize


def _rec(seed, dl, plug, first=0.0, mom=None, bits=2, scheme="rtn_tensor", rank=8, ci=None):
    return make_ptq_record(
        run_id=f"{seed}-{bits}-{dl}",
        arm="fp16",
        rank=rank,
        seed=seed,
        bits=bits,
        ptq_scheme=scheme,
        ptq_draw=0,
        eval_loss=3.0 + dl,
        eval_loss_ref=3.0,
        delta_loss=dl,
        delta_loss_ci=ci or [dl * 0.9, dl * 1.1],
        pred_plugin=plug,
        pred_first_order=first,
        pred_moment=mom,
        eps_ba_fro2=1.0,
        eps_ba_x2=1.0,
        layers={},
        eval_tokens=100,
        ptq_of=f"train{seed}",
    )


def test_exact_ratio_and_degenerate_interval():
    recs = [_rec(s, dl, 0.5 * dl, first=0.5 * dl) for s, dl in enumerate([0.01, 0.02, 0.04])]
    (row,) = summarize(recs)
    assert row["second"]["ratio"] == pytest.approx(0.5)
    lo, hi = row["second"]["ci"]  # the seeds agree exactly: only the eval tokens' ±10 % is left
    from scipy import stats

    se_e = 0.5 * 0.1 / stats.norm.ppf(0.975)  # R · se(ΣM)/ΣM with ΣM's CI ±10 %
    assert (lo, hi) == pytest.approx((0.5 - stats.t.ppf(0.975, 2) * se_e,
                                      0.5 + stats.t.ppf(0.975, 2) * se_e))
    assert row["first+2nd"]["ratio"] == pytest.approx(1.0)
    assert row["moment"] is None  # no moment model (e.g. NF4)
    assert "0.50" in markdown([row])


def test_ratio_of_sums_and_bootstrap_bounds():
    recs = [_rec(0, 0.01, 0.03), _rec(1, 0.03, 0.03)]
    (row,) = summarize(recs)
    assert row["second"]["ratio"] == pytest.approx(0.06 / 0.04)
    lo, hi = row["second"]["ci"]
    assert lo < 0.06 / 0.04 < hi  # two adapters that disagree 3× and 1×: wide, t with 1 dof
    assert hi - lo > 2.0


def test_ratio_interval_covers_at_three_adapters():
    """95 % intervals for R over G = 3 trained adapters, each with its own measured cost and
    eval-token noise common to the group: coverage ≥ 93 % over 3000 worlds (binomial sd of a
    95 % estimate 0.4 %: a real under-cover fails)."""
    import numpy as np

    rng = np.random.default_rng(11)
    true_r, hits, trials = 0.8, 0, 3000
    for t in range(trials):
        m = rng.normal(0.02, 0.003, 3)
        p = true_r * m * (1 + rng.normal(0, 0.1, 3))
        e = rng.normal(0, 0.0005)  # common eval-token error, sd 5e-4 per record
        recs = [
            _rec(k, float(m[k] + e), float(p[k]), ci=[float(m[k] + e) - 9.8e-4,
                                                      float(m[k] + e) + 9.8e-4])
            for k in range(3)
        ]
        for r in recs:
            r["ptq_of"] = f"world{t}-{r['seed']}"
        (row,) = summarize(recs)
        lo, hi = row["second"]["ci"]
        # the target: Σ p / Σ m without eval error (R of these adapters on the population)
        hits += lo <= float(p.sum() / m.sum()) <= hi
    assert hits / trials >= 0.93, hits / trials


def test_pooled_rows_join_ranks():
    recs = [_rec(0, 0.01, 0.01, rank=4), _rec(1, 0.02, 0.01, rank=8)]
    (row,) = summarize(recs, pooled=True)
    assert row["rank"] == "all" and row["n_records"] == 2
    assert row["second"]["ratio"] == pytest.approx(0.02 / 0.03)


def test_measured_not_distinguishable_from_zero_gives_no_ratio():
    recs = [_rec(0, 1e-4, 1e-6, ci=[-1e-4, 3e-4]), _rec(1, -1e-4, 1e-6, ci=[-3e-4, 1e-4])]
    (row,) = summarize(recs)
    assert row["second"]["ratio"] is None and not row["measured_sum_ci_excludes_0"]


def test_signed_agreement_hand_case():
    recs = [_rec(0, 0.01, 0.01), _rec(1, -0.01, 0.0, first=-0.01), _rec(2, 0.03, 0.0)]
    a = agreement(recs)["all"]
    meas = [0.01, -0.01, 0.03]
    m = sum(meas) / 3
    ss = sum((x - m) ** 2 for x in meas)
    assert a["first+2nd"] == pytest.approx(1 - 0.03**2 / ss)
    assert a["second"] == pytest.approx(1 - (0.01**2 + 0.03**2) / ss)


def test_second_given_first_uses_the_paired_residual():
    """P₂ ÷ (ΔL − P₁) from records with per-group values: here ΔL − P₁ = 0.8·P₂ in every group
    of every adapter, so the ratio is 1.25 exactly and the paired interval (the residual's
    groups vary only by a small common term) is narrow although ΔL's own interval spans 0."""
    from quantbounds.calib.ptq_pairs import residual_records

    import numpy as np

    rng = np.random.default_rng(2)
    windows = [4, 5, 3, 6, 4]
    w = np.array(windows) / sum(windows)
    recs = []
    for k in range(3):
        e = rng.normal(0, 0.01, 5)  # large eval error shared by ΔL and P₁
        p2 = 0.002 * (k + 1)
        P1 = -0.001 * w + e
        D = P1 + 0.8 * p2 * w
        r = _rec(k, float(D.sum()), p2, first=float(P1.sum()), ci=[-0.05, 0.05])
        r.update(delta_loss_groups=D.tolist(), first_order_groups=P1.tolist(),
                 group_windows=windows, resid_first_order_ci=[0.8 * p2 * 0.99, 0.8 * p2 * 1.01])
        recs.append(r)
    res = residual_records(recs)
    assert [r["delta_loss"] for r in res] == pytest.approx([0.8 * r["pred_plugin"] for r in recs])
    (row,) = summarize(recs)
    assert row["second"]["ratio"] is None  # ΔL alone is not distinguishable from 0
    assert row["second|first"]["ratio"] == pytest.approx(1.25)
    lo, hi = row["second|first"]["ci"]
    assert lo < 1.25 < hi and hi - lo < 0.5
    for r in recs:
        r.pop("resid_first_order_ci")
    assert residual_records(recs) is None and summarize(recs)[0]["second|first"] is None


def test_full_hessian_moment_is_a_prediction_of_its_own_where_records_carry_it():
    recs = [{**_rec(s, dl, 0.5 * dl, first=-0.2 * dl), "pred_hessian_moment": 0.9 * dl}
            for s, dl in enumerate([0.01, 0.02, 0.04])]
    (row,) = summarize(recs)
    assert row["hessian_moment"]["ratio"] == pytest.approx(0.9)
    assert row["first+E_Hessian"]["ratio"] == pytest.approx(0.7)  # with the first-order term
    assert row["second"]["ratio"] == pytest.approx(0.5)
    md = markdown([row])
    assert "E_Hessian ÷ meas | first+E_Hessian ÷ meas" in md and "| 0.90 [0.70, 1.10] | 0.70 [" in md
    assert agreement(recs)["all"]["hessian_moment"] == pytest.approx(
        1 - sum((0.1 * d) ** 2 for d in (0.01, 0.02, 0.04))
        / sum((d - 0.07 / 3) ** 2 for d in (0.01, 0.02, 0.04)))
    # records without it: no column, and the prediction is None
    (plain,) = summarize([_rec(s, dl, 0.5 * dl) for s, dl in enumerate([0.01, 0.02, 0.04])])
    assert plain["hessian_moment"] is None and plain["first+E_Hessian"] is None
    assert "E_Hessian" not in markdown([plain])
