"""NF4/FP4 against bitsandbytes, bit for bit against its reference path, on every CPU.

Claim tested: quantize(x, "nf4"/"fp4", block_size=k) has the same float32 BITS as bitsandbytes'
pure-torch reference path (``backends/default``: quantize_4bit, then _dequantize_4bit_compute on
its codes and absmax), and quantize_codes(...).codes equals bnb's unpacked 4-bit codes. Exact
(not 1 ulp): both compute s = clamp(x·(1/absmax), −1, 1), a bucketize against the same float32
midpoints and one float32 product table[code]·absmax. The one convention for the sign of zero:
FP4 code 8 ("−0", reached by s ∈ (0, 0.0026]) dequantizes to +0.0, as the reference path does.

bitsandbytes' native CPU kernel (``dequantize_4bit`` on an even last dimension) depends on the
instruction set (real_runs/bnb_reference.py): it is compared in value (±0.0 equal) where it is
right, and its known-wrong shapes are checked as the measured finding, on AVX-512 only.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
bnb = pytest.importorskip("bitsandbytes")
F = pytest.importorskip("bitsandbytes.functional")

import jax.numpy as jnp  # noqa: E402

from quantbounds.quant.quantizers import fp4_code, nf4_code, quantize, quantize_codes  # noqa: E402
from real_runs.bnb_reference import (  # noqa: E402
    NativeKernelMismatch,
    check_4bit_layers,
    compare_native,
    cpu_isa,
    native_dequantize_4bit,
    native_known_bad,
    reference_dequantize_4bit,
)

pytestmark = pytest.mark.torch
ISA = cpu_isa()


def bnb_roundtrip(x: np.ndarray, qt: str, bs: int, dtype=torch.float32):
    """(reference-path dequantized float32 array, native-kernel float32 array, unpacked codes)."""
    xt = torch.from_numpy(np.ascontiguousarray(x)).to(dtype)
    packed, state = F.quantize_4bit(xt, blocksize=bs, quant_type=qt)
    y_ref = reference_dequantize_4bit(packed, state).float().numpy().reshape(x.shape)
    y_nat = native_dequantize_4bit(packed, state).float().numpy().reshape(x.shape)
    p = packed.view(torch.uint8).reshape(-1).numpy().astype(np.int32)
    codes = np.stack([p >> 4, p & 15], axis=1).reshape(-1)[: x.size].reshape(x.shape)
    return y_ref, y_nat, codes


def ours(x: np.ndarray, qt: str, bs: int):
    y = np.asarray(quantize(jnp.asarray(x), qt, block_size=bs))
    c = np.asarray(quantize_codes(jnp.asarray(x), qt, block_size=bs).codes)
    return y, c


def assert_same_bits(a: np.ndarray, b: np.ndarray, *, zero_sign: bool = True):
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    if not zero_sign:  # x + 0.0 turns −0.0 into +0.0 and changes nothing else
        a, b = a + np.float32(0.0), b + np.float32(0.0)
    bad = a.view(np.int32) != b.view(np.int32)
    assert not bad.any(), f"{bad.sum()} elements differ, e.g. {a[bad][:4]} vs {b[bad][:4]}"


def assert_native_agrees(y: np.ndarray, y_nat: np.ndarray, shape, bs: int):
    """Ours against the native kernel, in value, wherever the native kernel is known right."""
    if native_known_bad(tuple(shape), bs):
        return
    assert_same_bits(y, y_nat, zero_sign=False)


def test_code_tables_match_bnb():
    for qt, ours_code in (("nf4", nf4_code()), ("fp4", fp4_code())):
        ref = F.get_4bit_type(qt, device="cpu").numpy()
        srt = np.sort(ref)
        assert np.asarray(ours_code).dtype == np.float32
        np.testing.assert_array_equal(np.asarray(ours_code), srt)
    # NF4: 7 negative, zero, 8 positive; FP4: 0.0 twice, smallest magnitude 0.0625/12
    c = np.asarray(nf4_code())
    assert (c < 0).sum() == 7 and (c == 0).sum() == 1 and (c > 0).sum() == 8
    c = np.asarray(fp4_code())
    assert (c == 0).sum() == 2 and np.min(np.abs(c[c != 0])) == np.float32(0.0625) / np.float32(12)


CASES = [  # (shape, block size): full blocks, tail blocks, odd last dim, 3-D; block sizes 32…2048
    ((64, 128), 64),
    ((33, 64), 128),
    ((5, 7), 32),
    ((4, 1024), 512),
    ((3, 4096), 2048),
    ((2, 3, 40), 64),
]


@pytest.mark.parametrize("qt", ["nf4", "fp4"])
@pytest.mark.parametrize("shape,bs", CASES)
def test_random_inputs_bit_for_bit(qt, shape, bs):
    rng = np.random.default_rng(zlib.crc32(repr((qt, shape, bs)).encode()))  # deterministic
    for scale in (1e-3, 37.0):
        x = (rng.standard_normal(shape) * scale).astype(np.float32)
        x.reshape(-1)[::13] = 0.0  # exact zeros
        x.reshape(-1)[5::97] *= 1e-4  # tiny values near the ±0 / subnormal codes
        y_ref, y_nat, c_ref = bnb_roundtrip(x, qt, bs)
        y, c = ours(x, qt, bs)
        assert_same_bits(y, y_ref)
        np.testing.assert_array_equal(c, c_ref)
        assert_native_agrees(y, y_nat, shape, bs)


@pytest.mark.parametrize("qt", ["nf4", "fp4"])
def test_heavy_tailed_and_all_zero_blocks(qt):
    rng = np.random.default_rng(11)
    x = rng.standard_t(2, size=(16, 64)).astype(np.float32)
    x[3] = 0.0  # an all-zero block: bnb stores absmax 0 and returns zeros
    x[5, :] = -0.0
    x[7, 10] = 1e4  # one outlier dominates its block
    y_ref, y_nat, c_ref = bnb_roundtrip(x, qt, 64)
    y, c = ours(x, qt, 64)
    assert_same_bits(y, y_ref)
    np.testing.assert_array_equal(c, c_ref)
    assert_native_agrees(y, y_nat, x.shape, 64)
    assert np.all(y[3] == 0) and np.all(y[5] == 0)


@pytest.mark.parametrize("qt", ["nf4", "fp4"])
def test_ties_between_codes_go_to_the_lower_code(qt):
    """Values exactly on a float32 midpoint (absmax 1, so s = x exactly) and one ulp either side."""
    code = np.sort(F.get_4bit_type(qt, device="cpu").numpy())
    mids = (code[:-1] + code[1:]) / np.float32(2)
    near = np.concatenate([np.nextafter(mids, np.float32(2)), np.nextafter(mids, np.float32(-2))])
    # FP4's ±0 midpoint is 0.0, whose neighbours are subnormal: XLA CPU flushes subnormals to
    # zero and torch does not (a documented exclusion), so leave those two out
    near = near[(near == 0) | (np.abs(near) >= np.finfo(np.float32).tiny)]
    vals = np.concatenate([mids, near])
    n = 64 * int(np.ceil((vals.size + 1) / 64))
    x = np.zeros(n, np.float32)
    x[0] = 1.0  # absmax 1 in every block
    x[64::64] = 1.0
    slots = [i for i in range(n) if i % 64 != 0][: vals.size]
    x[slots] = vals
    x = x.reshape(-1, 64)
    y_ref, y_nat, _ = bnb_roundtrip(x, qt, 64)
    y, _ = ours(x, qt, 64)
    assert_same_bits(y, y_ref)
    assert_native_agrees(y, y_nat, x.shape, 64)
    # our own expectation: a midpoint maps to the lower of its two codes (torch.bucketize,
    # right=False)
    got = y.reshape(-1)[slots][: mids.size]
    np.testing.assert_array_equal(got + np.float32(0), code[:-1] + np.float32(0))


@pytest.mark.parametrize("qt", ["nf4", "fp4"])
def test_absmax_element_and_code_values_are_exact(qt):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((32, 64)).astype(np.float32)
    y, _ = ours(x, qt, 64)
    i = np.argmax(np.abs(x), axis=1)
    r = np.arange(32)
    np.testing.assert_array_equal(y[r, i], x[r, i])  # ±1·absmax is a code value
    # inputs that are code·absmax (absmax = 2) come back unchanged, as in bnb
    code = np.sort(F.get_4bit_type(qt, device="cpu").numpy())
    z = np.tile(np.concatenate([code, code]) * np.float32(2.0), 2).reshape(1, 64)
    y_ref, _, _ = bnb_roundtrip(z, qt, 64)
    y, _ = ours(z, qt, 64)
    assert_same_bits(y, y_ref)
    np.testing.assert_array_equal(y + np.float32(0), z + np.float32(0))


def test_fp4_negative_zero_code_dequantizes_to_positive_zero():
    """The sign convention: s ∈ (0, 0.0026] → bnb code 8 ("−0") → +0.0, as the reference path;
    s ≤ 0 near 0 → code 0 → +0.0. The native kernel may give −0.0 (AVX2, AVX-512 scalar tail)."""
    for n in (64, 100):  # vector path and (on AVX-512) the scalar path of the native kernel
        x = np.zeros((2, n), np.float32)
        x[:, 0] = 1.0
        x[:, 1:4] = [1e-4, -1e-4, 0.0]
        y_ref, y_nat, c_ref = bnb_roundtrip(x, "fp4", 64)
        y, c = ours(x, "fp4", 64)
        assert list(c[0, 1:4]) == list(c_ref[0, 1:4]) == [8, 0, 0]
        assert not np.signbit(y[:, 1:4]).any() and not np.signbit(y_ref[:, 1:4]).any()
        assert_same_bits(y, y_ref)
        assert np.all(y_nat[:, 1:4] == 0)  # native: zero of either sign


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("qt", ["nf4", "fp4"])
def test_half_precision_inputs(qt, dtype):
    rng = np.random.default_rng(8)
    x32 = rng.standard_normal((16, 128)).astype(np.float32)
    x32.reshape(-1)[5::37] *= 1e-4  # some FP4 "−0" codes
    tdt = getattr(torch, dtype)
    xt = torch.from_numpy(x32).to(tdt)
    packed, state = F.quantize_4bit(xt, blocksize=64, quant_type=qt)
    y_ref = reference_dequantize_4bit(packed, state).float().numpy()
    y_nat = native_dequantize_4bit(packed, state).float().numpy()
    xj = jnp.asarray(xt.float().numpy()).astype(getattr(jnp, dtype))
    y = quantize(xj, qt)
    assert y.dtype == getattr(jnp, dtype)
    y32 = np.asarray(y.astype(jnp.float32))
    assert_same_bits(y32, y_ref)
    assert_native_agrees(y32, y_nat, x32.shape, 64)


def test_isa_detection_matches_the_cpu_flags():
    """cpu_isa() is bnb's own CPUID answer; on Linux it must agree with /proc/cpuinfo."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    assert (ISA == "avx512") == (" avx512f" in flags)


