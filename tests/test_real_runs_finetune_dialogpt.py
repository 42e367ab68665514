"""run_finetune on DialoGPT-medium's exact configuration cut to ONE block (slow: ≈ 64M parameters).

d = 1024, 16 heads, vocab 50,257, random weights, saved to tmp_path with a small local BPE
tokenizer (ids < 50,257), as ``benchmarks/bench_bridge.py --dialogpt-cpu`` builds it (its
``DIALOGPT_MEDIUM`` config is the one source of the numbers). The data is a small file in
chitchat's layout with short dialogues, so evaluation (50,257-way logits) stays cheap. The shapes — not the weights — are
what the code paths depend on (Conv1D orientation, 1024×3072 / 1024×4096 weights, 50,257-way
logits), so two steps of fp16 and adapter_rtn exercise what a run with the real weights runs.
"""

import importlib.util
import json
import math
import random
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from quantbounds.calib.records import validate_record  # noqa: E402
from real_runs.finetune import FinetuneConfig, run_finetune  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RANK = 8


def _dialogpt_medium_config() -> dict:
    spec = importlib.util.spec_from_file_location("bench_bridge", ROOT / "benchmarks/bench_bridge.py")
    bb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bb)
    return dict(bb.DIALOGPT_MEDIUM)


@pytest.fixture(scope="module")
def one_block_dialogpt(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    from real_runs.chitchat import HELDOUT_PROMPTS
    from real_runs.embedded import train_tokenizer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    conf = {**_dialogpt_medium_config(), "n_layer": 1}
    assert (conf["n_embd"], conf["n_head"], conf["vocab_size"]) == (1024, 16, 50257)
    d = tmp_path_factory.mktemp("dialogpt-medium-1block")
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(**conf)).half().save_pretrained(d)
    # 20 conversations of a held-out prompt, 3 short turns each: 4 held out, 16 to train on
    rng = random.Random(0)
    words = "hello computer love vote robot think talk friend maybe never yes no why".split()
    data, texts = {}, []
    for i in range(20):
        turns = [f"{i} " + " ".join(rng.choice(words) for _ in range(5)) for _ in range(3)]
        texts += turns
        data[f"c{i:02d}"] = {"messages": [[{"sender": "a", "text": t}] for t in turns],
                             "prompt": HELDOUT_PROMPTS[0]}
    (d / "dataset.json").write_text(json.dumps(data))
    train_tokenizer(texts, vocab_size=300).save_pretrained(d)
    yield d, conf
    torch.set_num_threads(threads)  # leave the rest of the test process as it was


COMMON = dict(
    steps=2,
    batch_size=2,
    seq_len=32,
    n_train=8,
    grad_var_batches=2,
    eval_pairs=2,
    max_new_tokens=2,
    eval_tokens=40,  # ≥ 2 held-out dialogues (≈ 20–30 tokens each): finite clustered intervals
    device="cpu",
    progress=False,
    rank=RANK,
    lora_alpha=32.0,
)


def _hand_count(conf: dict) -> tuple[int, int]:
    """(base, LoRA) parameters: GPT-2 with lm_head tied to wte; LoRA on c_attn, attn.c_proj,
    c_fc, mlp.c_proj (the default targets; "c_proj" matches both), r·(n_in + n_out) each."""
    d, V, P, L = conf["n_embd"], conf["vocab_size"], conf["n_positions"], conf["n_layer"]
    inner = conf.get("n_inner") or 4 * d
    block = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (d * inner + inner) + (inner * d + d)
    base = V * d + P * d + L * block + 2 * d
    lora = L * RANK * ((d + 3 * d) + (d + d) + (d + inner) + (inner + d))
    return base, lora


@pytest.mark.slow
@pytest.mark.parametrize("arm,bits", [("fp16", 16), ("adapter_rtn", 4)])
def test_one_block_dialogpt_medium_runs_through_run_finetune(one_block_dialogpt, arm, bits):
    path, conf = one_block_dialogpt
    rec = run_finetune(
        FinetuneConfig(
            model=str(path), dataset=f"chitchat:{path / 'dataset.json'}", arm=arm, bits=bits,
            **COMMON,
        )
    )
    validate_record(rec)
    json.dumps(rec, allow_nan=False)
    assert rec["model"] == str(path) and rec["embedded_model"] is None
    assert rec["n_train"] == 8 and rec["steps"] == 2 and rec["eval_pairs_scored"] == 2
    assert rec["eval_dialogues"] >= 2 and rec["eval_tokens"] >= 40
    names = set(rec["eps_ba_layers"])
    assert names == {f"transformer.h.0.{m}" for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc",
                                                      "mlp.c_proj")}
    base, lora = _hand_count(conf)
    assert rec["trainable_params"] == lora and rec["total_params"] == base + lora
    assert all(s == 32.0 / RANK for s in rec["lora_scale_layers"].values())
    # random init (std 0.02): logits ≈ N(0, σ²), σ ≈ 0.02·√1024 ≈ 0.64 after ln_f, so the loss is
    # ≈ ln V + σ²/2 ≈ 11.0 nats, and two LoRA steps at lr 3e-3 barely move it: within 1 nat
    assert abs(rec["eval_loss"] - math.log(conf["vocab_size"])) < 1.0
    if arm == "adapter_rtn":
        assert rec["eps_ba_fro2"] > 0 and rec["quant_step"] == "paper"
        assert set(rec["quant_ranges"]) == names
        for name, r in rec["quant_ranges"].items():
            assert r["B"] == pytest.approx(rec["range_B"][name]) and r["A"] == pytest.approx(
                rec["range_A"][name]
            )
    else:
        assert rec["eps_ba_fro2"] == 0 and rec["quant_ranges"] is None
