"""Benchmark: the teacher–student grid in one vmapped jit vs a Python loop over the same
configurations (the same function jitted for one configuration), in the same run.

    python3 benchmarks/bench_teacher_student.py [--seeds 8] [--steps 400] [--limit N] [--breakdown]

The vmapped side is exactly what `quantbounds.theory.ts_grid.run_grid` runs (`grid_program`: one
vmapped training loop per (arm, rank), then one vmapped evaluation). The loop side calls
`_config_fn(arm, rank)` — the same training and evaluation for ONE configuration, jitted once
per (arm, rank) — configuration by configuration from Python. Both use the same per-config
code (unpadded rank, hand-written gradient, unrolled threefry), so whatever makes one
configuration cheaper speeds both up; the ratio is what batching adds.

Prints wall times and the ratio, and writes benchmarks/results/teacher_student.json
atomically. Compilation is timed separately (one warm-up call each) and excluded from the
ratio. The Python loop may be limited to a fraction --limit/G of every arm (then its time is
extrapolated linearly to the whole grid, and the JSON says so). --breakdown also times the
vmapped training of each arm alone (separate jits). Timings on a shared CPU are noisy: the
JSON records os.getloadavg() before and after and the process CPU time of each side.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path


def _timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--seeds",
        type=int,
        default=8,
        help="seeds (8: the audit's default grid, 4400 configurations)",
    )
    p.add_argument("--steps", type=int, default=400)
    p.add_argument(
        "--limit", type=int, default=None, help="time only about LIMIT loop configurations"
    )
    p.add_argument("--arms", default=None, help="comma-separated subset of the arms (default: all)")
    p.add_argument(
        "--breakdown", action="store_true", help="also time each arm's vmapped training alone"
    )
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "teacher_student.json"))
    args = p.parse_args(argv)

    import jax
    import numpy as np
    from rich.progress import track

    from quantbounds.verdicts.results import write_json_atomic
    from quantbounds.theory.teacher_student import TeacherStudentConfig, make_problem
    from quantbounds.theory.ts_grid import _config_fn, _inputs, grid_program, train_config

    extra = {"arms": tuple(args.arms.split(","))} if args.arms else {}
    cfg = TeacherStudentConfig(seeds=args.seeds, steps=args.steps, **extra)
    problem = make_problem(cfg)
    grid, gargs, groups, cols = grid_program(cfg, problem)
    table = gargs[0]
    dt = problem.W0.dtype
    G = len(cols["r"])
    load0 = os.getloadavg()

    # vmapped: run_grid's one jit
    _, t_vmap_first, _ = _timed(lambda: jax.block_until_ready(grid(*gargs)))
    _, t_vmap, c_vmap = _timed(lambda: jax.block_until_ready(grid(*gargs)))

    # Python loop: the same per-configuration function, jitted once per (arm, rank), called G times
    ins = {g: _inputs(table, cols, rows, dt) for g, rows in groups.items()}
    ranks = {g: jax.numpy.asarray(cols["r"][rows]) for g, rows in groups.items()}
    single = {g: jax.jit(_config_fn(problem, cfg, *g)) for g in groups}
    pick = lambda x, i: jax.tree_util.tree_map(lambda a: a[i], x)  # noqa: E731
    call = lambda g, i: single[g](pick(ins[g][0], i), ranks[g][i], *pick(ins[g][1:], i))  # noqa: E731
    _, t_loop_first, _ = _timed(lambda: [jax.block_until_ready(call(g, 0)) for g in groups])
    # time the same fraction of every group (limit spread over the groups in proportion to size)
    frac = 1.0 if args.limit is None else min(1.0, args.limit / G)
    todo = [
        (g, i) for g, rows in groups.items() for i in range(max(1, int(round(frac * len(rows)))))
    ]
    rng = np.random.default_rng(0)
    todo = [
        todo[k] for k in rng.permutation(len(todo))
    ]  # interleave arms: load drifts hit all alike
    n = len(todo)
    per_arm = {}

    def loop():
        for g, i in track(todo, description=f"Python loop over {n} configurations"):
            t0 = time.perf_counter()
            jax.block_until_ready(call(g, i))
            per_arm[g[0]] = per_arm.get(g[0], 0.0) + time.perf_counter() - t0

    _, t_loop_n, c_loop_n = _timed(loop)
    t_loop = t_loop_n * G / n
    arms = sorted({a for a, _ in groups})
    n_arm = {a: sum(len(rows) for (b, _), rows in groups.items() if b == a) for a in arms}
    timed_arm = {a: sum(1 for (b, _), _i in todo if b == a) for a in arms}

    out = {
        "configurations": G,
        "steps": cfg.steps,
        "grid": {
            "ranks": cfg.ranks,
            "bits": cfg.bits,
            "Ns": cfg.Ns,
            "seeds": cfg.seeds,
            "arms": cfg.arms,
            "conventions": cfg.conventions,
        },
        "vmap_s": t_vmap,
        "vmap_compile_plus_first_run_s": t_vmap_first,
        "loop_s": t_loop,
        "loop_configurations_timed": n,
        "loop_extrapolated": n < G,
        "loop_compile_plus_first_run_s": t_loop_first,
        "speedup": t_loop / t_vmap,
        "speedup_including_compile": (t_loop + t_loop_first) / t_vmap_first,
        "vmap_cpu_s": c_vmap,
        "loop_cpu_s": c_loop_n * G / n,
        "loop_s_per_arm": {a: per_arm[a] * n_arm[a] / timed_arm[a] for a in arms},
        "configurations_per_arm": n_arm,
        "x64": bool(jax.config.jax_enable_x64),
        "cpu_count": os.cpu_count(),
        "loadavg_before": load0,
        "loadavg_after": os.getloadavg(),
        "machine": platform.platform(),
        "jax": jax.__version__,
    }
    if args.breakdown:  # each arm's vmapped training alone (one jit per arm, all its ranks)
        out["vmap_train_s_per_arm"] = {}
        for a in arms:

            def train_arm(ins_, a=a):
                return [
                    jax.vmap(
                        lambda st, b, sd, i, c, r=r: train_config(
                            problem, st, r, b, sd, i, a, c, cfg=cfg
                        )
                    )(*ins_[a, r])
                    for (b_, r) in groups
                    if b_ == a
                ]

            f = jax.jit(train_arm)
            jax.block_until_ready(f(ins))
            out["vmap_train_s_per_arm"][a] = _timed(lambda: jax.block_until_ready(f(ins)))[1]
        out["loadavg_after_breakdown"] = os.getloadavg()
    write_json_atomic(args.out, out)
    print(
        f"{G} configurations × {cfg.steps} steps: vmap {t_vmap:.2f} s, Python loop {t_loop:.2f} s"
        f"{' (extrapolated from %d)' % n if n < G else ''} → speedup {t_loop / t_vmap:.1f}×"
        f" (with compilation: {out['speedup_including_compile']:.1f}×); load {load0[0]:.1f} → "
        f"{out['loadavg_after'][0]:.1f}"
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