# The finding, checked where it was measured: on the AVX-512 kernel the rule native_known_bad
# says exactly which shapes come out wrong (held-out shapes: none is used above).
FINDING_CASES = [
    ((64, 96), 64),
    ((4, 96), 64),
    ((33, 64), 128),
    ((48, 80), 32),
    ((6, 160), 128),
    ((1, 96), 64),
    ((10, 100), 64),
    ((7, 130), 32),
    ((96, 64), 64),
    ((3, 4096), 2048),
    ((2, 48), 512),
    ((5, 112), 256),
]


@pytest.mark.skipif(
    ISA != "avx512", reason="the native-kernel errors were characterised on AVX-512"
)
@pytest.mark.parametrize("qt", ["nf4", "fp4"])
@pytest.mark.parametrize("shape,bs", FINDING_CASES)
def test_avx512_native_kernel_errors_follow_the_rule(qt, shape, bs):
    x = torch.from_numpy(
        np.random.default_rng(zlib.crc32(repr((shape, bs)).encode()))
        .standard_normal(shape)
        .astype(np.float32)
    )
    c = compare_native(x, qt, bs)
    assert (c.n_value > 0) == native_known_bad(shape, bs), c


def _linear4bit(in_features: int, out_features: int, qt: str = "nf4"):
    lin = torch.nn.Linear(in_features, out_features, bias=False)
    q = bnb.nn.Linear4bit(
        in_features, out_features, bias=False, quant_type=qt, compute_dtype=torch.float32
    )
    q.weight = bnb.nn.Params4bit(lin.weight.data.clone(), requires_grad=False, quant_type=qt)
    return q.to("cpu")


