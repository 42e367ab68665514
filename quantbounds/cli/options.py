"""The options the sub-commands share, defined once.

``--out`` (the result JSON), ``--figures`` / ``--no-figures`` (where figures go, or none),
``--no-progress`` (no progress bars or spinners: for logs) and ``--seed`` (the PRNG seed,
an integer ≥ 0). ``quantbounds validate``, ``audit`` and ``calibrate`` build their parsers
with :func:`add_common_options`, so an option means the same in every command.
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
