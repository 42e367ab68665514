"""Where bitsandbytes' native CPU dequantize_4bit disagrees with its own reference path, here.

A finding about bitsandbytes, not a test: for NF4 and FP4, float32/bfloat16/float16 inputs and a
grid of shapes and block sizes, quantize with ``bitsandbytes.functional.quantize_4bit`` (the
reference quantizer on every CPU), dequantize with the native kernel and with the reference
path (``real_runs.bnb_reference``), and count value differences and sign-of-zero differences.
It also checks the rule ``native_known_bad`` (which shapes are wrong) against what it measured,
and prints a minimal reproduction for an upstream report.

    python benchmarks/bnb_native_parity.py [--quick] [--out PATH]
    ATEN_CPU_CAPABILITY=avx2 python benchmarks/bnb_native_parity.py   # bnb's other routing

bitsandbytes offers two routings on an AVX-512 CPU: by default blocks ≥ 2048 avoid the native
kernel; with torch's capability lowered to AVX2 they take it. The kernel's own instruction set
is chosen by the CPU (a CPUID check in the library), so the AVX2 kernel can only be measured on
an AVX2 machine.
"""

from __future__ import annotations

import argparse
import platform
import sys
import zlib
from pathlib import Path

import numpy as np

SHAPES = [
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
]
QUICK_SHAPES = [(64, 128), (33, 64), (64, 96), (4, 96), (10, 100), (7, 130), (1, 96), (2, 160)]
BLOCKS = [32, 64, 128, 256, 512, 1024, 2048, 4096]
DTYPES = ["float32", "bfloat16", "float16"]

REPRO = """import torch, bitsandbytes.functional as F
from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
from bitsandbytes.backends.utils import _get_4bit_code
torch.manual_seed(0)
x = torch.randn({shape}, dtype=torch.{dtype})
packed, st = F.quantize_4bit(x, blocksize={bs}, quant_type="{qt}")
native = F.dequantize_4bit(packed, st).float()
ref = _dequantize_4bit_compute.__wrapped__(packed.view(torch.uint8).reshape(-1), st.absmax,
      _get_4bit_code("{qt}", x.device), {bs}, tuple(st.shape), st.dtype).float()
print(torch.backends.cpu.get_cpu_capability(), "values differing:",
      int((native != ref).sum()), "of", x.numel())"""


def run(shapes, blocks, dtypes) -> dict:
    import torch

    from real_runs.bnb_reference import (
        QUANT_TYPES,
        compare_native,
        cpu_isa,
        native_known_bad,
        routes_avx512,
        takes_native_path,
    )

    isa, routing = cpu_isa(), routes_avx512()
    rows, rule_wrong = [], []
    for qt in QUANT_TYPES:
        for dtype in dtypes:
            for shape in shapes:
                for bs in blocks:
                    seed = zlib.crc32(repr((qt, dtype, shape, bs)).encode())
                    x = torch.from_numpy(
                        np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
                    ).to(getattr(torch, dtype))
                    c = compare_native(x, qt, bs)
                    predicted_bad = native_known_bad(shape, bs, isa, routing)
                    row = {
                        "quant_type": qt,
                        "dtype": dtype,
                        "shape": list(shape),
                        "block": bs,
                        "native_path": takes_native_path(shape, bs, routing),
                        "n": c.n,
                        "n_value": c.n_value,
                        "n_sign_only": c.n_sign_only,
                        "max_abs": c.max_abs,
                        "mean_abs_err_native": c.mean_abs_err_native,
                        "mean_abs_err_reference": c.mean_abs_err_reference,
                        "rule_predicts_bad": predicted_bad,
                    }
                    rows.append(row)
                    if predicted_bad != (c.n_value > 0):
                        rule_wrong.append(row)
    return {
        "isa": isa,
        "avx512_routing": routing,
        "torch_cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
        "machine": platform.processor() or platform.machine(),
        "bitsandbytes": __import__("bitsandbytes").__version__,
        "torch": torch.__version__,
        "cases": len(rows),
        "value_mismatches": sum(r["n_value"] > 0 for r in rows),
        "sign_only_mismatches": sum(r["n_value"] == 0 and r["n_sign_only"] > 0 for r in rows),
        "rule_disagreements": rule_wrong,
        "rows": rows,
    }


def print_summary(res: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=120)
    bad = [r for r in res["rows"] if r["n_value"] or r["n_sign_only"]]
    table = Table(
        title=f"native dequantize_4bit vs reference path ({res['isa']}, "
        f"bitsandbytes {res['bitsandbytes']})"
    )
    for col in (
        "code",
        "dtype",
        "shape",
        "block",
        "wrong values",
        "±0 only",
        "max |Δ|",
        "mean|err| native",
        "mean|err| ref",
    ):
        table.add_column(col)
    for r in bad:
        table.add_row(
            r["quant_type"],
            r["dtype"],
            str(tuple(r["shape"])),
            str(r["block"]),
            f"{r['n_value']}/{r['n']}",
            str(r["n_sign_only"]),
            f"{r['max_abs']:.3g}",
            f"{r['mean_abs_err_native']:.4f}",
            f"{r['mean_abs_err_reference']:.4f}",
        )
    console.print(table)
    console.print(
        f"{res['cases']} cases: {res['value_mismatches']} with wrong values, "
        f"{res['sign_only_mismatches']} differing only in the sign of zero; "
        f"the rule native_known_bad is wrong on {len(res['rule_disagreements'])}."
    )
    first = next((r for r in bad if r["n_value"]), None)
    if first is not None:
        console.print("\nMinimal reproduction (for an upstream report):\n")
        print(
            REPRO.format(
                shape=tuple(first["shape"]),
                dtype=first["dtype"],
                bs=first["block"],
                qt=first["quant_type"],
            )
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer shapes, float32 only")
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON output (default benchmarks/results/bnb_native_<isa>.json)",
    )
    args = ap.parse_args(argv)
    from quantbounds import write_json_atomic
    from real_runs.bnb_reference import cpu_isa

    shapes, dtypes = (QUICK_SHAPES, ["float32"]) if args.quick else (SHAPES, DTYPES)
    res = run(shapes, BLOCKS, dtypes)
    from real_runs.bnb_reference import routes_avx512

    suffix = cpu_isa() + ("" if routes_avx512() or cpu_isa() != "avx512" else "-avx2routing")
    out = args.out or Path(__file__).parent / "results" / f"bnb_native_{suffix}.json"
    write_json_atomic(out, res)
    print_summary(res)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
