"""The options the sub-commands share, defined once.

``--out`` (the result JSON), ``--figures`` / ``--no-figures`` (where figures go, or none),
``--no-progress`` (no progress bars or spinners: for logs) and ``--seed`` (the PRNG seed,
an integer ≥ 0). ``quantbounds validate``, ``audit`` and ``calibrate`` build their parsers
with :func:`add_common_options`, so an option means the same in every command.

The cluster flags (``--executor {local,submitit}``, ``--cluster {slurm,local}``,
``--results-dir``, the SLURM requests, ``--slurm-option KEY=VALUE``, ``--poll-s``) are
shared by ``quantbounds validate`` and ``quantbounds sweep``: :func:`add_cluster_flags` adds
them, :func:`cluster_flags` turns the parsed ones into ``quantbounds.jobs.ClusterOptions``
fields.
"""

from __future__ import annotations

import argparse


def seed_type(text: str) -> int:
    """argparse type of ``--seed``: an integer ≥ 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer ≥ 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be ≥ 0, got {value}")
    return value


def add_common_options(parser: argparse.ArgumentParser, *, out: str,
                       figures: str | None = "figures",
                       figures_help: str = "directory for figures ('' = none)",
                       progress: bool = True, seed: bool = True,
                       seed_help: str = "PRNG seed (≥ 0)") -> argparse.ArgumentParser:
    """Add the shared options to ``parser``: ``--out`` (default ``out``), ``--figures`` and
    ``--no-figures`` (unless ``figures`` is None), ``--no-progress`` (if ``progress``) and
    ``--seed`` (default 0, if ``seed``). Returns the parser."""
    parser.add_argument("--out", default=out, help=f"result JSON path (default: {out})")
    if figures is not None:
        parser.add_argument("--figures", default=figures, help=figures_help)
        parser.add_argument("--no-figures", action="store_true", help="write no figures")
    if progress:
        parser.add_argument("--no-progress", action="store_true",
                            help="no progress bars or spinners (for logs)")
    if seed:
        parser.add_argument("--seed", type=seed_type, default=0, help=seed_help)
    return parser


def figures_dir(args: argparse.Namespace) -> str | None:
    """The figure directory the parsed ``args`` ask for, or None (``--no-figures`` or
    ``--figures ''``)."""
    if getattr(args, "no_figures", False) or not getattr(args, "figures", None):
        return None
    return args.figures


def add_cluster_flags(parser: argparse.ArgumentParser, *,
                      results_help: str = "per-run record files and logs (default <out>.d)"
                      ) -> argparse.ArgumentParser:
    """Add ``--executor``, ``--cluster``, ``--results-dir``, the SLURM requests
    (``--partition``, ``--gpus-per-node``, ``--cpus-per-task``, ``--mem-gb``,
    ``--timeout-min``, ``--array-parallelism``), ``--slurm-option KEY=VALUE`` (repeatable)
    and ``--poll-s`` to ``parser``, in one group. Returns the parser."""
    from quantbounds.jobs import CLUSTERS, EXECUTORS

    g = parser.add_argument_group("cluster (with --executor submitit)")
    g.add_argument("--executor", default="local", choices=EXECUTORS,
                   help="local: this process (default); submitit: independent jobs (SLURM, "
                        "or local processes)")
    g.add_argument("--cluster", default=None, choices=CLUSTERS,
                   help="with submitit: SLURM job arrays (default), or submitit's local "
                        "executor (same jobs, local processes)")
    g.add_argument("--results-dir", default=None, help=results_help)
    g.add_argument("--partition", default=None)
    g.add_argument("--gpus-per-node", type=int, default=None)
    g.add_argument("--cpus-per-task", type=int, default=None)
    g.add_argument("--mem-gb", type=float, default=None)
    g.add_argument("--timeout-min", type=int, default=None, help="per job (default 60)")
    g.add_argument("--array-parallelism", type=int, default=None,
                   help="at most this many jobs at once (default 8)")
    g.add_argument("--slurm-option", action="append", default=[], metavar="KEY=VALUE",
                   help="any submitit SLURM parameter, e.g. account=lab, qos=high (repeatable)")
    g.add_argument("--poll-s", type=float, default=None, help="seconds between polls")
    return parser


def cluster_flags(args: argparse.Namespace) -> dict:
    """The cluster flags given on the command line (:func:`add_cluster_flags`) as
    ``ClusterOptions`` fields, None where not given (so a config's values stay);
    ``--slurm-option`` pairs go to ``extra`` (``jobs.parse_slurm_option``)."""
    from quantbounds.jobs import parse_slurm_option

    extra = dict(parse_slurm_option(s) for s in (getattr(args, "slurm_option", None) or []))
    return dict(cluster=args.cluster, partition=args.partition, gpus_per_node=args.gpus_per_node,
                cpus_per_task=args.cpus_per_task, mem_gb=args.mem_gb,
                timeout_min=args.timeout_min, array_parallelism=args.array_parallelism,
                extra=extra or None)
