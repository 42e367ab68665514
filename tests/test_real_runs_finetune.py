"""run_finetune's record fields against values derived independently of the code that fills them.

Each run is a few seconds on the TINY embedded model (2 blocks, d = 64) and a small dataset in
chitchat's layout written here, so every count is known by construction:
20 distinct conversations of the held-out prompt, 3 turns each → n_held = round(0.2·20) = 4
held-out dialogues (finetune.HELDOUT_FRAC = 0.2), each with 3 − 1 = 2 prompt→response pairs,
so 8 pairs are available and 16 dialogues train. The trained model is captured by wrapping
``real_runs.arms.build_arm`` (run_finetune imports it at call time), so ranges and parameter
counts are recomputed by hand from the factors and the saved config, not from ``measure``.
"""

import json
import random
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from quantbounds.calib.records import validate_record  # noqa: E402
from real_runs import arms as ARMS_MOD  # noqa: E402
from real_runs import measure as M  # noqa: E402
from real_runs.arms import factor_weights  # noqa: E402
from real_runs.chitchat import HELDOUT_PROMPTS  # noqa: E402
from real_runs.embedded import EmbeddedConfig, embedded_path  # noqa: E402
from real_runs.finetune import FinetuneConfig, run_finetune  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
N_CONV, TURNS = 20, 3
N_HELD = round(0.2 * N_CONV)  # 4
PAIRS_AVAILABLE = N_HELD * (TURNS - 1)  # 8
N_TRAIN = N_CONV - N_HELD  # 16
WORDS = (
    "the computer can learn to talk and think about love music code people "
    "dream robots vote machine friend question answer really maybe never always"
).split()

BASE = dict(
    model="embedded",
    embedded="tiny",
    steps=3,
    batch_size=4,
    seq_len=32,
    grad_var_batches=2,
    noise_draws=2,
    max_new_tokens=2,
    log_every=1,
    eval_tokens=100,  # the first 2 held-out dialogues (≈ 60–90 tokens each): a finite clustered CI
    device="cpu",
    progress=False,
)


def _write_chitchat(path):
    """A dataset file in chitchat-dataset's layout (real_runs.chitchat): N_CONV conversations of
    the first held-out prompt with TURNS turns each, plus 3 of another prompt (pretraining
    side, never fine-tuned on)."""
    rng = random.Random(0)

    def turn():
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))) + "."

    data = {}
    for i in range(N_CONV + 3):
        prompt = HELDOUT_PROMPTS[0] if i < N_CONV else "What is your favourite food?"
        msgs = [[{"sender": f"s{j % 2}", "text": f"{i} {turn()}"}] for j in range(TURNS)]
        data[f"c{i:03d}"] = {"messages": msgs, "prompt": prompt}
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    p = _write_chitchat(tmp_path_factory.mktemp("chitchat") / "dataset.json")
    return f"chitchat:{p}"


def _run(cache, dataset, **kw):
    """(record, captured) of one run; captured: the Built arm, the pairs greedy_scores was
    given and how many it scored, and (grad enabled, model.training, all dropout on) of every
    forward pass of the model."""
    cap = {"forwards": [], "scored": []}
    real_build, real_greedy = ARMS_MOD.build_arm, M.greedy_scores

    def build(**a):
        b = real_build(**a)
        cap["built"] = b
        drops = [m for m in b.model.modules() if isinstance(m, torch.nn.Dropout)]
        cap["n_dropout"] = len(drops)
        cap["dropout_p"] = [d.p for d in drops]

        def hook(mod, args, kwargs):
            cap["forwards"].append(
                (torch.is_grad_enabled(), mod.training, all(d.training for d in drops))
            )

        # on the GPT2Model inside (PEFT calls the top model's .forward directly, bypassing hooks)
        b.model.get_base_model().transformer.register_forward_pre_hook(hook, with_kwargs=True)
        return b

    def greedy(model, tok, pairs, **k):
        out = real_greedy(model, tok, pairs, **k)
        cap["scored"].append((len(pairs), len(out[3])))
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ARMS_MOD, "build_arm", build)
        mp.setattr(M, "greedy_scores", greedy)
        rec = run_finetune(FinetuneConfig(cache_dir=str(cache), dataset=dataset, **{**BASE, **kw}))
    validate_record(rec)
    json.dumps(rec, allow_nan=False)
    return rec, cap


