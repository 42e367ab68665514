"""Step time of the fake-quantized-adapter arms against plain PEFT LoRA (issue 4, part 6).

Same model (the embedded GPT-2 unless --tiny), same mini-batch, same run: one optimizer step
(forward, backward, AdamW) of each arm is timed in interleaved rounds, so a slow moment of a
shared machine hits every arm alike; each arm's median step time over rounds is kept and the
ratio arm / fp16 (plain PEFT LoRA, the reference) reported, in wall time and in process CPU
time (one torch thread, so CPU time is the step's cost and is far less disturbed by other
processes), median round and best (least disturbed) round. Target: adapter_rtn ≤ 1.15×,
judged on the best-round CPU time.

Where CUDA is available, also a DialoGPT-medium-shaped GPT-2 (24 layers, d = 1024, random
weights: the shape, not the weights, sets the cost) in bf16: step time and peak memory of
each arm.

``--dialogpt-cpu``: every arm, and PTQ, through ``run_finetune`` on a model with
DialoGPT-medium's exact configuration (24 layers, d = 1024, 16 heads, vocab 50,257) and random
weights, two steps each on CPU (issue 14, item 6) → benchmarks/results/bridge_dialogpt_cpu.json.

``--finetune``: one default embedded fine-tune (real_runs/configs/embedded.toml's defaults,
r = 8, seed 0) with the PTQ arm, timed phase by phase in the same run (issue 14, speed and
memory), once per torch thread count (``--threads``, default 1,2): targets — the fine-tune
(everything but PTQ) ≤ 120 s on 2 cores, PTQ of all b and schemes ≤ 2× the fine-tune, judged
at the thread count whose fine-tune was fastest; peak memory reported →
benchmarks/results/bridge_finetune.json.

Written atomically to benchmarks/results/bridge.json. Usage:
    python benchmarks/bench_bridge.py [--tiny] [--rounds N] [--out PATH]
    python benchmarks/bench_bridge.py --dialogpt-cpu
    python benchmarks/bench_bridge.py --finetune [--threads 1,2]
Timings on a shared machine are noisy: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn.utils import parametrize

from quantbounds.verdicts.results import write_json_atomic
from real_runs.cli import int_tuple

ARMS_TIMED = ("fp16", "adapter_rtn", "adapter_sr", "adapter_noise", "adapter_nf4")
BITS = {"fp16": 16, "adapter_rtn": 4, "adapter_sr": 4, "adapter_noise": 4, "adapter_nf4": 4}


def _step_fn(built, batch):
    params = [p for p in built.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)

    def step():
        with parametrize.cached():  # as real_runs.finetune: Q computed once per step
            loss = built.model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if batch["input_ids"].is_cuda:
            torch.cuda.synchronize()

    return step


def _time_arms(builder, arms, batch, *, rounds: int, steps_per_round: int, progress=None):
    fns = {a: _step_fn(builder(a), batch) for a in arms}
    for f in fns.values():  # warm-up (allocations, first-call overheads)
        f()
        f()
    times = {a: [] for a in arms}
    cpu = {a: [] for a in arms}
    for r in range(rounds):
        order = arms if r % 2 == 0 else tuple(reversed(arms))  # interleave, alternate order
        for a in order:
            t, c = time.perf_counter(), time.process_time()
            for _ in range(steps_per_round):
                fns[a]()
            times[a].append((time.perf_counter() - t) / steps_per_round)
            cpu[a].append((time.process_time() - c) / steps_per_round)
        if progress is not None:
            progress(r + 1, rounds)
    return times, cpu


def cpu_benchmark(*, tiny: bool, rounds: int, steps_per_round: int, rank: int) -> dict:
    from real_runs.arms import build_arm
    from real_runs.embedded import DEFAULT_EMBEDDED, EmbeddedConfig

    torch.set_num_threads(1)
    emb = EmbeddedConfig.tiny() if tiny else DEFAULT_EMBEDDED
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 500, (8, 64), generator=g)
    batch = {"input_ids": x, "labels": x}

    def builder(arm):
        return build_arm(arm=arm, rank=rank, bits=BITS[arm], embedded=emb, seed=0, progress=True)

    from rich.progress import Progress

    with Progress() as prog:
        task = prog.add_task("timing arms (CPU)", total=rounds)
        times, cpu = _time_arms(
            builder,
            ARMS_TIMED,
            batch,
            rounds=rounds,
            steps_per_round=steps_per_round,
            progress=lambda i, n: prog.update(task, completed=i),
        )
    med = {a: statistics.median(v) for a, v in times.items()}
    medc = {a: statistics.median(v) for a, v in cpu.items()}
    best = {a: min(v) for a, v in cpu.items()}
    ratio_cpu = {a: medc[a] / medc["fp16"] for a in medc}
    ratio_best = {a: best[a] / best["fp16"] for a in best}
    return {
        "model": "embedded:tiny" if tiny else "embedded:chitchat",
        "batch": list(x.shape),
        "rank": rank,
        "threads": 1,
        "median_step_s": med,
        "ratio_vs_fp16": {a: med[a] / med["fp16"] for a in med},
        # one torch thread: the process' CPU time is its step cost, far less disturbed by
        # other processes on a shared machine than wall time; the target is judged on it
        "median_step_cpu_s": medc,
        "ratio_cpu_vs_fp16": ratio_cpu,
        # the least disturbed round of each arm (as bench_montecarlo keeps the best round)
        "best_step_cpu_s": best,
        "ratio_best_cpu_vs_fp16": ratio_best,
        "rounds_s": times,
        "rounds_cpu_s": cpu,
        "target_adapter_rtn_ratio": 1.15,
        "meets_target": ratio_best["adapter_rtn"] <= 1.15,
    }


def gpu_benchmark(*, rounds: int, rank: int) -> dict:
    """DialoGPT-medium-shaped GPT-2 on CUDA, bf16 base: step time and peak memory per arm."""
    import tempfile

    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast  # noqa: F401

    from real_runs.arms import build_arm
    from real_runs.embedded import train_tokenizer

    tmp = Path(tempfile.mkdtemp(prefix="qb-dgpt-shape-"))
    cfg = GPT2Config(n_layer=24, n_embd=1024, n_head=16, n_positions=1024, vocab_size=50257)
    GPT2LMHeadModel(cfg).save_pretrained(tmp)
    train_tokenizer(["placeholder text"] * 4, vocab_size=300).save_pretrained(tmp)
    x = torch.randint(1, 50000, (8, 128), device="cuda")
    batch = {"input_ids": x, "labels": x}
    out = {}
    for arm in (
        "fp16",
        "base_int8",
        "base_nf4",
        "adapter_rtn",
        "adapter_sr",
        "adapter_noise",
        "adapter_nf4",
        "base_nf4_adapter_rtn",
    ):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        b = build_arm(
            arm=arm,
            model=str(tmp),
            rank=rank,
            bits=4 if arm != "fp16" and "adapter" in arm else 16,
            device="cuda",
            progress=False,
        )
        t, _ = _time_arms(lambda a, b=b: b, (arm,), batch, rounds=rounds, steps_per_round=3)
        out[arm] = {
            "median_step_s": statistics.median(t[arm]),
            "peak_mem_bytes": int(torch.cuda.max_memory_allocated()),
        }
        del b
    ref = out["fp16"]["median_step_s"]
    for a in out:
        out[a]["ratio_vs_fp16"] = out[a]["median_step_s"] / ref
    return {
        "model": "DialoGPT-medium-shaped (random weights)",
        "device": torch.cuda.get_device_name(),
        "batch": [8, 128],
        "rank": rank,
        "arms": out,
    }


DIALOGPT_MEDIUM = dict(
    n_layer=24,
    n_embd=1024,
    n_head=16,
    n_positions=1024,
    n_ctx=1024,
    vocab_size=50257,
    activation_function="gelu_new",
    resid_pdrop=0.1,
    embd_pdrop=0.1,
    attn_pdrop=0.1,
    layer_norm_epsilon=1e-5,
    bos_token_id=50256,
    eos_token_id=50256,
)  # microsoft/DialoGPT-medium config.json


def dialogpt_cpu(*, n_layer: int = 24, steps: int = 2, out_dir: str | None = None) -> dict:
    """Every arm (and PTQ of the fp16 adapter) through ``run_finetune`` on a model with
    DialoGPT-medium's exact configuration and random weights, a few steps on CPU.

    The shape, not the weights, is what the code paths depend on (Conv1D orientation, bnb
    quantization of 1024×3072 / 1024×4096 weights, 50,257-way logits, PEFT targets), so this
    runs the code a user with the real weights runs. The tokenizer is a tiny local BPE (its ids
    are < 50,257). PTQ is restricted to the attention modules to bound the K-FAC memory on CPU
    (G for c_fc is 4096² float64).
    """
    import shutil
    import tempfile

    from transformers import GPT2Config, GPT2LMHeadModel

    from real_runs.chitchat import finetune_dialogues
    from real_runs.embedded import train_tokenizer
    from real_runs.finetune import FinetuneConfig, run_finetune
    from quantbounds.calib.records import ARMS

    torch.set_num_threads(1)
    tmp = Path(out_dir or tempfile.mkdtemp(prefix="qb-dialogpt-medium-"))
    torch.manual_seed(0)
    cfg = GPT2Config(**{**DIALOGPT_MEDIUM, "n_layer": n_layer})
    GPT2LMHeadModel(cfg).half().save_pretrained(tmp)
    texts = [t for d in finetune_dialogues()[:200] for t in d]
    train_tokenizer(texts, vocab_size=2048).save_pretrained(tmp)
    common = dict(
        model=str(tmp),
        dataset="chitchat",
        steps=steps,
        batch_size=2,
        seq_len=32,
        n_train=8,
        grad_var_batches=2,
        noise_draws=2,
        eval_pairs=2,
        max_new_tokens=2,
        eval_tokens=64,
        device="cpu",
        progress=False,
        rank=8,
        lora_alpha=32.0,
    )
    bits = {
        "adapter_rtn": 4,
        "adapter_sr": 4,
        "adapter_noise": 4,
        "adapter_nf4": 4,
        "base_nf4_adapter_rtn": 4,
    }
    out = {}
    try:
        for arm in ARMS:
            t0 = time.time()
            kw = dict(common, arm=arm, bits=bits.get(arm, 16))
            if arm == "fp16":
                kw.update(
                    ptq=True,
                    ptq_bits=(2, 8),
                    ptq_sr_draws=1,
                    curvature_windows=2,
                    target_modules=("c_attn", "attn.c_proj"),
                )
            rec, ptq = run_finetune(FinetuneConfig(**kw), return_ptq=True)
            out[arm] = {
                "wall_s": time.time() - t0,
                "eval_loss": rec["eval_loss"],
                "total_params": rec["total_params"],
                "model_bytes": rec["model_bytes"],
                "peak_mem_bytes": rec["peak_mem_bytes"],
                "eps_ba_fro2": rec["eps_ba_fro2"],
                "n_lora_layers": len(rec["eps_ba_layers"]),
                "ptq_records": len(ptq),
            }
            print(
                f"  {arm:22s} {out[arm]['wall_s']:7.1f} s  eval_loss {rec['eval_loss']:.3f}  "
                f"params {rec['total_params']:,}  bytes {rec['model_bytes']:,}  "
                f"PTQ records {len(ptq)}",
                flush=True,
            )
    finally:
        if out_dir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    return {
        "model": f"DialoGPT-medium configuration, random weights, {n_layer} layers",
        "config": {**DIALOGPT_MEDIUM, "n_layer": n_layer},
        "steps": steps,
        "arms": out,
    }


def _machine() -> dict:
    """The CPU the timings came from (the ISA changes them: AVX-512 vs AVX2)."""
    import os

    from real_runs.bnb_reference import cpu_isa

    return {"cpu_isa": cpu_isa(), "cpu_count": os.cpu_count(), "platform": platform.platform()}


def finetune_benchmark(*, overrides: dict | None = None) -> dict:
    """One default embedded fine-tune with PTQ as embedded.toml's b-curve blocks run it (their
    ptq_* settings), phase by phase (real_runs.finetune's
    ``phase_s``): the fine-tune's wall time (every phase but PTQ) against 120 s, PTQ ÷
    fine-tune against 2×, and the run's peak memory (VmHWM after reset)."""
    from real_runs.finetune import run_finetune
    from real_runs.sweep import ptq_run_defaults

    root = Path(__file__).resolve().parents[1]
    cfg = {**ptq_run_defaults(root / "real_runs/configs/embedded.toml"), "arm": "fp16",
           "bits": 16, "rank": 8, "seed": 0, "ptq": True, **(overrides or {})}
    t0 = time.time()
    rec, ptq = run_finetune(cfg, return_ptq=True)
    wall = time.time() - t0
    phase = rec["phase_s"]
    ft = sum(v for k, v in phase.items() if k != "ptq")
    return {
        "config": cfg,
        "phase_s": phase,
        "finetune_s": ft,
        "ptq_s": phase.get("ptq"),
        "ptq_evaluations": len(ptq),
        "ptq_over_finetune": phase["ptq"] / ft if phase.get("ptq") else None,
        "targets": {"finetune_s_max": 120.0, "ptq_over_finetune_max": 2.0},
        "meets": {
            "finetune_s": ft <= 120.0,
            "ptq_over_finetune": bool(phase.get("ptq") and phase["ptq"] / ft <= 2.0),
        },
        "wall_s": wall,
        "peak_mem_bytes": rec["peak_mem_bytes"],
        "peak_mem_method": rec["peak_mem_method"],
        "tokens_per_s": rec["tokens_per_s"],
        "torch_threads": torch.get_num_threads(),
        "machine": _machine(),
        "note": "a shared 2-core machine: other processes slow every phase alike; the "
        "ratio is the comparison, the absolute seconds are this run's",
    }


