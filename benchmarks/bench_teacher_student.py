"""Benchmark: the teacher–student grid in one vmapped jit vs a Python loop over the same
configurations (the same function jitted for one configuration), in the same run.

    python3 benchmarks/bench_teacher_student.py [--seeds 2] [--steps 400] [--limit N]

Prints wall times and the ratio, and writes benchmarks/results/teacher_student.json
atomically. Compilation is timed separately (one warm-up call each) and excluded from the
ratio. The Python loop may be limited to the first --limit configurations (then its time is
extrapolated linearly to the whole grid, and the JSON says so). Timings on a shared CPU are
noisy: the JSON records os.getloadavg() before and after.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--limit", type=int, default=None, help="time only the first LIMIT loop configurations")
    p.add_argument("--arms", default=None, help="comma-separated subset of the arms (default: all)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "teacher_student.json"))
    args = p.parse_args(argv)

    import jax
    import jax.numpy as jnp
    from rich.progress import track

    from quantbounds.results import write_json_atomic
    from quantbounds.teacher_student import TeacherStudentConfig, make_problem

    from quantbounds.ts_grid import _all_flat, _arm_fn, _arm_runs, _groups, stats_table

    extra = {"arms": tuple(args.arms.split(","))} if args.arms else {}
    cfg = TeacherStudentConfig(seeds=args.seeds, steps=args.steps, **extra)
    problem = make_problem(cfg)
    table = stats_table(problem, cfg)
    runs = _arm_runs(cfg)
    _, cols, offs = _all_flat(cfg, runs)
    groups = _groups(runs, offs)
    dt = problem.W0.dtype
    G = len(cols["r"])

    def inputs(rows):
        return (tuple(t[jnp.asarray(cols["Ni"][rows]), jnp.asarray(cols["seed"][rows])] for t in table),
                jnp.asarray(cols["r"][rows]), jnp.asarray(cols["b"][rows], dt), jnp.asarray(cols["seed"][rows]),
                jnp.asarray(rows), jnp.asarray(cols["conv"][rows]))

    per_arm = {arm: inputs(rows) for arm, rows in groups.items()}
    load0 = os.getloadavg()

    # vmapped: one jit, one vmap per arm (what run_grid does)
    grid = jax.jit(lambda ins: {arm: jax.vmap(_arm_fn(problem, cfg, arm))(*ins[arm]) for arm in groups})
    t0 = time.perf_counter()
    jax.block_until_ready(grid(per_arm))
    t_vmap_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(grid(per_arm))
    t_vmap = time.perf_counter() - t0

    # Python loop: the same function jitted for one configuration (per arm), called G times
    single = {arm: jax.jit(_arm_fn(problem, cfg, arm)) for arm in groups}
    pick = lambda ins, i: jax.tree_util.tree_map(lambda x: x[i], ins)  # noqa: E731
    t0 = time.perf_counter()
    for arm in groups:
        jax.block_until_ready(single[arm](*pick(per_arm[arm], 0)))
    t_loop_first = time.perf_counter() - t0
    # time the same fraction of every arm (limit spread over the arms in proportion to their size)
    frac = 1.0 if args.limit is None else min(1.0, args.limit / G)
    todo = [(arm, i) for arm, rows in groups.items() for i in range(max(1, int(round(frac * len(rows)))))]
    n = len(todo)
    t0 = time.perf_counter()
    for arm, i in track(todo, description=f"Python loop over {n} configurations"):
        jax.block_until_ready(single[arm](*pick(per_arm[arm], i)))
    t_loop_n = time.perf_counter() - t0
    t_loop = t_loop_n * G / n

    out = {"configurations": G, "steps": cfg.steps, "grid": {"ranks": cfg.ranks, "bits": cfg.bits, "Ns": cfg.Ns,
                                                              "seeds": cfg.seeds, "arms": cfg.arms,
                                                              "conventions": cfg.conventions},
           "vmap_s": t_vmap, "vmap_compile_plus_first_run_s": t_vmap_first,
           "loop_s": t_loop, "loop_configurations_timed": n, "loop_extrapolated": n < G,
           "loop_compile_plus_first_run_s": t_loop_first, "speedup": t_loop / t_vmap,
           "speedup_including_compile": (t_loop + t_loop_first) / t_vmap_first,
           "x64": bool(jax.config.jax_enable_x64), "cpu_count": os.cpu_count(),
           "loadavg_before": load0, "loadavg_after": os.getloadavg(),
           "machine": platform.platform(), "jax": jax.__version__}
    write_json_atomic(args.out, out)
    print(f"{G} configurations × {cfg.steps} steps: vmap {t_vmap:.2f} s, Python loop {t_loop:.2f} s"
          f"{' (extrapolated from %d)' % n if n < G else ''} → speedup {t_loop / t_vmap:.1f}×"
          f" (with compilation: {out['speedup_including_compile']:.1f}×); load {load0[0]:.1f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
