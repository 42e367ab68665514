"""``quantbounds allocate``: per-layer (rank, bits) under a memory budget
(quantbounds.calib.allocator)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from quantbounds.calib.allocator import THEORY, LayerSpec, allocate, params_from_calibration
from quantbounds.cli.options import add_common_options
from quantbounds.verdicts.results import write_json_atomic


def main(argv: list[str] | None = None) -> int:
    """``quantbounds allocate --layers layers.json --budget-bytes B``: per-layer (rank, bits)."""
    p = argparse.ArgumentParser(prog="quantbounds allocate", description=main.__doc__)
    p.add_argument("--layers", required=True,
                   help='JSON list of {"name", "m", "n", optional "range_A", "range_B", '
                        '"x_norm2", "sensitivity"}')
    p.add_argument("--budget-bytes", type=float, required=True)
    p.add_argument("--calibration", default=None,
                   help="results/calibration.json (default: theory constants)")
    p.add_argument("--n-train", type=float, default=1000)
    p.add_argument("--ranks", default="1,2,4,8,16,32,64")
    p.add_argument("--bits", default="2,3,4,8,16")
    add_common_options(p, out="results/allocation.json", figures=None, progress=False, seed=False)
    a = p.parse_args(argv)
    try:
        layers = [LayerSpec(**d) for d in json.loads(Path(a.layers).read_text())]
        params, notes = (params_from_calibration(a.calibration) if a.calibration
                         else (dict(THEORY), ["no --calibration: theory constants (C1 = C2 = 1), "
                                              "not calibrated"]))
        alloc = allocate(layers, budget_bytes=a.budget_bytes, params=params, N=a.n_train,
                         ranks=[int(x) for x in a.ranks.split(",")],
                         bits=[int(x) for x in a.bits.split(",")])
    except (ValueError, TypeError, FileNotFoundError, json.JSONDecodeError) as err:
        print(f"quantbounds allocate: {err}")
        return 2
    out = alloc.to_dict() | {"notes": notes, "n_train": a.n_train}
    write_json_atomic(a.out, out)
    for n in notes:
        print("note:", n)
    for k, (r, b) in alloc.choice.items():
        print(f"{k:40s} rank {r:3d}  bits {b:2d}")
    u = alloc.uniform
    uniform = (f"best uniform (r={u['rank']}, b={u['bits']}): {u['objective']:.5g}" if u
               else "no uniform choice fits")
    print(f"objective {alloc.objective:.5g}, memory {alloc.memory_bytes:.0f} / "
          f"{a.budget_bytes:.0f} bytes; " + uniform)
    print("wrote", a.out)
    return 0
