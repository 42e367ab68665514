"""Pretraining the dialogue embedded GPT-2 on the chitchat corpus: resumable and deterministic.

The shipped model (``real_runs/weights/chitchat``) is ``PretrainConfig()``: 4 layers, d = 192,
6 heads, 128 positions, byte-level BPE vocab 8192, 700 AdamW steps of 16 × 128 tokens
(≈ 1.4M tokens, about half a pass over the 2.4M-token corpus), lr 2e-3 cosine, dropout 0.1.
(The size was set by the CPU time available: ≈ 0.9 s per step on one AVX-512 core.)

    python -m real_runs.pretrain --workdir .pretrain            # runs / resumes
    python -m real_runs.pretrain --workdir .pretrain --export real_runs/weights/chitchat

The corpus is the pretraining part of ``real_runs.chitchat`` (3,179 conversations: 26 of the
34 prompts plus the prompt-less conversations; the eight computer/AI prompts are never seen
here). A byte-level
BPE tokenizer is trained on the pretraining conversations only, each conversation is encoded
in DialoGPT's format (t₁⟨eos⟩t₂⟨eos⟩…), the conversations are concatenated into one token
stream, and a ``GPT2LMHeadModel`` is trained with AdamW on random windows (next-token
cross-entropy), cosine schedule with linear warm-up (nanoGPT's).

Determinism: the windows and the dropout masks of step k are drawn from generators seeded by
(seed, k) alone, so a run resumed from a checkpoint follows the same trajectory as an
uninterrupted one on the same machine (float32 reductions differ between instruction sets,
so bit-identical weights are promised only on the same CPU type and thread count: 1).
Checkpoints (model, optimizer, step, losses) are written every ``--ckpt-every`` seconds to a
temporary file and renamed into place, so a kill at any moment leaves the last complete one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from quantbounds._checks import check_int_range, check_positive

EOS = "<|endoftext|>"


@dataclass(frozen=True, kw_only=True)
class PretrainConfig:
    n_layer: int = 4
    n_embd: int = 192
    n_head: int = 6
    n_positions: int = 128
    vocab_size: int = 8192
    steps: int = 700
    batch_size: int = 16
    seq_len: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.1
    dropout: float = 0.1
    seed: int = 0
    heldout: str = "prompts"  # what pretraining leaves out: real_runs.chitchat.HOLDOUTS

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
        check_int_range(self.vocab_size, "vocab_size", 300)
        check_int_range(self.seed, "seed", 0)
        check_positive(self.lr, "lr")
        from real_runs.chitchat import HOLDOUTS

        if self.heldout not in HOLDOUTS:
            raise ValueError(f"heldout={self.heldout!r}: expected one of {HOLDOUTS}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if self.seq_len > self.n_positions:
            raise ValueError(f"seq_len={self.seq_len} must be ≤ n_positions={self.n_positions}")


# The shipped pretrained models: name → (configuration, corpus description). "chitchat-topic"
# holds the computer/AI topic out by content (real_runs.chitchat.split_by_topic): a corpus of
# ≈ 1.25M tokens, so 1,600 steps ≈ 2.6 passes.
PRESETS = {
    "chitchat": (
        PretrainConfig(),
        "chitchat-dataset (pretraining prompts: 26 of 34 + prompt-less)",
    ),
    "chitchat-topic": (
        PretrainConfig(heldout="topic", steps=1600),
        "chitchat-dataset (pretraining prompts: 26 of 34 + prompt-less, minus every "
        "conversation that mentions the held-out computer/AI topic)",
    ),
}


def rebuild_command(name: str) -> str:
    """The command that rebuilds the shipped model ``name`` from scratch."""
    if name not in PRESETS:
        raise ValueError(f"model={name!r}: expected one of {tuple(PRESETS)}")
    if name == "chitchat":  # the command shipped with it, before there were several
        return (
            "python -m real_runs.pretrain --workdir .pretrain && "
            "python -m real_runs.pretrain --workdir .pretrain --export real_runs/weights/chitchat"
        )
    w = f".pretrain-{name}"
    return (
        f"python -m real_runs.pretrain --model {name} --workdir {w} && "
        f"python -m real_runs.pretrain --model {name} --workdir {w} --export real_runs/weights/{name}"
    )


def lr_at(cfg: PretrainConfig, step: int) -> float:
    """Linear warm-up over 5 % of the steps, then cosine decay to 10 % of ``lr``."""
    warm = max(1, cfg.steps // 20)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    frac = (step - warm) / max(1, cfg.steps - warm)
    return cfg.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * frac)))


def _atomic_write_bytes(path: Path, data: bytes):
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def prepare(workdir: Path, cfg: PretrainConfig):
    """Tokenizer + encoded train/valid token streams, built once and kept in ``workdir``."""
    import torch

    from real_runs.chitchat import load_chitchat, pretraining_split
    from real_runs.embedded import train_tokenizer

    workdir.mkdir(parents=True, exist_ok=True)
    tok_dir = workdir / "tokenizer"
    data_f = workdir / "tokens.pt"
    train, val = pretraining_split(load_chitchat(), seed=cfg.seed, heldout=cfg.heldout)
    if not (tok_dir / "tokenizer.json").exists():
        texts = [t for d in train for t in d]
        tok = train_tokenizer(texts, vocab_size=cfg.vocab_size)
        tmp = workdir / "tokenizer.tmp"
        tok.save_pretrained(tmp)
        os.replace(tmp, tok_dir)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    if not data_f.exists():

        def stream(dialogues):
            flat = [t for d in dialogues for t in d]
            enc = tok(flat)["input_ids"]
            out = []
            for ids in enc:
                out.extend(ids)
                out.append(tok.eos_token_id)
            return torch.tensor(out, dtype=torch.int32)

        blob = {
            "train": stream(train),
            "valid": stream(val),
            "n_train_conv": len(train),
            "n_valid_conv": len(val),
        }
        tmp = data_f.with_name("tokens.pt.tmp")
        torch.save(blob, tmp)
        os.replace(tmp, data_f)
    blob = torch.load(data_f)
    return tok, blob


def _model(cfg: PretrainConfig, tok):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(cfg.seed)
    gcfg = GPT2Config(
        n_layer=cfg.n_layer,
        n_embd=cfg.n_embd,
        n_head=cfg.n_head,
        n_positions=cfg.n_positions,
        vocab_size=len(tok),
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.eos_token_id,
    )
    return GPT2LMHeadModel(gcfg)


def _windows(ids, cfg: PretrainConfig, step: int):
    import torch

    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    n = ids.numel() - cfg.seq_len - 1
    starts = torch.randint(0, n, (cfg.batch_size,), generator=g)
    return torch.stack([ids[s : s + cfg.seq_len] for s in starts.tolist()]).long()


def valid_loss(model, ids, cfg: PretrainConfig, *, max_windows: int = 200) -> float:
    """Mean next-token loss over consecutive non-overlapping windows of the validation stream."""
    import torch

    L = cfg.seq_len
    nwin = min(max_windows, (ids.numel() - 1) // L)
    was = model.training
    model.eval()
    tot = 0.0
    with torch.no_grad():
        for i in range(0, nwin, 16):
            xs = torch.stack([ids[j * L : (j + 1) * L] for j in range(i, min(nwin, i + 16))]).long()
            tot += float(model(input_ids=xs, labels=xs).loss) * xs.shape[0]
    model.train(was)
    return tot / nwin


def pretrain(
    workdir: Path,
    cfg: PretrainConfig,
    *,
    ckpt_every_s: float = 180.0,
    max_steps: int | None = None,
    log=print,
) -> dict:
    """Run (or resume) pretraining in ``workdir``; return the state summary."""
    import torch

    torch.set_num_threads(1)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "config.json").exists():
        _atomic_write_bytes(workdir / "config.json", json.dumps(asdict(cfg), indent=2).encode())
    # a workdir made before `heldout` existed holds the prompt split
    saved = {"heldout": "prompts", **json.loads((workdir / "config.json").read_text())}
    if saved != asdict(cfg):
        raise ValueError(
            f"{workdir} holds a pretraining run of a different configuration "
            f"({saved}); use another --workdir"
        )
    tok, blob = prepare(workdir, cfg)
    train_ids, val_ids = blob["train"], blob["valid"]
    model = _model(cfg, tok)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )
    ck = workdir / "ckpt.pt"
    state = {"step": 0, "losses": [], "valid": [], "elapsed_s": 0.0}
    if ck.exists():
        c = torch.load(ck, weights_only=False)
        model.load_state_dict(c["model"])
        opt.load_state_dict(c["opt"])
        state = c["state"]
        log(f"resumed at step {state['step']}")
    last_ck = time.time()
    t_seg = time.time()
    el0 = state["elapsed_s"]
    model.train()
    stop = cfg.steps if max_steps is None else min(cfg.steps, state["step"] + max_steps)

    def save():
        state["elapsed_s"] = el0 + time.time() - t_seg
        tmp = ck.with_name("ckpt.pt.tmp")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "state": state}, tmp)
        os.replace(tmp, ck)

    while state["step"] < stop:
        step = state["step"]
        for grp in opt.param_groups:
            grp["lr"] = lr_at(cfg, step)
        x = _windows(train_ids, cfg, step)
        torch.manual_seed(cfg.seed * 1_000_003 + step + 7)  # dropout masks of this step
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        state["losses"].append(loss.item())
        state["step"] = step + 1
        if state["step"] % 250 == 0 or state["step"] == cfg.steps:
            v = valid_loss(model, val_ids, cfg)
            state["valid"].append([state["step"], v])
            el = el0 + time.time() - t_seg
            log(
                f"step {state['step']}/{cfg.steps} train {sum(state['losses'][-50:]) / len(state['losses'][-50:]):.4f} "
                f"valid {v:.4f} elapsed {el:.0f}s tok/s {state['step'] * cfg.batch_size * cfg.seq_len / el:.0f}"
            )
        if time.time() - last_ck > ckpt_every_s:
            save()
            last_ck = time.time()
    save()
    return state


def export(workdir: Path, out_dir: Path, cfg: PretrainConfig, *, name: str = "chitchat") -> dict:
    """Write fp16 safetensors + tokenizer + info with SHA-256 hashes into ``out_dir`` (atomically)."""
    import shutil

    import torch

    workdir, out_dir = Path(workdir), Path(out_dir)
    c = torch.load(workdir / "ckpt.pt", weights_only=False)
    if c["state"]["step"] < cfg.steps:
        raise RuntimeError(
            f"pretraining in {workdir} is at step {c['state']['step']} of {cfg.steps}; "
            f"finish it first (rerun without --export)"
        )
    tok, blob = prepare(workdir, cfg)
    model = _model(cfg, tok)
    model.load_state_dict(c["model"])
    model.eval()
    vl = valid_loss(model, blob["valid"], cfg, max_windows=10_000)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.half().save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    import tokenizers
    import transformers

    st = c["state"]
    info = {
        "name": name,
        "corpus": PRESETS[name][1],
        "heldout_prompts_excluded": True,
        "heldout": cfg.heldout,
        "config": asdict(cfg),
        "corpus_tokens_train": int(blob["train"].numel()),
        "corpus_tokens_valid": int(blob["valid"].numel()),
        "n_train_conversations": blob["n_train_conv"],
        "n_valid_conversations": blob["n_valid_conv"],
        "final_train_loss": sum(st["losses"][-100:]) / 100,
        "valid_curve": st["valid"],
        "pretrain_valid_loss_fp32": vl,
        "pretrain_s": st["elapsed_s"],
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "python": sys.version.split()[0],
        },
        "rebuild": rebuild_command(name),
    }
    (tmp / "embedded_info.json").write_text(json.dumps(info, indent=2))
    hashes = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(tmp.iterdir())
        if p.is_file()
    }
    (tmp / "SHA256SUMS").write_text("".join(f"{h}  {n}\n" for n, h in hashes.items()))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return info


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="chitchat", choices=tuple(PRESETS), help="which shipped model")
    ap.add_argument("--workdir", default=".pretrain")
    ap.add_argument("--export", default=None, help="write the shipped fp16 weights here and stop")
    ap.add_argument("--steps", type=int, default=None, help="override the step count")
    ap.add_argument("--max-steps", type=int, default=None, help="stop after this many more steps")
    ap.add_argument("--ckpt-every", type=float, default=180.0)
    a = ap.parse_args(argv)
    cfg = PRESETS[a.model][0]
    if a.steps is not None:
        cfg = replace(cfg, steps=a.steps)
    if a.export:
        print(json.dumps(export(Path(a.workdir), Path(a.export), cfg, name=a.model), indent=2))
        return 0
    st = pretrain(
        Path(a.workdir),
        cfg,
        ckpt_every_s=a.ckpt_every,
        max_steps=a.max_steps,
        log=lambda s: print(s, flush=True),
    )
    print(f"done: step {st['step']}, elapsed {st['elapsed_s']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
