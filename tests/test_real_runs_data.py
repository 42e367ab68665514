"""real_runs.embedded (tokenizer, cache) and real_runs.data (loading, DialoGPT format, metrics)."""

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
from hypothesis import given, settings, strategies as st  # noqa: E402

from real_runs import data as D  # noqa: E402
from real_runs.embedded import EmbeddedConfig, embedded_path, train_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tiny_path(embedded_tiny_cache):
    """The tiny embedded model, built once per session in a shared tmp cache (content-keyed)."""
    return embedded_path(EmbeddedConfig.tiny(), cache_dir=embedded_tiny_cache, progress=False)


@pytest.fixture(scope="session")
def tok(tiny_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_path)


# --- tokenizer -------------------------------------------------------------------------------


def test_tokenizer_is_not_empty_and_has_eos(tok):
    assert len(tok) == EmbeddedConfig.tiny().vocab_size
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == 0
    assert tok.pad_token_id == tok.eos_token_id
    # a common English word is one token after BPE training on English text
    assert len(tok("the")["input_ids"]) == 1


@settings(deadline=None, max_examples=60)
@given(st.text(max_size=80))
def test_tokenizer_round_trips_any_text(tok, s):
    assert tok.decode(tok(s)["input_ids"]) == s


def test_tokenizer_round_trip_after_save_and_reload(tmp_path):
    t = train_tokenizer(["hello world, hello there.", "general kenobi!"] * 20, vocab_size=300)
    t.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    t2 = AutoTokenizer.from_pretrained(tmp_path)
    s = "Hello\tworld — ünïcödé 日本\n"
    assert t2(s)["input_ids"] == t(s)["input_ids"]
    assert t2.decode(t2(s)["input_ids"]) == s


def test_embedded_cache_is_reused(tiny_path):
    info = json.loads((tiny_path / "embedded_info.json").read_text())
    mtime = (tiny_path / "embedded_info.json").stat().st_mtime
    again = embedded_path(EmbeddedConfig.tiny(), cache_dir=tiny_path.parent, progress=False)
    assert again == tiny_path and (again / "embedded_info.json").stat().st_mtime == mtime
    assert info["config"]["n_layer"] == 2 and info["corpus_tokens"] > 10_000


def test_embedded_config_rejects_bad_sizes():
    with pytest.raises(ValueError, match="n_head"):
        EmbeddedConfig(n_embd=65, n_head=2)
    with pytest.raises(ValueError, match="seq_len"):
        EmbeddedConfig(seq_len=256, n_positions=128)
    with pytest.raises(ValueError, match="vocab_size"):
        EmbeddedConfig(vocab_size=100)


# --- data ------------------------------------------------------------------------------------


def test_chatterbot_loads_english_dialogues():
    d = D.load_chatterbot()
    assert len(d) > 500
    assert all(len(x) >= 2 and all(isinstance(t, str) and t for t in x) for x in d)


def test_split_is_disjoint_nested_and_seed_stable():
    dialogues = [[f"q{i}", f"a{i}", f"b{i}"] for i in range(50)] + [
        ["q0", "a0", "b0"]
    ]  # a duplicate
    s_all = D.split_dialogues(dialogues, heldout_frac=0.2)
    assert len(s_all.heldout) == 10 and len(s_all.train) == 40  # 50 unique dialogues
    held = {tuple(x) for x in s_all.heldout}
    assert not held & {tuple(x) for x in s_all.train}
    s10 = D.split_dialogues(dialogues, heldout_frac=0.2, n_train=10)
    assert s10.train == s_all.train[:10] and s10.heldout == s_all.heldout
    # pairs: every (t1…tj → t_{j+1}) of the held-out dialogues, 2 per 3-turn dialogue, the
    # first round taking one pair from each dialogue (test_real_runs_chitchat checks the spread)
    assert len(s_all.pairs) == 20 and s_all.pair_dialogue[:10] == list(range(10))
    for (ctx, resp), i in zip(s_all.pairs, s_all.pair_dialogue):
        assert ctx + [resp] == s_all.heldout[i][: len(ctx) + 1]
    with pytest.raises(D.DataError, match="n_train"):
        D.split_dialogues(dialogues, heldout_frac=0.2, n_train=41)


def test_dialogpt_format_and_collate(tok):
    turns = ["Hi there", "Hello!"]
    ids = D.encode_dialogue(tok, turns, seq_len=1000)
    eos = tok.eos_token_id
    assert ids == tok("Hi there")["input_ids"] + [eos] + tok("Hello!")["input_ids"] + [eos]
    assert tok.decode(ids) == "Hi there<|endoftext|>Hello!<|endoftext|>"
    assert D.encode_dialogue(tok, turns, seq_len=3) == ids[:3]
    b = D.collate([[5, 6, 7], [8]], pad_id=eos)
    assert b["input_ids"].tolist() == [[5, 6, 7], [8, eos, eos]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert b["labels"].tolist() == [[5, 6, 7], [8, -100, -100]]


@pytest.mark.parametrize(
    "pred,ref,f1,em",
    [
        ("The cat sat.", "the cat sat", 1.0, 1.0),  # case, article, punctuation
        ("cat sat on mat", "the cat sat", 2 * (2 / 4) * (2 / 2) / (2 / 4 + 2 / 2), 0.0),
        ("dog", "cat", 0.0, 0.0),
        ("", "", 1.0, 1.0),
        ("", "cat", 0.0, 0.0),
        ("a an the", "", 1.0, 1.0),  # normalises to empty
        ("cat cat", "cat", 2 * (1 / 2) * 1 / (1 / 2 + 1), 0.0),  # multiset overlap, not set
    ],
)
def test_token_f1_and_exact_match_hand_cases(pred, ref, f1, em):
    assert D.token_f1(pred, ref) == pytest.approx(f1, abs=1e-15)
    assert D.exact_match(pred, ref) == em


def test_dialogue_files_json_jsonl_parquet(tmp_path):
    rows = [
        {"dialog": ["hi", "hello", "how are you"]},
        {"dialog": ["bye", "see you"]},
        {"dialog": ["only one turn"]},
    ]
    p = tmp_path / "dd.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows))
    assert D.load_dialogues(str(p)) == [["hi", "hello", "how are you"], ["bye", "see you"]]
    import datasets

    pq = tmp_path / "dd.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(pq))
    assert D.load_dialogue_file(pq) == [["hi", "hello", "how are you"], ["bye", "see you"]]


def test_dialogue_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        D.load_dialogues(str(tmp_path / "nope.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(D.DataError, match="bad.json"):
        D.load_dialogue_file(bad)
    nocol = tmp_path / "nocol.jsonl"
    nocol.write_text(json.dumps({"text": "hi"}))
    with pytest.raises(D.DataError, match="no dialogue column"):
        D.load_dialogue_file(nocol)
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(json.dumps({"dialog": "not a list"}))
    with pytest.raises(D.DataError, match="list of strings"):
        D.load_dialogue_file(wrong)
    txt = tmp_path / "d.txt"
    txt.write_text("x")
    with pytest.raises(D.DataError, match="extension"):
        D.load_dialogue_file(txt)
    with pytest.raises(D.DataError, match="dataset must be"):
        D.load_dialogues("nosuchdataset")
