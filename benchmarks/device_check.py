"""The pieces of ``benchmarks/device_check.sh``: one sub-command each, one JSON each.

    python benchmarks/device_check.py engine   [--cpu-smoke] --out PART.json
    python benchmarks/device_check.py bnb      [--cpu-smoke] --out PART.json
    python benchmarks/device_check.py finetune [--cpu-smoke] --out PART.json
    python benchmarks/device_check.py validate [--cpu-smoke] --out PART.json --budget-s S
    python benchmarks/device_check.py collect  --parts DIR --out benchmarks/results/device.json

engine   The Monte Carlo engine (``epsba.montecarlo.simulate_eps_ba``, additive, float32, per
         tensor) at m = n = 4096, r ∈ {64, 256}, with units of the accelerator's default size
         and 4× that (the batch that fills the device is whichever is faster), as a fraction
         of a roofline built from two measurements on the same device: the engine's own noise
         generator alone (``epsba.noise_draws.draw_noise``, the same units drawing and
         materialising ε_A, ε_B, reduced to one number; t_noise per sample) and the float32 GEMM
         rate
         (a 8192³ ``jnp.matmul`` at the engine's precision, default; "highest" as well). Per
         sample the Gram form does 4·r²·(m+n) flops (``epsba.gram``: F, C, E, D), so
         roofline samples/s = 1 / (t_noise + 4·r²·(m+n) / GEMM rate), and
         fraction_of_roofline = engine samples/s ÷ that. Target ≥ 0.5.
bnb      bitsandbytes' 4-bit quantize + dequantize ON THE DEVICE (CUDA kernels) against our
         quantizer (``quant.quantizers.quantize`` / ``quantize_codes``, JAX on the CPU: the
         exact reference, bit for bit equal to bitsandbytes' reference path), NF4 and FP4,
         float32/bfloat16/float16 inputs, on the parity tests' shapes and blocks
         (tests/quant/test_bnb_parity.py CASES and benchmarks/bnb_native_parity.py SHAPES),
         including those where the AVX-512 CPU kernel is wrong (``native_known_bad``). Per case:
         values
         that differ (±0 equal), sign-only differences, codes that differ, max |Δ|.
finetune One optimizer step per arm on a DialoGPT-medium-shaped GPT-2 (24 layers, d = 1024,
         16 heads, vocab 50257, random weights: no download), bf16 on the GPU, rank 16,
         batch 8 × 128 tokens: step time (median of 3 after one warm-up step) and peak memory.
validate ``python -m simulations.validate --scale full`` (the whole job) and its wall time,
         within ``--budget-s`` (a timeout is reported as a lower bound).
collect  Merges the parts into one JSON (device, versions, each part's result or error).

``--cpu-smoke``: the same code at tiny sizes on the CPU, to test the script without a device
(tests/test_device_check.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SCHEMA = "quantbounds.device/1"


def _write(path, obj) -> None:
    from quantbounds._files import atomic_write_bytes

    atomic_write_bytes(
        path, (json.dumps(obj, indent=2, allow_nan=True, default=str) + "\n").encode()
    )


def _best_rate(fn, *, min_time: float, rounds: int) -> tuple[float, list[float]]:
    """Best of ``rounds`` rates of fn() (which returns work done), each over ≥ min_time s."""
    rates = []
    for _ in range(rounds):
        done, t0 = 0, time.perf_counter()
        while True:
            done += fn()
            dt = time.perf_counter() - t0
            if dt >= min_time:
                break
        rates.append(done / dt)
    return max(rates), rates


# ------------------------------------------------------------------ engine
def gemm_rate(N: int, *, precision: str | None, min_time: float, rounds: int) -> float:
    """float32 flop/s of an N³ jnp.matmul (2·N³ flops) at ``precision``."""
    import jax
    import jax.numpy as jnp

    k1, k2 = jax.random.split(jax.random.key(0))
    a = jax.random.normal(k1, (N, N), jnp.float32)
    b = jax.random.normal(k2, (N, N), jnp.float32)
    f = jax.jit(lambda x, y: jnp.matmul(x, y, precision=precision))
    f(a, b).block_until_ready()

    def go():
        f(a, b).block_until_ready()
        return 2 * N**3

    return _best_rate(go, min_time=min_time, rounds=rounds)[0]


def noise_rate(m, n, r, S, n_units, *, min_time, rounds) -> float:
    """Samples/s of the engine's noise alone: the engine's units (``epsba.units``, spread by
    ``epsba.sharding``) drawing and materialising ε_Bᵀ, ε_A with ``draw_noise`` and reducing
    them to one number."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from quantbounds.epsba.noise_draws import draw_noise
    from quantbounds.epsba.sharding import build_unit_runner, device_mesh, map_units
    from quantbounds.epsba.units import UnitConfig, sample_keys

    mesh = device_mesh()
    cfg = UnitConfig(
        mode="additive", m=m, n=n, r=r, S=S, dtype="float32", step="paper", impl="threefry2x32"
    )

    def unit(u, keydata):
        keys = sample_keys(cfg, keydata, 0, u)
        eB, eA = draw_noise(keys, r, m, n, "float32", jnp.float32(0.01), jnp.float32(0.01))
        return sum(jnp.sum(x) for x in eB) + sum(jnp.sum(x) for x in eA)

    runner = build_unit_runner(unit, mesh)
    kd = np.asarray(jax.random.key_data(jax.random.key(1)))
    map_units(runner, n_units, [kd], mesh=mesh)

    def go():
        map_units(runner, n_units, [kd], mesh=mesh)
        return n_units * S

    return _best_rate(go, min_time=min_time, rounds=rounds)[0]


