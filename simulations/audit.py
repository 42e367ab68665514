"""`quantbounds audit`: the seed's quantitative claims against the teacher–student experiment.

    quantbounds audit [--quick | --scale {quick,default,full}] [--out results/audit.json]
                      [--figures figures | --no-figures] [--no-nonlinear] [--no-progress]
                      [--seed 0] [--x64]

Runs the vmapped teacher–student grid (quantbounds.theory.ts_grid), measures gradient variance at
fixed parameters (quantbounds.theory.gradvar), fits rates with bootstrap CIs over seeds
(simulations.audit_fits, quantbounds.verdicts.intervals), judges the claims
(simulations.audit_claims), prints the verdict table and writes ``results/audit.json``
(``verdicts`` as Verdict.to_dict(), ``fits`` with exponent_N, exponent_r, per_bit_factor, …).
Then the same rates for a nonlinear one-hidden-layer student (quantbounds.theory.nonlinear_student,
simulations.audit_nonlinear): ``fits["nonlinear"]`` and verdicts whose claims start "off the
linear case".
"""

from __future__ import annotations

import argparse
import contextlib
import time
from dataclasses import asdict, dataclass

import numpy as np

SCALES = ("quick", "default", "full")

# Grid presets. "default" is TeacherStudentConfig's own default (5 ranks × 6 bits × 5 N × 8 seeds).
_PRESETS = {
    "quick": dict(ranks=(1, 2, 4, 8), bits=(2, 3, 4, 8), Ns=(64, 256, 1024), seeds=4, steps=200),
    "default": dict(),
    "full": dict(m=32, n=48, r_star=4, ranks=(1, 2, 4, 8, 16, 32), bits=(2, 3, 4, 5, 6, 7, 8, 10),
                 Ns=(128, 256, 512, 1024, 2048, 4096), seeds=16, steps=800),
}

# Nonlinear-student presets (quantbounds.theory.nonlinear_student.NonlinearConfig; "default" is its
# own default: 4 ranks × 6 PTQ bits (3 trained) × 4 N × 8 seeds, a teacher per seed; ~20–45 s on
# the 2-core CPU under load 3–6; quick ~10 s, mostly XLA compile time).
_NL_PRESETS = {
    "quick": dict(ranks=(1, 2, 4), bits=(2, 3, 4, 6, 8), train_bits=(2, 4), Ns=(128, 512), seeds=4,
                  steps=200, n_test=2048),
    "default": dict(),
    # full: ~1.8 TFLOP of training (450 trainings per N, ΣN = 3840, 400 steps): minutes, not
    # measured here
    "full": dict(n=12, h=24, m=6, r_star=3, ranks=(1, 2, 3, 6, 12), bits=(2, 3, 4, 5, 6, 7, 8, 10),
                 train_bits=(2, 3, 4, 6), Ns=(256, 512, 1024, 2048), seeds=10, steps=400),
}


@dataclass(frozen=True, kw_only=True)
class AuditConfig:
    """scale: grid preset; grad_batch/grad_draws: mini-batch size and number of draws of the
    gradient-variance measurement; tol: the quantization excess counted as negligible, as a
    fraction of the full-precision excess (the seed README's "< 10 % degradation");
    overrides: TeacherStudentConfig fields that replace the preset's (tests use it); nonlinear:
    run the nonlinear-student part; nonlinear_overrides: NonlinearConfig fields replacing its
    preset."""

    scale: str = "default"
    grad_batch: int = 32
    grad_draws: int = 64
    tol: float = 0.1
    n_boot: int = 1000
    overrides: tuple = ()
    nonlinear: bool = True
    nonlinear_overrides: tuple = ()

    def __post_init__(self):
        from quantbounds._checks import check_choice, check_int_range, check_probability

        check_choice(self.scale, "scale", SCALES)
        check_int_range(self.grad_batch, "grad_batch", 1)
        check_int_range(self.grad_draws, "grad_draws", 2)
        check_int_range(self.n_boot, "n_boot", 10)
        check_probability(self.tol, "tol")

    def ts_config(self):
        from quantbounds.theory.teacher_student import TeacherStudentConfig

        return TeacherStudentConfig(**{**_PRESETS[self.scale], **dict(self.overrides)})

    def nonlinear_config(self):
        from quantbounds.theory.nonlinear_student import NonlinearConfig

        return NonlinearConfig(**{**_NL_PRESETS[self.scale], **dict(self.nonlinear_overrides)})


