"""The embedded offline models: small GPT-2s with their own BPE tokenizers, no hub needed.

Four by name (``EMBEDDED_MODELS``):

- ``"chitchat-topic"`` (the default): 4 layers, d = 192, 6 heads, vocab 8192, pretrained on the
  dialogue corpus ``chitchat-dataset`` with the computer/AI topic held out by content: the
  eight computer/AI prompts and every other conversation that mentions computers, robots, AI,
  artificial intelligence, androids or cyborgs (``real_runs.chitchat.split_by_topic``): 2,556
  conversations, 2,505 for training (1.29M tokens, 1,600 steps ≈ 2.6 passes) and 51 for
  validation. Its base loss on the held-out prompts' conversations is 0.25 nats per token above
  its own validation loss (``embedded_info.json``, results/testbed.json): fine-tuning on them
  is a domain shift.
- ``"chitchat"``: the first dialogue model, same architecture, with only the eight prompts held
  out (3,179 conversations, 3,115 for training, 700 steps); its held-out loss is below its
  validation loss (no shift), the model of results/runs_chitchat.jsonl.

Both ship with the package as fp16 safetensors in ``real_runs/weights/<name>/`` with a
``SHA256SUMS`` manifest that is checked on every load (:func:`verify_weights`); loading never
pretrains, and a missing or corrupt file is an :class:`EmbeddedWeightsError` naming it and the
model's rebuild command (:func:`rebuild_command`; ``real_runs.pretrain``).
- ``"pydoc"``: the earlier model (4 layers, d = 128) pretrained on Python's help text,
  built locally in a few minutes on first use and cached (below).
- ``"tiny"``: 2 layers, d = 64, pydoc text, 40 steps: for tests.

The rest of this docstring describes the built-and-cached pydoc models.

No hub download is possible on the development/CI machines, so the default model is built
locally:

1. English text that ships with Python itself: the help topics of the Python documentation
   (``pydoc_data.topics``, ≈ 465 kB of prose and examples; present in every CPython install).
2. A byte-level BPE tokenizer trained on it with 🤗 ``tokenizers`` (byte-level, so every
   string round-trips), wrapped as a ``GPT2TokenizerFast`` through ``tokenizer_object=``.
   (Gotcha measured with transformers 5.x: ``GPT2TokenizerFast(vocab_file=…, merges_file=…)``
   silently builds an EMPTY tokenizer; we never go through files.)
3. A ``GPT2LMHeadModel`` of the configured size pretrained on the corpus with AdamW for a
   fixed number of steps (next-token cross-entropy on random windows).

The result is saved with ``save_pretrained`` under ``<cache>/embedded-<key>/`` where ``key``
hashes the configuration and the corpus, so it is reused across runs and re-built only when
either changes. The build writes into a temporary sibling directory and renames it into place,
so an interrupted build never leaves a half-written cache entry.

Cache directory: the ``cache_dir`` argument, else ``$QUANTBOUNDS_CACHE``, else
``~/.cache/quantbounds``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from quantbounds._checks import check_choice, check_int_range, check_positive

EOS = "<|endoftext|>"  # GPT-2's end-of-text token, used as BOS/EOS/PAD as DialoGPT does
CACHE_ENV = "QUANTBOUNDS_CACHE"


@dataclass(frozen=True, kw_only=True)
class EmbeddedConfig:
    """Size and pretraining budget of the embedded GPT-2.

    Defaults (4 layers, d = 128, vocab 2048, 600 AdamW steps of 8×128 tokens ≈ 3 passes over
    the corpus) were chosen so that pretraining takes a few minutes on one CPU core and the
    model reaches a clearly non-trivial loss on held-out Python-docs text (embedded_info.json
    records it). ``tiny()`` is the test configuration.
    """

    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4
    n_positions: int = 128
    vocab_size: int = 2048
    steps: int = 600
    batch_size: int = 8
    seq_len: int = 128
    lr: float = 3e-3
    seed: int = 0

    def __post_init__(self):
        for name in (
            "n_layer",
            "n_embd",
            "n_head",
            "n_positions",
            "steps",
            "batch_size",
            "seq_len",
        ):
            check_int_range(getattr(self, name), name, 1)
        check_int_range(self.vocab_size, "vocab_size", 300)  # ≥ 256 byte symbols + specials
        check_int_range(self.seed, "seed", 0)
        check_positive(self.lr, "lr")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if self.seq_len > self.n_positions:
            raise ValueError(f"seq_len={self.seq_len} must be ≤ n_positions={self.n_positions}")

    @classmethod
    def tiny(cls) -> "EmbeddedConfig":
        """2 layers, d = 64, 40 steps: for tests (seconds on a CPU)."""
        return cls(
            n_layer=2,
            n_embd=64,
            n_head=2,
            n_positions=64,
            vocab_size=512,
            steps=40,
            batch_size=8,
            seq_len=64,
            lr=3e-3,
        )


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache directory: argument, else $QUANTBOUNDS_CACHE, else ~/.cache/quantbounds."""
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "quantbounds"
    return Path(cache_dir).expanduser()