def engine_rate(m, n, r, n_samples, chunk, *, min_time, rounds) -> float:
    import jax
    import numpy as np

    from quantbounds.epsba.montecarlo import simulate_eps_ba

    rng = np.random.default_rng(0)
    B = rng.standard_normal((m, r)).astype(np.float32)
    A = rng.standard_normal((r, n)).astype(np.float32)
    key = jax.random.key(2)
    run = lambda: (  # noqa: E731
        simulate_eps_ba(key, B, A, bits=8, n_samples=n_samples, chunk_size=chunk).n_samples
    )  # noqa: E731
    run()
    return _best_rate(run, min_time=min_time, rounds=rounds)[0]


def part_engine(smoke: bool) -> dict:
    import jax

    from quantbounds.epsba.units import chunk_for

    sizes = [(256, 256, 4), (256, 256, 16)] if smoke else [(4096, 4096, 64), (4096, 4096, 256)]
    min_time, rounds = (0.2, 1) if smoke else (3.0, 2)
    N = 256 if smoke else 8192
    out = {
        "platform": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "gemm_N": N,
        "gemm_flops_default": gemm_rate(N, precision=None, min_time=min_time, rounds=rounds),
        "gemm_flops_highest": gemm_rate(N, precision="highest", min_time=min_time, rounds=rounds),
        "cases": [],
    }
    n_dev = len(jax.devices())
    for m, n, r in sizes:
        S0 = chunk_for(m, n, r, "float32", 10**9, None)
        best = None
        for S in sorted({S0, 4 * S0}):
            n_units = max(4 * n_dev, 8) if not smoke else 2
            n_samples = S * n_units
            eng = engine_rate(m, n, r, n_samples, S, min_time=min_time, rounds=rounds)
            noise = noise_rate(m, n, r, S, n_units, min_time=min_time, rounds=rounds)
            flops = 4 * r * r * (m + n)
            roof = 1.0 / (1.0 / noise + flops / out["gemm_flops_default"])
            row = {
                "m": m,
                "n": n,
                "r": r,
                "chunk": S,
                "n_samples": n_samples,
                "engine_samples_s": eng,
                "noise_only_samples_s": noise,
                "flops_per_sample": flops,
                "roofline_samples_s": roof,
                "fraction_of_roofline": eng / roof,
                "engine_tflops": eng * flops / 1e12,
            }
            out["cases"].append(row)
            if best is None or eng > best["engine_samples_s"]:
                best = row
        best["best_for_size"] = True
    best = [c for c in out["cases"] if c.get("best_for_size")]
    out["fraction_of_roofline"] = {
        f"{c['m']}x{c['n']}_r{c['r']}": c["fraction_of_roofline"] for c in best
    }
    out["target"] = 0.5
    out["meets_target"] = all(c["fraction_of_roofline"] >= 0.5 for c in best)
    return out


