"""quantbounds.calib.pairing: one screening and one pairing, against a brute-force pairing
written out here from the definition (match on every PAIR_KEYS field, average repeated
baselines), and hand cases of missing baselines, group numbering and screening."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from quantbounds.calib.pairing import (
    PAIR_KEYS,
    PairedRuns,
    pair_key,
    pair_runs,
    paired_excess,
    screen_records,
)
from quantbounds.calib.synthetic import synthetic_records


def _records():
    recs = synthetic_records(
        seed=3,
        ranks=(2, 8),
        bits=(2, 4),
        n_trains=(100, 400),
        seeds=(0, 1),
        base_arms=("base_nf4", "base_fp4"),
    )
    # a repeated baseline (same key, different loss) and a second LoRA scale
    repeat = next(
        r
        for r in recs
        if r["arm"] == "fp16" and r["rank"] == 8 and r["n_train"] == 400 and r["seed"] == 1
    )
    recs.append(dict(repeat, run_id="repeat", eval_loss=repeat["eval_loss"] + 0.3))
    recs += [dict(r, scale="rslora", run_id=r["run_id"] + "-rs") for r in recs[:12]]
    return recs


def _brute_force(records, arm, baseline_arm="fp16", metric="eval_loss", bits=None):
    """(rank, bits, q, mean baseline) per pair, from the definition."""
    out = []
    for q in records:
        if q["arm"] != arm or (bits is not None and q["bits"] != bits):
            continue
        base = [
            b[metric]
            for b in records
            if b["arm"] == baseline_arm
            and b["bits"] == 16
            and all(b.get(k) == q.get(k) for k in PAIR_KEYS)
        ]
        if base:
            out.append((q["rank"], q["bits"], q[metric], float(np.mean(base))))
    return out


@pytest.mark.parametrize(
    "arm, baseline_arm, metric, bits",
    [
        ("adapter_rtn", "fp16", "eval_loss", None),
        ("adapter_rtn", "fp16", "perplexity", 4),
        ("base_nf4", "fp16", "f1", None),
        ("base_fp4", "base_nf4", "eval_loss", None),
    ],
)
def test_pairs_match_a_brute_force_pairing(arm, baseline_arm, metric, bits):
    recs = _records()
    pairs = pair_runs(recs).pairs(arm=arm, baseline_arm=baseline_arm, metric=metric, bits=bits)
    want = _brute_force(recs, arm, baseline_arm, metric, bits)
    got = list(zip(pairs.rank.tolist(), pairs.bits.tolist(), pairs.q.tolist(), pairs.base.tolist()))
    assert len(got) == len(want) > 0
    for g, w in zip(got, want):
        assert g[:2] == w[:2] and g[2] == w[2] and g[3] == pytest.approx(w[3], rel=1e-15)
    np.testing.assert_allclose(pairs.excess, pairs.q - pairs.base)
    np.testing.assert_allclose(pairs.rel, pairs.q / pairs.base - 1)


def test_repeated_baselines_are_averaged():
    recs = _records()
    pairs = pair_runs(recs).pairs(arm="adapter_rtn", bits=2)
    key = next(pair_key(r) for r in recs if r["run_id"] == "repeat")
    runs = [r["eval_loss"] for r in recs if r["arm"] == "fp16" and pair_key(r) == key]
    assert len(runs) == 2
    sel = (
        (pairs.rank == 8)
        & (pairs.n_train == 400)
        & (pairs.seed == 1)
        & (pairs.group == pair_runs(recs).baseline_keys("fp16").index(key))
    )
    assert sel.sum() == 1 and pairs.base[sel][0] == pytest.approx(np.mean(runs), rel=1e-15)


def test_group_numbering_is_the_sorted_baseline_keys_per_scale():
    runs = pair_runs(_records())
    keys = runs.baseline_keys("fp16")
    assert keys == sorted(keys, key=str) and len(set(keys)) == len(keys)
    for scale in ("one", "rslora"):
        sub = runs.baseline_keys("fp16", scale=scale)
        assert all(k[PAIR_KEYS.index("scale")] == scale for k in sub)
        pairs = runs.pairs(arm="adapter_rtn", scale=scale)
        recs = [r for r in runs.records if r["arm"] == "adapter_rtn" and r["scale"] == scale]
        expected = [sub.index(pair_key(r)) for r in recs if pair_key(r) in sub]
        assert pairs.group.tolist() == expected
    # without a scale filter the groups index every fp16 key
    all_pairs = runs.pairs(arm="adapter_rtn")
    assert all_pairs.group.max() < len(keys)


def test_runs_without_a_baseline_are_listed_as_missing():
    recs = [r for r in _records() if not (r["arm"] == "fp16" and r["rank"] == 2 and r["seed"] == 0)]
    pairs = pair_runs(recs).pairs(arm="adapter_rtn", max_bits=2)
    assert pairs.missing and all("r=2" in m and "seed=0" in m and "b=2" in m for m in pairs.missing)
    assert not np.any((pairs.rank == 2) & (pairs.seed == 0))
    assert np.all(pairs.bits <= 2)


def test_screen_drops_non_finite_and_pattern_runs_and_names_them():
    recs = synthetic_records(
        seed=0, ranks=(4,), bits=(2, 4), n_trains=(100,), seeds=(0,), base_arms=()
    )
    recs[1]["eval_loss"] = float("nan")
    recs[2]["config"] = {"rank_pattern": {"h\\.0": 2}}
    valid, problems = screen_records(recs)
    assert len(valid) == len(recs) - 2
    assert recs[1]["run_id"] in problems[0] and "non-finite" in problems[0]
    assert recs[2]["run_id"] in problems[1] and "pattern" in problems[1]
    runs = pair_runs(recs)  # the one screening: same records kept, same problems
    assert list(runs.records) == valid and list(runs.problems) == problems
    assert runs.n_input == len(recs) and len(runs) == len(valid)
    assert runs.summary()["n_records"] == len(recs) and runs.summary()["n_valid"] == len(valid)


def test_mixed_schemas_are_noted_and_only_run1_is_used():
    recs = synthetic_records(
        seed=0, ranks=(4,), bits=(2,), n_trains=(100,), seeds=(0,), base_arms=()
    )
    recs.append(dict(recs[0], schema="quantbounds.run/2"))
    valid, problems = screen_records(recs)
    assert len(valid) == len(recs) - 1 and "mixed schema versions" in problems[0]


def test_paired_runs_is_frozen_and_paired_once():
    recs = _records()
    runs = pair_runs(recs)
    assert pair_runs(runs) is runs  # a PairedRuns passes through
    assert isinstance(runs, PairedRuns)
    with pytest.raises(dataclasses.FrozenInstanceError):
        runs.records = ()
    pairs = runs.pairs(arm="adapter_rtn")
    with pytest.raises(dataclasses.FrozenInstanceError):
        pairs.rank = np.array([])
    np.testing.assert_array_equal(paired_excess(recs, arm="adapter_rtn").excess, pairs.excess)
    assert runs.has("base_fp4") and not runs.has("adapter_sr") and runs.has("adapter_rtn", bits=4)
    assert runs.arms() == sorted({r["arm"] for r in recs})
    with pytest.raises(ValueError, match="arm"):
        runs.pairs(arm="nonsense")


def test_a_repeated_configuration_is_counted_once():
    """The N-sweep's n_train = 808 run equals the default run (n_train None → 808): same
    configuration once defaults are resolved, so one pair, not two (and a note naming both)."""
    from quantbounds.calib.pairing import canonical_id, dedupe_records

    recs = synthetic_records(seed=1, ranks=(4,), bits=(3,), n_trains=(808,), seeds=(0,),
                             base_arms=())
    for r in recs:
        r["config"] = {"arm": r["arm"], "rank": r["rank"], "bits": r["bits"], "seed": 0,
                       "n_train": None}
    twin = [dict(r, run_id=r["run_id"] + "-808", config=dict(r["config"], n_train=808))
            for r in recs]
    assert canonical_id(recs[0]) == canonical_id(twin[0]) != canonical_id(recs[1])
    kept, problems = dedupe_records(recs + twin)
    assert kept == recs and len(problems) == len(twin)
    assert all("counted once" in p and "identical eval loss" in p for p in problems)
    runs = pair_runs(recs + twin)
    assert len(runs.pairs(arm="adapter_rtn")) == 1 and runs.n_repeats == len(twin)
    assert runs.summary()["n_repeats_dropped"] == len(twin)
    # a different configuration (another seed) is not a repeat; records without config use run_id
    other = [dict(r, run_id=r["run_id"] + "-s1", seed=1, config=dict(r["config"], seed=1))
             for r in recs]
    assert len(dedupe_records(recs + other)[0]) == 2 * len(recs)
    bare = [{k: v for k, v in r.items() if k != "config"} for r in recs]
    assert len(dedupe_records(bare + bare)[0]) == len(bare)


def test_gen_gap_metric_and_lora_scale_column():
    from quantbounds.calib.pairing import metric_value, run_scale

    recs = synthetic_records(seed=2, ranks=(4, 16), bits=(4,), n_trains=(100,), seeds=(0,),
                             base_arms=("base_nf4",))
    r = recs[0]
    assert metric_value(r, "gen_gap") == pytest.approx(r["eval_loss"] - r["train_loss"][-1])
    assert np.isnan(metric_value({k: v for k, v in r.items() if k != "train_loss"}, "gen_gap"))
    p = pair_runs(recs).pairs(arm="base_nf4", metric="gen_gap")
    want = [metric_value(q, "gen_gap") for q in recs if q["arm"] == "base_nf4"]
    np.testing.assert_allclose(p.q, want)
    # the numeric LoRA scale: the record's, else from the convention (α/r)
    assert run_scale({"lora_scale": 2.0}) == 2.0
    assert run_scale({"scale": "alpha_r", "lora_alpha": 16.0, "rank": 4}) == 4.0
    assert np.all(pair_runs(recs).pairs(arm="adapter_rtn").s == 1.0)
