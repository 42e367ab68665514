"""One LoRA fine-tune of one arm, measured, returned as a run record (schema quantbounds.run/1).

    rec = run_finetune(FinetuneConfig(arm="adapter_rtn", rank=16, bits=3, seed=0))

Training: AdamW on the LoRA factors only (PEFT freezes W0), constant learning rate after a
linear warm-up, mini-batches of DialoGPT-formatted dialogues (data.py) drawn from a seeded
shuffle. After training, at the final (fixed) parameters:

- grad_var: tr Ĉov of the LoRA gradient across ``grad_var_batches`` training mini-batches,
  per layer and total (measure.py); for the SR / noise arms also across ``noise_draws`` draws
  on one fixed batch (grad_var_noise).
- x_norm2: mean ‖x‖² of each adapted layer's input over those mini-batches' tokens; range_B,
  range_A: absmax of the full-precision factors (Theorem 3.3's R); eps_ba_fro2.
Each forward pass runs under ``parametrize.cached()``: Q(B), Q(A) are computed once per
step (one SR / noise draw per step) although PEFT reads ``lora_A.weight`` more than once.

- eval loss / perplexity on the held-out dialogues and greedy-response token F1 / exact match
  on held-out prompt→response pairs, with the quantized factors evaluated once per pass
  (``parametrize.cached()``: one quantization draw for SR / noise).
"""

from __future__ import annotations

import dataclasses
import math
import platform
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from quantbounds._checks import check_choice, check_int_range, check_positive, check_rank
from quantbounds.calib.records import ARMS, make_record, run_id
from quantbounds.conventions import SCALES, lora_scale