@pytest.fixture(scope="module")
def fp16_run(embedded_tiny_cache, dataset):
    return _run(embedded_tiny_cache, dataset, arm="fp16", rank=4, bits=16, eval_pairs=500)


RANK_PATTERN = {"h.0.attn.c_attn": 8, "h.1.mlp.c_fc": 2}
BLOCK = 32


@pytest.fixture(scope="module")
def block_run(embedded_tiny_cache, dataset):
    return _run(
        embedded_tiny_cache,
        dataset,
        arm="adapter_rtn",
        rank=4,
        bits=3,
        rank_pattern=RANK_PATTERN,
        block_size=BLOCK,
        eval_pairs=5,
    )


def _rank_of(name):
    for k, r in RANK_PATTERN.items():
        if name.endswith(k):
            return r
    return 4


# --- eval_pairs_scored ----------------------------------------------------------------------


def test_eval_pairs_scored_is_min_of_requested_and_available(fp16_run, block_run):
    for (rec, cap), asked in ((fp16_run, 500), (block_run, 5)):
        want = min(asked, PAIRS_AVAILABLE)  # 8 and 5
        assert cap["scored"] == [(want, want)]  # one scoring pass, every pair given got a score
        assert rec["eval_pairs_scored"] == want
        assert rec["n_train"] == N_TRAIN
        # every held-out dialogue has 2 pairs: 8 pairs use all 4, the first 5 (round 1 takes
        # one pair from each dialogue) use all 4 as well
        assert rec["eval_pair_dialogues"] == N_HELD


# --- gradient variance in training mode ----------------------------------------------------


def test_grad_var_is_measured_in_training_mode_with_dropout_on(fp16_run):
    rec, cap = fp16_run
    assert rec["grad_var_mode"] == "train"
    # GPT-2's embedding / attention / residual dropout (p = 0.1 by GPT2Config's default)
    assert cap["n_dropout"] > 0 and all(p > 0 for p in cap["dropout_p"])
    with_grad = [f for f in cap["forwards"] if f[0]]
    # training steps + gradient-variance samples are the only forwards with grad enabled
    assert len(with_grad) == BASE["steps"] + BASE["grad_var_batches"]
    assert all(training and drop for _, training, drop in with_grad)
    # the evaluation passes (loss before / after, greedy decoding) run without grad, in eval mode
    no_grad = [f for f in cap["forwards"] if not f[0]]
    assert no_grad and not any(training or drop for _, training, drop in no_grad)


# --- which model ran -----------------------------------------------------------------------


def test_embedded_fields_name_the_model_that_ran(fp16_run, embedded_tiny_cache):
    rec, cap = fp16_run
    path = embedded_path(EmbeddedConfig.tiny(), cache_dir=embedded_tiny_cache, progress=False)
    info = json.loads((path / "embedded_info.json").read_text())
    loaded_from = cap["built"].model.get_base_model().config._name_or_path
    assert loaded_from == str(path)  # the directory the weights were read from
    assert rec["embedded_model"] == "tiny" and rec["model"] == "embedded:tiny"
    assert rec["embedded_key"] == path.name == rec["config"]["embedded"]
    assert rec["pretrain_corpus"] == info["corpus"] == "pydoc_data.topics"
    cfg = json.loads((path / "config.json").read_text())
    assert (cfg["n_layer"], cfg["n_embd"]) == (2, 64)  # the tiny configuration


# --- per-layer LoRA scales under rank_pattern ----------------------------------------------


