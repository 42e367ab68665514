"""real_runs.pretrain: the schedule, resume = uninterrupted, config guard, export with hashes.

On a small synthetic corpus (the chitchat loader is replaced; tokenizer training on the real
pretraining corpus is what ``python -m real_runs.pretrain`` does once) and a 1-layer GPT-2.
"""

import hashlib
import json
import math
import random

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from real_runs import pretrain as PT  # noqa: E402

CFG = dict(n_layer=1, n_embd=16, n_head=2, n_positions=16, vocab_size=300, steps=6,
           batch_size=2, seq_len=8, lr=1e-2, seed=3)
WORDS = "hello there how are you today i like long walks and computers talking".split()


def _dialogues(n, seed):
    rng = random.Random(seed)
    return [[" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9)))
             for _ in range(rng.randint(2, 5))] for _ in range(n)]


@pytest.fixture
def corpus(monkeypatch):
    import real_runs.chitchat as C

    train, val = _dialogues(60, 0), _dialogues(6, 1)
    monkeypatch.setattr(C, "load_chitchat", lambda: [])
    monkeypatch.setattr(C, "pretraining_split", lambda convs, seed=0, heldout="prompts": (train, val))
    threads = torch.get_num_threads()  # pretrain() sets one thread for the process
    yield train, val
    torch.set_num_threads(threads)


def test_lr_schedule_by_hand():
    cfg = PT.PretrainConfig(steps=100, lr=2.0)
    warm = 5  # 5 % of 100
    assert PT.lr_at(cfg, 0) == pytest.approx(2.0 * 1 / warm)
    assert PT.lr_at(cfg, warm - 1) == pytest.approx(2.0)
    assert PT.lr_at(cfg, warm) == pytest.approx(2.0)  # cosine starts at the peak
    mid = warm + (100 - warm) / 2
    assert PT.lr_at(cfg, int(mid)) == pytest.approx(2.0 * (0.1 + 0.45 * (1 + math.cos(
        math.pi * (int(mid) - warm) / (100 - warm)))))
    assert PT.lr_at(cfg, 100) == pytest.approx(0.2)  # decays to 10 %


def test_resumed_run_equals_an_uninterrupted_one(tmp_path, corpus):
    cfg = PT.PretrainConfig(**CFG)
    a = PT.pretrain(tmp_path / "a", cfg, log=lambda s: None)
    PT.pretrain(tmp_path / "b", cfg, max_steps=2, log=lambda s: None)
    mid = torch.load(tmp_path / "b" / "ckpt.pt", weights_only=False)
    assert mid["state"]["step"] == 2
    b = PT.pretrain(tmp_path / "b", cfg, log=lambda s: None)
    assert a["step"] == b["step"] == cfg.steps and a["losses"] == b["losses"]
    ca = torch.load(tmp_path / "a" / "ckpt.pt", weights_only=False)["model"]
    cb = torch.load(tmp_path / "b" / "ckpt.pt", weights_only=False)["model"]
    assert ca.keys() == cb.keys() and all(torch.equal(ca[k], cb[k]) for k in ca)
    assert len(a["valid"]) == 1 and a["valid"][0][0] == cfg.steps  # validated at the end
    assert not list((tmp_path / "a").glob("*.tmp"))  # nothing half-written left


def test_another_configuration_in_the_same_workdir_is_refused(tmp_path, corpus):
    PT.pretrain(tmp_path, PT.PretrainConfig(**CFG), max_steps=1, log=lambda s: None)
    with pytest.raises(ValueError, match="different configuration"):
        PT.pretrain(tmp_path, PT.PretrainConfig(**{**CFG, "lr": 5e-3}), log=lambda s: None)


def test_export_refuses_an_unfinished_run_then_writes_hashed_fp16_weights(tmp_path, corpus):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = PT.PretrainConfig(**CFG)
    PT.pretrain(tmp_path / "w", cfg, max_steps=2, log=lambda s: None)
    with pytest.raises(RuntimeError, match="step 2 of 6"):
        PT.export(tmp_path / "w", tmp_path / "out", cfg)
    assert not (tmp_path / "out").exists()
    PT.pretrain(tmp_path / "w", cfg, log=lambda s: None)
    info = PT.export(tmp_path / "w", tmp_path / "out", cfg)
    out = tmp_path / "out"
    sums = dict(reversed(line.split("  ")) for line in (out / "SHA256SUMS").read_text().splitlines())
    files = sorted(p.name for p in out.iterdir() if p.name != "SHA256SUMS")
    assert sorted(sums) == files and "model.safetensors" in files
    for name, h in sums.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == h
    assert json.loads((out / "embedded_info.json").read_text()) == json.loads(json.dumps(info))
    assert info["n_train_conversations"] == 60 and info["n_valid_conversations"] == 6
    lm = AutoModelForCausalLM.from_pretrained(out)
    assert next(lm.parameters()).dtype == torch.float16
    ck = torch.load(tmp_path / "w" / "ckpt.pt", weights_only=False)["model"]
    w = lm.state_dict()["transformer.h.0.attn.c_attn.weight"]
    assert torch.equal(w, ck["transformer.h.0.attn.c_attn.weight"].half())
    tok = AutoTokenizer.from_pretrained(out)
    text = "hello there how are you"
    assert tok.decode(tok(text)["input_ids"]) == text


@pytest.mark.parametrize("kw, match", [({"n_embd": 15}, "divisible"), ({"seq_len": 32}, "n_positions"),
                                       ({"vocab_size": 100}, "vocab_size"), ({"steps": 0}, "steps")])
def test_bad_configuration_names_the_argument(kw, match):
    with pytest.raises(ValueError, match=match):
        PT.PretrainConfig(**{**CFG, **kw})
