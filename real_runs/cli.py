"""``quantbounds finetune`` and ``quantbounds sweep`` (entry points in pyproject.toml).

    quantbounds finetune --arm adapter_rtn --rank 16 --bits 3 --seed 0 --output runs.jsonl
    quantbounds sweep real_runs/configs/embedded.toml --out runs/embedded.jsonl
    quantbounds sweep CONFIG --out runs.jsonl --executor submitit --cluster slurm --partition gpu \
        --gpus-per-node 1 --timeout-min 120 --array-parallelism 16     # real_runs/submit.py

Bad input (unknown arm or model, bits outside 1…16, a missing or malformed dataset file or
config, an unknown config key) prints ``error: …`` naming it and returns 2. So does a shipped
embedded weight file that is missing or corrupt (``real_runs.embedded.EmbeddedWeightsError``):
one paragraph naming the file and how to restore it (reinstall, or the rebuild command).
Also runnable as ``python -m real_runs.cli {finetune,sweep} …``.
"""

from __future__ import annotations

import argparse
import json
import sys

from quantbounds.calib.records import ARMS
from quantbounds.cli.options import add_cluster_flags, cluster_flags
from quantbounds.conventions import SCALES
from real_runs.embedded import DEFAULT_EMBEDDED, EMBEDDED_MODELS


def _json_dict(s: str) -> dict:
    try:
        d = json.loads(s)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON: {err}") from err
    if not isinstance(d, dict):
        raise argparse.ArgumentTypeError('must be a JSON object {"module regex": int}')
    return d


def finetune_parser() -> argparse.ArgumentParser:
    from real_runs.finetune import FinetuneConfig as _FT  # its defaults (no torch imported)

    p = argparse.ArgumentParser(
        prog="quantbounds finetune",
        description="One LoRA fine-tune of one arm; prints/appends its run record.",
    )
    p.add_argument("--arm", default="fp16", help=f"one of {', '.join(ARMS)}")
    p.add_argument(
        "--model",
        default="embedded",
        help="'embedded' (offline default), a local path, or a hub name such as microsoft/DialoGPT-medium",
    )
    p.add_argument(
        "--embedded",
        default=DEFAULT_EMBEDDED,
        choices=(*EMBEDDED_MODELS, "default"),
        help=f"embedded model: chitchat-topic (dialogue-pretrained with the computer/AI topic "
        f"held out by content, shipped), chitchat (dialogue-pretrained with only the topic's "
        f"prompts held out, shipped), pydoc (the earlier Python-docs model), tiny (tests); "
        f"default {DEFAULT_EMBEDDED}",
    )
    p.add_argument(
        "--dataset",
        default="chitchat",
        help="'chitchat' (held-out prompts of chitchat-dataset; default), 'chitchat:<path>', "
        "'chatterbot', 'dailydialog', or a .json/.jsonl/.parquet dialogue file",
    )
    p.add_argument("--rank", type=int, default=8)
    p.add_argument(
        "--bits",
        type=int,
        default=None,
        help="adapter bits 1…16 (default: 16 for base-only arms, 4 for adapter arms)",
    )
    p.add_argument("--scale", default="alpha_r", choices=SCALES)
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--n-train", type=int, default=None, help="training dialogues N (default all)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--target-modules", default="c_attn,c_proj,c_fc", help="comma-separated")
    p.add_argument(
        "--rank-pattern", type=_json_dict, default={}, help='JSON, e.g. {"h.0.attn.c_attn": 32}'
    )
    p.add_argument("--bits-pattern", type=_json_dict, default={}, help='JSON, e.g. {"c_fc": 3}')
    p.add_argument(
        "--block-size",
        type=int,
        default=None,
        help="adapter quantizer block (default: per tensor; 64 for NF4)",
    )
    p.add_argument(
        "--step",
        default=None,
        choices=("paper", "midtread"),
        help="adapter quantizer grid (default: paper for RTN, midtread = unbiased for SR)",
    )
    p.add_argument("--double-quant", action="store_true", help="bnb 4-bit double quantization")
    p.add_argument(
        "--grad-var-batches",
        type=int,
        default=8,
        help="mini-batches for the gradient covariance (≥ 2)",
    )
    p.add_argument(
        "--noise-draws", type=int, default=8, help="draws on a fixed batch (SR/noise arms)"
    )
    p.add_argument(
        "--eval-pairs", type=int, default=500, help="held-out prompt→response pairs scored"
    )
    p.add_argument(
        "--ptq",
        action="store_true",
        help="(fp16 arm) also quantize the trained adapter after training at every --ptq-bits "
        "and scheme; PTQ records go to <output stem>.ptq.jsonl",
    )
    p.add_argument("--ptq-bits", default="2,3,4,5,6,7,8,16", help="comma-separated, each in 1…16")
    p.add_argument("--ptq-schemes", default=",".join(_FT.ptq_schemes),
                   help="comma-separated PTQ schemes")
    p.add_argument("--ptq-sr-draws", type=int, default=_FT.ptq_sr_draws,
                   help="stochastic-rounding draws per PTQ cell")
    p.add_argument("--ptq-eval-tokens", type=int, default=_FT.ptq_eval_tokens,
                   help="held-out tokens each PTQ cell is evaluated on")
    p.add_argument("--ptq-groups", type=int, default=_FT.ptq_groups,
                   help="dialogue groups of the PTQ cells' paired intervals")
    p.add_argument("--ptq-hessian-bits", default="",
                   help="comma-separated b (of --ptq-bits) whose uniform cells also get the "
                   "full-Hessian expected second-order term (random perturbations; default none)")
    p.add_argument("--eval-tokens", type=int, default=_FT.eval_tokens,
                   help="held-out tokens of the run's own evaluation")
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument(
        "--cache-dir",
        default=None,
        help="embedded-model cache (default $QUANTBOUNDS_CACHE or ~/.cache/quantbounds)",
    )
    p.add_argument("--output", "-o", default=None, help="append the record to this JSONL file")
    p.add_argument("--no-progress", action="store_true")
    return p