# ------------------------------------------------------------------ bitsandbytes
PARITY_CASES = [
    ((64, 128), 64),
    ((33, 64), 128),
    ((5, 7), 32),
    ((4, 1024), 512),
    ((3, 4096), 2048),
    ((2, 3, 40), 64),
]  # tests/quant/test_bnb_parity.py CASES
NATIVE_SHAPES = [
    (64, 128),
    (33, 64),
    (64, 96),
    (4, 96),
    (10, 100),
    (7, 130),
    (1, 96),
    (2, 160),
    (8, 48),
    (5, 32),
    (16, 200),
    (3, 4096),
    (2, 3, 40),
    (2, 3, 64),
    (768, 768),
    (768, 2304),
    (3072, 768),
    (4096, 64),
]  # bnb_native_parity.SHAPES
NATIVE_BLOCKS = [64, 128, 256, 1024, 4096]


def part_bnb(smoke: bool, budget_s: float = 1e9) -> dict:
    import zlib

    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    import bitsandbytes
    import bitsandbytes.functional as F

    from quantbounds.quant.quantizers import quantize, quantize_codes
    from real_runs.bnb_reference import native_known_bad

    cpu = jax.devices("cpu")[0]
    dev = "cpu" if smoke or not torch.cuda.is_available() else "cuda"
    if smoke:
        cases = PARITY_CASES[:2] + [((64, 96), 64), ((4, 96), 64), ((64, 128), 128)]
    else:
        cases = list(PARITY_CASES) + [(s, b) for s in NATIVE_SHAPES for b in NATIVE_BLOCKS]
    # the shapes where the AVX-512 CPU kernel is wrong first: they are the point of the check
    cases.sort(
        key=lambda c: not native_known_bad(tuple(c[0]), c[1], isa="avx512", avx512_routing=True)
    )
    dtypes = ["float32"] if smoke else ["float32", "bfloat16", "float16"]
    deadline = time.perf_counter() + budget_s
    rows, truncated = [], False
    todo = [(shape, bs, qt, dt) for shape, bs in cases for qt in ("nf4", "fp4") for dt in dtypes]
    for shape, bs, qt, dt in todo:
        if time.perf_counter() > deadline:
            truncated = True
            break
        rng = np.random.default_rng(zlib.crc32(repr((qt, shape, bs)).encode()))
        x = rng.standard_normal(shape).astype(np.float32)
        x.reshape(-1)[::13] = 0.0
        xt = torch.from_numpy(x).to(getattr(torch, dt))
        xq = xt.float().numpy()  # what bnb sees, exactly, in float32
        row = {
            "quant_type": qt,
            "dtype": dt,
            "shape": list(shape),
            "block": bs,
            "cpu_avx512_kernel_known_bad": native_known_bad(
                tuple(shape), bs, isa="avx512", avx512_routing=True
            ),
        }
        try:
            packed, st = F.quantize_4bit(xt.to(dev), blocksize=bs, quant_type=qt)
            y = F.dequantize_4bit(packed, st).float().cpu().numpy().reshape(shape)
        except Exception as err:  # noqa: BLE001 - e.g. a block size the kernel lacks
            row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            rows.append(row)
            continue
        p = packed.view(torch.uint8).reshape(-1).cpu().numpy().astype(np.int32)
        codes = np.stack([p >> 4, p & 15], axis=1).reshape(-1)[: x.size].reshape(shape)
        with jax.default_device(cpu):
            ours = np.asarray(quantize(jnp.asarray(xq), qt, block_size=bs), np.float32)
            oc = np.asarray(quantize_codes(jnp.asarray(xq), qt, block_size=bs).codes)
        # bnb dequantizes to the input dtype: compare in that dtype's values
        ours_d = torch.from_numpy(ours.copy()).to(getattr(torch, dt)).float().numpy()
        value = (y + np.float32(0)) != (ours_d + np.float32(0))
        sign = (y.view(np.int32) != ours_d.view(np.int32)) & ~value
        row.update(
            n=int(x.size),
            n_value=int(value.sum()),
            n_sign_only=int(sign.sum()),
            n_codes=int((codes != oc).sum()),
            max_abs=float(np.max(np.abs(y - ours_d))) if x.size else 0.0,
        )
        rows.append(row)
    ok = [r for r in rows if "error" not in r]
    return {
        "device": dev,
        "bitsandbytes": bitsandbytes.__version__,
        "torch_device_name": torch.cuda.get_device_name(0)
        if dev == "cuda"
        else platform.processor(),
        "n_cases": len(rows),
        "n_cases_planned": len(todo),
        "truncated_at_budget": truncated,
        "n_errors": len(rows) - len(ok),
        "n_cases_value_mismatch": sum(r["n_value"] > 0 for r in ok),
        "n_cases_code_mismatch": sum(r["n_codes"] > 0 for r in ok),
        "n_cases_sign_only": sum(r["n_sign_only"] > 0 and r["n_value"] == 0 for r in ok),
        "cpu_known_bad_cases_value_mismatch": sum(
            r["n_value"] > 0 for r in ok if r["cpu_avx512_kernel_known_bad"]
        ),
        "cpu_known_bad_cases": sum(r["cpu_avx512_kernel_known_bad"] for r in rows),
        "rows": rows,
    }


