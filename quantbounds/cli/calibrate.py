"""``quantbounds calibrate``: fits, verdicts, b* table and figures from run records.

:func:`run_calibration` assembles everything written to ``results/calibration.json``:
the robust fits of Thm 3.1's terms (:func:`quantbounds.calib.calibration.calibrate`)

    Δ(r, b) = C2·r^β·ρ^(−b)          (paired excess eval loss of a quantized-adapter arm)
    L_16(r, N) = L∞ + C1·r^a·N^(−c)   (16-bit eval loss)

for the chosen arm, the quantization-term fit for every other adapter arm present (and for
``base_nf4_adapter_rtn`` against ``base_nf4``), the verdicts on the seed documents' claims
(:mod:`quantbounds.verdicts.claims`), the calibrated b* table (:func:`quantbounds.calib.calibration.bits_table`)
and a summary of the data. :func:`main` is the command line (entry point
``quantbounds.calib.calibration:main``, re-exported there).
"""

from __future__ import annotations

import numpy as np

from collections import Counter

from quantbounds.calib.calibration import Calibration, CalibrationError, bits_table, calibrate
from quantbounds.verdicts.claims import claim_verdicts, fit_verdicts
from quantbounds.calib.pairing import ADAPTER_ARMS, screen_records


def _schema_message(errors: list[tuple[int, str]]) -> list[str]:
    out = []
    schema_errs = [ln for ln, msg in errors if msg.startswith("schema must be")]
    if schema_errs:
        out.append(f"{len(schema_errs)} lines have another schema version (first at line {schema_errs[0]}); "
                   f"only quantbounds.run/1 is read — re-run or convert those runs")
    other = [(ln, m) for ln, m in errors if not m.startswith("schema must be")]
    if other:
        out.append(f"{len(other)} unreadable lines skipped, e.g. line {other[0][0]}: {other[0][1]}")
    return out


def run_calibration(records: list[dict], *, arm: str = "adapter_rtn", baseline_arm: str = "fp16",
                    scale: str | None = None, n_boot: int = 1000, seed: int = 0, tol: float = 0.01,
                    notes: list[str] | None = None, table_ranks=(4, 8, 16, 32), table_Ns=None
                    ) -> tuple[dict, Calibration | None]:
    """Everything ``quantbounds calibrate`` writes (verdicts, fits, b* table, data summary),
    and the Calibration object (None when nothing could be fitted)."""
    from quantbounds.calib.synthetic import is_synthetic

    notes = list(notes or [])
    valid, problems = screen_records(records)
    notes += problems
    fits: dict = {"C1": None, "C2": None, "per_bit_factor": None, "exponent_r": None}
    verdicts, table, cal = [], [], None
    try:
        cal = calibrate(valid, arm=arm, baseline_arm=baseline_arm, scale=scale, n_boot=n_boot,
                        seed=seed)
        notes += cal.notes
        fits = cal.fits_dict()
        verdicts += fit_verdicts(cal)
        Ns = table_Ns or sorted({r["n_train"] for r in valid if r["arm"] == baseline_arm}) or [1000]
        table = bits_table(cal, ranks=table_ranks, Ns=Ns, tol=tol)
    except CalibrationError as err:
        notes.append(f"no fit: {err}")
    # the same quantization-term fit for every other adapter arm present (RTN vs SR vs NF4 vs the
    # paper's additive noise): does the "4 per bit" hold for the real quantizers too?
    # (base_nf4_adapter_rtn against base_nf4: the adapter term on top of an NF4 W0)
    fits["by_arm"] = {}
    others = [(x, baseline_arm) for x in ADAPTER_ARMS if x != arm and any(r["arm"] == x for r in valid)]
    if any(r["arm"] == "base_nf4_adapter_rtn" for r in valid):
        others.append(("base_nf4_adapter_rtn", "base_nf4"))
    for other, base_arm in others:
        try:
            c2 = calibrate(valid, arm=other, baseline_arm=base_arm, scale=scale, n_boot=n_boot, seed=seed)
        except (CalibrationError, np.linalg.LinAlgError) as err:
            fits["by_arm"][other] = {"status": f"not fitted: {err}"}
            continue
        if c2.quant is None:
            fits["by_arm"][other] = {"status": "quantization term not fitted"}
            continue
        fits["by_arm"][other] = dict(c2.quant["params"], r2_loco=c2.quant["loco"]["r2"],
                                     n_pairs=c2.quant["n_pairs"], baseline_arm=base_arm)
        verdicts += fit_verdicts(Calibration(quant=c2.quant, gen=None, quant_draws=None, gen_draws=None,
                                             notes=[], arm=other, scale=c2.scale))
    cv, cnotes = claim_verdicts(valid, n_boot=max(n_boot, 200), seed=seed)
    verdicts = cv + verdicts
    notes += cnotes
    counts = Counter(f"{r['arm']} b={r['bits']}" for r in valid)
    return {"synthetic": is_synthetic(valid), "verdicts": [v.to_dict() for v in verdicts],
            "fits": fits, "bits_table": table, "notes": notes,
            "data": {"n_records": len(records), "n_valid": len(valid), "runs_by_arm": dict(counts),
                     "ranks": sorted({r["rank"] for r in valid}), "n_train": sorted({r["n_train"] for r in valid}),
                     "seeds": sorted({r["seed"] for r in valid}), "models": sorted({r["model"] for r in valid})},
            "settings": {"arm": arm, "baseline_arm": baseline_arm, "scale": cal.scale if cal else scale,
                         "n_boot": n_boot, "seed": seed, "tol_nats": tol}}, cal


