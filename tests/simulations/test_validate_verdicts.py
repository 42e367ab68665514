"""The verdict builders of `quantbounds validate`, fed numbers that agree and that disagree with
each claim: every statistical decision must be able to come out holds, fails and
inconclusive (and conditional where the claim has readings or cells), every identity holds
and fails; each verdict names its registry claim and carries that claim's kind."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate

from quantbounds.verdicts import standard
from quantbounds.verdicts.registry import registry
from quantbounds.verdicts.results import finalize_verdicts
from simulations import breakdown, codebooks, decomposition, moments_mc, slopes


def _d(ph, pf):
    return standard.Decision(verdict="inconclusive", p_holds=ph, p_fails=pf, reason="")


def _by_id(vs):
    out = {}
    for v in vs:
        out.setdefault(v.claim_id, []).append(v)
    return out


def _wired(vs):
    """Every verdict names a registry claim, with the registry's kind (write_results' check)."""
    reg = registry()
    for v in vs:
        assert v.claim_id in reg and v.kind == reg[v.claim_id].kind, v.claim
    finalize_verdicts(vs)  # raises if any is not wired


# ----------------------------------------------------------------------------- combinators
def test_over_cells_all_verdicts():
    ok, bad, mid = _d(1e-6, 1.0), _d(1.0, 1e-6), _d(0.3, 0.3)
    assert standard.over_cells({"a": ok, "b": ok}).verdict == "holds"
    assert standard.over_cells({"a": ok, "b": ok}).p_holds == pytest.approx(1e-6)
    d = standard.over_cells({"a": ok, "b": bad})
    assert d.verdict == "conditional" and d.readings == {"a": "holds", "b": "fails"}
    assert standard.over_cells({"a": ok, "b": bad}, conditional=False).verdict == "fails"
    assert standard.over_cells({"a": mid, "b": bad}).verdict == "fails"
    assert standard.over_cells({"a": ok, "b": mid}).verdict == "inconclusive"
    # Bonferroni: a cell at p = 0.02 fails alone, not among 5 cells
    assert standard.over_cells({"a": _d(1.0, 0.02)}).verdict == "fails"
    five = {k: _d(1.0, 0.02 if k == "a" else 0.9) for k in "abcde"}
    assert standard.over_cells(five).verdict == "inconclusive"


def test_mc_identity_three_ways():
    assert standard.mc_identity(0.95, 0.005, 0.95, 0.05, 7).verdict == "holds"
    assert standard.mc_identity(0.47, 0.005, 0.95, 0.05, 7).verdict == "fails"
    assert standard.mc_identity(0.95, 0.05, 0.95, 0.05, 7).verdict == "inconclusive"
    d = standard.identity_cells({"a": standard.mc_identity(1, 0.001, 1, 0.05, 7),
                                  "b": standard.mc_identity(2, 0.001, 1, 0.05, 7)})
    assert d.verdict == "conditional" and d.p_holds is None


# ----------------------------------------------------------------------------- breakdown
CFG = {"m": 1024, "n": 1024, "r": 16, "n_draws": 8}


def _bcell(bits=4, gran="tensor", rd="nearest", st="paper", fam="gaussian", ratio=1.0,
           var=1.0, se=0.002, corr=0.0, corr_se=0.002, bound=None):
    c = {"family": fam, "bits": bits, "granularity": gran, "rounding": rd, "step": st,
         "ratio": ratio, "ratio_se": se, "ratio_ci": (ratio - 2.4 * se, ratio + 2.4 * se),
         "var_ratio": var, "var_ratio_se": se,
         "var_ratio_ci": (var - 2.4 * se, var + 2.4 * se), "corr": corr, "corr_se": corr_se,
         "corr_ci": (corr - 2.4 * corr_se, corr + 2.4 * corr_se)}
    if bound is not None:
        c.update(bound_ratio=bound, bound_ratio_se=se, bound_ratio_ci=(bound - 2.4 * se,
                                                                        bound + 2.4 * se))
    return c


def _noise_verdict(cells):
    vs = breakdown.verdicts({"config": CFG, "cells": cells})
    _wired(vs)
    return _by_id(vs)["s001.eq3.noise_variance"][0]


def test_additive_model_holds_fails_conditional_inconclusive():
    good = [_bcell(bits=b) for b in (3, 4)]
    assert _noise_verdict(good).verdict == "holds"
    assert _noise_verdict([_bcell(bits=b, ratio=1.5, var=1.5) for b in (3, 4)]).verdict == "fails"
    v = _noise_verdict([_bcell(bits=3), _bcell(bits=4, ratio=1.5, var=1.5)])
    assert v.verdict == "conditional" and "b∈[3]" in v.conditions
    assert _noise_verdict([_bcell(bits=b, se=0.2) for b in (3, 4)]).verdict == "inconclusive"
    # either statistic may refute the cell: the variance ratio alone off by 50 %
    assert _noise_verdict([_bcell(bits=3, var=1.5)]).verdict == "fails"
    # RTN and SR are two readings: RTN holds, SR (variance 2×) fails → conditional, named
    v = _noise_verdict(good + [_bcell(bits=b, rd="stochastic", ratio=2.0, var=2.0)
                               for b in (3, 4)])
    assert v.verdict == "conditional"
    assert v.details["readings"] == {"round-to-nearest, paper grid": "holds",
                                     "stochastic rounding, paper grid": "fails"}


def _b2(paper=0.95, mid=0.26, var_mid=0.63, corr=-0.6, corr_se=0.002, se=0.002):
    return [_bcell(bits=2, ratio=paper, var=1.0, se=se),
            _bcell(bits=2, st="midtread", ratio=mid, var=var_mid, corr=corr, corr_se=corr_se,
                   se=se)]


def test_widrow_numbers_are_design_md_s_not_0_47():
    by = _by_id(breakdown.verdicts({"config": CFG, "cells": _b2()}))
    assert by["toolkit.widrow.epsba_ratio"][0].verdict == "holds"
    assert by["toolkit.widrow.midtread_b2"][0].verdict == "holds"
    # the legacy 0.47 on the paper grid is now a failure of DESIGN.md's 0.95
    by = _by_id(breakdown.verdicts({"config": CFG, "cells": _b2(paper=0.47)}))
    assert by["toolkit.widrow.epsba_ratio"][0].verdict == "fails"
    by = _by_id(breakdown.verdicts({"config": CFG, "cells": _b2(corr=-0.2)}))
    assert by["toolkit.widrow.midtread_b2"][0].verdict == "fails"
    by = _by_id(breakdown.verdicts({"config": CFG, "cells": _b2(corr_se=0.05)}))
    assert by["toolkit.widrow.midtread_b2"][0].verdict == "inconclusive"
    # DESIGN.md states them for 1024², r = 16 only: another layer is not judged
    other = dict(CFG, m=256, n=256)
    by = _by_id(breakdown.verdicts({"config": other, "cells": _b2()}))
    assert "toolkit.widrow.epsba_ratio" not in by and "toolkit.widrow.midtread_b2" not in by


def test_sr_variance_clip_excess_and_real_bound():
    sr = [_bcell(bits=b, rd="stochastic", var=2.0) for b in (3, 4)]
    by = _by_id(breakdown.verdicts({"config": CFG, "cells": sr}))
    assert by["toolkit.sr_variance"][0].verdict == "holds"
    sr[0]["var_ratio"] = 1.25
    v = _by_id(breakdown.verdicts({"config": CFG, "cells": sr}))["toolkit.sr_variance"][0]
    assert v.verdict == "conditional" and "b∈[4]" in v.conditions
    clip = [_bcell(bits=b, gran="block64", var=1.07, ratio=1.07) for b in (4, 5)]
    by = _by_id(breakdown.verdicts({"config": CFG, "cells": clip}))
    assert by["toolkit.rtn_clip_excess"][0].verdict == "holds"
    clip = [_bcell(bits=b, gran="channel", var=1.2, ratio=1.2) for b in (4, 5)]
    by = _by_id(breakdown.verdicts({"config": CFG, "cells": clip}))
    assert by["toolkit.rtn_clip_excess"][0].verdict == "fails"
    for bound, want in ((0.1, "holds"), (1.5, "fails"), (0.999, "inconclusive")):
        cells = [_bcell(bits=3, bound=bound), _bcell(bits=4, bound=0.1)]
        v = _by_id(breakdown.verdicts({"config": CFG, "cells": cells}))
        v = v["toolkit.variance_bound.real"][0]
        assert v.verdict == want and v.kind == "upper_bound"
        assert (v.p_holds is not None) and (v.p_fails is not None)


# ----------------------------------------------------------------------------- moments / bound
def _mcell(z, exact=0.1, bound=1.0, fam="gaussian"):
    return {"family": fam, "m": 8, "n": 8, "r": 2, "bits": 4, "granularity": "tensor", "z": z,
            "exact": [0, 0, 0, exact], "bound": bound, "bound_ratio": exact / bound if bound
            else 0.0, "bound_ratio_ci": (0.0, 0.0)}


def test_moments_identities_hold_and_fail():
    res = {"config": {"n_samples": 32}, "cells": [_mcell([0.5, -1.0, 0.2, 1.1])]}
    vs = moments_mc.verdicts(res)
    _wired(vs)
    assert [v.verdict for v in vs] == ["holds", "holds"]
    assert all(v.kind == "identity" and v.p_holds is None for v in vs)
    res = {"config": {"n_samples": 32}, "cells": [_mcell([0.5, -1.0, 0.2, 9.0])]}
    assert moments_mc.verdicts(res)[0].verdict == "fails"
    # the bound on its own model: exact > bound fails; 0 ≤ 0 (B = 0) holds; x > 0 = bound fails
    res = {"config": {"n_samples": 32}, "cells": [_mcell([0.5, 0, 0, 0], exact=1.2)]}
    assert moments_mc.verdicts(res)[1].verdict == "fails"
    zero = _mcell([np.nan] * 4, exact=0.0, bound=0.0, fam="peft_init")
    res = {"config": {"n_samples": 32}, "cells": [_mcell([0.1] * 4), zero]}
    vs = moments_mc.verdicts(res)
    assert [v.verdict for v in vs] == ["holds", "holds", "holds"]
    zero["exact"] = [0, 0, 0, 1e-9]
    assert moments_mc.verdicts(res)[2].verdict == "fails"
    # exact zeros (NaN z) pass; a nonzero MC where the exact value is 0 (z = inf) fails
    res = {"config": {"n_samples": 32},
           "cells": [_mcell([0.1] * 4), _mcell([np.nan, np.nan, np.nan, np.inf])]}
    assert moments_mc.verdicts(res)[0].verdict == "fails"


def test_zscore_critical_value_is_bonferroni_t():
    dec, zc = moments_mc.zscore_check(np.zeros(10), alpha=0.01, dof=31)
    from scipy import stats

    assert zc == pytest.approx(stats.t.ppf(1 - 0.01 / 20, 31)) and dec.verdict == "holds"
    assert moments_mc.zscore_check([zc * 1.001], alpha=0.01, dof=31)[0].verdict == "fails"


def test_decomposition_verdicts_are_identities():
    res = {"rows": [{"dtype": "float64", "max_ratio": 0.3, "finite": True, "resid_ulps": 0.1,
                     "m": 8, "n": 8, "r": 2}],
           "peft_zero_b": [{"max_abs_eps_ba": 0.0, "max_abs_b_epsA": 0.0, "finite": True}]}
    vs = decomposition.verdicts(res)
    _wired(vs)
    assert [v.claim_id for v in vs] == ["s001.eq6.decomposition", "toolkit.zero_b"]
    assert all(v.kind == "identity" and v.verdict == "holds" for v in vs)
    res["rows"][0]["max_ratio"] = 1.01
    assert decomposition.verdicts(res)[0].verdict == "fails"


# ----------------------------------------------------------------------------- slopes
def _series(base, bits, n_draws=4, noise=1e-4, seed=0):
    rng = np.random.default_rng(seed)
    return [base ** -np.asarray(bits, float) * np.exp(noise * rng.normal(size=len(bits)))
            for _ in range(n_draws)]


def _factor_verdict(per_rank_real, bits):
    per = {str(r): slopes.bit_slope(t, [4.0 ** -np.asarray(bits, float)] * len(t), bits)
           for r, t in per_rank_real.items()}
    return slopes.factor_per_bit(per)


def test_factor_per_bit_holds_fails_conditional_inconclusive():
    bits = np.arange(2, 10)
    dec, b0, _ = _factor_verdict({1: _series(4.0, bits), 8: _series(4.0, bits, seed=1)}, bits)
    assert dec.verdict == "holds" and b0 == 2
    dec, b0, _ = _factor_verdict({1: _series(3.0, bits), 8: _series(3.0, bits, seed=1)}, bits)
    assert dec.verdict == "fails" and b0 is None
    bent = _series(4.0, bits)
    for t in bent:  # broken only at b = 2 (like RTN at 2 bits)
        t[0] *= 0.3
    dec, b0, full = _factor_verdict({1: bent}, bits)
    assert dec.verdict == "conditional" and b0 == 3 and full.verdict == "fails"
    dec, _, _ = _factor_verdict({1: _series(4.0, bits, noise=0.5)}, bits)
    assert dec.verdict == "inconclusive"
    # equivalence, not "−2 inside the CI": a factor 4.012 ± 0.0005 holds (margin ±0.1 in log₂)
    dec, _, _ = _factor_verdict({1: _series(4.012, bits)}, bits)
    assert dec.verdict == "holds"


def _slopes_res(power, *, fixed_power=None, noise=0.01, n_draws=3, signal_power=1.0):
    ranks = [1, 2, 4, 8, 16]
    bits = [4, 6, 8, 10, 12]
    rng = np.random.default_rng(12)

    def draws(p):
        return {r: [[r**p * 4.0**-b * np.exp(noise * rng.normal()) for b in bits]
                    for _ in range(n_draws)] for r in ranks}

    real = draws(power)
    fixed = real if fixed_power is None else draws(fixed_power)
    data = {"gaussian": [
        {"r": r, "real": real[r], "real_fixed_range": fixed[r],
         "model": [[r**power * 4.0**-b for b in bits]] * n_draws,
         "R_A": [1.0] * n_draws, "R_B": [1.0] * n_draws,
         "signal": [float(r**signal_power)] * n_draws}
        for r in ranks]}
    cfg = {"m": 8, "n": 8, "ranks": ranks, "bits": bits, "n_draws": n_draws, "rank_bits": 8,
           "lora_alpha": 16.0}
    return slopes.analyse({"config": cfg, "data": data})


def _slope_verdicts(res):
    vs = slopes.verdicts(res)
    _wired(vs)
    return {k: v[0] for k, v in _by_id(vs).items()}


def test_rank_slopes_in_the_measurements_convention():
    good = _slope_verdicts(_slopes_res(1.0))
    assert good["s001.thm3_1.rank_mechanism"].verdict == "holds"
    assert good["toolkit.scale_conventions"].verdict == "holds"  # −1 under α/r, 0 rsLoRA
    bad = _slope_verdicts(_slopes_res(2.0))
    assert bad["s001.thm3_1.rank_mechanism"].verdict == "fails"
    assert bad["toolkit.scale_conventions"].verdict == "fails"
    # fixed ranges hold, absmax ranges (growing with r) do not: the readings are named
    cond = _slope_verdicts(_slopes_res(1.3, fixed_power=1.0))
    v = cond["s001.thm3_1.rank_mechanism"]
    assert v.verdict == "conditional"
    assert v.details["readings"] == {"ranges fixed across r": "holds", "absmax ranges": "fails"}
    wide = _slope_verdicts(_slopes_res(1.0, noise=0.5))
    assert wide["s001.thm3_1.rank_mechanism"].verdict == "inconclusive"


def test_crossing_bits_and_bstar_slope():
    bits = np.array([2, 4, 6, 8])
    y = -2.0 * bits  # log₂ of 4^{−b}
    assert slopes.crossing_bits(y, bits, -10.0) == (5.0, False)
    assert slopes.crossing_bits(y, bits, -20.0) == (10.0, True)  # extrapolated
    assert slopes.crossing_bits(y, bits, 0.0) == (0.0, True)
    res = _slopes_res(1.0, noise=1e-6)
    bs = res["fits"]["gaussian"]["bstar"]
    # T ∝ r·4^{−b}: b* = ½·log₂(s²·r) + const, slope ½·(1 + log₂-slope of s²)
    assert bs["absolute target, s = 1"]["estimate"] == pytest.approx(0.5, abs=1e-4)
    assert bs["absolute target, s = α/r"]["estimate"] == pytest.approx(-0.5, abs=1e-4)
    assert bs["absolute target, s = α/√r (rsLoRA)"]["estimate"] == pytest.approx(0.0, abs=1e-4)
    assert bs["relative target ‖ε_BA‖²/‖B·A‖² (any s)"]["estimate"] == pytest.approx(0, abs=1e-4)


def test_higher_rank_more_bits_by_bstar_readings():
    cid = "s001.s4_2.higher_rank_more_bits"
    v = _slope_verdicts(_slopes_res(1.0, signal_power=0.5))[cid]
    assert v.verdict == "conditional" and v.kind == "comparison"
    assert v.details["readings"]["absolute target, s = 1"] == "holds"
    assert v.details["readings"]["absolute target, s = α/r"] == "fails"
    assert _slope_verdicts(_slopes_res(3.0))[cid].verdict == "holds"
    assert _slope_verdicts(_slopes_res(-1.0))[cid].verdict == "fails"
    assert _slope_verdicts(_slopes_res(1.0, noise=1.0, signal_power=0.5))[cid].verdict == (
        "inconclusive")


# ----------------------------------------------------------------------------- codebooks
def _cres(**over):
    mc = {k: {"distortion": d, "se": 1e-6, "ci": (d - 2e-6, d + 2e-6)}
          for k, d in (("nf4_block", 0.00845), ("int4_block", 0.0116), ("fp4_block", 0.0149),
                       ("uniform4_paper_block", 0.0098))}
    mc["int8_vs_additive"] = {"ratio": 1.0, "se": 0.001, "ci": (0.998, 1.002)}
    mc["fp4_minus_nf4"] = {"difference": 0.0064, "se": 2e-5, "ci": (0.00636, 0.00644)}
    ent = {"entropy": 3.99, "se": 0.001, "dof": 999, "frequencies": [1 / 16] * 16}
    mc["nf4_entropy"] = {"with absmax element": dict(ent),
                         "without each block's absmax element": dict(ent)}
    ex = {
        "lloyd_max": {"integral": 0.0095010, "reported": 0.0095010, "own_iteration": 0.0095010},
        "lloyd_max_3bit": {"integral": 0.0345478, "reported": 0.0345478,
                           "own_iteration": 0.0345478},
        "optimal_uniform": {"distortion": 0.011543, "step": 0.3352, "library": 0.011543},
        "nf4_best_scale": {"distortion": 0.0099, "scale": 2.86},
        "fp4_best_scale": {"distortion": 0.0166, "scale": 2.56},
        "lloyd_vs_uniform": [{"density": "gaussian", "bits": 4, "lloyd_max": 0.0095,
                              "uniform": 0.0115}],
        "fp4_gaps": {"levels": [0, 1], "max_over_min_gap": 64.0},
        "gap_growth": {"nf4": {"min_gap_increase": 0.001}},
        "nf4_quantiles": {"max_abs_diff": 0.0, "max_ulps": 0.0},
    }
    for k, v in over.items():
        (mc if k in mc else ex)[k] = v
    vs = codebooks.verdicts({"config": {"n_blocks": 1000, "block_size": 64}, "exact": ex,
                             "mc": mc})
    _wired(vs)
    return {k: v[0] for k, v in _by_id(vs).items()}


def test_codebook_references_judged_against_design_md():
    v = _cres()
    for cid in ("toolkit.lloyd_max.reference", "toolkit.uniform_opt.reference",
                "toolkit.blockwise.nf4", "toolkit.blockwise.int4", "toolkit.blockwise.fp4",
                "toolkit.absmax_exact", "toolkit.nf4_not_mse_optimal",
                "s002.lloyd_max.denser_near_zero", "s002.qlora.nf4_quantiles"):
        assert v[cid].verdict == "holds" and v[cid].kind == "identity", cid
    # Max's printed 0.009497 is not the reference any more: it would fail
    lm = {"integral": 0.009497, "reported": 0.009497, "own_iteration": 0.009497}
    assert _cres(lloyd_max=lm)["toolkit.lloyd_max.reference"].verdict == "fails"
    off = {"distortion": 0.0090, "se": 1e-6, "ci": (0.0090, 0.0090)}
    assert _cres(nf4_block=off)["toolkit.blockwise.nf4"].verdict == "fails"
    wide = {"distortion": 0.00845, "se": 1e-4, "ci": (0.0083, 0.0086)}
    assert _cres(nf4_block=wide)["toolkit.blockwise.nf4"].verdict == "inconclusive"
    assert _cres(int8_vs_additive={"ratio": 1.3, "se": 0.01, "ci": (1.28, 1.32)})[
        "toolkit.absmax_exact"].verdict == "fails"
    assert _cres(nf4_best_scale={"distortion": 0.0094, "scale": 2.8})[
        "toolkit.nf4_not_mse_optimal"].verdict == "fails"
    assert _cres(nf4_quantiles={"max_abs_diff": 1e-6, "max_ulps": 12.0})[
        "s002.qlora.nf4_quantiles"].verdict == "fails"
    assert _cres(gap_growth={"nf4": {"min_gap_increase": -0.01}})[
        "s002.lloyd_max.denser_near_zero"].verdict == "fails"


def test_codebook_seed_claims_can_go_either_way():
    v = _cres()
    assert v["s002.lloyd_max.nf4_vs_fp4_distortion"].verdict == "holds"
    assert v["s002.qlora.nf4_information_optimal"].verdict == "holds"
    assert v["s002.lloyd_max.optimal_beats_uniform"].verdict == "holds"
    assert v["s002.lloyd_max.fp4_is_uniform"].verdict == "fails"
    rev = {"difference": -0.002, "se": 2e-5, "ci": (-0.00204, -0.00196)}
    assert _cres(fp4_minus_nf4=rev)["s002.lloyd_max.nf4_vs_fp4_distortion"].verdict == "fails"
    noisy = {"difference": 0.0001, "se": 0.001, "ci": (-0.002, 0.002)}
    assert _cres(fp4_minus_nf4=noisy)[
        "s002.lloyd_max.nf4_vs_fp4_distortion"].verdict == "inconclusive"
    e = {"entropy": 3.88, "se": 0.001, "dof": 999, "frequencies": []}
    ents = {"with absmax element": e, "without each block's absmax element": e}
    assert _cres(nf4_entropy=ents)["s002.qlora.nf4_information_optimal"].verdict == "fails"
    e2 = dict(e, entropy=3.97)
    ents = {"with absmax element": e2, "without each block's absmax element": e}
    v = _cres(nf4_entropy=ents)["s002.qlora.nf4_information_optimal"]
    assert v.verdict == "conditional"
    e3 = dict(e, entropy=3.96, se=0.02)
    ents = {"with absmax element": e3, "without each block's absmax element": e3}
    assert _cres(nf4_entropy=ents)[
        "s002.qlora.nf4_information_optimal"].verdict == "inconclusive"
    cells = [{"density": "laplace", "bits": 2, "lloyd_max": 0.35, "uniform": 0.39},
             {"density": "laplace", "bits": 3, "lloyd_max": 0.12, "uniform": 0.11}]
    assert _cres(lloyd_vs_uniform=cells)[
        "s002.lloyd_max.optimal_beats_uniform"].verdict == "fails"
    assert _cres(fp4_gaps={"levels": [0, 1, 2], "max_over_min_gap": 1.0})[
        "s002.lloyd_max.fp4_is_uniform"].verdict == "holds"


def test_laplace_partials_against_quadrature():
    F, M1, M2, pdf, _ = codebooks.laplace_partials()
    for x in (-3.0, -0.4, 0.0, 0.7, 5.0):
        assert F(x) == pytest.approx(integrate.quad(pdf, -np.inf, x)[0], abs=1e-8)
        assert M1(x) == pytest.approx(integrate.quad(lambda t: t * pdf(t), -np.inf, x)[0],
                                      abs=1e-8)
        assert M2(x) == pytest.approx(integrate.quad(lambda t: t * t * pdf(t), -np.inf, x)[0],
                                      abs=1e-8)
    assert float(F(np.inf)) == 1.0 and float(M1(-np.inf)) == 0.0 and float(M2(np.inf)) == 2.0


def test_lloyd_max_density_known_answers():
    from quantbounds.quant.lloyd_max import lloyd_max

    # 2 levels on Laplace(0, 1): ±E|x| = ±1, D = E x² − (E|x|)² = 1
    r = codebooks.lloyd_max_density("laplace", 2)
    np.testing.assert_allclose(r["levels"], [-1.0, 1.0], atol=1e-10)
    assert r["distortion"] == pytest.approx(1.0, abs=1e-10)
    # Gaussian: the library's solver (Max 1960 / DESIGN.md's 0.0345478)
    r = codebooks.lloyd_max_density("gaussian", 8)
    assert r["distortion"] == pytest.approx(float(lloyd_max(3).distortion), abs=1e-12)
    # optimal uniform, 16 levels Gaussian: 0.01154 at Δ = 0.3352 (Max 1960 Table II)
    u = codebooks.optimal_uniform_density("gaussian", 16)
    assert u["distortion"] == pytest.approx(0.011543, abs=1e-6)
    assert u["step"] == pytest.approx(0.3352, abs=1e-4)


def test_bnb_normal_map_is_the_nf4_table_and_entropy():
    from quantbounds.quant.quantizers import nf4_code

    np.testing.assert_array_equal(codebooks.bnb_normal_map(), np.sort(np.asarray(nf4_code())))
    # 16 equally frequent codes: exactly 4 bits; two codes: 1 bit
    codes = np.tile(np.arange(16), 8)
    e = codebooks.code_entropy(codes, 8)
    assert e["entropy"] == pytest.approx(4.0) and e["dof"] == 7
    e = codebooks.code_entropy(np.tile([0, 1], 64), 4)
    assert e["entropy"] == pytest.approx(1.0)
    # the se is the block-clustered spread of the influence −log₂p̂ − H
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 16, size=64 * 500)
    e = codebooks.code_entropy(codes, 500)
    p = np.bincount(codes, minlength=16) / codes.size
    psi = (-np.log2(p[codes]) - e["entropy"]).reshape(500, -1).mean(axis=1)
    assert e["se"] == pytest.approx(psi.std(ddof=1) / math.sqrt(500))