EMBEDDED_SIZES = ("default", "tiny")


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    """Everything that defines one run (all but ``cache_dir``/``progress``/``threads`` enter its run_id).

    threads: torch intra-op CPU threads (default 1: on a shared 2-core machine a small model
    ran a training step ≈ 20× slower with 2 threads than with 1, measured; None = torch's
    default).

    rank_pattern / bits_pattern: {module-name regex: rank / bits} for per-layer allocations,
    matched as PEFT matches rank_pattern (first key k with name ending in "(.*\\.)?k").
    n_train: number of training dialogues N (None = all available).
    """

    arm: str = "fp16"
    model: str = "embedded"
    embedded: str = "default"
    dataset: str = "chatterbot"
    rank: int = 8
    bits: int = 16
    scale: str = "alpha_r"
    lora_alpha: float = 16.0
    seed: int = 0
    steps: int = 120
    n_train: int | None = None
    batch_size: int = 8
    seq_len: int = 64
    lr: float = 3e-3
    warmup: int = 10
    target_modules: tuple[str, ...] = ("c_attn", "c_proj", "c_fc")
    rank_pattern: dict = field(default_factory=dict)
    bits_pattern: dict = field(default_factory=dict)
    block_size: int | None = None
    step: str = "paper"
    double_quant: bool = False
    lora_dropout: float = 0.0
    grad_var_batches: int = 8
    noise_draws: int = 8
    eval_pairs: int = 32
    max_new_tokens: int = 20
    log_every: int = 10
    device: str = "auto"
    cache_dir: str | None = None
    progress: bool = True
    threads: int | None = 1

    def __post_init__(self):
        from real_runs.arms import check_arm_bits

        check_choice(self.arm, "arm", ARMS)
        check_arm_bits(self.arm, self.bits)
        check_choice(self.embedded, "embedded", EMBEDDED_SIZES)
        check_choice(self.scale, "scale", SCALES)
        check_choice(self.step, "step", ("paper", "midtread"))
        check_choice(self.device, "device", ("auto", "cpu", "cuda"))
        check_rank(self.rank, "rank")
        check_positive(self.lora_alpha, "lora_alpha")
        check_positive(self.lr, "lr")
        for name in ("steps", "batch_size", "seq_len", "eval_pairs", "max_new_tokens", "log_every"):
            check_int_range(getattr(self, name), name, 1)
        for name in ("grad_var_batches", "noise_draws"):
            check_int_range(getattr(self, name), name, 2)
        check_int_range(self.seed, "seed", 0)
        check_int_range(self.warmup, "warmup", 0)
        if self.threads is not None:
            check_int_range(self.threads, "threads", 1)
        if self.n_train is not None:
            check_int_range(self.n_train, "n_train", 1)
        if self.block_size is not None:
            check_int_range(self.block_size, "block_size", 1)
        if not 0.0 <= float(self.lora_dropout) < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if isinstance(self.target_modules, str) or not self.target_modules:
            raise TypeError(f"target_modules must be a non-empty list of names, got {self.target_modules!r}")
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        for pname in ("rank_pattern", "bits_pattern"):
            pat = getattr(self, pname)
            if not isinstance(pat, dict):
                raise TypeError(f"{pname} must be a dict {{module regex: int}}, got {type(pat).__name__}")
        for k, v in self.rank_pattern.items():
            check_rank(v, f"rank_pattern[{k!r}]")
        for k, v in self.bits_pattern.items():
            check_int_range(v, f"bits_pattern[{k!r}]", 1, 16)

    def identity(self) -> dict:
        """The fields that define the run (the run_id is their hash)."""
        d = dataclasses.asdict(self)
        for k in ("cache_dir", "progress", "threads"):  # how, not what: not in the run_id
            d.pop(k)
        d["target_modules"] = list(self.target_modules)
        if self.model != "embedded":
            d.pop("embedded")
        return d

    @property
    def run_id(self) -> str:
        return run_id(self.identity())

    @classmethod
    def from_dict(cls, d: dict) -> "FinetuneConfig":
        """Build from a plain dict; an unknown key → ValueError naming it and the known keys."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown run option(s) {unknown}; known: {sorted(known)}")
        d = dict(d)
        if "target_modules" in d and isinstance(d["target_modules"], list):
            d["target_modules"] = tuple(d["target_modules"])
        return cls(**d)


def _versions() -> dict:
    import bitsandbytes
    import peft
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__,
            "bitsandbytes": bitsandbytes.__version__}


def _batches(seqs, *, batch_size, pad_id, rng: random.Random, device):
    """Endless mini-batches: reshuffle each epoch (seeded), right-pad, move to device."""
    from real_runs.data import collate

    while True:
        order = list(range(len(seqs)))
        rng.shuffle(order)
        for i in range(0, len(order) - batch_size + 1, batch_size):  # drop the last partial batch
            b = collate([seqs[j] for j in order[i:i + batch_size]], pad_id=pad_id)
            yield {k: v.to(device) for k, v in b.items()}


def run_finetune(config: FinetuneConfig | dict) -> dict:
    """Run one fine-tune and return its validated record (not written anywhere)."""
    import torch
    from torch.nn.utils import parametrize

    from real_runs import measure as M
    from real_runs.arms import build_arm, resolve_device
    from real_runs.data import collate, encode_dialogue, load_dialogues, split_dialogues
    from real_runs.embedded import EmbeddedConfig

    cfg = config if isinstance(config, FinetuneConfig) else FinetuneConfig.from_dict(config)
    t0 = time.time()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    device = resolve_device(cfg.device)
    if cfg.threads is not None and device == "cpu":
        torch.set_num_threads(cfg.threads)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()  # peak_mem_bytes is per run on GPU
    emb = EmbeddedConfig() if cfg.embedded == "default" else EmbeddedConfig.tiny()

    dialogues = load_dialogues(cfg.dataset)
    split = split_dialogues(dialogues, n_train=cfg.n_train)
    built = build_arm(arm=cfg.arm, model=cfg.model, rank=cfg.rank, bits=cfg.bits, scale=cfg.scale,
                      lora_alpha=cfg.lora_alpha, target_modules=cfg.target_modules,
                      rank_pattern=cfg.rank_pattern, bits_pattern=cfg.bits_pattern,
                      block_size=cfg.block_size, step=cfg.step, double_quant=cfg.double_quant,
                      lora_dropout=cfg.lora_dropout, seed=cfg.seed, device=device, embedded=emb,
                      cache_dir=cfg.cache_dir, progress=cfg.progress)
    model, tok = built.model, built.tokenizer
    max_len = min(cfg.seq_len, getattr(model.config, "n_positions", cfg.seq_len))
    train_seqs = [encode_dialogue(tok, d, seq_len=max_len) for d in split.train]
    held_seqs = [encode_dialogue(tok, d, seq_len=max_len) for d in split.heldout]
    pad = tok.eos_token_id

    # --- training --------------------------------------------------------------------------
    torch.manual_seed(cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    batches = _batches(train_seqs, batch_size=min(cfg.batch_size, len(train_seqs)), pad_id=pad,
                       rng=random.Random(cfg.seed), device=device)
    losses, loss_steps, window, n_tok = [], [], [], 0
    model.train()
    t_train = time.time()
    it = range(cfg.steps)
    if cfg.progress:
        from tqdm import tqdm
        it = tqdm(it, desc=f"{cfg.arm} r={cfg.rank} b={cfg.bits}", leave=False)
    for step in it:
        for g in opt.param_groups:
            g["lr"] = cfg.lr * min(1.0, (step + 1) / (cfg.warmup + 1))
        b = next(batches)
        with parametrize.cached():  # Q(B), Q(A) computed once per step (PEFT reads .weight twice)
            loss = model(**b).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        window.append(loss.item())
        n_tok += int(b["attention_mask"].sum())
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            losses.append(sum(window) / len(window))
            loss_steps.append(step + 1)
            window = []
        if not math.isfinite(losses[-1] if losses else 0.0):
            raise FloatingPointError(f"training loss became {losses[-1]} at step {step + 1}")
    train_s = time.time() - t_train
    model.eval()

    # --- gradient variance, ‖x‖², at the final parameters -----------------------------------
    groups = M.lora_groups(built.layers)
    gv_rng = random.Random(10_000 + cfg.seed)
    gv_batches = list(_take(_batches(train_seqs, batch_size=min(cfg.batch_size, len(train_seqs)),
                                     pad_id=pad, rng=gv_rng, device=device), cfg.grad_var_batches))
    holder: dict = {}

    def loss_of(batch):
        holder["mask"] = batch["attention_mask"]
        with parametrize.cached():  # one quantization / noise draw per gradient sample
            return model(**batch).loss

    with M.capture_input_norms(built.layers, holder) as acc:
        gv_total, gv_layers = M.grad_variance(loss_of, gv_batches, groups)
    x_norm2 = {n: s / max(c, 1) for n, (s, c) in acc.items()}
    gvn_total = gvn_layers = None
    if built.kind in ("sr", "noise"):
        gvn_total, gvn_layers = M.grad_variance(loss_of, [gv_batches[0]] * cfg.noise_draws, groups)
    range_B, range_A = M.factor_ranges(built.layers)

    # --- evaluation with the quantized factors (one draw per pass) ---------------------------
    with parametrize.cached():
        eps_total, eps_layers = M.eps_ba(built.layers)
        held_batches = [
            {k: v.to(device) for k, v in collate(held_seqs[i:i + 16], pad_id=pad).items()}
            for i in range(0, len(held_seqs), 16)]
        ev_loss, _ = M.eval_loss(model, held_batches)
        f1, em, _ = M.greedy_scores(model, tok, split.pairs[:cfg.eval_pairs],
                                    max_new_tokens=cfg.max_new_tokens,
                                    max_prompt=max(1, max_len - cfg.max_new_tokens), device=device)

    base = model.get_base_model()
    s = lora_scale(cfg.scale, cfg.lora_alpha if cfg.scale != "one" else cfg.rank, cfg.rank)
    rec = make_record(
        run_id=cfg.run_id, arm=cfg.arm,
        model=cfg.model if cfg.model != "embedded" else ("embedded" if cfg.embedded == "default"
                                                          else "embedded:tiny"),
        dataset=cfg.dataset, rank=cfg.rank, bits=cfg.bits, base_quant=built.base_quant,
        scale=cfg.scale, lora_alpha=float(cfg.lora_alpha if cfg.scale != "one" else cfg.rank),
        seed=cfg.seed, n_train=len(split.train), steps=cfg.steps,
        eval_loss=ev_loss, perplexity=M.perplexity(ev_loss), f1=f1, exact_match=em,
        grad_var=gv_total, eps_ba_fro2=eps_total, wall_s=time.time() - t0,
        train_loss=losses, train_loss_steps=loss_steps,
        grad_var_layers=gv_layers, grad_var_batches=cfg.grad_var_batches,
        grad_var_noise=gvn_total, grad_var_noise_layers=gvn_layers,
        x_norm2=x_norm2, range_B=range_B, range_A=range_A, eps_ba_layers=eps_layers,
        lora_scale=s, target_modules=list(cfg.target_modules),
        rounding={"rtn": "nearest", "sr": "stochastic", "nf4": "nf4", "noise": "additive_uniform",
                  None: None}[built.kind],
        double_quant=cfg.double_quant if built.base_quant in ("nf4", "fp4") else None,
        trainable_params=sum(p.numel() for p in params),
        total_params=sum(p.numel() for p in model.parameters()),
        model_bytes=M.model_bytes(base), peak_mem_bytes=M.peak_memory_bytes(device),
        tokens_per_s=n_tok / train_s if train_s > 0 else None,
        lr=cfg.lr, batch_size=cfg.batch_size, seq_len=max_len,
        versions=_versions(), device=device if device == "cpu" else torch.cuda.get_device_name(),
        started_at=started, finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        config=cfg.identity(),
    )
    return rec


def _take(gen, n):
    for _ in range(n):
        yield next(gen)
