"""Shipped embedded weights (hash check, clear errors, no pretraining on load) and canonical run ids."""

import hashlib
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from quantbounds.calib.records import run_id  # noqa: E402
from real_runs import embedded as E  # noqa: E402
from real_runs import pretrain as PT  # noqa: E402
from real_runs.finetune import FinetuneConfig  # noqa: E402

FAST = dict(
    model="embedded",
    embedded="tiny",
    steps=3,
    batch_size=4,
    seq_len=32,
    n_train=16,
    grad_var_batches=2,
    noise_draws=2,
    eval_pairs=2,
    max_new_tokens=2,
    eval_tokens=200,
    device="cpu",
    progress=False,
)


@pytest.fixture(scope="module")
def shipped_like(embedded_tiny_cache, tmp_path_factory):
    """A shipped-style directory (fp16 safetensors + tokenizer + SHA256SUMS) made from the tiny model."""
    src = E.embedded_path(E.EmbeddedConfig.tiny(), cache_dir=embedded_tiny_cache, progress=False)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = tmp_path_factory.mktemp("shipped") / "m"
    AutoModelForCausalLM.from_pretrained(src).half().save_pretrained(d)
    AutoTokenizer.from_pretrained(src).save_pretrained(d)
    (d / "embedded_info.json").write_text(json.dumps({"name": "test"}))
    lines = [
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in sorted(d.iterdir())
    ]
    (d / "SHA256SUMS").write_text("".join(lines))
    return d


