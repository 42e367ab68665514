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
import os
import platform
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from quantbounds._checks import check_choice, check_int_range, check_positive, check_rank
from quantbounds.calib.records import ARMS, make_record, run_id
from quantbounds.conventions import SCALES, lora_scale
from real_runs.embedded import DEFAULT_EMBEDDED, EMBEDDED_MODELS

EMBEDDED_NAMES = (*EMBEDDED_MODELS, "default")  # "default" = DEFAULT_EMBEDDED
HESSIAN_MOMENT_DRAWS = 4  # random perturbations per (scheme, b) of pred_hessian_moment
HELDOUT_FRAC = 0.2  # chitchat: 835 held-out-prompt conversations → 167 held out, 668 for training


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    """Everything that defines one run; its run_id hashes the canonical, RESOLVED identity.

    threads: torch intra-op CPU threads (default 1: on a shared 2-core machine a small model
    ran a training step ≈ 20× slower with 2 threads than with 1, measured; None = torch's
    default).

    rank_pattern / bits_pattern: {module-name regex: rank / bits} for per-layer allocations,
    matched as PEFT matches rank_pattern (first key k with name ending in "(.*\\.)?k").
    n_train: number of training dialogues N (None = all available; the run id holds the
    resolved number, so None and that number are the same run).
    step: quantization grid of the adapter quantizer; None = "paper" for RTN/noise and
    "midtread" for SR (±R on the grid, so stochastic rounding is exactly unbiased; on the
    paper grid the top cell (R − Δ, R] is clipped and SR is biased there — recorded).
    ptq: (fp16 arm only) after training, quantize the trained B, A at every ``ptq_bits`` ×
    ``ptq_schemes`` (SR: ``ptq_sr_draws`` draws) and measure each (real_runs.ptq); the PTQ
    results are extra records (quantbounds.ptq/1) and do not change the fp16 run's id.
    ptq_eval_tokens: PTQ cells are evaluated on the leading held-out dialogues up to this many
    predicted tokens (default 16,000, the sweep's: every b and scheme of one adapter in ≤ 2× a
    fine-tune's time, measured in benchmarks/bench_bridge.py --finetune); part of the PTQ
    records' ids, not of the run's.
    ptq_groups: the held-out dialogues are dealt into this many groups for the paired interval
    of ΔL − first-order term (real_runs.ptq.run_ptq); not part of any id.
    ptq_hessian_bits: the b (of ``ptq_bits``) whose uniform-scheme cells also get
    ``pred_hessian_moment``, the expected second-order term under the scheme's noise model with
    the full Hessian of the training loss on the curvature windows (random perturbations of
    the noise model's variances, 4 draws; real_runs.ptq.run_ptq ``hessian_bits``): a
    zero-constant prediction that K-FAC's ``pred_moment`` approximates. Each b costs 8
    evaluations of the curvature windows per uniform scheme; default none. Part of the ids of
    the PTQ records that carry it.
    """

    arm: str = "fp16"
    model: str = "embedded"
    embedded: str = DEFAULT_EMBEDDED
    dataset: str = "chitchat"
    rank: int = 8
    bits: int = 16
    scale: str = "alpha_r"
    lora_alpha: float = 16.0
    seed: int = 0
    steps: int = 120
    n_train: int | None = None
    batch_size: int = 8
    seq_len: int = 128
    lr: float = 3e-3
    warmup: int = 10
    target_modules: tuple[str, ...] = ("c_attn", "c_proj", "c_fc")
    rank_pattern: dict = field(default_factory=dict)
    bits_pattern: dict = field(default_factory=dict)
    block_size: int | None = None
    step: str | None = None
    double_quant: bool = False
    lora_dropout: float = 0.0
    grad_var_batches: int = 8
    noise_draws: int = 8
    eval_pairs: int = 500
    eval_tokens: int = 24_000
    max_new_tokens: int = 20
    log_every: int = 10
    device: str = "auto"
    ptq: bool = False
    ptq_bits: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8, 16)
    ptq_schemes: tuple[str, ...] = (
        "rtn_tensor",
        "rtn_channel",
        "rtn_block",
        "sr_tensor",
        "nf4",
        "fp4",
        "int8",
    )
    ptq_sr_draws: int = 3
    ptq_eval_tokens: int = 16_000
    ptq_groups: int = 40
    ptq_hessian_bits: tuple[int, ...] = ()
    curvature_windows: int = 64
    cache_dir: str | None = None
    progress: bool = True
    threads: int | None = 1

    def __post_init__(self):
        from real_runs.arms import check_arm_bits
        from real_runs.ptq import check_ptq_bits, check_schemes

        check_choice(self.arm, "arm", ARMS)
        check_arm_bits(self.arm, self.bits)
        check_choice(self.embedded, "embedded", EMBEDDED_NAMES)
        check_choice(self.scale, "scale", SCALES)
        if self.step is not None:
            check_choice(self.step, "step", ("paper", "midtread"))
        check_choice(self.device, "device", ("auto", "cpu", "cuda"))
        check_rank(self.rank, "rank")
        check_positive(self.lora_alpha, "lora_alpha")
        check_positive(self.lr, "lr")
        for name in (
            "steps",
            "batch_size",
            "seq_len",
            "eval_pairs",
            "max_new_tokens",
            "log_every",
            "ptq_sr_draws",
            "curvature_windows",
            "eval_tokens",
            "ptq_eval_tokens",
            "ptq_groups",
        ):
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
            raise TypeError(
                f"target_modules must be a non-empty list of names, got {self.target_modules!r}"
            )
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        object.__setattr__(self, "ptq_bits", check_ptq_bits(self.ptq_bits))
        hb = tuple(sorted(set(self.ptq_hessian_bits)))
        if not set(hb) <= set(self.ptq_bits):
            raise ValueError(
                f"ptq_hessian_bits={list(self.ptq_hessian_bits)} must be a subset of "
                f"ptq_bits={list(self.ptq_bits)}"
            )
        object.__setattr__(self, "ptq_hessian_bits", hb)
        object.__setattr__(self, "ptq_schemes", check_schemes(self.ptq_schemes))
        if self.ptq and self.arm != "fp16":
            raise ValueError(
                f"ptq=True needs arm 'fp16' (PTQ quantizes a full-precision adapter "
                f"after training), got arm {self.arm!r}"
            )
        if self.embedded == "default":
            object.__setattr__(self, "embedded", DEFAULT_EMBEDDED)
        for pname in ("rank_pattern", "bits_pattern"):
            pat = getattr(self, pname)
            if not isinstance(pat, dict):
                raise TypeError(
                    f"{pname} must be a dict {{module regex: int}}, got {type(pat).__name__}"
                )
        for k, v in self.rank_pattern.items():
            check_rank(v, f"rank_pattern[{k!r}]")
        for k, v in self.bits_pattern.items():
            check_int_range(v, f"bits_pattern[{k!r}]", 1, 16)
        if self.step == "midtread" and self.bits < 2:
            raise ValueError(f"bits must be in 2…16 for step='midtread', got {self.bits}")

    # --- resolution and identity -----------------------------------------------------------

    @property
    def kind(self) -> str | None:
        from real_runs.arms import arm_spec

        return arm_spec(self.arm)[1]

    @property
    def base_quant(self) -> str:
        from real_runs.arms import arm_spec

        return arm_spec(self.arm)[0]

    def resolved_step(self) -> str | None:
        """The grid the adapter quantizer uses (None for arms whose adapters are not gridded)."""
        if self.kind in ("rtn", "sr"):
            return self.step or ("midtread" if self.kind == "sr" and self.bits >= 2 else "paper")
        return None

    def resolved_block_size(self) -> int | None:
        if self.kind == "nf4":
            return self.block_size or 64
        return self.block_size if self.kind is not None else None

    def resolve(self) -> dict:
        """What this run resolves to on this machine: device, dtype, embedded model key, dataset
        path, loader and SHA-256, N. Cached per process (loading and hashing the dataset once)."""
        return _resolve(
            self.dataset, self.n_train, self.device, self.model, self.embedded, self.cache_dir
        )

    def identity(self, resolved: dict | None = None) -> dict:
        """The canonical fields that define the run (the run_id is their hash).

        Canonical: N, device and dtype resolved; lora_alpha a float (dropped under scale "one",
        which ignores it); fields the arm ignores dropped (bits_pattern/block_size/step for
        unquantized adapters, noise_draws outside SR/noise, double_quant outside 4-bit bases,
        the embedded name for other models); the embedded model's cache key added. The dataset
        enters by content, not by path (portable across machines and Python installs): ``dataset``
        is how it is parsed (``real_runs.data.dataset_loader``: "chitchat", "chatterbot",
        "dialogue_file", "hub:<name>") and ``dataset_sha256`` the SHA-256 of the bytes read
        (``real_runs.data.digest_dataset``; None for a hub dataset); the path it was read from is
        in the record (``dataset_path``), not here. A local model directory enters the same way:
        ``model = "local"`` and ``model_sha256`` (:func:`digest_model_dir`), its path in the
        record (``model_path``); a hub name or "embedded" as given. How a run is executed
        (cache_dir, progress, threads) and what is measured on top of an fp16 run (ptq_*) are
        not part of it.
        """
        r = resolved or self.resolve()
        d = dataclasses.asdict(self)
        for k in (
            "cache_dir",
            "progress",
            "threads",
            "ptq",
            "ptq_bits",
            "ptq_schemes",
            "ptq_sr_draws",
            "curvature_windows",
            "ptq_eval_tokens",
            "ptq_groups",
            "ptq_hessian_bits",
        ):
            d.pop(k)
        d["target_modules"] = list(self.target_modules)
        d["lora_alpha"] = float(self.lora_alpha)
        d["lora_dropout"] = float(self.lora_dropout)
        d["lr"] = float(self.lr)
        d["n_train"] = r["n_train"]
        d["device"], d["dtype"] = r["device"], r["dtype"]
        d["dataset"], d["dataset_sha256"] = r["dataset_loader"], r["dataset_sha256"]
        d["step"] = self.resolved_step()
        d["block_size"] = self.resolved_block_size()
        if self.scale == "one":
            d.pop("lora_alpha")
        if self.kind is None:
            for k in ("bits_pattern", "block_size", "step"):
                d.pop(k)
        if self.kind not in ("sr", "noise"):
            d.pop("noise_draws")
        if self.base_quant not in ("nf4", "fp4"):
            d.pop("double_quant")
        if self.model == "embedded":
            d["embedded"] = r["embedded_key"]
        else:
            d.pop("embedded")
        if r.get("model_sha256"):  # a local directory: by content, not by path
            d["model"], d["model_sha256"] = "local", r["model_sha256"]
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
        for k in LIST_FIELDS:
            if k in d and isinstance(d[k], list):
                d[k] = tuple(d[k])
        return cls(**d)