def finetune_by_threads(threads, *, overrides: dict | None = None) -> dict:
    """:func:`finetune_benchmark` once per torch thread count, the targets judged at the count
    whose fine-tune was fastest: the setting a user of this machine should run (one machine
    of this kind trained ~20× slower with 2 threads than with 1, another 1.4–1.8× faster, so
    the count is measured, not assumed). Each row keeps its own ratio and ``meets``; the PTQ
    ratio of a row compares two phases of one run at one thread count."""
    rows = [finetune_benchmark(overrides={**(overrides or {}), "threads": t}) for t in threads]
    best = min(rows, key=lambda r: r["finetune_s"])
    return {
        **best,
        "threads": best["torch_threads"],
        "judged_at": "the thread count with the fastest fine-tune",
        "by_threads": rows,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="the 2-layer test model (seconds)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps-per-round", type=int, default=5)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "bridge.json"))
    p.add_argument(
        "--dialogpt-cpu",
        action="store_true",
        help="only: every arm on DialoGPT-medium's exact configuration with random weights, "
        "a few CPU steps (minutes); written to results/bridge_dialogpt_cpu.json",
    )
    p.add_argument(
        "--dialogpt-layers", type=int, default=24, help="(smoke tests only) fewer layers"
    )
    p.add_argument(
        "--finetune",
        action="store_true",
        help="only: one default embedded fine-tune + PTQ timed by phase (minutes); written to "
        "results/bridge_finetune.json",
    )
    p.add_argument(
        "--threads",
        type=int_tuple,
        default=(1, 2),
        help="with --finetune: torch CPU thread counts to time, one whole run each "
        "(default 1,2: the run config's 1, and both cores of a 2-core machine)",
    )
    args = p.parse_args(argv)
    if args.finetune:
        res = finetune_by_threads(args.threads)
        dest = (
            Path(args.out).with_name("bridge_finetune.json")
            if args.out.endswith("bridge.json")
            else Path(args.out)
        )
        write_json_atomic(dest, res)
        for row in res["by_threads"]:
            print(
                f"{row['torch_threads']} thread(s): fine-tune {row['finetune_s']:.0f} s (target "
                f"≤ 120), PTQ {row['ptq_s']:.0f} s = {row['ptq_over_finetune']:.2f}× (target ≤ 2), "
                f"peak {row['peak_mem_bytes'] / 2**20:.0f} MiB; phases "
                f"{', '.join(f'{k} {v:.0f}s' for k, v in row['phase_s'].items())}"
            )
        print(f"judged at {res['threads']} thread(s) (the fastest fine-tune): {res['meets']}")
        print(f"→ {dest}")
        return 0
    if args.dialogpt_cpu:
        res = dialogpt_cpu(n_layer=args.dialogpt_layers)
        dest = (
            Path(args.out).with_name("bridge_dialogpt_cpu.json")
            if args.out.endswith("bridge.json")
            else Path(args.out)
        )
        write_json_atomic(dest, res)
        print(f"→ {dest}")
        return 0
    import bitsandbytes
    import peft
    import transformers

    res = {
        "benchmark": "bridge step time: fake-quantized adapters vs plain PEFT LoRA",
        "note": "timings on a shared 2-core machine are noisy; compare ratios within one run",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "bitsandbytes": bitsandbytes.__version__,
        },
        "cpu": cpu_benchmark(
            tiny=args.tiny, rounds=args.rounds, steps_per_round=args.steps_per_round, rank=args.rank
        ),
    }
    if torch.cuda.is_available():
        res["gpu"] = gpu_benchmark(rounds=args.rounds, rank=args.rank)
    write_json_atomic(args.out, res)
    c = res["cpu"]
    print(
        f"CPU ({c['model']}, batch {c['batch']}, r = {c['rank']}): median step, wall and CPU time"
    )
    for a, t in c["median_step_s"].items():
        print(
            f"  {a:15s} wall {t * 1e3:8.2f} ms ×{c['ratio_vs_fp16'][a]:.3f}   "
            f"cpu {c['median_step_cpu_s'][a] * 1e3:8.2f} ms ×{c['ratio_cpu_vs_fp16'][a]:.3f}   "
            f"best cpu {c['best_step_cpu_s'][a] * 1e3:8.2f} ms ×{c['ratio_best_cpu_vs_fp16'][a]:.3f}"
        )
    print(
        f"adapter_rtn / fp16 (best-round CPU time) = {c['ratio_best_cpu_vs_fp16']['adapter_rtn']:.3f} "
        f"(target ≤ 1.15; median-round {c['ratio_cpu_vs_fp16']['adapter_rtn']:.3f}) → {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
