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
    assert row["second"]["ci"] == pytest.approx([0.5, 0.5])
    assert row["first+2nd"]["ratio"] == pytest.approx(1.0)
    assert row["moment"] is None  # no moment model (e.g. NF4)
    assert "0.50" in markdown([row])


def test_ratio_of_sums_and_bootstrap_bounds():
    recs = [_rec(0, 0.01, 0.03), _rec(1, 0.03, 0.03)]
    (row,) = summarize(recs)
    assert row["second"]["ratio"] == pytest.approx(0.06 / 0.04)
    lo, hi = row["second"]["ci"]
    assert (
        1.0 - 1e-12 <= lo <= 0.06 / 0.04 <= hi <= 3.0 + 1e-12
    )  # resamples lie between the two clusters' ratios


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