# ------------------------------------------------------------------ fine-tune step per arm
def medium_model_dir(smoke: bool, work: Path) -> Path:
    """A GPT-2 with DialoGPT-medium's shape (random weights) and a tokenizer, saved under work."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from real_runs.embedded import EmbeddedConfig, embedded_path

    d = work / ("gpt2_smoke" if smoke else "gpt2_medium_shape")
    if (d / "config.json").exists():
        return d
    tok = AutoTokenizer.from_pretrained(
        embedded_path(EmbeddedConfig.tiny(), cache_dir=work / "emb", progress=False)
    )
    if smoke:
        cfg = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=len(tok), n_positions=64)
    else:  # microsoft/DialoGPT-medium's config.json
        cfg = GPT2Config(n_layer=24, n_embd=1024, n_head=16, vocab_size=50257, n_positions=1024)
    torch.manual_seed(0)
    GPT2LMHeadModel(cfg).to(torch.bfloat16 if not smoke else torch.float32).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def part_finetune(smoke: bool, work: Path) -> dict:
    import torch
    from torch.nn.utils import parametrize

    from quantbounds.calib.records import ARMS
    from real_runs.arms import build_arm

    dev = "cpu" if smoke or not torch.cuda.is_available() else "cuda"
    if dev == "cpu":
        torch.set_num_threads(1)
    path = medium_model_dir(smoke, work)
    batch, seq = (2, 16) if smoke else (8, 128)
    rows = []
    for arm in ARMS:
        bits = 16 if arm in ("fp16", "base_int8", "base_nf4", "base_fp4") else 4
        row = {"arm": arm, "bits": bits, "rank": 16 if not smoke else 2}
        try:
            built = build_arm(
                arm=arm, model=str(path), rank=row["rank"], bits=bits, device=dev, progress=False
            )
            model = built.model
            vocab = model.config.vocab_size
            g = torch.Generator().manual_seed(0)
            ids = torch.randint(0, vocab, (batch, seq), generator=g).to(dev)
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
            model.train()
            if dev == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            times = []
            for _step in range(1 if smoke else 4):  # one warm-up, then 3 timed steps
                t0 = time.perf_counter()
                with parametrize.cached():
                    loss = model(input_ids=ids, labels=ids).loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if dev == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            row.update(
                step_s=statistics.median(times[1:]) if len(times) > 1 else times[0],
                step_s_all=times,
                loss=float(loss.detach().float()),
                dtype=str(next(p for p in model.parameters()).dtype),
                peak_mem_bytes=int(torch.cuda.max_memory_allocated()) if dev == "cuda" else None,
                tokens_per_s=batch
                * seq
                / (statistics.median(times[1:]) if len(times) > 1 else times[0]),
            )
            del model, built, opt
            if dev == "cuda":
                torch.cuda.empty_cache()
        except Exception as err:  # noqa: BLE001 - one arm's failure is a finding, not the end
            row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        rows.append(row)
    return {
        "device": dev,
        "model": "DialoGPT-medium shape (random weights)" if not smoke else "tiny",
        "batch": batch,
        "seq_len": seq,
        "arms": rows,
        "n_errors": sum("error" in r for r in rows),
    }


# ------------------------------------------------------------------ validate --scale full
def part_validate(smoke: bool, work: Path, budget_s: float) -> dict:
    scale = "tiny" if smoke else "full"
    out = work / f"validation_{scale}.json"
    cmd = [
        sys.executable,
        "-m",
        "simulations.validate",
        "--scale",
        scale,
        "--out",
        str(out),
        "--figures",
        "",
        "--no-progress",
    ]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if smoke:
        env["JAX_PLATFORMS"] = "cpu"
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=budget_s)
    except subprocess.TimeoutExpired:
        return {
            "scale": scale,
            "timed_out": True,
            "wall_s_at_least": round(time.perf_counter() - t0, 1),
            "budget_s": budget_s,
        }
    wall = time.perf_counter() - t0
    res = {
        "scale": scale,
        "timed_out": False,
        "rc": p.returncode,
        "wall_s": round(wall, 1),
        "stderr_tail": p.stderr.strip().splitlines()[-5:],
    }
    if p.returncode == 0 and out.exists():
        v = json.loads(out.read_text())
        res["experiments_wall_s"] = v.get("wall_s")
        res["devices"] = v.get("devices")
        res["verdicts"] = {
            k: sum(x["verdict"] == k for x in v["verdicts"])
            for k in ("holds", "conditional", "fails", "inconclusive")
        }
    return res


# ------------------------------------------------------------------ collect
def collect(parts: Path, out: Path, smoke: bool) -> dict:
    res = {
        "schema": SCHEMA,
        "smoke": smoke,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(),
        "parts": {},
    }
    try:
        res["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        res["nvidia_smi"] = None
    for name in ("engine", "bnb", "finetune", "validate"):
        f, rc, log = parts / f"{name}.json", parts / f"{name}.rc", parts / f"{name}.log"
        entry: dict = {"rc": int(rc.read_text()) if rc.exists() else None}
        if f.exists():
            entry["result"] = json.loads(f.read_text())
        else:
            entry["error"] = "no result" + (" (timed out)" if entry["rc"] in (124, 137) else "")
            if log.exists():
                entry["log_tail"] = log.read_text(errors="replace").strip().splitlines()[-15:]
        w = parts / f"{name}.wall"
        if w.exists():
            entry["wall_s"] = float(w.read_text())
        res["parts"][name] = entry
    # a device run whose pieces silently fell back to the CPU measured the wrong thing
    warn = []
    if not smoke:
        eng = res["parts"]["engine"].get("result", {})
        if eng and eng.get("platform") not in ("gpu", "cuda", "rocm"):
            warn.append(f"engine ran on {eng.get('platform')!r}, not the GPU (jax without CUDA?)")
        for name in ("bnb", "finetune"):
            r = res["parts"][name].get("result", {})
            if r and r.get("device") != "cuda":
                warn.append(f"{name} ran on {r.get('device')!r}, not CUDA")
    res["warnings"] = warn
    _write(out, res)
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("part", choices=("engine", "bnb", "finetune", "validate", "collect"))
    p.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU")
    p.add_argument("--out", required=True)
    p.add_argument("--parts", default=None, help="collect: the folder of part JSONs")
    p.add_argument("--work", default=None, help="scratch folder (model, validation JSON)")
    p.add_argument(
        "--budget-s",
        type=float,
        default=240.0,
        help="validate: time limit; bnb: stop starting new cases after this",
    )
    a = p.parse_args(argv)
    if a.cpu_smoke:
        os.environ["JAX_PLATFORMS"] = "cpu"
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    work = Path(a.work or (Path(a.out).parent / "device_work"))
    work.mkdir(parents=True, exist_ok=True)
    if a.part == "collect":
        collect(Path(a.parts), Path(a.out), a.cpu_smoke)
        return 0
    t0 = time.perf_counter()
    if a.part == "engine":
        res = part_engine(a.cpu_smoke)
    elif a.part == "bnb":
        res = part_bnb(a.cpu_smoke, a.budget_s)
    elif a.part == "finetune":
        res = part_finetune(a.cpu_smoke, work)
    else:
        res = part_validate(a.cpu_smoke, work, a.budget_s)
    res["part_wall_s"] = round(time.perf_counter() - t0, 1)
    _write(a.out, res)
    print(
        json.dumps(
            {k: v for k, v in res.items() if k not in ("rows", "arms", "cases")}, default=str
        )[:2000]
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
