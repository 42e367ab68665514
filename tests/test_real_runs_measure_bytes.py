"""real_runs.measure.param_counts / model_bytes on bitsandbytes 4-bit and 8-bit models.

Three references that could disagree with the code and with each other:

1. a hand count from the architecture's shapes alone (no model inspected): a 4-bit weight of
   numel N stores ⌈N/2⌉ packed bytes, ⌈N/64⌉ float32 absmax (or uint8 absmax + ⌈⌈N/64⌉/256⌉
   float32 nested absmax + a 1 KiB nested code + a float32 offset under double quantization)
   and its 16-entry float32 code; an int8 weight stores N bytes + one float32 SCB per row;
2. the sum of nbytes of the tensors in the state_dict bitsandbytes serializes, which carries
   the quantization state (the differences are metadata, counted explicitly below);
3. ``quantbounds.verdicts.claims.nf4_model_bytes`` (the calibrate side's accounting).

The model is a tiny GPT-2 (2 layers, d = 64) quantized on CPU through transformers'
BitsAndBytesConfig, as the bridge's base_* arms do.
"""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("bitsandbytes")
transformers = pytest.importorskip("transformers")

from real_runs import measure as M  # noqa: E402

pytestmark = pytest.mark.torch

D, L, V, P = 64, 2, 100, 32  # n_embd, n_layer, vocab, positions
BLOCK, DQ_BLOCK = 64, 256  # bitsandbytes' 4-bit block and double-quantization block


def linear_shapes() -> list[tuple[int, int]]:
    """(out, in) of every linear weight bitsandbytes replaces: per layer c_attn, attn c_proj,
    c_fc, mlp c_proj (lm_head is kept in full precision by transformers)."""
    return [(3 * D, D), (D, D), (4 * D, D), (D, 4 * D)] * L


def other_params() -> int:
    """Every parameter left in full precision: wte, wpe, 2 layer norms and 4 biases per layer,
    ln_f (lm_head is tied to wte)."""
    per_layer = 2 * 2 * D + (3 * D + D + 4 * D + D)
    return V * D + P * D + L * per_layer + 2 * D


def hand_bytes(kind: str) -> int:
    """Stored bytes from the shapes alone (module docstring); the rest fp32 (4 B)."""
    total = 4 * other_params()
    for out, inp in linear_shapes():
        N = out * inp
        blocks = math.ceil(N / BLOCK)
        if kind == "int8":
            total += N + 4 * out  # int8 codes + float32 SCB per output row
        elif kind == "nf4":
            total += math.ceil(N / 2) + 4 * blocks + 16 * 4
        elif kind == "nf4_dq":
            nested = math.ceil(blocks / DQ_BLOCK)
            total += math.ceil(N / 2) + blocks + 4 * nested + 256 * 4 + 4 + 16 * 4
        else:
            raise AssertionError(kind)
    return total


@pytest.fixture(scope="module")
def saved_gpt2(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=L, n_embd=D, n_head=2, vocab_size=V, n_positions=P,
                     bos_token_id=0, eos_token_id=0)
    path = tmp_path_factory.mktemp("tiny-gpt2")
    GPT2LMHeadModel(cfg).save_pretrained(path)
    return path


def load(path, kind: str):
    from transformers import BitsAndBytesConfig, GPT2LMHeadModel

    if kind == "fp32":
        q = None
    elif kind == "int8":
        q = BitsAndBytesConfig(load_in_8bit=True)
    else:
        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                               bnb_4bit_use_double_quant=kind == "nf4_dq",
                               bnb_4bit_compute_dtype=torch.float32)
    return GPT2LMHeadModel.from_pretrained(path, quantization_config=q, device_map="cpu",
                                           dtype=torch.float32)


def test_full_precision_reference(saved_gpt2):
    m = load(saved_gpt2, "fp32")
    n = other_params() + sum(o * i for o, i in linear_shapes())
    assert M.param_counts(m) == {"params": n, "bytes": 4 * n, "quantized": 0}