def test_layer_check_refuses_a_wrongly_dequantized_layer(monkeypatch):
    """ISA-independent: a native kernel that gets one value wrong is refused, naming the layer."""
    import real_runs.bnb_reference as ref

    model = torch.nn.Sequential(_linear4bit(128, 32), _linear4bit(128, 64, "fp4"))
    assert check_4bit_layers(model) == 2  # GPT-2-like shapes: right on every ISA
    real = ref.native_dequantize_4bit

    def corrupt(packed, state):
        out = real(packed, state).clone()
        if tuple(state.shape) == (64, 128):
            out.view(-1)[7] += 1.0
        return out

    monkeypatch.setattr(ref, "native_dequantize_4bit", corrupt)
    with pytest.raises(NativeKernelMismatch, match=r"1: shape \(64, 128\), fp4 block 64: 1 of"):
        check_4bit_layers(model)


@pytest.mark.skipif(ISA != "avx512", reason="the shape is dequantized wrongly on AVX-512 only")
def test_layer_check_refuses_an_affected_shape_on_avx512():
    with pytest.raises(NativeKernelMismatch, match=r"shape \(32, 96\), nf4 block 64"):
        check_4bit_layers(torch.nn.Sequential(_linear4bit(96, 32)))


@pytest.mark.slow
def test_bridge_refuses_an_affected_model(tmp_path, embedded_tiny_cache):
    """load_base on a GPT-2 with d = 48 (rows of 48 at block 64): refused on AVX-512 before any
    training; elsewhere it loads, and the embedded model's shapes load everywhere."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from real_runs.arms import load_base
    from real_runs.embedded import EmbeddedConfig, embedded_path

    tiny = embedded_path(EmbeddedConfig.tiny(), cache_dir=embedded_tiny_cache, progress=False)
    lm, _ = load_base(str(tiny), base_quant="nf4")
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in lm.modules())
    tok = AutoTokenizer.from_pretrained(str(tiny))
    cfg = GPT2Config(vocab_size=len(tok), n_positions=32, n_embd=48, n_layer=1, n_head=2)
    GPT2LMHeadModel(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    # what this machine's kernel does on such rows (wrong on AVX-512; measured, not assumed)
    probe = compare_native(torch.randn(144, 48), "nf4", 64)
    assert probe.values_agree == (not native_known_bad((144, 48), 64)) or ISA != "avx512"
    if not probe.values_agree:
        with pytest.raises(NativeKernelMismatch, match="disagrees with its reference path"):
            load_base(str(tmp_path), base_quant="nf4")
    else:
        load_base(str(tmp_path), base_quant="nf4")