def _fp_arm(res: dict, scale: str) -> dict:
    """The full-precision arm of convention ``scale`` (else the first fp arm of the grid)."""
    key = f"fp_{scale}"
    return res[key] if key in res else res[next(k for k in res if k.startswith("fp_"))]


def run_gradvar(res: dict, cfg, acfg: AuditConfig, problem) -> dict:
    """Gradient variance at the trained fp parameters (largest N, convention cfg.scale), for
    every (rank, bits, seed), under additive-model and SR noise. Arrays shaped (R, B, S)."""
    import jax
    import jax.numpy as jnp

    from quantbounds.theory.gradvar import draw_gradvar, measure_grad_variance
    from quantbounds.conventions import KIND_INDEX

    fp = _fp_arm(res, cfg.scale)
    n_ranks, n_bits, n_seeds = len(cfg.ranks), len(cfg.bits), cfg.seeds
    rank_i, bit_i, seed_i = (a.ravel() for a in np.meshgrid(
        np.arange(n_ranks), np.arange(n_bits), np.arange(n_seeds), indexing="ij"))
    ranks = np.array(cfg.ranks)[rank_i]
    mask = (np.arange(cfg.r_max)[None, :] < ranks[:, None]).astype(float)
    B = jnp.asarray(fp["B"][rank_i, -1, seed_i] * mask[:, None, :])
    A = jnp.asarray(fp["A"][rank_i, -1, seed_i] * mask[:, :, None])
    scale = jnp.asarray(fp["scale"][rank_i, -1, seed_i])
    bits = jnp.asarray(np.array(cfg.bits, float)[bit_i])
    # one set of draws per seed (independent replicates for the bootstrap), shared by every
    # (rank, bits) of that seed (common random numbers for the slopes)
    base = jax.random.PRNGKey(cfg.key + 7)
    draws = [draw_gradvar(jax.random.fold_in(base, j), n_draws=acfg.grad_draws,
                          batch_size=acfg.grad_batch, m=cfg.m, n=cfg.n, r=cfg.r_max, dtype=B.dtype)
             for j in range(n_seeds)]
    draws = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *draws)
    kinds = ("additive", "sr")

    def one(B_, A_, s_, j_, b_, r_, kind):
        seed_draws = jax.tree_util.tree_map(lambda d: d[j_], draws)
        return measure_grad_variance(problem, B_, A_, s_, seed_draws, kind=kind, bits=b_,
                                     granularity=cfg.granularity, rank=r_)

    per_cell = jax.vmap(one, in_axes=(0, 0, 0, 0, 0, 0, None))
    measure = jax.jit(jax.vmap(per_cell, in_axes=(None, None, None, None, None, None, 0)))
    measured = jax.device_get(measure(B, A, scale, jnp.asarray(seed_i), bits, jnp.asarray(ranks),
                                      jnp.asarray([KIND_INDEX[k] for k in kinds])))
    shape = (n_ranks, n_bits, n_seeds)
    return {kind: {k: np.asarray(v)[i].reshape(shape) for k, v in measured.items()}
            for i, kind in enumerate(kinds)}