def test_lora_scale_layers_are_alpha_over_each_layers_rank(block_run):
    rec, cap = block_run
    scales = rec["lora_scale_layers"]
    assert len(scales) == 8  # 2 blocks × (c_attn, attn.c_proj, c_fc, mlp.c_proj)
    for name, s in scales.items():
        r = _rank_of(name)
        assert cap["built"].layers[name].lora_A["default"].weight.shape[0] == r
        assert s == 16.0 / r, name  # α = 16: 2.0 at r = 8, 4.0 at r = 4, 8.0 at r = 2
    assert scales["transformer.h.0.attn.c_attn"] == 2.0
    assert scales["transformer.h.1.mlp.c_fc"] == 8.0
    assert rec["lora_scale"] == 16.0 / 4  # the run's global rank


# --- block quantization ranges ---------------------------------------------------------------


def test_block_quant_ranges_are_per_block_absmax_of_the_trained_factors(block_run):
    rec, cap = block_run
    layers = cap["built"].layers
    d = 64
    shapes = {"attn.c_attn": (d, 3 * d), "attn.c_proj": (d, d), "mlp.c_fc": (d, 4 * d),
              "mlp.c_proj": (4 * d, d)}
    assert set(rec["quant_ranges"]) == set(layers)
    h, bits = 2.0 ** (3 - 1), 3
    for name, layer in layers.items():
        r = _rank_of(name)
        fan_in, fan_out = next(v for k, v in shapes.items() if name.endswith(k))
        B, A = (t.numpy().astype(np.float64) for t in factor_weights(layer, quantized=False))
        Bq, Aq = (t.numpy().astype(np.float64) for t in factor_weights(layer, quantized=True))
        assert B.shape == (fan_out, r) and A.shape == (r, fan_in)
        for fac, W, Wq in (("B", B, Bq), ("A", A, Aq)):
            got = rec["quant_ranges"][name][fac]
            n_blocks = W.size // BLOCK
            # consecutive runs of BLOCK entries of W.ravel() (C order), R = max |entry|
            R = np.array([np.abs(W.ravel()[i * BLOCK:(i + 1) * BLOCK]).max()
                          for i in range(n_blocks)])
            assert got["blocks"] == n_blocks == r * (fan_in if fac == "A" else fan_out) // BLOCK
            assert got["max"] == pytest.approx(R.max(), rel=1e-6)
            assert got["min"] == pytest.approx(R.min(), rel=1e-6)
            assert got["mean_R2"] == pytest.approx((R**2).mean(), rel=1e-6)
            # and these are the ranges the forward pass quantized with: paper grid
            # Δ = 2^{1−b}·R per block, Q(W)/Δ integers in −h…h−1
            Wq_b = Wq.ravel().reshape(n_blocks, BLOCK)
            delta = (2.0 ** (1 - bits)) * R[:, None]
            nz = R > 0
            k = Wq_b[nz] / delta[nz]
            ki = np.round(k)
            assert np.allclose(k, ki, atol=1e-4) and ki.min() >= -h and ki.max() <= h - 1
            assert np.all(Wq_b[~nz] == 0)
        # the per-tensor ranges are the largest block range
        assert rec["range_B"][name] == pytest.approx(np.abs(B).max(), rel=1e-6)
        assert rec["range_A"][name] == pytest.approx(np.abs(A).max(), rel=1e-6)
    assert rec["config"]["block_size"] == BLOCK


# --- parameter counts ------------------------------------------------------------------------


def _hand_count(cfg: dict, ranks: dict) -> tuple[int, int]:
    """(base, LoRA) parameters of a GPT-2 from its config.json: lm_head is tied to wte."""
    d, V, P, L = cfg["n_embd"], cfg["vocab_size"], cfg["n_positions"], cfg["n_layer"]
    inner = cfg.get("n_inner") or 4 * d
    block = (2 * d) + (d * 3 * d + 3 * d) + (d * d + d) + (2 * d) + (d * inner + inner) + (
        inner * d + d
    )
    base = V * d + P * d + L * block + 2 * d
    dims = {"attn.c_attn": (d, 3 * d), "attn.c_proj": (d, d), "mlp.c_fc": (d, inner),
            "mlp.c_proj": (inner, d)}
    lora = 0
    for name, r in ranks.items():
        n_in, n_out = next(v for k, v in dims.items() if name.endswith(k))
        lora += r * (n_in + n_out)  # A r×n_in, B n_out×r, each counted once
    return base, lora


