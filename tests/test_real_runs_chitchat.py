"""real_runs.chitchat and the data side of issue 14: prompt split, layout errors, DailyDialog layout,
spread pairs, whole-dialogue windows, clustered intervals."""

import json
import math

import numpy as np
import pytest

from real_runs import data as D
from real_runs.chitchat import (
    HELDOUT_PROMPTS,
    TOPIC_PATTERN,
    load_chitchat,
    pretraining_split,
    split_by_prompt,
    split_by_topic,
)


def _conv(prompt, turns):
    return {
        "messages": [
            [{"text": t, "sender": "a" if i % 2 == 0 else "b", "timestamp": "x"}]
            for i, t in enumerate(turns)
        ],
        "prompt": prompt,
        "start": "x",
    }


def _write(tmp_path, obj, name="cc.json"):
    p = tmp_path / name
    p.write_text(json.dumps(obj))
    return p


def test_installed_chitchat_layout_and_prompt_split():
    convs = load_chitchat()
    # chitchat-dataset 0.9.0 (pinned): 4,017 of the 7,168 have ≥ 2 non-empty turns
    assert len(convs) == 4017
    assert len({c.prompt for c in convs} - {None}) == 34  # the 35th raw value is ""
    pre, fine = split_by_prompt(convs)
    assert (len(pre), len(fine)) == (3179, 835)
    assert len({c.prompt for c in pre} - {None}) == 26
    assert len(convs) - len(pre) - len(fine) == 3  # copies of held-out conversations dropped
    assert {c.prompt for c in fine} == set(HELDOUT_PROMPTS)  # all eight prompts exist verbatim
    assert not {c.id for c in pre} & {c.id for c in fine}
    assert not {c.prompt for c in pre} & set(HELDOUT_PROMPTS)
    train, val = pretraining_split(convs)
    assert len(train) + len(val) == len(pre)
    # no fine-tuning conversation's text is in the pretraining corpus
    fine_text = {tuple(c.turns) for c in fine}
    assert not fine_text & {tuple(d) for d in train + val}



def test_topic_split_drops_every_pretraining_conversation_that_mentions_the_topic():
    convs = load_chitchat()
    pre_p, fine_p = split_by_prompt(convs)
    pre, fine = split_by_topic(convs)
    assert fine == fine_p  # the same fine-tuning conversations
    # chitchat-dataset 0.9.0: 623 of the 3,179 prompt-split pretraining conversations mention it
    assert (len(pre), len(fine)) == (2556, 835)
    assert {c.id for c in pre} < {c.id for c in pre_p}
    hit = lambda c: any(TOPIC_PATTERN.search(t) for t in c.turns)  # noqa: E731
    assert not any(map(hit, pre))
    assert all(hit(c) for c in pre_p if c.id not in {d.id for d in pre})
    # the pattern: whole words, any case; not inside other words
    for t in ("my Computer", "an AI", "A.I. is", "robots!", "artificial", "Intelligent", "androids"):
        assert TOPIC_PATTERN.search(t), t
    for t in ("said", "aim", "artifice", "computed", "Thailand"):
        assert not TOPIC_PATTERN.search(t), t
    train, val = pretraining_split(convs, heldout="topic")
    assert len(train) + len(val) == len(pre)
    assert pretraining_split(convs) == pretraining_split(convs, heldout="prompts")
    with pytest.raises(ValueError, match="heldout"):
        pretraining_split(convs, heldout="persona")

def test_turn_messages_joined_and_empty_dropped(tmp_path):
    obj = {
        "b": {
            "messages": [[{"text": "hi"}, {"text": " there "}], [{"text": "  "}], [{"text": "yo"}]],
            "prompt": "p",
        },
        "a": _conv(None, ["one"]),
    }  # a single turn: dropped
    (c,) = load_chitchat(_write(tmp_path, obj))
    assert c.turns == ("hi there", "yo") and c.prompt == "p" and c.id == "b"