def run_audit(acfg: AuditConfig, *, console=None, show_progress: bool = True) -> dict:
    """Run the grid, the gradient-variance measurement, the fits and the verdicts
    (``show_progress=False``: no spinners, only one log line per stage)."""
    from rich.console import Console

    from quantbounds.theory.teacher_student import make_problem
    from quantbounds.theory.ts_grid import run_grid
    from simulations.audit_claims import fits_and_verdicts

    console = console or Console(stderr=True)

    def status(text: str):
        return console.status(text) if show_progress else contextlib.nullcontext()

    cfg = acfg.ts_config()
    problem = make_problem(cfg)
    t0 = time.perf_counter()
    n_cfg = (len(cfg.ranks) * len(cfg.Ns) * cfg.seeds
             * (len(cfg.conventions) + 1 + 3 * len(cfg.bits)))
    steps = 4 if acfg.nonlinear else 3
    with status(f"[1/{steps}] teacher–student grid: ~{n_cfg} trainings × {cfg.steps} steps, "
                f"one jit"):
        res = run_grid(cfg, problem=problem)
    t1 = time.perf_counter()
    console.log(f"grid done in {t1 - t0:.1f} s")
    with status(f"[2/{steps}] gradient variance at fixed parameters"):
        gv = run_gradvar(res, cfg, acfg, problem)
    t2 = time.perf_counter()
    console.log(f"gradient variance done in {t2 - t1:.1f} s")
    with status(f"[3/{steps}] fits (bootstrap over seeds) and verdicts"):
        fits, verdicts, summary = fits_and_verdicts(res, gv, cfg, acfg)
    t3 = time.perf_counter()
    console.log(f"fits done in {t3 - t2:.1f} s")
    timing = {"grid": t1 - t0, "gradvar": t2 - t1, "fits": t3 - t2}
    config = {"audit": {k: v for k, v in asdict(acfg).items() if not k.endswith("overrides")},
              "teacher_student": asdict(cfg)}
    nl = None
    if acfg.nonlinear:
        from quantbounds.theory.nl_grid import run_nonlinear_grid
        from simulations.audit_nonlinear import nonlinear_fits_and_verdicts

        ncfg = acfg.nonlinear_config()
        per_arm = sum(1 if a == "fp" else len(ncfg.trained_bits) for a in ncfg.arms)
        n_nl = len(ncfg.Ns) * ncfg.seeds * len(ncfg.ranks) * per_arm
        with status(f"[4/4] nonlinear student: {n_nl} trainings × {ncfg.steps} steps, one jit, "
                    f"and fits"):
            nl = run_nonlinear_grid(ncfg)
            fits["nonlinear"], nl_verdicts = nonlinear_fits_and_verdicts(nl, ncfg, acfg, fits)
        verdicts = list(verdicts) + nl_verdicts
        config["nonlinear"] = asdict(ncfg)
        timing["nonlinear"] = time.perf_counter() - t3
        console.log(f"nonlinear student done in {timing['nonlinear']:.1f} s")
    return {"config": config, "fits": fits, "verdicts": [v.to_dict() for v in verdicts],
            "summary": summary, "timing_s": timing, "_res": res, "_gv": gv, "_nl": nl}


def main(argv: list[str] | None = None) -> int:
    """Entry point of `quantbounds audit` (argv without the command name)."""
    from quantbounds.cli.options import add_common_options, figures_dir

    p = argparse.ArgumentParser(prog="quantbounds audit", description=__doc__.split("\n")[0])
    p.add_argument("--scale", choices=SCALES, default="default")
    p.add_argument("--quick", action="store_true", help="same as --scale quick (≤ 60 s)")
    add_common_options(p, out="results/audit.json", figures_help="directory for audit_*.png",
                       seed_help="PRNG key of the teacher–student grids (data, init, noise; "
                                 "default 0)")
    p.add_argument("--no-nonlinear", action="store_true", help="skip the nonlinear-student part")
    p.add_argument("--x64", action="store_true",
                   help="run in float64 (slower); default: JAX's setting")
    args = p.parse_args(argv)
    import jax

    if args.x64:  # never switch x64 off: a caller (e.g. the test suite) may rely on it
        jax.config.update("jax_enable_x64", True)
    from quantbounds.verdicts.results import print_verdicts, write_json_atomic

    scale = "quick" if args.quick else args.scale
    # quick: fewer bootstrap replicates (the CI's Monte Carlo error grows, its meaning does not)
    key = (("key", args.seed),) if args.seed else ()
    acfg = AuditConfig(scale=scale, n_boot=300 if scale == "quick" else 1000,
                       nonlinear=not args.no_nonlinear, overrides=key, nonlinear_overrides=key)
    out = run_audit(acfg, show_progress=not args.no_progress)
    res, gv, nl = out.pop("_res"), out.pop("_gv"), out.pop("_nl")
    figures = figures_dir(args)
    if figures is not None:
        from simulations.audit_plots import plot_audit, plot_nonlinear

        out["figures"] = [str(f) for f in plot_audit(res, gv, out, figures_dir=figures)]
        if nl is not None:
            out["figures"].append(str(plot_nonlinear(nl, out, figures_dir=figures)))
    write_json_atomic(args.out, out)
    print_verdicts(out["verdicts"], title=f"quantbounds audit ({scale})")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    import sys

    raise SystemExit(main(sys.argv[1:]))