@pytest.mark.parametrize("which", ["fp16", "block"])
def test_total_params_is_base_plus_each_lora_parameter_once(which, fp16_run, block_run,
                                                            embedded_tiny_cache):
    rec, cap = fp16_run if which == "fp16" else block_run
    path = embedded_path(EmbeddedConfig.tiny(), cache_dir=embedded_tiny_cache, progress=False)
    cfg = json.loads((path / "config.json").read_text())
    ranks = {n: (4 if which == "fp16" else _rank_of(n)) for n in rec["lora_scale_layers"]}
    assert len(ranks) == 4 * cfg["n_layer"]  # c_attn, attn.c_proj, c_fc, mlp.c_proj per block
    base, lora = _hand_count(cfg, ranks)
    assert rec["trainable_params"] == lora
    assert rec["total_params"] == base + lora
    assert rec["quantized_params"] == 0


# --- stochastic rounding: the documented bias --------------------------------------------------


@pytest.mark.parametrize("step", [None, "paper"])
def test_sr_rounding_bias_as_documented(step, embedded_tiny_cache, dataset):
    # FinetuneConfig: step None → "midtread" for SR (±R on the grid: E[Q(x)] = x exactly);
    # on the "paper" grid the top cell (R − Δ, R] is clipped to R − Δ (biased there)
    rec, cap = _run(embedded_tiny_cache, dataset, arm="adapter_sr", rank=4, bits=3, step=step,
                    eval_pairs=2, steps=2)
    bits, n_draws = 3, 4000
    assert rec["rounding"] == "stochastic"
    want_step = step or "midtread"
    assert rec["quant_step"] == want_step == rec["config"]["step"]
    if want_step == "midtread":
        assert rec["rounding_bias"].startswith("none")
    else:
        assert rec["rounding_bias"].startswith("biased")
    # check the documented property on the trained A of one layer, with the run's quantizer
    name, layer = next(iter(cap["built"].layers.items()))
    q = cap["built"].quantizers[name][1]._q
    A32 = factor_weights(layer, quantized=False)[1]
    A = A32.double()
    draws = torch.stack([q(A32).double() for _ in range(n_draws)])
    R = float(A.abs().max())
    if want_step == "midtread":
        delta = R / (2 ** (bits - 1) - 1)
        # SR variance per entry is Δ²·p(1−p) ≤ Δ²/4: |mean − x| ≤ 6·(Δ/2)/√n for all entries
        err = (draws.mean(0) - A).abs()
        assert float(err.max()) <= 6 * (delta / 2) / n_draws**0.5 + 1e-6 * R
    else:
        delta = R * 2.0 ** (1 - bits)
        # nothing above R − Δ is ever produced; entries in the clipped cell are biased down
        assert float(draws.max()) <= R - delta + 1e-6 * R
        top = A > R - delta
        if bool(top.any()):
            assert bool((draws.mean(0)[top] < A[top]).all())


# --- the counts the docstrings state (real_runs.data, real_runs.embedded) --------------------



def _chitchat_or_skip():
    pytest.importorskip("chitchat_dataset")
    from real_runs.chitchat import chitchat_path

    return chitchat_path()


