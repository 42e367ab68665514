"""The `quantbounds` command line: a thin dispatcher over sub-command plugins.

Sub-commands are registered as entry points in the group ``quantbounds.commands``
(see pyproject.toml). Each entry point names a function ``main(argv: list[str]) -> int``.
Dispatching through entry points keeps this package free of any import of ``real_runs``
(and so of torch): ``quantbounds finetune`` only loads the bridge when it is asked for.
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points

GROUP = "quantbounds.commands"

_HELP = {
    "validate": "check the ε_BA decomposition, its moments and bounds at scale (main job)",
    "audit": "theory audit: bounds, bit-width rules, teacher–student experiment",
    "finetune": "one real LoRA fine-tune (needs the [torch] extra)",
    "sweep": "a resumable sweep of real fine-tunes from a TOML config (needs [torch])",
    "calibrate": "fit the bounds' constants to run records",
    "allocate": "per-layer (rank, bits) allocation under a memory budget",
    "report": "assemble validation, audit and calibration into one markdown report",
    "claims": "the claim registry with the latest verdict of each claim (seed vs toolkit)",
}


def _commands() -> dict:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def _usage(cmds: dict) -> str:
    lines = ["usage: quantbounds COMMAND [options]", "", "commands:"]
    for name in sorted(cmds):
        lines.append(f"  {name:<10} {_HELP.get(name, '')}")
    lines.append("")
    lines.append("`quantbounds COMMAND --help` describes each command's options.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cmds = _commands()
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(cmds))
        return 0
    name, rest = argv[0], argv[1:]
    if name not in cmds:
        print(f"quantbounds: unknown command {name!r}; choose one of: {', '.join(sorted(cmds))}",
              file=sys.stderr)
        return 2
    try:
        fn = cmds[name].load()
    except ImportError as err:  # e.g. `finetune` without the [torch] extra
        print(f"quantbounds {name}: cannot load ({err}). "
              f"If it needs torch, install the extra: pip install -e '.[torch]'", file=sys.stderr)
        return 2
    rc = fn(rest)
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
