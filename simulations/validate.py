"""`quantbounds validate`: the main job — does the ε_BA theory hold on real quantized factors?

Runs five experiments (``EXPERIMENTS``; each its own module under ``simulations/``, a frozen
config and a ``run(config, key)``), turns every measurement into a verdict on a registry
claim (``quantbounds.verdicts.results.Verdict`` with ``claim_id``, decided by
``quantbounds.verdicts.standard``), prints them as a table, writes ``results/validation.json``
with ``quantbounds.verdicts.results.write_results`` (every verdict checked against the claim
registry; Holm's step over the file's statistical verdicts, raw and adjusted decisions kept)
and ``figures/validation_*.png``:

 1. decomposition identity on real quantized tensors              (simulations.decomposition)
 2. Monte Carlo vs exact moments, and the variance bound          (simulations.moments_mc)
 3. factor per bit and rank slopes per LoRA scale convention      (simulations.slopes)
 4. where the additive model breaks (bits × granularity × rounding)  (simulations.breakdown)
 5. NF4 vs FP4 vs int4 vs Lloyd–Max                               (simulations.codebooks)

Scales: ``--quick`` (≤ 60 s on 2 CPU cores), default (≤ 5 min, includes a 4096×4096 layer
at rank 256), ``--scale full`` (larger grids, for a GPU). A hidden ``--scale tiny`` runs in
seconds for the tests. Every verdict is computed; any of them can come out "fails" (or
"inconclusive" when its interval is too wide). Implementation checks — the decomposition, the
Monte Carlo engine against its own model's moments, the variance bound on the model it is
proven for, PEFT's zero B, the reference distortions — are ``identity``-kind claims, tallied
apart from the findings (``quantbounds report``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
import time
from dataclasses import dataclass, field

from quantbounds.cli.options import (
    add_cluster_flags,
    add_common_options,
    cluster_flags,
    figures_dir,
)
from simulations import breakdown, codebooks, decomposition, moments_mc, slopes

SCALES_CLI = ("default", "full")
SCHEMA = "quantbounds.validation/1"
EXPERIMENTS = ("decomposition", "moments", "slopes", "breakdown", "codebooks")
_MODULES = {
    "decomposition": decomposition,
    "moments": moments_mc,
    "slopes": slopes,
    "breakdown": breakdown,
    "codebooks": codebooks,
}


@dataclass(frozen=True, kw_only=True)
class ValidateConfig:
    """One config per experiment (defaults = the embedded default run)."""

    scale: str = "default"
    decomposition: decomposition.DecompositionConfig = field(
        default_factory=decomposition.DecompositionConfig
    )
    moments: moments_mc.MomentsConfig = field(default_factory=moments_mc.MomentsConfig)
    slopes: slopes.SlopesConfig = field(default_factory=slopes.SlopesConfig)
    breakdown: breakdown.BreakdownConfig = field(default_factory=breakdown.BreakdownConfig)
    codebooks: codebooks.CodebookConfig = field(default_factory=codebooks.CodebookConfig)

    def __post_init__(self):
        if self.scale not in PRESETS:
            raise ValueError(f"scale must be one of {sorted(PRESETS)}, got {self.scale!r}")
        types = {
            "decomposition": decomposition.DecompositionConfig,
            "moments": moments_mc.MomentsConfig,
            "slopes": slopes.SlopesConfig,
            "breakdown": breakdown.BreakdownConfig,
            "codebooks": codebooks.CodebookConfig,
        }
        for name, t in types.items():
            if not isinstance(getattr(self, name), t):
                raise TypeError(f"{name} must be a {t.__name__}, got {type(getattr(self, name))}")


def _tiny() -> dict:
    # Seconds, for the tests: few compiled programs (each case/shape/dtype compiles once).
    return dict(
        decomposition=decomposition.DecompositionConfig(
            shapes=((128, 64, 4),),
            bits=(2, 8),
            dtypes=("float64",),
            families=("gaussian",),
            cases=("rtn/tensor", "sr/block64", "nf4/block64"),
        ),
        moments=moments_mc.MomentsConfig(
            layers=((64, 64, (2, 4), "tensor"),),
            bits=(4, 8),
            families=("gaussian", "peft_init"),
            n_samples=8,
            entry_layer=(64, 32, 4),
            entry_bits=(4,),
            entry_samples=32,
        ),
        slopes=slopes.SlopesConfig(
            m=64,
            n=64,
            ranks=(1, 2, 4),
            bits=(2, 3, 4, 5, 6),
            families=("gaussian",),
            n_draws=2,
            rank_bits=4,
        ),
        breakdown=breakdown.BreakdownConfig(
            bits=(2, 4),
            granularities=("tensor",),
            families=("gaussian",),
            m=64,
            n=64,
            r=4,
            n_draws=3,
            variants=(("nearest", "paper"), ("stochastic", "paper")),
        ),
        codebooks=codebooks.CodebookConfig(n_blocks=256, lloyd_bits=(2, 3)),
    )


def _quick() -> dict:
    # ≤ 60 s on 2 idle cores: most of the time is XLA compilation, so few shapes and cases.
    return dict(
        decomposition=decomposition.DecompositionConfig(
            shapes=((256, 256, 8),), families=("gaussian",)
        ),
        moments=moments_mc.MomentsConfig(
            layers=((512, 512, (1, 8, 64), "tensor"),),
            bits=(2, 4, 8, 16),
            n_samples=16,
            entry_layer=(256, 128, 8),
            entry_samples=128,
        ),
        slopes=slopes.SlopesConfig(
            m=256, n=256, ranks=(1, 2, 4, 8, 16, 32), bits=tuple(range(2, 11)), n_draws=3
        ),
        breakdown=breakdown.BreakdownConfig(
            bits=(2, 3, 4, 8), granularities=("tensor", "block64"), m=256, n=256, r=16, n_draws=4
        ),
        codebooks=codebooks.CodebookConfig(n_blocks=4096),
    )


def _full() -> dict:
    return dict(
        decomposition=decomposition.DecompositionConfig(
            shapes=((1024, 1024, 16), (4096, 1024, 64), (4096, 4096, 256))
        ),
        moments=moments_mc.MomentsConfig(
            layers=(
                (1024, 1024, (1, 2, 4, 8, 16, 32, 64, 128, 256), "tensor"),
                (1024, 1024, (16, 64, 256), "block64"),
                (1024, 1024, (16, 64, 256), "channel"),
                (4096, 4096, (1, 16, 64, 256), "tensor"),
                (8192, 8192, (64, 512), "tensor"),
            ),
            bits=(2, 3, 4, 6, 8, 12, 16),
            n_samples=128,
            entry_layer=(4096, 1024, 64),
            entry_bits=(2, 4, 8, 16),
            entry_samples=1024,
        ),
        slopes=slopes.SlopesConfig(
            m=4096, n=4096, ranks=tuple(2**k for k in range(11)), n_draws=16
        ),
        breakdown=breakdown.BreakdownConfig(
            bits=(2, 3, 4, 5, 6, 8, 10, 12, 16), m=4096, n=4096, r=64, n_draws=32
        ),
        codebooks=codebooks.CodebookConfig(n_blocks=2**20),
    )


PRESETS = {"tiny": _tiny, "quick": _quick, "default": dict, "full": _full}


def config_for(scale: str) -> ValidateConfig:
    """The embedded config of a scale: "tiny" (tests), "quick", "default" or "full"."""
    if scale not in PRESETS:
        raise ValueError(f"scale must be one of {sorted(PRESETS)}, got {scale!r}")
    return ValidateConfig(scale=scale, **PRESETS[scale]())


def run_all(
    config: ValidateConfig,
    *,
    seed: int = 0,
    show_progress: bool = True,
    console=None,
    simulate=None,
) -> dict:
    """Run every experiment; return the result dict written to validation.json.

    simulate: the Monte Carlo grid runner of the moments experiment (default
    ``montecarlo.simulate_grid``; ``--executor submitit`` passes a ``grid_jobs.GridJobs``
    bound to its cluster options: the same numbers, the grids' cells as independent jobs,
    all grids in one job array).

    Keys: schema, scale, seed, created, wall_s (per experiment), devices, verdicts (a list of
    ``Verdict.to_dict()``), experiments (each experiment's data tables).
    Float64 parts need ``jax_enable_x64`` (``main`` turns it on).
    """
    import jax
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from quantbounds.verdicts.results import to_jsonable

    key = jax.random.key(seed)
    out = {
        "schema": SCHEMA,
        "scale": config.scale,
        "seed": seed,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "devices": [str(d) for d in jax.devices()],
        "wall_s": {},
        "verdicts": [],
        "experiments": {},
    }
    verdicts = []
    with Progress(
        TextColumn("{task.description:<14}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        disable=not show_progress,
        console=console,
        transient=False,
    ) as prog:
        tasks = {name: prog.add_task(name, total=_steps(name, config)) for name in EXPERIMENTS}
        for i, name in enumerate(EXPERIMENTS):
            mod = _MODULES[name]
            t0 = time.perf_counter()
            kw = (
                {}
                if name == "codebooks"
                else {"progress": lambda name=name: prog.advance(tasks[name])}
            )
            if name == "moments" and simulate is not None:
                kw["simulate"] = simulate
            res = mod.run(getattr(config, name), jax.random.fold_in(key, i), **kw)
            prog.update(tasks[name], completed=_steps(name, config))
            out["wall_s"][name] = round(time.perf_counter() - t0, 2)
            vs = mod.verdicts(res)
            for v in vs:
                v.details.setdefault("experiment", name)
            verdicts.extend(vs)
            out["experiments"][name] = to_jsonable(res)
    out["verdicts"] = [v.to_dict() for v in verdicts]
    out["wall_s"]["total"] = round(sum(out["wall_s"].values()), 2)
    return out


def _steps(name: str, config: ValidateConfig) -> int:
    mod = _MODULES[name]
    return mod.n_steps(getattr(config, name)) if hasattr(mod, "n_steps") else 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="quantbounds validate",
        description="Check the ε_BA decomposition, its exact moments, the variance bound, the "
        "bit/rank slopes, where the additive model breaks, and NF4/FP4/int4 vs "
        "Lloyd–Max; print verdicts, write JSON and figures.",
    )
    add_common_options(
        p,
        out="results/validation.json",
        figures_help="directory for figures/validation_*.png ('' for none)",
    )
    p.add_argument("--quick", action="store_true", help="small grid, ≤ 60 s on 2 CPU cores")
    # "tiny" is for the tests (a few seconds); not advertised.
    p.add_argument(
        "--scale",
        default="default",
        choices=SCALES_CLI + ("tiny",),
        metavar="{default,full}",
        help="default: ≤ 5 min on 2 CPU cores; full: larger grids, for a GPU",
    )
    add_cluster_flags(p, results_help="grid-job folders (default: <out> with suffix .jobs)")
    p.add_argument(
        "--grid-jobs",
        type=int,
        default=None,
        help="jobs per Monte Carlo grid with --executor submitit (default: --array-parallelism)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (``quantbounds validate``). Returns 0 on success, 2 on bad options."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = _parser()
    try:
        args = p.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on bad options (--seed < 0), 0 on --help
        return int(e.code or 0)
    if args.quick and args.scale != "default":
        p.print_usage(sys.stderr)
        print(
            "quantbounds validate: error: --quick and --scale are exclusive "
            f"(got --quick with --scale {args.scale})",
            file=sys.stderr,
        )
        return 2
    scale = "quick" if args.quick else args.scale

    import jax

    jax.config.update("jax_enable_x64", True)  # float64 parts of the decomposition check
    from rich.console import Console

    from quantbounds.verdicts.results import print_verdicts, write_results

    console = Console()
    simulate = None
    if args.executor == "submitit":  # the moments experiment's grids as submitit jobs
        from pathlib import Path

        from quantbounds.epsba.grid_jobs import GridJobs
        from quantbounds.jobs import ClusterOptions, ExecutorError, make_executor

        root = Path(args.results_dir or Path(args.out).with_suffix(".jobs"))
        try:
            opts = ClusterOptions().merged(**cluster_flags(args))
            make_executor(opts, root / "submitit")  # rejects bad options before any work
        except ExecutorError as err:
            print(f"quantbounds validate: error: {err}", file=sys.stderr)
            return 2
        # every grid of the moments experiment in one job array (GridJobs.prefetch)
        simulate = GridJobs(
            root=root,
            executor="submitit",
            options=opts,
            n_jobs=args.grid_jobs or opts.array_parallelism,
            progress=not args.no_progress,
            poll_s=args.poll_s,
        )
    t0 = time.perf_counter()
    result = run_all(
        config_for(scale),
        seed=args.seed,
        show_progress=not args.no_progress,
        console=console,
        simulate=simulate,
    )
    figs = []
    figures = figures_dir(args)
    if figures is not None:
        from simulations.validate_plots import plot_all

        figs = plot_all(result, figures)
    result["figures"] = [str(f) for f in figs]
    result["wall_s"]["with_figures"] = round(time.perf_counter() - t0, 2)
    path = write_results(args.out, result)
    import json

    final = json.loads(path.read_text())["verdicts"]  # Holm-adjusted, as written
    print_verdicts(final, title=f"quantbounds validate ({scale})", console=console)
    counts = {
        k: sum(v["verdict"] == k for v in final)
        for k in ("holds", "conditional", "inconclusive", "fails")
    }
    n_id = sum(v.get("kind") == "identity" for v in final)
    console.print(
        f"{counts['holds']} hold, {counts['conditional']} conditional, "
        f"{counts['inconclusive']} inconclusive, {counts['fails']} fail "
        f"({n_id} of them implementation checks) · wrote {path}"
        + (f" and {len(figs)} figures in {figures}" if figs else "")
        + f" · {result['wall_s']['with_figures']:.0f} s"
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