def test_chitchat_split_counts_stated_in_the_docstrings():
    from collections import Counter

    from real_runs.chitchat import load_chitchat, pretraining_split, split_by_prompt
    from real_runs.embedded import PRETRAIN_CORPUS
    from real_runs.finetune import HELDOUT_FRAC, load_split

    raw = json.loads(_chitchat_or_skip().read_text())
    prompts = {c.get("prompt") for c in raw.values() if c.get("prompt")}
    assert len(prompts) == 34 and set(HELDOUT_PROMPTS) <= prompts
    convs = load_chitchat()
    pre, fine = split_by_prompt(convs)
    assert (len(pre), len(fine)) == (3179, 835)
    assert len({c.prompt for c in pre if c.prompt}) == 34 - 8 == 26
    train, val = pretraining_split(convs)
    assert (len(train), len(val)) == (3115, 64)
    assert "26 of 34 prompts" in PRETRAIN_CORPUS["chitchat"]
    # the fine-tuning split: round(0.2 · 835) = 167 held out, 668 for training
    split, _ = load_split("chitchat", None, 500)
    assert len(split.heldout) == round(HELDOUT_FRAC * 835) == 167 and len(split.train) == 668
    use = Counter(split.pair_dialogue)
    assert len(split.pairs) == 500 and len(use) == 167 and max(use.values()) == 4
    short = [i for i in use if use[i] < 3]
    assert all(use[i] == len(split.heldout[i]) - 1 for i in short)  # as many as they have
    assert Counter(use[i] for i in short) == {1: 29, 2: 7}


@pytest.mark.parametrize("toml,model,tokens,n_dialogues", [
    ("embedded.toml", "chitchat-topic", 24_054, 37),
    ("embedded_chitchat.toml", "chitchat", 24_747, 38),
])
def test_embedded_toml_default_run_gets_500_pairs_and_24k_eval_tokens(toml, model, tokens, n_dialogues):
    """The default run of each embedded sweep, from the split functions and the shipped tokenizer.

    Predicted tokens of a dialogue of T tokens cut into ⌈T/L⌉ windows of ≤ L = seq_len: every
    window predicts all its tokens but its first, so T − ⌈T/L⌉ (a last window of one token
    predicts nothing and is dropped: the same count). Whole held-out dialogues are taken in
    split order until the sum reaches eval_tokens.
    """
    import math

    from real_runs.data import encode_dialogue
    from real_runs.embedded import SHIPPED, resolve_embedded
    from real_runs.finetune import load_split
    from real_runs.sweep import load_config

    _chitchat_or_skip()
    if not (SHIPPED[model] / "SHA256SUMS").exists():
        pytest.skip(f"{model} weights not shipped in this checkout")
    from transformers import AutoTokenizer

    d = load_config(ROOT / "real_runs/configs" / toml)["defaults"]
    cfg = FinetuneConfig.from_dict(d)
    assert (cfg.embedded, cfg.dataset, cfg.n_train) == (model, "chitchat", 200)
    split, _ = load_split(cfg.dataset, cfg.n_train, cfg.eval_pairs)
    assert len(split.pairs) == cfg.eval_pairs == 500 and len(split.train) == 200
    tok = AutoTokenizer.from_pretrained(resolve_embedded(cfg.embedded).path)
    L = min(cfg.seq_len, json.loads((SHIPPED[model] / "config.json").read_text())["n_positions"])
    total = dialogues = 0
    for turns in split.heldout:
        if total >= cfg.eval_tokens:
            break
        T = len(encode_dialogue(tok, turns, seq_len=10**12))
        total += T - math.ceil(T / L)
        dialogues += 1
    assert (total, dialogues) == (tokens, n_dialogues)


def test_an_evaluation_on_one_dialogue_is_refused_before_training(embedded_tiny_cache, dataset):
    # eval_tokens=1 stops after the first held-out dialogue: its clustered intervals would be
    # infinite and the record unwritable (JSON has no inf), so the run is refused up front
    from real_runs.data import DataError

    with pytest.raises(DataError, match="1 dialogue.*at least 2"):
        run_finetune(FinetuneConfig(**{**BASE, "eval_tokens": 1}, dataset=dataset,
                                    cache_dir=str(embedded_tiny_cache)))