def int_tuple(s: str) -> tuple[int, ...]:
    """An argparse ``type`` for comma-separated integers ("0,1,2" → (0, 1, 2)); a bad value
    makes argparse exit 2 naming the flag ("argument --seeds: invalid int_tuple value")."""
    out = tuple(int(x) for x in s.split(",") if x.strip())
    if not out:
        raise ValueError(f"no integers in {s!r}")
    return out


def _int_list(s: str, name: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in s.split(",") if x.strip())
    except ValueError as err:
        raise ValueError(f"--{name} must be comma-separated integers in 1…16, got {s!r}") from err


def _default_bits(arm: str) -> int:
    return 4 if arm.startswith("adapter") or arm.endswith("adapter_rtn") else 16


def weights_error_message(err: Exception) -> str:
    """One paragraph for a missing / corrupt shipped weight file: the file, why, and the fix.

    The error names the file (and, when corrupt, both hashes); the fix (reinstall the package,
    or the default model's :func:`real_runs.embedded.rebuild_command`) is added where the error
    does not already give it.
    """
    from real_runs.embedded import rebuild_command

    msg = str(err).rstrip(". ")
    if "rebuild with: " not in msg:
        msg += f"; reinstall the package or rebuild with: {rebuild_command()}"
    return (
        f"error: {msg}. The shipped embedded model is checked against its SHA256SUMS manifest "
        f"on every load and is never rebuilt implicitly; until it is restored, pick another "
        f"model with --embedded pydoc or --model PATH."
    )


