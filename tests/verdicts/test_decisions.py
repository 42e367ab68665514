"""quantbounds.verdicts.decisions: every rule fed numbers that agree and numbers that disagree,
the boundaries where two rules differ, and the critical values against scipy's quantiles."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from quantbounds.verdicts import decisions


# ----------------------------------------------------------------------------- z-scores, identities
def test_critical_z_matches_normal_and_t_quantiles():
    # K = 1, α = 0.05: the familiar two-sided 1.959964 (= Φ⁻¹(0.975)).
    assert decisions.critical_z(1, alpha=0.05) == pytest.approx(1.959963984540054, abs=1e-12)
    # Bonferroni over K tests: Φ⁻¹(1 − α/(2K)); t with ν dof is wider than the normal.
    assert decisions.critical_z(10, alpha=0.01) == pytest.approx(stats.norm.isf(0.0005))
    assert decisions.critical_z(10, alpha=0.01, dof=5) == pytest.approx(stats.t.isf(0.0005, 5))
    assert decisions.critical_z(10, alpha=0.01, dof=5) > decisions.critical_z(10, alpha=0.01)
    with pytest.raises(ValueError, match="n_tests"):
        decisions.critical_z(0)


def test_decide_zscores_fails_on_one_outlier_and_skips_nan():
    zc = decisions.critical_z(3)
    assert decisions.decide_zscores([0.1, -1.0, np.nan, 2.0])[0] == "holds"
    assert decisions.decide_zscores([0.1, -1.0, zc * 1.01])[0] == "fails"
    assert decisions.decide_zscores([0.0, np.inf])[0] == "fails"
    with pytest.raises(ValueError):
        decisions.decide_zscores([np.nan])


def test_decide_zscores_false_alarm_rate_is_at_most_alpha():
    """Under the null (K standard normal z-scores) the Bonferroni rule says "fails" with
    probability ≤ α. Over 2000 families at α = 0.05 the count is Binomial(2000, ≤ 0.05):
    mean ≤ 100, sd ≤ 9.7, so more than 100 + 5·9.7 = 149 false alarms would be a bug."""
    z = np.random.default_rng(0).standard_normal((2000, 6))
    alarms = sum(decisions.decide_zscores(row, alpha=0.05)[0] == "fails" for row in z)
    assert alarms <= 149


def test_decide_identity_and_cells():
    assert decisions.decide_identity([0.2, 1.0]) == "holds"
    assert decisions.decide_identity([0.2, 1.0001]) == "fails"
    assert decisions.decide_identity([0.2, np.inf]) == "fails"
    assert decisions.decide_identity([]) == "fails"
    assert decisions.decide_cells([True, True]) == "holds"
    assert decisions.decide_cells([True, False]) == "conditional"
    assert decisions.decide_cells([False, False]) == "fails"
    with pytest.raises(ValueError):
        decisions.decide_cells([])


def test_decide_reference_uses_mc_error_plus_half_unit_of_the_quote():
    # 0.00845 quoted to 3 digits: half a unit = 5e−6 (exact); se = 0 leaves only that.
    assert decisions.quote_halfunit(0.00845, 3) == pytest.approx(5e-6, rel=1e-12)
    assert decisions.quote_halfunit(0.47, 2) == pytest.approx(5e-3, rel=1e-12)
    assert decisions.quote_halfunit(0.0, 3) == 0.0
    assert decisions.decide_reference(0.008454, 0.0, 0.00845, digits=3)[0] == "holds"
    assert decisions.decide_reference(0.008456, 0.0, 0.00845, digits=3)[0] == "fails"
    v, tol = decisions.decide_reference(0.0086, 1e-4, 0.00845, digits=3)
    assert v == "holds" and tol == pytest.approx(decisions.critical_z(1) * 1e-4 + 5e-6)
    assert decisions.decide_reference(0.0090, 1e-4, 0.00845, digits=3)[0] == "fails"


# ----------------------------------------------------------------------------- intervals
@pytest.mark.parametrize(
    "predicted, ci, expect",
    [
        (4.0, (3.9, 4.1), "holds"),
        (4.0, (4.01, 4.1), "fails"),
        (4.0, (4.0, 4.0), "holds"),
        (-0.5, (-1.2, -1.1), "fails"),
        (-1.0, (-1.2, -0.9), "holds"),
    ],
)
def test_decide_interval(predicted, ci, expect):
    assert decisions.decide_interval(predicted, ci) == expect


def test_decide_all_intervals_needs_every_prediction_inside():
    assert decisions.decide_all_intervals([4.0, 1.0], [(3.9, 4.1), (0.2, 0.4)]) == "fails"
    assert decisions.decide_all_intervals([4.0, 1.0], [(3.9, 4.1), (0.8, 1.2)]) == "holds"


@pytest.mark.parametrize(
    "predicted, ci, null, expect",
    [
        (4.0, (3.0, 5.0), 1.0, "holds"),  # excludes the no-effect value: a real test
        (4.0, (0.9, 9.0), 1.0, "conditional"),  # contains both: tests nothing
        (4.0, (1.5, 3.0), 1.0, "fails"),  # excludes the prediction
        (0.0, (-1.0, 1.0), 0.0, "holds"),  # the prediction IS no effect
    ],
)
def test_decide_interval_vs_null(predicted, ci, null, expect):
    assert decisions.decide_interval_vs_null(predicted, ci, null=null) == expect


def test_decide_slope_fixed_range_rules():
    assert decisions.decide_slope(1.0, (0.9, 1.1), (0.95, 1.05)) == "holds"
    assert decisions.decide_slope(1.0, (0.9, 1.1), (0.5, 0.6)) == "fails"  # fixed range rules
    assert decisions.decide_slope(1.0, (0.9, 1.1)) == "holds"
    assert decisions.decide_slope(1.0, (1.05, 1.2), (0.95, 1.05)) == "conditional"
    assert decisions.decide_slope(1.0, (1.05, 1.2), (1.02, 1.05)) == "fails"
    assert decisions.decide_slope(1.0, (1.05, 1.2)) == "fails"


# ----------------------------------------------------------------------------- thresholds, bounds
@pytest.mark.parametrize(
    "ci, threshold, want, expect",
    [
        ((0.01, 0.04), 0.05, "below", "holds"),
        ((0.06, 0.09), 0.05, "below", "fails"),
        ((0.03, 0.07), 0.05, "below", "conditional"),
        ((0.05, 0.09), 0.05, "below", "fails"),
        ((0.01, 0.05), 0.05, "below", "conditional"),
        ((0.2, 0.3), 0.1, "above", "holds"),
        ((0.0, 0.05), 0.1, "above", "fails"),
        ((0.0, 0.1), 0.1, "above", "fails"),
        ((0.1, 0.3), 0.1, "above", "conditional"),
    ],
)
def test_decide_side_hand_cases_with_boundaries(ci, threshold, want, expect):
    assert decisions.decide_side(ci, threshold, want=want) == expect


def test_decide_side_too_few_units_is_never_decisive():
    assert (
        decisions.decide_side((0.2, 0.3), 0.1, want="above", n_units=decisions.MIN_PAIRS - 1)
        == "conditional"
    )
    assert (
        decisions.decide_side((0.2, 0.3), 0.1, want="above", n_units=decisions.MIN_PAIRS) == "holds"
    )
    with pytest.raises(ValueError, match="want"):
        decisions.decide_side((0.0, 1.0), 0.5, want="sideways")


def test_decide_sign_and_side_differ_only_at_an_interval_ending_at_zero():
    """decide_sign fails only when hi < 0, decide_side(want="above") when hi ≤ 0: both kept as
    they were decided."""
    assert decisions.decide_sign((-0.5, -0.4)) == "fails"
    assert decisions.decide_sign((0.1, 0.4)) == "holds"
    assert decisions.decide_sign((-0.1, 0.4)) == "conditional"
    assert decisions.decide_sign((0.1, 0.4), claimed_positive=False) == "fails"
    assert decisions.decide_sign((-0.5, -0.1), claimed_positive=False) == "holds"
    assert decisions.decide_sign((-0.5, 0.0)) == "conditional"
    assert decisions.decide_side((-0.5, 0.0), 0.0, want="above") == "fails"


@given(lo=st.floats(-3, 3), width=st.floats(0, 3))
@settings(deadline=None, max_examples=200)
def test_decide_sign_equals_decide_side_away_from_zero(lo, width):
    hi = lo + width
    if hi != 0.0:
        assert decisions.decide_sign((lo, hi)) == decisions.decide_side((lo, hi), 0.0, want="above")


def test_the_two_upper_bound_rules():
    # per cell: every CI under 1 holds, one lower end above 1 fails, else conditional
    assert decisions.decide_upper_bound_cells([0.1, 0.5], [0.2, 0.9]) == "holds"
    assert decisions.decide_upper_bound_cells([0.1, 0.9], [0.2, 1.1]) == "conditional"
    assert decisions.decide_upper_bound_cells([0.1, 1.01], [0.2, 1.1]) == "fails"
    # the interval of max(measured/bound)
    assert decisions.decide_upper_bound_max((1.1, 1.3)) == "fails"
    assert decisions.decide_upper_bound_max((0.2, 0.4)) == "holds"
    assert decisions.decide_upper_bound_max((0.9, 1.1)) == "conditional"
    assert decisions.decide_upper_bound_max((0.2, 1.0)) == "holds"
    # the two agree on a single cell
    for lo, hi in ((0.2, 0.4), (0.9, 1.1), (1.1, 1.3), (0.5, 1.0)):
        assert decisions.decide_upper_bound_cells([lo], [hi]) == decisions.decide_upper_bound_max(
            (lo, hi)
        )


def test_decide_exponential():
    assert decisions.decide_exponential((0.9, 1.1), 0.5) == "fails"
    assert decisions.decide_exponential((1.0, 1.1), 1.0) == "fails"
    assert decisions.decide_exponential((3.0, 4.5), 1.0) == "holds"
    assert decisions.decide_exponential((3.0, 4.5), 0.4) == "conditional"