# the fields whose value is a tuple (a list in a dict or a sweep's TOML)
LIST_FIELDS = ("target_modules", "ptq_bits", "ptq_schemes", "ptq_hessian_bits")

_DATA_CACHE: dict = {}


def _load_dataset(dataset: str) -> tuple:
    """(dialogues, resolved path, portable identity {dataset, dataset_sha256}) of a dataset spec,
    read and hashed once per process (the digest describes the bytes the dialogues came from)."""
    from real_runs.data import dataset_identity, load_dialogues, resolve_dataset

    if dataset not in _DATA_CACHE:
        dialogues = load_dialogues(dataset)
        path = resolve_dataset(dataset)
        _DATA_CACHE[dataset] = (dialogues, path, dataset_identity(dataset, path))
    return _DATA_CACHE[dataset]


def load_split(dataset: str, n_train: int | None, max_pairs: int):
    """(dialogues split, resolved dataset path), the dialogues loaded once per process."""
    from real_runs.data import split_dialogues

    dialogues, path, _ = _load_dataset(dataset)
    return split_dialogues(
        dialogues, n_train=n_train, heldout_frac=HELDOUT_FRAC, max_pairs=max_pairs
    ), path


def _resolve(dataset, n_train, device, model, embedded, cache_dir) -> dict:
    from real_runs.arms import resolve_device

    split, path = load_split(dataset, n_train, 1)
    ident = _load_dataset(dataset)[2]
    # "auto" is resolved here (so auto-on-CPU ≡ cpu); an explicit "cuda" is the run's identity
    # even on a machine without CUDA (it fails when run, not when planned)
    dev = resolve_device(device) if device == "auto" else device
    out = {
        "n_train": len(split.train),
        "dataset_path": path,
        "dataset_loader": ident["dataset"],
        "dataset_sha256": ident["dataset_sha256"],
        "device": dev,
        "dtype": "bfloat16" if dev == "cuda" else "float32",
    }
    if model == "embedded":
        from real_runs.embedded import resolve_embedded

        e = resolve_embedded(embedded, cache_dir=cache_dir, progress=False, build=False)
        out.update(embedded_name=e.name, embedded_key=e.key, pretrain_corpus=e.corpus)
    elif os.path.isdir(model):
        out.update(model_path=os.path.realpath(model), model_sha256=digest_model_dir(model))
    return out