def corpus_texts() -> list[str]:
    """The offline English pretraining corpus: Python's pydoc help topics, in sorted key order."""
    from pydoc_data import topics  # ships with CPython

    return [topics.topics[k] for k in sorted(topics.topics)]


def train_tokenizer(texts: list[str], *, vocab_size: int):
    """Train a byte-level BPE tokenizer on ``texts``; return a ``GPT2TokenizerFast``.

    Byte-level pre-tokenization without an added prefix space makes decode(encode(s)) == s for
    every string s (tested). EOS = BOS = PAD = UNK = ``<|endoftext|>`` (id 0).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2TokenizerFast

    check_int_range(vocab_size, "vocab_size", 300)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    hf = GPT2TokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=EOS,
        add_prefix_space=False,
        clean_up_tokenization_spaces=False,
    )
    if len(hf) < 257:  # guard against the empty-tokenizer gotcha above
        raise RuntimeError(f"tokenizer training produced only {len(hf)} tokens")
    return hf


def _cache_key(cfg: EmbeddedConfig, texts: list[str]) -> str:
    import tokenizers
    import torch
    import transformers

    h = hashlib.sha1()
    h.update(json.dumps(asdict(cfg), sort_keys=True).encode())
    for t in texts:
        h.update(t.encode())
    h.update(f"{torch.__version__}|{transformers.__version__}|{tokenizers.__version__}".encode())
    return h.hexdigest()[:12]


def _pretrain(model, ids, cfg: EmbeddedConfig, *, progress: bool) -> list[float]:
    """AdamW on random windows of the token stream ``ids`` (1-D LongTensor); returns losses."""
    import torch

    g = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    # cosine decay to 10 % with a 5 % linear warm-up (nanoGPT's schedule)
    warm = max(1, cfg.steps // 20)

    def lr_at(step):
        import math

        if step < warm:
            return cfg.lr * (step + 1) / warm
        frac = (step - warm) / max(1, cfg.steps - warm)
        return cfg.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * frac)))

    losses = []
    model.train()
    n = ids.numel() - cfg.seq_len - 1
    it = range(cfg.steps)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="pretraining embedded GPT-2", leave=False)
    for step in it:
        starts = torch.randint(0, n, (cfg.batch_size,), generator=g)
        x = torch.stack([ids[s : s + cfg.seq_len] for s in starts.tolist()])
        for grp in opt.param_groups:
            grp["lr"] = lr_at(step)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


def build_embedded(cfg: EmbeddedConfig, out_dir: Path, *, progress: bool = True) -> dict:
    """Train tokenizer and model from scratch into ``out_dir``; return the build info."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    t0 = time.time()
    texts = corpus_texts()
    tok = train_tokenizer(texts, vocab_size=cfg.vocab_size)
    stream = []
    for t in texts:
        stream.extend(tok(t)["input_ids"])
        stream.append(tok.eos_token_id)
    ids = torch.tensor(stream, dtype=torch.long)
    # hold out the last 5 % of the stream to report a pretraining eval loss
    cut = int(0.95 * ids.numel())
    train_ids, held = ids[:cut], ids[cut:]
    torch.manual_seed(cfg.seed)
    gcfg = GPT2Config(
        n_layer=cfg.n_layer,
        n_embd=cfg.n_embd,
        n_head=cfg.n_head,
        n_positions=cfg.n_positions,
        vocab_size=len(tok),
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.eos_token_id,
    )
    model = GPT2LMHeadModel(gcfg)
    losses = _pretrain(model, train_ids, cfg, progress=progress)
    with torch.no_grad():
        L = cfg.seq_len
        nwin = max(1, (held.numel() - 1) // L)
        xs = torch.stack([held[i * L : (i + 1) * L] for i in range(min(nwin, 64))])
        held_loss = float(model(input_ids=xs, labels=xs).loss)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    info = {
        "config": asdict(cfg),
        "corpus": "pydoc_data.topics",
        "corpus_tokens": int(ids.numel()),
        "final_train_loss": sum(losses[-20:]) / len(losses[-20:]),
        "heldout_loss": held_loss,
        "build_s": time.time() - t0,
        "python": sys.version.split()[0],
    }
    (out_dir / "embedded_info.json").write_text(json.dumps(info, indent=2))
    return info


def embedded_path(
    cfg: EmbeddedConfig | None = None, *, cache_dir=None, progress: bool = True
) -> Path:
    """Directory of the cached embedded model + tokenizer, building it first if needed."""
    cfg = cfg or EmbeddedConfig()
    root = cache_root(cache_dir)
    texts = corpus_texts()
    final = root / f"embedded-{_cache_key(cfg, texts)}"
    if (final / "embedded_info.json").exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=root))
    try:
        build_embedded(cfg, tmp, progress=progress)
        try:
            os.replace(tmp, final)  # atomic; fails if another process won the race
        except OSError:
            if not (final / "embedded_info.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def load_embedded(
    cfg: "EmbeddedConfig | str | None" = None, *, cache_dir=None, progress: bool = True
):
    """(model in float32, tokenizer) of an embedded model (a name, a pydoc config, or the default)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_embedded(cfg, cache_dir=cache_dir, progress=progress).path
    return (
        AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
        AutoTokenizer.from_pretrained(path),
    )


# --- shipped weights and the name registry ------------------------------------------------

EMBEDDED_MODELS = ("chitchat", "chitchat-topic", "pydoc", "tiny")
DEFAULT_EMBEDDED = "chitchat-topic"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
SHIPPED = {"chitchat": WEIGHTS_DIR / "chitchat", "chitchat-topic": WEIGHTS_DIR / "chitchat-topic"}
# files a shipped model directory must list in SHA256SUMS (and hold)
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "embedded_info.json")


def rebuild_command(name: str = DEFAULT_EMBEDDED) -> str:
    """The command that rebuilds shipped model ``name`` (:func:`real_runs.pretrain.rebuild_command`)."""
    from real_runs.pretrain import rebuild_command as cmd

    return cmd(name)


PRETRAIN_CORPUS = {
    "chitchat": "chitchat-dataset (26 of 34 prompts + prompt-less; computer/AI prompts held out)",
    "chitchat-topic": "chitchat-dataset (26 of 34 prompts + prompt-less, minus every conversation "
    "that mentions computers/AI; the computer/AI prompts held out)",
    "pydoc": "pydoc_data.topics",
    "tiny": "pydoc_data.topics",
}


class EmbeddedWeightsError(RuntimeError):
    """A shipped weight file that is missing or does not match its SHA-256 hash."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_VERIFIED: dict[tuple, str] = {}


