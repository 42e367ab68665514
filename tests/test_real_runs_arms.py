"""real_runs.arms: every arm builds on the tiny model, trains, and quantizes what it says."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("bitsandbytes")
jnp = pytest.importorskip("jax.numpy")

from quantbounds.quant import quantizers as qz  # noqa: E402
from quantbounds.calib.records import ARMS  # noqa: E402
from quantbounds.conventions import lora_scale  # noqa: E402
from real_runs import measure as M  # noqa: E402
from real_runs.arms import build_arm, factor_weights  # noqa: E402
from real_runs.embedded import EmbeddedConfig, embedded_path  # noqa: E402

BITS = {
    "adapter_nf4": 4,
    "adapter_rtn": 3,
    "adapter_sr": 3,
    "adapter_noise": 3,
    "base_nf4_adapter_rtn": 3,
}


@pytest.fixture(scope="session")
def cache(embedded_tiny_cache):
    return embedded_tiny_cache


def _build(cache, arm, **kw):
    kw.setdefault("rank", 4)
    kw.setdefault("bits", BITS.get(arm, 16))
    return build_arm(arm=arm, embedded=EmbeddedConfig.tiny(), cache_dir=cache, progress=False, **kw)


def _randomize_B(built, seed=0):
    """PEFT initialises B = 0 (so ∇A = 0); give B random values to test both gradients."""
    g = torch.Generator().manual_seed(seed)
    for grp in M.lora_groups(built.layers).values():
        with torch.no_grad():
            grp[0].copy_(torch.randn(grp[0].shape, generator=g) * 0.05)


def _batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 500, (2, 12), generator=g)
    return {"input_ids": x, "labels": x}


@pytest.mark.parametrize("arm", ARMS)
def test_arm_builds_trains_and_freezes_base(cache, arm):
    import bitsandbytes as bnb

    b = _build(cache, arm)
    _randomize_B(b)
    trainable = {n for n, p in b.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    base_before = {
        n: p.detach().clone()
        for n, p in b.model.named_parameters()
        if not p.requires_grad and p.dtype.is_floating_point
    }
    opt = torch.optim.SGD([p for p in b.model.parameters() if p.requires_grad], lr=1e-2)
    loss = b.model(**_batch()).loss
    loss.backward()
    for name, (Bp, Ap) in M.lora_groups(b.layers).items():
        assert Bp.grad is not None and Ap.grad is not None, name
        assert torch.isfinite(Bp.grad).all() and torch.isfinite(Ap.grad).all()
        assert Bp.grad.abs().sum() > 0 and Ap.grad.abs().sum() > 0, (
            name
        )  # STE lets gradient through
    opt.step()
    for n, p in b.model.named_parameters():
        if n in base_before:
            assert torch.equal(p.detach(), base_before[n]), n
    # how W0 is stored
    mods = list(b.model.modules())
    if b.base_quant == "int8":
        assert any(isinstance(m, bnb.nn.Linear8bitLt) for m in mods)
    elif b.base_quant in ("nf4", "fp4"):
        l4 = [m for m in mods if isinstance(m, bnb.nn.Linear4bit)]
        assert l4 and all(m.weight.quant_state.quant_type == b.base_quant for m in l4)
    else:
        assert not any(isinstance(m, (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)) for m in mods)
    # which factors are perturbed
    B, A = factor_weights(next(iter(b.layers.values())), quantized=False)
    Bq, Aq = factor_weights(next(iter(b.layers.values())), quantized=True)
    assert (b.kind is None) == (torch.equal(B, Bq) and torch.equal(A, Aq))


def test_ste_gradient_equals_gradient_at_the_quantized_weights(cache):
    # ∂L/∂B_master under STE = ∂L/∂W at W = Q(B): compare with an unquantized model whose
    # factors are set to Q(B), Q(A) (same base, same batch).
    q = _build(cache, "adapter_rtn", bits=2)
    _randomize_B(q)
    ref = _build(cache, "fp16")
    for name in q.layers:
        Bq, Aq = factor_weights(q.layers[name], quantized=True)
        with torch.no_grad():
            ref.layers[name].lora_B["default"].weight.copy_(Bq)
            ref.layers[name].lora_A["default"].weight.copy_(Aq)
    q.model(**_batch()).loss.backward()
    ref.model(**_batch()).loss.backward()
    for name in q.layers:
        gq, gr = M.lora_groups(q.layers)[name], M.lora_groups(ref.layers)[name]
        torch.testing.assert_close(gq[0].grad, gr[0].grad, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(gq[1].grad, gr[1].grad, rtol=1e-5, atol=1e-7)


def test_adapter_quantizer_is_the_core_quantizer_and_eps_ba_identity(cache):
    b = _build(cache, "adapter_rtn", bits=3)
    _randomize_B(b)
    total, per = M.eps_ba(b.layers)
    acc = 0.0
    for name, layer in b.layers.items():
        B, A = (t.numpy() for t in factor_weights(layer, quantized=False))
        Bq, Aq = (t.numpy() for t in factor_weights(layer, quantized=True))
        # the forward pass sees exactly the JAX core's Q (float32, per-tensor absmax, "paper")
        assert np.array_equal(Bq, np.asarray(qz.quantize_uniform(jnp.asarray(B), bits=3)))
        assert np.array_equal(Aq, np.asarray(qz.quantize_uniform(jnp.asarray(A), bits=3)))
        eB, eA = Bq.astype(np.float64) - B, Aq.astype(np.float64) - A
        d = B.astype(np.float64) @ eA + eB @ A + eB @ eA  # ε_BA = Bε_A + ε_B A + ε_Bε_A
        assert per[name] == pytest.approx(float((d**2).sum()), rel=1e-9)
        acc += per[name]
    assert total == pytest.approx(acc, rel=1e-12) and total > 0


@pytest.mark.parametrize(
    "scale,alpha,rank", [("alpha_r", 16.0, 4), ("rslora", 16.0, 4), ("one", 16.0, 8)]
)
def test_lora_scale_conventions(cache, scale, alpha, rank):
    b = _build(cache, "fp16", rank=rank, scale=scale, lora_alpha=alpha)
    s = lora_scale(scale, alpha, rank)
    for layer in b.layers.values():
        assert layer.scaling["default"] == pytest.approx(s, rel=1e-12)


def test_rank_and_bits_patterns(cache):
    b = _build(
        cache,
        "adapter_rtn",
        rank=4,
        bits=8,
        rank_pattern={"h.0.attn.c_attn": 8},
        bits_pattern={"c_fc": 2},
    )
    _randomize_B(b)
    for name, layer in b.layers.items():
        r = 8 if name == "transformer.h.0.attn.c_attn" else 4
        assert layer.lora_A["default"].weight.shape[0] == r
        bits = 2 if name.endswith("c_fc") else 8
        assert b.quantizers[name][0].bits == bits and b.quantizers[name][1].bits == bits
        Bq, Aq = factor_weights(layer, quantized=True)
        assert torch.unique(Aq).numel() <= 2**bits


def test_bad_inputs(cache):
    with pytest.raises(ValueError, match="arm"):
        _build(cache, "adapter_fp8")
    with pytest.raises(ValueError, match="bits"):
        _build(cache, "adapter_rtn", bits=17)
    with pytest.raises(ValueError, match="bits"):
        _build(cache, "adapter_rtn", bits=0)
    with pytest.raises(ValueError, match="bits must be 16"):
        _build(cache, "fp16", bits=4)
    with pytest.raises(ValueError, match="bits must be 4"):
        _build(cache, "adapter_nf4", bits=3)
    with pytest.raises(ValueError, match="unknown model"):
        build_arm(arm="fp16", model="/nonexistent/model/dir", rank=4, bits=16)


def test_any_local_gpt2_directory_loads_as_model(cache, tmp_path):
    # the user path: --model /path/to/a/GPT-2-family/checkpoint (here: a copy of the tiny one)
    import shutil

    src = embedded_path(EmbeddedConfig.tiny(), cache_dir=cache, progress=False)
    dst = tmp_path / "my-gpt2"
    shutil.copytree(src, dst)
    b = build_arm(arm="base_int8", model=str(dst), rank=2, bits=16, progress=False)
    assert len(b.layers) == 8 and b.tokenizer.eos_token_id == 0
    b.model(**_batch()).loss.backward()


@pytest.mark.parametrize("double_quant", [False, True])
def test_base_4bit_double_quantization_option(cache, double_quant):
    import bitsandbytes as bnb

    b = _build(cache, "base_fp4", double_quant=double_quant)
    l4 = [m for m in b.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert l4 and all(bool(m.weight.quant_state.nested) == double_quant for m in l4)
    b.model(**_batch()).loss.backward()


@pytest.mark.parametrize("arm", ["base_nf4", "base_fp4", "base_nf4_adapter_rtn"])
def test_4bit_base_evaluates_then_trains_on_an_avx512_bf16_cpu(cache, arm, monkeypatch):
    # bitsandbytes sets Linear4bit.support_avx512bf16_for_cpu from has_avx512bf16() when the
    # layer is built; where it is True, a no-grad eval forward repacks the weight in place and
    # the next training step fails. Pretend this CPU has AVX-512-BF16 (whatever it has), then
    # do what run_finetune does: evaluate without grad, then train.
    import bitsandbytes as bnb
    import bitsandbytes.nn.modules as bnb_modules

    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)
    b = _build(cache, arm)
    l4 = [m for m in b.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert l4 and not any(m.support_avx512bf16_for_cpu for m in l4)
    b.model.eval()
    with torch.no_grad():
        before = b.model(**_batch()).loss
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in l4)
    b.model.train()
    _randomize_B(b)
    opt = torch.optim.SGD([p for p in b.model.parameters() if p.requires_grad], lr=1e-2)
    loss = b.model(**_batch()).loss
    loss.backward()
    opt.step()
    assert torch.isfinite(before) and torch.isfinite(loss)