_MODEL_DIGESTS: dict = {}


def digest_model_dir(path: str | os.PathLike) -> str:
    """SHA-256 of a local model directory's content (weights, config, tokenizer: what
    ``from_pretrained`` reads), by :func:`real_runs.data.digest_dataset`'s directory rule
    (files in sorted relative-path order, names and bytes; hidden entries skipped). Two copies
    of the same model hash alike; changed weights at the same path do not. Cached per (path,
    file sizes and mtimes), so a sweep of many runs hashes a large model once."""
    from real_runs.data import digest_dataset

    d = Path(path).resolve()
    files = sorted((str(f.relative_to(d)), f.stat().st_size, f.stat().st_mtime_ns)
                   for f in d.rglob("*") if f.is_file())
    key = (str(d), tuple(files))
    if key not in _MODEL_DIGESTS:
        _MODEL_DIGESTS[key] = digest_dataset(d)
    return _MODEL_DIGESTS[key]


def _versions() -> dict:
    import bitsandbytes
    import peft
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "bitsandbytes": bitsandbytes.__version__,
    }


def _batches(seqs, *, batch_size, pad_id, rng: random.Random, device):
    """Endless mini-batches: reshuffle each epoch (seeded), right-pad, move to device."""
    from real_runs.data import collate

    while True:
        order = list(range(len(seqs)))
        rng.shuffle(order)
        for i in range(0, len(order) - batch_size + 1, batch_size):  # drop the last partial batch
            b = collate([seqs[j] for j in order[i : i + batch_size]], pad_id=pad_id)
            yield {k: v.to(device) for k, v in b.items()}