@pytest.mark.parametrize(
    "obj,match",
    [
        ([1, 2], "JSON object"),
        ({"x": {"msgs": []}}, "'messages' list"),
        ({"x": {"messages": [["hi"]]}}, "turn 0"),
        ({"x": {"messages": [[{"text": 3}]]}}, "turn 0"),
        ({"x": {"messages": [[{"text": "a"}], [{"text": "b"}]], "prompt": 5}}, "'prompt'"),
    ],
)
def test_wrong_layout_is_a_clear_error(tmp_path, obj, match):
    p = _write(tmp_path, obj)
    with pytest.raises(D.DataError, match=match) as e:
        load_chitchat(p)
    assert str(p) in str(e.value)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_chitchat(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(D.DataError, match="not valid JSON"):
        load_chitchat(bad)


def test_chitchat_dataset_spec_with_a_path(tmp_path):
    obj = {f"c{i}": _conv(HELDOUT_PROMPTS[i % 2], [f"q{i}", f"a{i}"]) for i in range(4)}
    obj["other"] = _conv("not held out", ["x", "y"])
    p = _write(tmp_path, obj)
    d = D.load_dialogues(f"chitchat:{p}")
    assert sorted(d) == sorted([[f"q{i}", f"a{i}"] for i in range(4)])
    assert D.resolve_dataset(f"chitchat:{p}") == str(p.resolve())


def test_n_larger_than_available_is_a_clear_error():
    dialogues = [[f"q{i}", f"a{i}"] for i in range(30)]
    with pytest.raises(D.DataError, match=r"n_train must be in 1…27"):
        D.split_dialogues(dialogues, n_train=28)


def test_dailydialog_published_layout_parquet_and_json(tmp_path):
    # DailyDialog's published columns (hub li2017dailydialog/daily_dialog): dialog, act, emotion
    import datasets

    rows = [
        {"dialog": ["Hi , how are you ? ", " Fine , thanks . "], "act": [2, 1], "emotion": [0, 4]},
        {
            "dialog": ["Where to ? ", " The station . ", " OK . "],
            "act": [2, 1, 3],
            "emotion": [0, 0, 0],
        },
    ]
    pq = tmp_path / "dailydialog_train.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(pq))
    want = [["Hi , how are you ?", "Fine , thanks ."], ["Where to ?", "The station .", "OK ."]]
    assert D.load_dialogues(str(pq)) == want
    js = tmp_path / "dailydialog_train.json"
    js.write_text("\n".join(json.dumps(r) for r in rows))
    assert D.load_dialogues(str(js)) == want


def test_pairs_spread_across_dialogues_and_honour_max_pairs():
    dialogues = [[f"d{i}t{j}" for j in range(6)] for i in range(40)]  # 5 pairs each
    s = D.split_dialogues(dialogues, heldout_frac=0.25, max_pairs=25)
    assert len(s.heldout) == 10 and len(s.pairs) == 25
    counts = np.bincount(s.pair_dialogue, minlength=10)
    assert counts.max() - counts.min() <= 1  # round robin: every dialogue used 2–3 times
    for (ctx, resp), i in zip(s.pairs, s.pair_dialogue):
        d = s.heldout[i]
        j = len(ctx)
        assert ctx == d[:j] and resp == d[j]
    # all pairs when max_pairs exceeds them, each exactly once
    s_all = D.split_dialogues(dialogues, heldout_frac=0.25, max_pairs=10_000)
    assert len(s_all.pairs) == 50 and len({(tuple(c), r) for c, r in s_all.pairs}) == 50


def test_encode_chunks_keep_every_token_once():
    class Tok:
        eos_token_id = 0

        def __call__(self, t):
            return {"input_ids": [ord(c) for c in t]}

    turns = ["abcde", "fgh", "ijklmnop"]
    ids = D.encode_dialogue(Tok(), turns, seq_len=10**9)
    chunks = D.encode_chunks(Tok(), turns, seq_len=4)
    assert sum(chunks, []) == ids[: len(sum(chunks, []))]
    assert len(sum(chunks, [])) >= len(ids) - 1 and all(len(c) <= 4 for c in chunks)


def test_clustered_mean_ci_matches_a_numpy_recomputation():
    rng = np.random.default_rng(0)
    clusters = np.repeat(np.arange(12), rng.integers(1, 6, 12))
    vals = rng.normal(size=clusters.size) + clusters * 0.1
    m, lo, hi = D.clustered_mean_ci(vals, list(clusters))
    n, C = vals.size, 12
    S = np.array([vals[clusters == c].sum() for c in range(C)])
    k = np.array([(clusters == c).sum() for c in range(C)])
    se = math.sqrt(C / (C - 1) * ((S - k * vals.mean()) ** 2).sum()) / n
    from scipy import stats

    t = stats.t.ppf(0.975, C - 1)
    assert m == pytest.approx(vals.mean(), rel=1e-12)
    assert (lo, hi) == pytest.approx((vals.mean() - t * se, vals.mean() + t * se), rel=1e-12)
    # singletons: CR1 reduces to the ordinary standard error s/√n
    v = rng.normal(size=30)
    m, lo, hi = D.clustered_mean_ci(v, list(range(30)))
    assert (hi - lo) / 2 == pytest.approx(
        stats.t.ppf(0.975, 29) * v.std(ddof=1) / math.sqrt(30), rel=1e-10
    )
    assert D.clustered_mean_ci([1.0, 2.0], [0, 0])[1] == -math.inf


def test_clustered_interval_covers_at_the_nominal_rate():
    # coverage check at the sizes used (≈ 150 clusters of 3–4): 400 replications, 95 % nominal;
    # the binomial s.d. of the coverage is √(.95·.05/400) ≈ 0.011, so [0.91, 0.99] is ±4 s.d.
    rng = np.random.default_rng(1)
    hit = 0
    for _ in range(400):
        u = rng.normal(size=150)  # dialogue effects (intra-cluster correlation)
        clusters = np.repeat(np.arange(150), 3)
        v = u[clusters] + rng.normal(size=clusters.size)
        _, lo, hi = D.clustered_mean_ci(v, list(clusters))
        hit += lo <= 0.0 <= hi
    assert 0.91 <= hit / 400 <= 0.99
