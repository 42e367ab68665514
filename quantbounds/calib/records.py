"""The run-record schema: the only thing that passes from `real_runs` to calibration.

One JSON object per line (JSONL), one line per *finished* run. Torch-free on purpose:
calibration reads records without importing torch.

Schema ``quantbounds.run/1`` — required fields (type):

    schema        str    "quantbounds.run/1"
    run_id        str    stable hash of the run's configuration (resume key)
    arm           str    one of ARMS (how quantization enters the fine-tune)
    model         str    hub name, local path, or "embedded"
    dataset       str    "chatterbot" | "dailydialog" | a file path
    rank          int    LoRA rank r ≥ 1
    bits          int    adapter bit-width b in 1…16 (16 = adapters not quantized)
    base_quant    str    "none" | "int8" | "nf4" | "fp4" (how W0 is stored)
    scale         str    LoRA scale convention, one of SCALES: "alpha_r" (s = α/r, PEFT default),
                         "rslora" (s = α/√r), "one" (s = 1, the seed paper's)
    lora_alpha    float  α
    seed          int
    n_train       int    number of training examples N
    steps         int    optimizer steps taken
    eval_loss     float  mean token cross-entropy on the held-out split (nats)
    perplexity    float  exp(eval_loss)
    f1            float  token F1 of greedy responses on held-out prompt→response pairs (0…1)
    exact_match   float  exact-match rate of those responses (0…1)
    grad_var      float  trace of the covariance of the LoRA-parameter gradient across
                         mini-batches at fixed parameters (sum over layers)
    eps_ba_fro2   float  Σ_layers ‖Q(B)Q(A) − BA‖_F² of the final adapters (0 for unquantized)
    wall_s        float  wall time of the run in seconds

Optional fields (None when not measured): see OPTIONAL. Unknown extra keys are kept.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantbounds.conventions import SCALES, lora_scale  # noqa: F401 (re-exported)

SCHEMA = "quantbounds.run/1"

ARMS = (
    "fp16",  # base 16-bit (fp32 on CPU, bf16 on GPU), adapters full precision
    "base_int8",  # W0 as bitsandbytes Linear8bitLt
    "base_nf4",  # W0 as bitsandbytes 4-bit NF4
    "base_fp4",  # W0 as bitsandbytes 4-bit FP4
    "adapter_rtn",  # B, A fake-quantized at `bits`, round-to-nearest, straight-through
    "adapter_sr",  # B, A fake-quantized at `bits`, stochastic rounding, straight-through
    "adapter_nf4",  # B, A fake-quantized with the NF4 code, straight-through
    "adapter_noise",  # the paper's additive uniform noise injected into B, A
    "base_nf4_adapter_rtn",  # W0 NF4 and B, A fake-quantized (RTN)
)
BASE_QUANTS = ("none", "int8", "nf4", "fp4")

REQUIRED: dict[str, type | tuple] = {
    "schema": str,
    "run_id": str,
    "arm": str,
    "model": str,
    "dataset": str,
    "rank": int,
    "bits": int,
    "base_quant": str,
    "scale": str,
    "lora_alpha": (int, float),
    "seed": int,
    "n_train": int,
    "steps": int,
    "eval_loss": (int, float),
    "perplexity": (int, float),
    "f1": (int, float),
    "exact_match": (int, float),
    "grad_var": (int, float),
    "eps_ba_fro2": (int, float),
    "wall_s": (int, float),
}
OPTIONAL = (
    "train_loss",  # list[float]: loss per logged step
    "train_loss_steps",  # list[int]: the steps of train_loss
    "grad_var_layers",  # dict[str, float]: per adapted layer, across mini-batches
    "grad_var_noise",  # float: trace of covariance across noise draws on a fixed batch
    # (SR/noise arms)
    "grad_var_noise_layers",  # dict[str, float]
    "grad_var_batches",  # int: mini-batches used for grad_var
    "x_norm2",  # dict[str, float]: mean ‖x‖² of each adapted layer's input
    "range_B",
    "range_A",  # dict[str, float]: absmax range R of B and A per adapted layer
    "eps_ba_layers",  # dict[str, float]: ‖ε_BA‖_F² per layer
    "lora_scale",  # float: the numeric s
    "target_modules",  # list[str]
    "rounding",
    "double_quant",
    "trainable_params",
    "total_params",  # int: logical parameters, each once (4-bit weights at their unpacked size)
    "quantized_params",  # int: of those, the weights stored in 4 or 8 bits (bitsandbytes)
    "model_bytes",  # int: stored bytes incl. bitsandbytes' absmax / quant state / SCB
    "peak_mem_bytes",
    "tokens_per_s",
    "lr",
    "batch_size",
    "seq_len",
    "versions",  # dict[str, str]
    "device",
    "started_at",
    "finished_at",
    # what exactly ran (issue 14)
    "embedded_model",  # str: "chitchat" | "pydoc" | "tiny" (None for other models)
    "embedded_key",  # str: the embedded model's cache key (hash of its weights / build)
    "pretrain_corpus",  # str: the embedded model's pretraining corpus
    "dataset_path",  # str: what ``dataset`` resolved to on the machine that ran (not in the id)
    "dataset_sha256",  # str: SHA-256 of the dataset's bytes (the id holds this, not the path)
    "previous_run_id",  # str: the id before real_runs.migrate_run_ids rewrote it
    "dtype",  # str: compute dtype of the 16-bit base ("float32" CPU, "bfloat16" GPU)
    "grad_var_mode",  # str: "train" (dropout as in training) or "eval"
    "lora_scale_layers",  # dict[str, float]: the LoRA scale PEFT applies in each layer
    "quant_ranges",  # dict[str, dict]: adapter quantizer ranges per layer (per block: a summary)
    "quant_step",  # str: "paper" | "midtread" grid of the adapter quantizer
    "rounding_bias",  # str: whether the rounding is unbiased, or how it is biased
    "peak_mem_method",  # str: how peak_mem_bytes was measured
    "mem_at_start_bytes",  # int: resident (CPU) / allocated (CUDA) when the run started
    "eval_tokens",
    "eval_windows",
    "eval_dialogues",  # int: the held-out evaluation's size
    "eval_loss_ci",  # [lo, hi]: 95 % interval of eval_loss, clustered by dialogue
    "eval_words",
    "eval_nats_per_word",  # whitespace words of the evaluated dialogues; Σ CE / words
    "eval_pairs_scored",  # int: prompt→response pairs scored for f1 / exact_match
    "eval_pair_dialogues",  # int: distinct held-out dialogues those pairs come from
    "f1_ci",
    "exact_match_ci",  # [lo, hi]: 95 % intervals, clustered by dialogue
    "config",  # dict: the canonical identity the run_id hashes
)


def _canonical(v):
    """JSON-canonical form for hashing: integral floats as ints (16.0 ≡ 16), tuples as lists,
    dict keys sorted (by json.dumps)."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, float):
        return int(v) if v.is_integer() else v
    if isinstance(v, int):
        return v
    if isinstance(v, dict):
        return {str(k): _canonical(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_canonical(x) for x in v]
    return str(v)


def run_id(config: dict) -> str:
    """Stable id of a run configuration: sha1 of its canonical sorted-key JSON, 16 hex digits.

    Canonical: 16 and 16.0 hash alike, tuples as lists. (Which fields enter — resolved N,
    device, dtype, model key, fields an arm ignores — is decided by the caller's identity.)
    """
    blob = json.dumps(_canonical(config), sort_keys=True).encode()
    return hashlib.sha1(blob).hexdigest()[:16]


class RecordError(ValueError):
    """A run record that does not satisfy the schema."""


def validate_record(rec: dict) -> dict:
    """Check one record against the schema; return it unchanged or raise RecordError."""
    if not isinstance(rec, dict):
        raise RecordError(f"record must be a JSON object, got {type(rec).__name__}")
    if rec.get("schema") != SCHEMA:
        raise RecordError(f"schema must be {SCHEMA!r}, got {rec.get('schema')!r}")
    missing = [k for k in REQUIRED if k not in rec]
    if missing:
        raise RecordError(f"missing required fields: {missing}")
    for k, t in REQUIRED.items():
        v = rec[k]
        if isinstance(v, bool) or not isinstance(v, t):
            raise RecordError(f"field {k!r} must be {t}, got {v!r}")
    if rec["arm"] not in ARMS:
        raise RecordError(f"arm must be one of {ARMS}, got {rec['arm']!r}")
    if rec["scale"] not in SCALES:
        raise RecordError(f"scale must be one of {SCALES}, got {rec['scale']!r}")
    if rec["base_quant"] not in BASE_QUANTS:
        raise RecordError(f"base_quant must be one of {BASE_QUANTS}, got {rec['base_quant']!r}")
    if not 1 <= rec["bits"] <= 16:
        raise RecordError(f"bits must be in 1…16, got {rec['bits']}")
    if rec["rank"] < 1:
        raise RecordError(f"rank must be ≥ 1, got {rec['rank']}")
    if rec["n_train"] < 1:
        raise RecordError(f"n_train must be ≥ 1, got {rec['n_train']}")
    return rec


@dataclass
class ReadResult:
    """Records that passed the schema, and (line number, reason) for each that did not."""

    records: list[dict] = field(default_factory=list)
    errors: list[tuple[int, str]] = field(default_factory=list)


def read_records(path: str | os.PathLike, *, strict: bool = False) -> ReadResult:
    """Read a JSONL records file, keeping every good line.

    A corrupt line (bad JSON, a torn last line after ``kill -9``, a schema violation) is
    reported in ``errors`` with its 1-based line number and skipped; with ``strict=True`` the
    first one raises RecordError naming the file and line. A missing file raises
    FileNotFoundError naming it.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"records file not found: {path}")
    out = ReadResult()
    with path.open("r", encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                validate_record(rec)
            except (json.JSONDecodeError, RecordError) as err:
                msg = f"{path}:{i}: {err}"
                if strict:
                    raise RecordError(msg) from err
                out.errors.append((i, str(err)))
                continue
            out.records.append(rec)
    return out


def append_record(path: str | os.PathLike, rec: dict) -> None:
    """Append one validated record as one line, durably.

    The line is written with a single ``write`` on an O_APPEND descriptor and fsynced, so a
    crash leaves at most one torn final line, which :func:`read_records` skips (and a resumed
    sweep re-runs). If the file does not end in a newline (a torn line), one is written first
    so the new record starts on its own line.
    """
    append_lines(path, [validate_record(rec)])


def completed_ids(path: str | os.PathLike) -> set[str]:
    """run_ids of the good records in ``path`` (empty if the file does not exist)."""
    if not Path(path).exists():
        return set()
    return {r["run_id"] for r in read_records(path).records}


def make_record(**fields: Any) -> dict:
    """Build a record dict with ``schema`` filled in, validated."""
    rec = {"schema": SCHEMA, **fields}
    return validate_record(rec)


# --- post-training quantization records (quantbounds.ptq/1) -----------------------------------
# One line per (trained full-precision adapter, scheme, bits, draw), written next to the run
# records (``<out>.ptq.jsonl``): the trained run is the fp16 record ``ptq_of``; the loss is on
# exactly that record's held-out tokens, so delta_loss is a paired difference.

PTQ_SCHEMA = "quantbounds.ptq/1"
PTQ_SCHEMES = ("rtn_tensor", "rtn_channel", "rtn_block", "sr_tensor", "nf4", "fp4", "int8")
PTQ_REQUIRED: dict[str, type | tuple] = {
    "schema": str,
    "run_id": str,
    "arm": str,
    "rank": int,
    "seed": int,
    "bits": int,
    "ptq_scheme": str,
    "ptq_draw": int,
    "eval_loss": (int, float),
    "eval_loss_ref": (int, float),
    "delta_loss": (int, float),
    "delta_loss_ci": list,
    "pred_plugin": (int, float),
    "eps_ba_fro2": (int, float),
    "eps_ba_x2": (int, float),
    "layers": dict,
    "eval_tokens": int,
}
# optional: ptq_of (the fp16 run_id), pred_moment (None for non-uniform codes), eval_loss_unmerged,
# perplexity, scale, lora_alpha, curvature_tokens, curvature_source, wall_s, ptq_total_s,
# dataset_sha256, ptq_eval_tokens, curvature_windows (what the id hashes), previous_run_id;
# paired eval groups (real_runs.ptq.run_ptq): eval_groups K, group_windows (K window counts),
# delta_loss_groups and first_order_groups (K values adding up to delta_loss and
# pred_first_order), resid_first_order = ΔL − first order and its paired resid_first_order_ci


def validate_ptq_record(rec: dict) -> dict:
    """Check one PTQ record; return it or raise RecordError."""
    if not isinstance(rec, dict) or rec.get("schema") != PTQ_SCHEMA:
        raise RecordError(
            f"schema must be {PTQ_SCHEMA!r}, "
            f"got {rec.get('schema') if isinstance(rec, dict) else rec!r}"
        )
    missing = [k for k in PTQ_REQUIRED if k not in rec]
    if missing:
        raise RecordError(f"missing required fields: {missing}")
    for k, t in PTQ_REQUIRED.items():
        v = rec[k]
        if isinstance(v, bool) or not isinstance(v, t):
            raise RecordError(f"field {k!r} must be {t}, got {v!r}")
    if rec["ptq_scheme"] not in PTQ_SCHEMES:
        raise RecordError(f"ptq_scheme must be one of {PTQ_SCHEMES}, got {rec['ptq_scheme']!r}")
    if not 1 <= rec["bits"] <= 16:
        raise RecordError(f"bits must be in 1…16, got {rec['bits']}")
    for k in ("eval_loss", "eval_loss_ref", "delta_loss", "pred_plugin"):
        if not math.isfinite(rec[k]):
            raise RecordError(f"field {k!r} must be finite, got {rec[k]!r}")
    return rec


def make_ptq_record(**fields: Any) -> dict:
    return validate_ptq_record({"schema": PTQ_SCHEMA, **fields})


def read_ptq_records(path: str | os.PathLike) -> ReadResult:
    """Good PTQ records of a JSONL file and (line, reason) of the bad ones (torn lines skipped)."""
    path = Path(path)
    out = ReadResult()
    if not path.exists():
        return out
    with path.open("r", encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                out.records.append(validate_ptq_record(json.loads(line)))
            except (json.JSONDecodeError, RecordError) as err:
                out.errors.append((i, str(err)))
    return out


def append_lines(path: str | os.PathLike, recs: list[dict]) -> None:
    """Append already-validated records as lines with ONE write + fsync (the durability of
    :func:`append_record`, which is this with one validated record)."""
    if not recs:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = "".join(json.dumps(r, sort_keys=True, allow_nan=False) + "\n" for r in recs)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size:
            with path.open("rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    blob = "\n" + blob
        os.write(fd, blob.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