def verify_weights(directory: str | os.PathLike, *, rebuild: str | None = None) -> str:
    """Check every file of a shipped model directory against its ``SHA256SUMS``; return the model hash.

    Raises EmbeddedWeightsError naming the directory's missing manifest, a required file the
    manifest does not list, a listed file that is missing, or one whose SHA-256 differs (with
    both hashes and the rebuild command ``rebuild``, default the default model's). The result is
    remembered per (path, size, mtime).
    """
    fix = rebuild if rebuild is not None else rebuild_command()
    d = Path(directory)
    man = d / "SHA256SUMS"
    if not man.is_file():
        raise EmbeddedWeightsError(
            f"shipped embedded model {d}: manifest {man} is missing; "
            f"reinstall the package or rebuild with: {fix}"
        )
    sums = {}
    for line in man.read_text().splitlines():
        if line.strip():
            h, _, name = line.strip().partition("  ")
            sums[name] = h
    for req in REQUIRED_FILES:
        if req not in sums:
            raise EmbeddedWeightsError(f"shipped embedded model {d}: {man} does not list {req}")
    for name, want in sums.items():
        f = d / name
        if not f.is_file():
            raise EmbeddedWeightsError(
                f"shipped embedded weight file {f} is missing; "
                f"reinstall the package or rebuild with: {fix}"
            )
        st = f.stat()
        key = (str(f), st.st_size, st.st_mtime_ns)
        got = _VERIFIED.get(key) or _sha256(f)
        if got != want:
            raise EmbeddedWeightsError(
                f"shipped embedded weight file {f} is corrupt: SHA-256 {got} "
                f"!= {want} listed in {man}; reinstall or rebuild with: {fix}"
            )
        _VERIFIED[key] = got
    return sums["model.safetensors"]