@pytest.mark.parametrize("kind", ["nf4", "nf4_dq", "int8"])
def test_model_bytes_equal_the_hand_count_and_params_are_logical(saved_gpt2, kind):
    m = load(saved_gpt2, kind)
    q = [p for p in m.parameters() if type(p).__name__ in ("Params4bit", "Int8Params")]
    assert len(q) == len(linear_shapes())  # every linear weight really is quantized
    if kind != "int8":
        # the packed storage holds half the values: counting numel would halve the layer
        assert sum(p.numel() for p in q) == sum(o * i for o, i in linear_shapes()) // 2
    c = M.param_counts(m)
    assert c["params"] == other_params() + sum(o * i for o, i in linear_shapes())
    assert c["bytes"] == M.model_bytes(m) == hand_bytes(kind)
    assert c["quantized"] == sum(o * i for o, i in linear_shapes())  # logical, every linear


def serialized_bytes(model) -> tuple[int, dict]:
    """Σ nbytes over the state_dict, each storage once (lm_head.weight is wte.weight), and
    the metadata entries (key → tensor) that are not stored weights or scales."""
    sd = model.state_dict()
    seen, total, meta = set(), 0, {}
    for k, t in sd.items():
        if k.endswith(("quant_state.bitsandbytes__nf4", "weight_format")):
            meta[k] = t
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel())
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total, meta


@pytest.mark.parametrize("kind", ["nf4", "nf4_dq", "int8"])
def test_model_bytes_against_the_serialized_state_dict(saved_gpt2, kind):
    """model_bytes = Σ nbytes of what bitsandbytes serializes, less metadata: per 4-bit weight
    the JSON ``quant_state.bitsandbytes__nf4`` blob (which holds the double-quantization offset
    as text, a float32 tensor in memory: + 4 B per weight here), per 8-bit layer the 1-byte
    ``weight_format`` marker."""
    m = load(saved_gpt2, kind)
    total, meta = serialized_bytes(m)
    n_q = len(linear_shapes())
    assert len(meta) == n_q
    if kind == "int8":
        assert all(t.numel() == 1 for t in meta.values())
        assert total == M.model_bytes(m)
        return
    blobs = [json.loads(bytes(t.tolist()).decode()) for t in meta.values()]
    assert {b["blocksize"] for b in blobs} == {BLOCK}
    if kind == "nf4_dq":
        assert all("nested_offset" in b for b in blobs)
        assert total + 4 * n_q == M.model_bytes(m)
    else:
        assert total == M.model_bytes(m)


@pytest.mark.parametrize("kind", ["nf4", "nf4_dq"])
def test_model_bytes_against_the_calibrate_side_accounting(saved_gpt2, kind):
    """claims.nf4_model_bytes assumes tensor sizes that are multiples of the blocks: exact
    without double quantization; under it the nested absmax is 4·blocks/256 B there and
    4·⌈blocks/256⌉ B per tensor here (192 and 64 blocks < 256 still store one float32)."""
    from quantbounds.verdicts.claims import nf4_model_bytes

    m = load(saved_gpt2, kind)
    n_q = sum(o * i for o, i in linear_shapes())
    dq = kind == "nf4_dq"
    theirs = nf4_model_bytes(n_q, other_params(), n_tensors=len(linear_shapes()),
                             other_bytes=4.0, double_quant=dq)
    partial = sum(4 * (math.ceil(o * i / BLOCK / DQ_BLOCK) - o * i / BLOCK / DQ_BLOCK)
                  for o, i in linear_shapes()) if dq else 0.0
    assert M.model_bytes(m) == pytest.approx(theirs + partial, abs=1e-9)


def test_peft_wrapped_4bit_model_counts_adapters_once(saved_gpt2):
    """param_counts of the PEFT base model (what finetune passes) already includes the LoRA
    factors, once each, at their stored size."""
    from peft import LoraConfig, get_peft_model

    m = load(saved_gpt2, "nf4")
    r = 4
    pm = get_peft_model(m, LoraConfig(r=r, target_modules=["c_attn"], fan_in_fan_out=True))
    lora = sum(r * (3 * D + D) for _ in range(L))
    assert sum(p.numel() for p in pm.parameters() if p.requires_grad) == lora
    c = M.param_counts(pm.get_base_model())
    assert c["params"] == other_params() + sum(o * i for o, i in linear_shapes()) + lora
    assert c["bytes"] == hand_bytes("nf4") + 4 * lora
    assert c["quantized"] == sum(o * i for o, i in linear_shapes())  # the adapters stay fp32