def _copy(d, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(d, out)
    return out


def test_verify_returns_the_model_hash_and_loads_fp32(shipped_like):
    h = E.verify_weights(shipped_like)
    assert h == hashlib.sha256((shipped_like / "model.safetensors").read_bytes()).hexdigest()
    r = E.resolve_embedded("chitchat", weights_dir=shipped_like)
    assert r.key == f"chitchat-{h[:12]}" and "chitchat" in r.corpus
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(r.path, dtype=torch.float32)
    assert next(m.parameters()).dtype == torch.float32


def test_corrupt_file_names_it_and_both_hashes(shipped_like, tmp_path):
    d = _copy(shipped_like, tmp_path)
    f = d / "model.safetensors"
    b = bytearray(f.read_bytes())
    b[-1] ^= 1
    f.write_bytes(bytes(b))
    with pytest.raises(E.EmbeddedWeightsError, match="model.safetensors is corrupt") as e:
        E.verify_weights(d)
    assert "rebuild" in str(e.value) and str(f) in str(e.value)


@pytest.mark.parametrize(
    "victim,match",
    [
        ("model.safetensors", "is missing"),
        ("SHA256SUMS", "manifest"),
        ("tokenizer.json", "is missing"),
    ],
)
def test_missing_file_is_a_clear_error(shipped_like, tmp_path, victim, match):
    d = _copy(shipped_like, tmp_path)
    (d / victim).unlink()
    with pytest.raises(E.EmbeddedWeightsError, match=match) as e:
        E.verify_weights(d)
    assert victim in str(e.value)


def test_manifest_must_list_the_weights(shipped_like, tmp_path):
    d = _copy(shipped_like, tmp_path)
    lines = [x for x in (d / "SHA256SUMS").read_text().splitlines() if "model.safetensors" not in x]
    (d / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    with pytest.raises(E.EmbeddedWeightsError, match="does not list model.safetensors"):
        E.verify_weights(d)


def test_unknown_embedded_name():
    with pytest.raises(ValueError, match="embedded"):
        E.resolve_embedded("gpt5")


SHIPPED = E.SHIPPED["chitchat"]


@pytest.mark.parametrize("name", sorted(E.SHIPPED))
def test_shipped_weights_verify_and_load_without_pretraining(monkeypatch, tmp_path, name):
    d = E.SHIPPED[name]
    if not (d / "SHA256SUMS").exists():
        pytest.skip(f"{name} weights not shipped in this checkout")
    # loading must never build: make any pretraining entry point fail
    monkeypatch.setattr(
        E, "build_embedded", lambda *a, **k: pytest.fail("pretraining was triggered")
    )
    monkeypatch.setenv(E.CACHE_ENV, str(tmp_path / "empty-cache"))
    r = E.resolve_embedded(name)
    assert r.path == d and r.name == name and r.key.startswith(f"{name}-")
    info = json.loads((d / "embedded_info.json").read_text())
    assert info["name"] == name and info["config"]["n_layer"] >= 4
    assert info["heldout_prompts_excluded"] is True
    assert info.get("heldout", "prompts") == (PT.PRESETS[name][0].heldout)
    assert info["rebuild"] == E.rebuild_command(name)
    # the shipped file was made by its preset (made before `heldout` existed: the prompt split)
    assert {"heldout": "prompts", **info["config"]} == asdict(PT.PRESETS[name][0])
    assert sum(p.stat().st_size for p in d.iterdir()) <= 50 * 2**20
    assert not (tmp_path / "empty-cache").exists()  # nothing written to the cache


# --- canonical run ids ------------------------------------------------------------------------


def test_run_id_canonical_floats_and_tuples():
    assert run_id({"a": 16, "b": [1, 2]}) == run_id({"a": 16.0, "b": (1, 2)})
    assert run_id({"a": 16.5}) != run_id({"a": 16})


def test_n_train_none_is_the_resolved_number(embedded_tiny_cache):
    kw = {**FAST, "cache_dir": str(embedded_tiny_cache)}
    kw.pop("n_train")
    a = FinetuneConfig(**kw)
    n_all = a.resolve()["n_train"]
    b = FinetuneConfig(**kw, n_train=n_all)
    assert a.run_id == b.run_id and a.identity()["n_train"] == n_all
    assert FinetuneConfig(**kw, n_train=n_all - 1).run_id != a.run_id


def test_alpha_int_float_and_ignored_fields(embedded_tiny_cache):
    kw = {**FAST, "cache_dir": str(embedded_tiny_cache)}
    kw.pop("noise_draws")
    base = FinetuneConfig(**kw, lora_alpha=16)
    assert base.run_id == FinetuneConfig(**kw, lora_alpha=16.0).run_id
    # fields the fp16 arm ignores
    assert (
        base.run_id
        == FinetuneConfig(
            **kw,
            block_size=64,
            step="midtread",
            noise_draws=5,
            double_quant=True,
            bits_pattern={"c_fc": 3},
        ).run_id
    )
    # scale "one" ignores lora_alpha
    assert (
        FinetuneConfig(**kw, scale="one", lora_alpha=4).run_id
        == FinetuneConfig(**kw, scale="one", lora_alpha=99).run_id
    )
    # but an arm that uses them does not
    rtn = dict(kw, arm="adapter_rtn", bits=3)
    assert FinetuneConfig(**rtn).run_id != FinetuneConfig(**rtn, block_size=64).run_id
    assert FinetuneConfig(**rtn).run_id == FinetuneConfig(**rtn, step="paper").run_id  # the default
    assert FinetuneConfig(**rtn).run_id != FinetuneConfig(**rtn, step="midtread").run_id
    # SR defaults to the unbiased mid-tread grid
    assert FinetuneConfig(**dict(rtn, arm="adapter_sr")).resolved_step() == "midtread"
    # PTQ measurements do not change the fp16 run
    assert base.run_id == FinetuneConfig(**kw, ptq=True, ptq_bits=[2, 3]).run_id


def test_device_and_dtype_and_model_key_enter_the_id(embedded_tiny_cache):
    cfg = FinetuneConfig(**{**FAST, "cache_dir": str(embedded_tiny_cache), "device": "auto"})
    r = cfg.resolve()
    assert (
        cfg.run_id == FinetuneConfig(**{**FAST, "cache_dir": str(embedded_tiny_cache)}).run_id
    )  # auto = cpu here
    ident = cfg.identity(r)
    assert ident["device"] == "cpu" and ident["dtype"] == "float32"
    assert ident["embedded"] == r["embedded_key"] and r["dataset_path"].endswith("dataset.json")
    # the dataset by content (SHA-256 of chitchat's dataset.json), its path only in resolve()
    assert "dataset_path" not in ident and ident["dataset"] == "chitchat"
    sha = hashlib.sha256(Path(r["dataset_path"]).read_bytes()).hexdigest()
    assert ident["dataset_sha256"] == r["dataset_sha256"] == sha
    gpu = cfg.identity({**r, "device": "cuda", "dtype": "bfloat16"})
    assert run_id(gpu) != run_id(ident)
    other_model = cfg.identity({**r, "embedded_key": "embedded-000000000000"})
    assert run_id(other_model) != run_id(ident)


def test_ptq_options_are_checked():
    with pytest.raises(ValueError, match="ptq_bits"):
        FinetuneConfig(**FAST, ptq=True, ptq_bits=[0, 4])
    with pytest.raises(ValueError, match="ptq_bits"):
        FinetuneConfig(**FAST, ptq=True, ptq_bits=[17])
    with pytest.raises(ValueError, match="ptq_schemes"):
        FinetuneConfig(**FAST, ptq=True, ptq_schemes=["rtn_tensor", "int3"])
    with pytest.raises(ValueError, match="needs arm 'fp16'"):
        FinetuneConfig(**{**FAST, "arm": "adapter_rtn", "bits": 3}, ptq=True)