@dataclass(frozen=True)
class ResolvedEmbedded:
    """An embedded model by name: where it is, its cache key (in run ids) and its corpus."""

    name: str
    path: Path
    key: str
    corpus: str


def resolve_embedded(
    which: "EmbeddedConfig | str | None" = None,
    *,
    cache_dir=None,
    progress: bool = True,
    weights_dir: str | os.PathLike | None = None,
    build: bool = True,
) -> ResolvedEmbedded:
    """Resolve an embedded model name (:data:`EMBEDDED_MODELS`, None = default) or a pydoc config.

    "chitchat" and "chitchat-topic" are verified against their hashes and never built;
    "pydoc"/"tiny" are built on first use into the cache (unless ``build=False``: then only
    the path and key are computed).
    ``weights_dir`` overrides the shipped directory (tests).
    """
    if which is None or which == "default":
        which = DEFAULT_EMBEDDED
    if isinstance(which, EmbeddedConfig):
        path = embedded_path(which, cache_dir=cache_dir, progress=progress)
        name = (
            "tiny"
            if which == EmbeddedConfig.tiny()
            else ("pydoc" if which == EmbeddedConfig() else "pydoc-custom")
        )
        return ResolvedEmbedded(
            name=name, path=path, key=path.name, corpus=PRETRAIN_CORPUS["pydoc"]
        )
    check_choice(which, "embedded", EMBEDDED_MODELS)
    if which in SHIPPED:
        d = Path(weights_dir) if weights_dir is not None else SHIPPED[which]
        h = verify_weights(d, rebuild=rebuild_command(which))
        return ResolvedEmbedded(
            name=which, path=d, key=f"{which}-{h[:12]}", corpus=PRETRAIN_CORPUS[which]
        )
    cfg = EmbeddedConfig() if which == "pydoc" else EmbeddedConfig.tiny()
    if not build:  # the key alone (for run ids): never builds
        path = cache_root(cache_dir) / f"embedded-{_cache_key(cfg, corpus_texts())}"
        return ResolvedEmbedded(name=which, path=path, key=path.name, corpus=PRETRAIN_CORPUS[which])
    path = embedded_path(cfg, cache_dir=cache_dir, progress=progress)
    return ResolvedEmbedded(name=which, path=path, key=path.name, corpus=PRETRAIN_CORPUS[which])