def main(argv: list[str] | None = None) -> int:
    """``quantbounds calibrate runs.jsonl``: fits, verdicts and figures from run records."""
    import argparse

    from quantbounds.calib.records import read_records
    from quantbounds.verdicts.results import print_verdicts, write_json_atomic

    p = argparse.ArgumentParser(prog="quantbounds calibrate", description=main.__doc__)
    p.add_argument("records", help="JSONL run records (schema quantbounds.run/1)")
    p.add_argument("--arm", default="adapter_rtn", choices=ADAPTER_ARMS,
                   help="quantized-adapter arm whose paired excess is fitted")
    p.add_argument("--baseline", default="fp16", help="16-bit baseline arm")
    p.add_argument("--scale", default=None, help="LoRA scale convention to fit (default: most frequent)")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tol", type=float, default=0.01, help="excess-loss tolerance (nats) for b*")
    p.add_argument("--ranks", default="4,8,16,32", help="ranks r of the b* table")
    p.add_argument("--n", default=None, help="sample sizes N of the b* table (default: those in the records)")
    p.add_argument("--out", default="results/calibration.json")
    p.add_argument("--figures", default="figures", help="folder for figures ('' = none)")
    a = p.parse_args(argv)
    try:
        rr = read_records(a.records)
    except FileNotFoundError as err:
        print(f"quantbounds calibrate: {err}")
        return 2
    notes = _schema_message(rr.errors)
    if not rr.records:
        print("quantbounds calibrate: no valid records in", a.records, "—", "; ".join(notes) or "file is empty")
        return 2
    out, cal = run_calibration(rr.records, arm=a.arm, baseline_arm=a.baseline, scale=a.scale,
                               n_boot=a.n_boot, seed=a.seed, tol=a.tol, notes=notes,
                               table_ranks=[int(x) for x in a.ranks.split(",")],
                               table_Ns=[int(x) for x in a.n.split(",")] if a.n else None)
    out["records_file"] = str(a.records)
    if a.figures:
        try:
            from quantbounds.report.plots import calibration_figures

            out["figures"] = calibration_figures(screen_records(rr.records)[0], out, cal, outdir=a.figures)
        except Exception as err:  # a figure must never cost the fit; say why it is missing
            out["notes"].append(f"figures not written: {type(err).__name__}: {err}")
    write_json_atomic(a.out, out)
    tag = " (SYNTHETIC records)" if out["synthetic"] else ""
    print_verdicts(out["verdicts"], title=f"calibration verdicts{tag}")
    for n in out["notes"]:
        print("note:", n)
    f = out["fits"]
    for k in ("C1", "C2", "per_bit_factor", "exponent_r"):
        e = f.get(k)
        print(f"{k:15s}", "not fitted" if not isinstance(e, dict) else f"{e['value']:.4g}  CI {e['ci']}  {'(fixed)' if e['fixed'] else ''}")
    for row in out["bits_table"]:
        cells = [f"paper {row['paper']:.2f}"]
        for k in ("derived_balanced", "calibrated_balanced", "calibrated_tolerance"):
            e = row.get(k)
            if isinstance(e, dict):
                ci = f" [{e['ci'][0]:.2f}, {e['ci'][1]:.2f}]" if e.get("ci") else ""
                cells.append(f"{k.replace('_', ' ')} {e['b']:.2f}{ci}")
            elif e is not None:
                cells.append(f"{k.replace('_', ' ')} {e:.2f}")
        print(f"b*(r={row['r']}, N={row['N']}): " + "; ".join(cells))
    print("wrote", a.out)
    return 0