def finetune_main(argv: list[str] | None = None) -> int:
    args = finetune_parser().parse_args(argv)
    from quantbounds.calib.records import append_record
    from real_runs.data import DataError
    from real_runs.embedded import EmbeddedWeightsError
    from real_runs.finetune import FinetuneConfig, run_finetune

    try:
        cfg = FinetuneConfig(
            arm=args.arm,
            model=args.model,
            embedded=args.embedded,
            dataset=args.dataset,
            rank=args.rank,
            bits=args.bits if args.bits is not None else _default_bits(args.arm),
            scale=args.scale,
            lora_alpha=args.lora_alpha,
            seed=args.seed,
            steps=args.steps,
            n_train=args.n_train,
            batch_size=args.batch_size,
            seq_len=args.seq_len,
            lr=args.lr,
            target_modules=tuple(t.strip() for t in args.target_modules.split(",") if t.strip()),
            rank_pattern=args.rank_pattern,
            bits_pattern=args.bits_pattern,
            block_size=args.block_size,
            step=args.step,
            double_quant=args.double_quant,
            grad_var_batches=args.grad_var_batches,
            noise_draws=args.noise_draws,
            eval_pairs=args.eval_pairs,
            max_new_tokens=args.max_new_tokens,
            device=args.device,
            threads=args.threads,
            cache_dir=args.cache_dir,
            progress=not args.no_progress,
            ptq=args.ptq,
            ptq_bits=_int_list(args.ptq_bits, "ptq-bits"),
            ptq_schemes=tuple(t.strip() for t in args.ptq_schemes.split(",") if t.strip()),
            ptq_sr_draws=args.ptq_sr_draws,
            ptq_eval_tokens=args.ptq_eval_tokens,
            ptq_groups=args.ptq_groups,
            ptq_hessian_bits=_int_list(args.ptq_hessian_bits, "ptq-hessian-bits"),
            eval_tokens=args.eval_tokens,
        )
        rec, ptq_recs = run_finetune(cfg, return_ptq=True)
    except EmbeddedWeightsError as err:
        print(weights_error_message(err), file=sys.stderr)
        return 2
    except (ValueError, TypeError, FileNotFoundError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.output:
        from quantbounds.calib.records import append_lines
        from real_runs.sweep import ptq_path

        append_lines(ptq_path(args.output), ptq_recs)
        append_record(args.output, rec)
    elif ptq_recs:
        for p in ptq_recs:
            print(
                json.dumps(
                    {
                        k: p[k]
                        for k in (
                            "ptq_scheme",
                            "bits",
                            "ptq_draw",
                            "delta_loss",
                            "pred_plugin",
                            "pred_moment",
                        )
                    }
                )
            )
    keys = (
        "arm",
        "rank",
        "bits",
        "seed",
        "n_train",
        "steps",
        "eval_loss",
        "perplexity",
        "f1",
        "exact_match",
        "grad_var",
        "grad_var_noise",
        "eps_ba_fro2",
        "wall_s",
        "tokens_per_s",
    )
    print(json.dumps({k: rec.get(k) for k in keys}))
    return 0


def sweep_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="quantbounds sweep",
        description="Run a TOML grid of fine-tunes; resumable (skips finished run_ids).",
    )
    p.add_argument("config", help="sweep TOML, e.g. real_runs/configs/embedded.toml")
    p.add_argument("--out", required=True, help="records JSONL (appended; the resume state)")
    p.add_argument("--limit", type=int, default=None, help="run at most this many new runs")
    p.add_argument("--keep-going", action="store_true", help="log failing runs and continue")
    p.add_argument("--dry-run", action="store_true", help="list pending runs and exit")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"))
    p.add_argument("--no-progress", action="store_true")
    add_cluster_flags(p)  # --executor {local,submitit}, --cluster {slurm,local}, SLURM options
    return p


def sweep_main(argv: list[str] | None = None) -> int:
    args = sweep_parser().parse_args(argv)
    from real_runs.data import DataError
    from real_runs.embedded import EmbeddedWeightsError
    from real_runs.sweep import expand, load_config, pending, run_sweep

    overrides = {}
    if args.cache_dir:
        overrides["cache_dir"] = args.cache_dir
    if args.device:
        overrides["device"] = args.device
    if args.no_progress:
        overrides["progress"] = False
    try:
        if args.dry_run:
            runs = expand(load_config(args.config), where=args.config, overrides=overrides)
            todo, errors = pending(runs, args.out)
            for line, why in errors:
                print(f"warning: {args.out}:{line}: corrupt record ({why})", file=sys.stderr)
            print(f"{len(runs)} runs, {len(runs) - len(todo)} done, {len(todo)} pending")
            for r in todo:
                print(
                    f"  {r.run_id}  {r.arm:22s} rank={r.rank:<3d} bits={r.bits:<2d} seed={r.seed} "
                    f"n_train={r.n_train}"
                )
            return 0
        counts = run_sweep(
            args.config,
            args.out,
            limit=args.limit,
            keep_going=args.keep_going,
            overrides=overrides,
            progress=not args.no_progress,
            log=lambda m: print(m, file=sys.stderr),
            executor=args.executor,
            cluster_flags=cluster_flags(args),
            results_dir=args.results_dir,
            poll_s=args.poll_s,
        )
    except EmbeddedWeightsError as err:  # before RuntimeError, its base class
        print(weights_error_message(err), file=sys.stderr)
        return 2
    except (ValueError, TypeError, FileNotFoundError, DataError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(counts))
    return 1 if counts["failed"] else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("finetune", "sweep"):
        print("usage: python -m real_runs.cli {finetune,sweep} ...", file=sys.stderr)
        return 2
    return (finetune_main if argv[0] == "finetune" else sweep_main)(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