def _reset_peak_rss() -> str:
    """Reset the kernel's peak-RSS mark of this process (Linux ≥ 4.0: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return "VmHWM after reset (per run)"
    except OSError:
        return "ru_maxrss (process lifetime: grows across runs)"


def run_finetune(config: FinetuneConfig | dict, *, return_ptq: bool = False,
                 ptq_patterns: dict | None = None, ptq_mirror: bool = False):
    """Run one fine-tune and return its validated record (not written anywhere).

    With ``return_ptq`` returns (record, [PTQ records]) (the list is empty unless cfg.ptq).
    ``ptq_patterns`` ({label: {layer: bits}}, with cfg.ptq): mixed-precision PTQ cells measured
    besides the uniform ones (``real_runs.ptq.run_ptq``'s ``patterns``; records carry
    ``ptq_pattern`` and ``layer_bits``, and their ids hash the per-layer bits).
    ``ptq_mirror`` (with cfg.ptq): each uniform cell also evaluated at the mirror weights
    B·A − ε_BA, the measured second- and third-order terms recorded (``run_ptq``'s ``mirror``).
    """
    import torch
    from torch.nn.utils import parametrize

    from real_runs import measure as M
    from real_runs.arms import build_arm
    from real_runs.data import clustered_mean_ci, collate, encode_chunks

    cfg = config if isinstance(config, FinetuneConfig) else FinetuneConfig.from_dict(config)
    t0 = time.time()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    res = cfg.resolve()
    from real_runs.arms import resolve_device

    device = resolve_device(res["device"])  # a clear error for "cuda" without CUDA
    if cfg.threads is not None and device == "cpu":
        torch.set_num_threads(cfg.threads)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()  # peak_mem_bytes is per run on GPU
    peak_method = "torch.cuda.max_memory_allocated" if device == "cuda" else _reset_peak_rss()
    mem_at_start = M.current_memory_bytes(device)

    split, dataset_path = load_split(cfg.dataset, cfg.n_train, cfg.eval_pairs)
    emb = cfg.embedded
    if cfg.model == "embedded" and cfg.embedded in ("pydoc", "tiny"):
        from real_runs.embedded import EmbeddedConfig

        emb = EmbeddedConfig() if cfg.embedded == "pydoc" else EmbeddedConfig.tiny()
    built = build_arm(
        arm=cfg.arm,
        model=cfg.model,
        rank=cfg.rank,
        bits=cfg.bits,
        scale=cfg.scale,
        lora_alpha=cfg.lora_alpha,
        target_modules=cfg.target_modules,
        rank_pattern=cfg.rank_pattern,
        bits_pattern=cfg.bits_pattern,
        block_size=cfg.resolved_block_size(),
        step=cfg.resolved_step() or "paper",
        double_quant=cfg.double_quant,
        lora_dropout=cfg.lora_dropout,
        seed=cfg.seed,
        device=device,
        embedded=emb,
        cache_dir=cfg.cache_dir,
        progress=cfg.progress,
    )
    model, tok = built.model, built.tokenizer
    max_len = min(cfg.seq_len, getattr(model.config, "n_positions", cfg.seq_len))
    # whole dialogues, cut into windows of ≤ max_len tokens (every token used once)
    train_seqs = [w for d in split.train for w in encode_chunks(tok, d, seq_len=max_len)]
    # held-out loss: whole held-out dialogues in split order until ≥ eval_tokens predicted tokens
    held_seqs, held_owner, n_pred = [], [], 0
    for i, d in enumerate(split.heldout):
        if n_pred >= cfg.eval_tokens:
            break
        for w in encode_chunks(tok, d, seq_len=max_len):
            held_seqs.append(w)
            held_owner.append(i)
            n_pred += len(w) - 1
    if len(set(held_owner)) < 2:
        from real_runs.data import DataError

        raise DataError(
            f"dataset {cfg.dataset!r}: the held-out evaluation covers {len(set(held_owner))} "
            f"dialogue(s) of {len(split.heldout)} held out; its intervals are clustered by "
            f"dialogue and need at least 2 (use a dataset with more dialogues, or a larger "
            f"eval_tokens than {cfg.eval_tokens})"
        )
    if n_pred < cfg.eval_tokens:
        import warnings

        warnings.warn(
            f"held-out split has only {n_pred} tokens to predict (< eval_tokens={cfg.eval_tokens})",
            stacklevel=2,
        )
    pad = tok.eos_token_id

    held_batches = [
        {k: v.to(device) for k, v in collate(held_seqs[i : i + 16], pad_id=pad).items()}
        for i in range(0, len(held_seqs), 16)
    ]
    phase = {"load": time.time() - t0}

    # --- the arm's base with its adapter switched off, on the same held-out tokens: the
    # fine-tuning gain below is paired with it (PEFT's disable_adapter, so a quantized base
    # stays quantized and no adapter noise enters) ------------------------------------------
    t_phase = time.time()
    model.eval()
    with torch.no_grad(), model.disable_adapter():
        base_rows = M.eval_loss_rows(model, held_batches)
    phase["eval_base"] = time.time() - t_phase

    # --- training --------------------------------------------------------------------------
    torch.manual_seed(cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    batches = _batches(
        train_seqs,
        batch_size=min(cfg.batch_size, len(train_seqs)),
        pad_id=pad,
        rng=random.Random(cfg.seed),
        device=device,
    )
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
    phase["train"] = train_s
    t_phase = time.time()

    # --- gradient variance, ‖x‖², at the final parameters, in TRAINING mode (as trained) ----
    groups = M.lora_groups(built.layers)
    gv_rng = random.Random(10_000 + cfg.seed)
    gv_batches = list(
        _take(
            _batches(
                train_seqs,
                batch_size=min(cfg.batch_size, len(train_seqs)),
                pad_id=pad,
                rng=gv_rng,
                device=device,
            ),
            cfg.grad_var_batches,
        )
    )
    holder: dict = {"k": 0}

    def loss_of(batch):
        holder["mask"] = batch["attention_mask"]
        holder["k"] += 1
        torch.manual_seed(20_000 + 7919 * cfg.seed + holder["k"])  # dropout masks of this sample
        with parametrize.cached():  # one quantization / noise draw per gradient sample
            return model(**batch).loss

    model.train()
    with M.capture_input_norms(built.layers, holder) as acc:
        gv_total, gv_layers = M.grad_variance(loss_of, gv_batches, groups)
    x_norm2 = {n: s / max(c, 1) for n, (s, c) in acc.items()}
    gvn_total = gvn_layers = None
    if built.kind in ("sr", "noise"):
        gvn_total, gvn_layers = M.grad_variance(loss_of, [gv_batches[0]] * cfg.noise_draws, groups)
    range_B, range_A = M.factor_ranges(built.layers)
    model.eval()
    phase["grad_var"] = time.time() - t_phase

    # --- evaluation with the quantized factors (one draw per pass) ---------------------------
    t_phase = time.time()
    with parametrize.cached():
        eps_total, eps_layers = M.eps_ba(built.layers)
        rows = M.eval_loss_rows(model, held_batches)
        ev_loss = sum(rows[0]) / sum(rows[1])
        n_eval_tok = int(sum(rows[1]))
        W = len(rows[1])
        _, lo, hi = clustered_mean_ci([s * W / n_eval_tok for s in rows[0]], held_owner)
        # the fine-tuning gain, paired window by window (same tokens), dialogue-clustered
        base_loss = sum(base_rows[0]) / n_eval_tok
        gain, g_lo, g_hi = clustered_mean_ci(
            [(b - a) * W / n_eval_tok for a, b in zip(rows[0], base_rows[0])], held_owner
        )
        phase["eval"] = time.time() - t_phase
        t_phase = time.time()
        f1, em, _, f1s, ems = M.greedy_scores(
            model,
            tok,
            split.pairs,
            max_new_tokens=cfg.max_new_tokens,
            max_prompt=max(1, max_len - cfg.max_new_tokens),
            device=device,
            return_lists=True,
        )
    owners = split.pair_dialogue
    f1_ci = clustered_mean_ci(f1s, owners)[1:] if f1s else (None, None)
    em_ci = clustered_mean_ci(ems, owners)[1:] if ems else (None, None)

    phase["f1"] = time.time() - t_phase
    ptq_records = []
    if cfg.ptq:
        t_phase = time.time()
        ptq_records = _run_ptq(cfg, built, held_batches, held_owner, rows, train_seqs, pad, device,
                               patterns=ptq_patterns, mirror=ptq_mirror)
        phase["ptq"] = time.time() - t_phase

    base = model.get_base_model()
    s = lora_scale(cfg.scale, cfg.lora_alpha if cfg.scale != "one" else cfg.rank, cfg.rank)
    counts = M.param_counts(base)
    identity = cfg.identity(res)
    rid = run_id(identity)
    step_res = cfg.resolved_step()
    rec = make_record(
        run_id=rid,
        arm=cfg.arm,
        model=cfg.model if cfg.model != "embedded" else f"embedded:{res['embedded_name']}",
        dataset=cfg.dataset,
        rank=cfg.rank,
        bits=cfg.bits,
        base_quant=built.base_quant,
        scale=cfg.scale,
        lora_alpha=float(cfg.lora_alpha if cfg.scale != "one" else cfg.rank),
        seed=cfg.seed,
        n_train=len(split.train),
        steps=cfg.steps,
        eval_loss=ev_loss,
        perplexity=M.perplexity(ev_loss),
        f1=f1,
        exact_match=em,
        grad_var=gv_total,
        eps_ba_fro2=eps_total,
        wall_s=time.time() - t0,
        train_loss=losses,
        train_loss_steps=loss_steps,
        grad_var_layers=gv_layers,
        grad_var_batches=cfg.grad_var_batches,
        grad_var_mode="train",
        grad_var_noise=gvn_total,
        grad_var_noise_layers=gvn_layers,
        x_norm2=x_norm2,
        range_B=range_B,
        range_A=range_A,
        eps_ba_layers=eps_layers,
        lora_scale=s,
        lora_scale_layers=M.layer_scales(built.layers),
        quant_ranges=M.quant_ranges(built.layers, cfg.resolved_block_size())
        if built.kind
        else None,
        target_modules=list(cfg.target_modules),
        rounding={
            "rtn": "nearest",
            "sr": "stochastic",
            "nf4": "nf4",
            "noise": "additive_uniform",
            None: None,
        }[built.kind],
        quant_step=step_res,
        rounding_bias=(
            None
            if built.kind != "sr"
            else "none: mid-tread grid, ±R representable, E[Q(x)] = x exactly"
            if step_res == "midtread"
            else "biased: paper grid clips the top cell (R − Δ, R] to R − Δ"
        ),
        double_quant=cfg.double_quant if built.base_quant in ("nf4", "fp4") else None,
        trainable_params=sum(p.numel() for p in params),
        # counts come from the PEFT model, which already holds the adapters: no second count
        total_params=counts["params"],
        quantized_params=counts["quantized"],
        model_bytes=counts["bytes"],
        peak_mem_bytes=M.peak_memory_bytes(device),
        peak_mem_method=peak_method,
        # resident before this run started (earlier runs of a sweep process leave caches): the
        # run's own increment is peak_mem_bytes − mem_at_start_bytes
        mem_at_start_bytes=mem_at_start,
        tokens_per_s=n_tok / train_s if train_s > 0 else None,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        seq_len=max_len,
        eval_tokens=n_eval_tok,
        eval_windows=W,
        eval_dialogues=len(set(held_owner)),
        eval_loss_ci=[lo, hi],
        eval_loss_base=base_loss,
        finetune_gain=gain,
        finetune_gain_ci=[g_lo, g_hi],
        phase_s=phase,
        eval_pairs_scored=len(split.pairs),
        # tokenizer-free: nats per whitespace word of the evaluated dialogues (comparable across models)
        eval_words=(
            n_words := sum(
                len(t.split()) for i in sorted(set(held_owner)) for t in split.heldout[i]
            )
        ),
        eval_nats_per_word=sum(rows[0]) / max(n_words, 1),
        eval_pair_dialogues=len(set(owners)),
        f1_ci=list(f1_ci),
        exact_match_ci=list(em_ci),
        embedded_model=res.get("embedded_name"),
        embedded_key=res.get("embedded_key"),
        pretrain_corpus=res.get("pretrain_corpus"),
        dataset_path=dataset_path,
        dataset_sha256=res["dataset_sha256"],
        model_path=res.get("model_path"),
        model_sha256=res.get("model_sha256"),
        dtype=res["dtype"],
        versions=_versions(),
        device=device if device == "cpu" else torch.cuda.get_device_name(),
        started_at=started,
        finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        config=identity,
    )
    for p in ptq_records:
        p["ptq_of"] = rid
        p["dataset_sha256"] = res["dataset_sha256"]  # the data of the trained run, as information
    return (rec, ptq_records) if return_ptq else rec


def ptq_record_id(cfg: FinetuneConfig, scheme: str, bits: int, draw: int, *,
                  parent: dict | None = None, layer_bits: dict | None = None) -> str:
    """The run_id of one PTQ record of ``cfg``: a hash of the parent run's identity, the cell
    (scheme, b, draw; a mixed-precision cell's per-layer bits) and what changes the
    measurement (ptq_eval_tokens, curvature_windows; for a uniform cell at one of
    ``ptq_hessian_bits``, the random-perturbation draws of its pred_hessian_moment)."""
    ident = {
        "ptq_of_config": parent if parent is not None else cfg.identity(),
        "scheme": scheme,
        "bits": bits,
        "draw": draw,
        "ptq_eval_tokens": cfg.ptq_eval_tokens,
        "curvature_windows": cfg.curvature_windows,
    }
    if layer_bits:
        ident["layer_bits"] = dict(sorted(layer_bits.items()))
    from real_runs.ptq import FIXED_BITS

    if bits in cfg.ptq_hessian_bits and scheme not in FIXED_BITS and not layer_bits:
        ident["hessian_moment_draws"] = HESSIAN_MOMENT_DRAWS
    return run_id(ident)


def ptq_record_ids(cfg: FinetuneConfig) -> set[str]:
    """Every PTQ record id a ``ptq = true`` run writes (empty without ptq)."""
    from real_runs.ptq import plan

    if not cfg.ptq:
        return set()
    parent = cfg.identity()
    return {ptq_record_id(cfg, s, b, d, parent=parent)
            for s, b, d in plan(cfg.ptq_schemes, cfg.ptq_bits, cfg.ptq_sr_draws)}


def _run_ptq(cfg, built, held_batches, held_owner, rows, train_seqs, pad, device, *,
             patterns=None, mirror=False) -> list[dict]:
    """PTQ of the trained full-precision adapter (real_runs.ptq), as quantbounds.ptq/1 records."""

    from quantbounds.calib.records import make_ptq_record
    from real_runs import ptq as P
    from real_runs.arms import load_base
    from real_runs.data import collate

    emb = cfg.embedded
    if cfg.model == "embedded" and cfg.embedded in ("pydoc", "tiny"):
        from real_runs.embedded import EmbeddedConfig

        emb = EmbeddedConfig() if cfg.embedded == "pydoc" else EmbeddedConfig.tiny()
    t0 = time.time()
    plain, _ = load_base(
        cfg.model,
        base_quant="none",
        device=device,
        embedded=emb,
        cache_dir=cfg.cache_dir,
        progress=False,
    )
    plain.eval()
    rng = random.Random(30_000 + cfg.seed)
    idx = sorted(rng.sample(range(len(train_seqs)), min(cfg.curvature_windows, len(train_seqs))))
    curv_batches = [
        collate([train_seqs[j] for j in idx[i : i + 16]], pad_id=pad)
        for i in range(0, len(idx), 16)
    ]
    curv = P.measure_curvature(built.model, built.layers, curv_batches, seed=cfg.seed,
                               keep_tokens=mirror)
    scales = {n: float(layer.scaling["default"]) for n, layer in built.layers.items()}
    # PTQ evaluates each quantized adapter on the leading held-out batches (whole dialogues, in
    # split order) until ≥ ptq_eval_tokens predicted tokens, with its own full-precision
    # reference on exactly those tokens (eval_loss_ref), so each ΔL stays a paired difference
    # (and on at least two dialogues, which its clustered intervals need)
    nb, n_pred, n_rows = 0, 0, 0
    while nb < len(held_batches) and (
        n_pred < cfg.ptq_eval_tokens or len(set(held_owner[:n_rows])) < 2
    ):
        n_pred += int((held_batches[nb]["labels"][:, 1:] != -100).sum())
        n_rows += held_batches[nb]["input_ids"].shape[0]
        nb += 1
    sub_rows = (rows[0][:n_rows], rows[1][:n_rows])
    out = P.run_ptq(
        plain_model=plain,
        layers=built.layers,
        scales=scales,
        curvature=curv,
        eval_batches=held_batches[:nb],
        eval_clusters=held_owner[:n_rows],
        ref_rows=sub_rows,
        schemes=cfg.ptq_schemes,
        bits=cfg.ptq_bits,
        sr_draws=cfg.ptq_sr_draws,
        seed=cfg.seed,
        n_groups=cfg.ptq_groups,
        progress=cfg.progress,
        patterns=patterns,
        mirror=mirror,
        # the probe's variant: the same curvature measured on the evaluation windows' inputs
        heldout_curvature=(P.measure_curvature(built.model, built.layers, held_batches[:nb],
                                               seed=cfg.seed) if mirror else None),
        # and the exact second-order term of the training loss on the curvature windows
        train_batches=curv_batches if (mirror or cfg.ptq_hessian_bits) else None,
        hessian_bits=() if mirror else cfg.ptq_hessian_bits,
        moment_draws=HESSIAN_MOMENT_DRAWS,
    )
    total_s = time.time() - t0
    recs = []
    parent = cfg.identity()
    for r in out:
        recs.append(
            make_ptq_record(
                run_id=ptq_record_id(cfg, r["ptq_scheme"], r["bits"], r["ptq_draw"],
                                     parent=parent, layer_bits=r.get("layer_bits")),
                arm=cfg.arm,
                rank=cfg.rank,
                seed=cfg.seed,
                scale=cfg.scale,
                lora_alpha=float(cfg.lora_alpha),
                curvature_tokens=sum(c["tokens"] for c in curv.values()) // max(len(curv), 1),
                curvature_source="training windows, labels sampled from the model (true Fisher, K-FAC)",
                ptq_total_s=total_s,
                # what the PTQ id hashes besides the parent's identity and the cell
                ptq_eval_tokens=cfg.ptq_eval_tokens,
                curvature_windows=cfg.curvature_windows,
                **r,
            )
        )
    return recs


def _take(gen, n):
    for _ in range(n):
        yield next(gen)
