"""``quantbounds calibrate``: fits, verdicts, b* table and figures from run records.

:func:`run_calibration` assembles everything written to ``results/calibration.json``, reading
down the layers once: records → :func:`quantbounds.calib.pairing.pair_runs` (screen and pair,
one :class:`~quantbounds.calib.pairing.PairedRuns`) → the robust fits of Thm 3.1's terms
(:func:`quantbounds.calib.calibration.calibrate`)

    Δ(r, b) = C2·r^β·ρ^(−b)          (paired excess eval loss of a quantized-adapter arm)
    L_16(r, N) = L∞ + C1·r^a·N^(−c)   (16-bit eval loss)

for the chosen arm, the quantization-term fit for every other adapter arm present (and for
``base_nf4_adapter_rtn`` against ``base_nf4``) → whether each fit may drive a decision
(:func:`quantbounds.verdicts.standard.usable_fit`: not weakly identified, held-out R² ≥ 0)
→ the verdicts on the seed documents' claims (:mod:`quantbounds.verdicts.claims`, every one
with its ``claim_id``, decided by :mod:`quantbounds.verdicts.standard`) → the calibrated b*
table (:func:`quantbounds.calib.bstar.bits_table`, only from usable fits) and a summary of
the data. :func:`main` is the command line (entry point ``quantbounds.cli.calibrate:main``):
it writes ``results/calibration.json`` with
:func:`quantbounds.verdicts.results.write_results` (one Holm step over the file's hypotheses,
each reading of a multi-reading verdict included; raw and adjusted decisions) and records the
``command`` that produced it; the figures (:mod:`quantbounds.report.plots`) are drawn from
the same PairedRuns.
"""

from __future__ import annotations

import shlex
from dataclasses import replace

import numpy as np

from quantbounds.calib.bstar import bits_table
from quantbounds.calib.calibration import Calibration, CalibrationError, calibrate
from quantbounds.calib.pairing import ADAPTER_ARMS, PairedRuns, pair_runs
from quantbounds.verdicts import standard
from quantbounds.verdicts.claims import (claim_verdicts, fit_usability,
                                         fit_verdicts, theory_form_verdict)


def _schema_message(errors: list[tuple[int, str]]) -> list[str]:
    out = []
    schema_errs = [ln for ln, msg in errors if msg.startswith("schema must be")]
    if schema_errs:
        out.append(f"{len(schema_errs)} lines have another schema version (first at line "
                   f"{schema_errs[0]}); only quantbounds.run/1 is read — re-run or convert those "
                   f"runs")
    other = [(ln, m) for ln, m in errors if not m.startswith("schema must be")]
    if other:
        out.append(f"{len(other)} unreadable lines skipped, e.g. line {other[0][0]}: {other[0][1]}")
    return out


def _main_fit(runs: PairedRuns, *, arm: str, baseline_arm: str, scale, n_boot: int, seed: int,
              tol: float, table_ranks, table_Ns, notes: list):
    """The chosen arm's fit of both terms and its b* table (None and [] with a note when
    nothing can be fitted)."""
    try:
        cal = calibrate(runs, arm=arm, baseline_arm=baseline_arm, scale=scale, n_boot=n_boot,
                        seed=seed)
    except CalibrationError as err:
        notes.append(f"no fit: {err}")
        return None, []
    notes += cal.notes
    usable = fit_usability(cal)
    for term, (ok, why) in usable.items():
        part = cal.quant if term == "quantization" else cal.gen
        if part is not None and not ok:
            notes.append(f"{term} term of the {arm} fit is not used for decisions (b* table, "
                         f"allocator, verdicts): {why}")
    Ns = table_Ns or sorted({r["n_train"] for r in runs.runs(baseline_arm)}) or [1000]
    return cal, bits_table(cal, ranks=table_ranks, Ns=Ns, tol=tol, usable=usable)


def _other_arm_fits(runs: PairedRuns, *, arm: str, baseline_arm: str, scale, n_boot: int,
                    seed: int) -> tuple[dict, list[Calibration]]:
    """The quantization-term fit for every other adapter arm present (RTN vs SR vs NF4 vs the
    paper's additive noise: does "4 per bit" hold for the real quantizers too?), and for
    base_nf4_adapter_rtn against base_nf4 (the adapter term on top of an NF4 W0). Returns the
    ``by_arm`` fits object and the fitted Calibrations (quantization term only)."""
    others = [(x, baseline_arm) for x in ADAPTER_ARMS if x != arm and runs.has(x)]
    if runs.has("base_nf4_adapter_rtn"):
        others.append(("base_nf4_adapter_rtn", "base_nf4"))
    by_arm, fitted = {}, []
    for other, base_arm in others:
        try:
            cal = calibrate(runs, arm=other, baseline_arm=base_arm, scale=scale, n_boot=n_boot,
                            seed=seed)
        except (CalibrationError, np.linalg.LinAlgError) as err:
            by_arm[other] = {"status": f"not fitted: {err}"}
            continue
        if cal.quant is None:
            by_arm[other] = {"status": "quantization term not fitted"}
            continue
        ok, why = fit_usability(cal)["quantization"]
        by_arm[other] = {**{k: p.to_dict() for k, p in cal.quant.params.items()},
                         "r2_loco": cal.quant.loco.r2, "n_pairs": cal.quant.n,
                         "baseline_arm": base_arm, "usable": ok, "why": why,
                         "weakly_identified": list(cal.quant.weakly_identified)}
        fitted.append(cal.quantization_only())
    return by_arm, fitted


PTQ_FIT_SCHEMES = ("sr_tensor", "rtn_tensor", "rtn_channel", "rtn_block")


def _ptq_fits(ptq_records: list[dict], runs: PairedRuns, *, n_boot: int, seed: int,
              notes: list) -> tuple[dict, list]:
    """The quantization term fitted to the post-training quantization of trained adapters, one
    fit per scheme with a b-curve (:func:`quantbounds.calib.calibration.calibrate_pairs`), and
    the verdicts they support: the theory's exponents against each fit, the zero-constant
    curvature prediction cell by cell, and prediction vs fitted form on held-out
    configurations (:mod:`quantbounds.verdicts.ptq_claims`). Returns (the ``fits["ptq"]``
    object, verdicts, {"ptq_<scheme>": its Calibration})."""
    from quantbounds.calib.calibration import calibrate_pairs
    from quantbounds.calib.fitting import r_squared
    from quantbounds.calib.ptq_pairs import ptq_pairs
    from quantbounds.verdicts.ptq_claims import form_verdict, prediction_verdict, r2_difference

    out, verdicts, fitted = {}, [], {}
    for scheme in PTQ_FIT_SCHEMES:
        pp = ptq_pairs(ptq_records, runs.records, scheme=scheme)
        if not len(pp):
            continue
        scales = {r.get("scale") for recs in pp.records for r in recs}
        scale = scales.pop() if len(scales) == 1 else None
        try:
            cal = calibrate_pairs(pp.pairs, n_groups=len(pp.adapters), scale=scale,
                                  n_boot=n_boot, seed=seed)
        except (CalibrationError, np.linalg.LinAlgError) as err:
            out[scheme] = {"status": f"not fitted: {err}"}
            continue
        fitted[scheme] = (pp, cal)
        ok, why = fit_usability(cal)["quantization"]
        D, se, G, n = r2_difference(pp.pairs.excess, pp.pred, cal.quant.loco.predictions,
                                    pp.pairs.group)
        out[scheme] = {**{k: p.to_dict() for k, p in cal.quant.params.items()},
                       "r2_loco": cal.quant.loco.r2, "r2_in_sample": cal.quant.r2_in_sample,
                       "r2_zero_constant_prediction": r_squared(pp.pairs.excess, pp.pred),
                       "r2_difference": {"estimate": D, "se_jackknife": se, "n_adapters": G,
                                         "n_pairs": n},
                       "n_pairs": len(pp), "n_adapters": len(pp.adapters), "usable": ok,
                       "why": why, "weakly_identified": list(cal.quant.weakly_identified),
                       "scale": scale, "notes": list(cal.notes)}
        verdicts += fit_verdicts(cal)
    v = prediction_verdict(ptq_records)
    if v is not None:
        verdicts.append(v)
    else:
        notes.append("PTQ: no (scheme, r, b) cell with its excess above noise: no "
                     "curvature-prediction verdict")
    v = form_verdict(fitted)
    if v is not None:
        verdicts.append(v)
    return out, verdicts, {f"ptq_{scheme}": cal for scheme, (_pp, cal) in fitted.items()}


def run_calibration(records, *, arm: str = "adapter_rtn", baseline_arm: str = "fp16",
                    scale: str | None = None, n_boot: int = 1000, seed: int = 0, tol: float = 0.01,
                    notes: list[str] | None = None, table_ranks=(4, 8, 16, 32), table_Ns=None,
                    ptq_records: list[dict] | None = None) -> tuple[dict, Calibration | None]:
    """Everything ``quantbounds calibrate`` writes (verdicts, fits, b* table, data summary),
    and the Calibration object (None when nothing could be fitted). ``records``: run-record
    dicts (screened and paired here, once) or a PairedRuns; ``ptq_records``: the
    ``quantbounds.ptq/1`` records of their post-training-quantized adapters (:func:`_ptq_fits`),
    when there are any. The verdicts are one family:
    :func:`quantbounds.verdicts.results.write_results` applies one Holm step at
    ``family_alpha`` over every hypothesis, each reading of a multi-reading verdict included
    (:func:`finalized` gives the verdicts as written)."""
    from quantbounds.calib.synthetic import is_synthetic

    # calib: screen and pair once
    runs = pair_runs(records)
    notes = list(notes or []) + list(runs.problems)
    # fits: both terms for the chosen arm (and its b* table), the quantization term for the rest
    cal, table = _main_fit(runs, arm=arm, baseline_arm=baseline_arm, scale=scale, n_boot=n_boot,
                           seed=seed, tol=tol, table_ranks=table_ranks, table_Ns=table_Ns,
                           notes=notes)
    by_arm, other_fits = _other_arm_fits(runs, arm=arm, baseline_arm=baseline_arm, scale=scale,
                                         n_boot=n_boot, seed=seed)
    # verdicts: the seeds' claims on the pairs, then the theory's exponents against each fit
    claims, claim_notes = claim_verdicts(runs, seed=seed)
    verdicts = claims + [v for c in ([cal] if cal else []) + other_fits for v in fit_verdicts(c)]
    ptq, ptq_cals = None, {}
    if ptq_records:
        ptq, ptq_verdicts, ptq_cals = _ptq_fits(ptq_records, runs, n_boot=n_boot, seed=seed,
                                                notes=notes)
        verdicts += ptq_verdicts
    # the paper's exponents against fitted ones on held-out configurations, every usable fit
    # (a fit whose held-out R² is below 0 drives no decision, DESIGN.md §6)
    forms = {label: c for label, c in {**({arm: cal} if cal else {}), **ptq_cals}.items()
             if fit_usability(c)["quantization"][0]}
    v = theory_form_verdict(forms)
    if v is not None:
        verdicts.append(v)
    family_alpha = standard.ALPHA  # one Holm step over the file: results.finalize_verdicts
    # what the design could detect, where a reader of the table sees it
    verdicts = [replace(v, conditions=f"{v.conditions}; power: {v.details['power']}")
                if v.details.get("power") else v for v in verdicts]
    fits = cal.fits_dict() if cal is not None else {"C1": None, "C2": None,
                                                    "per_bit_factor": None, "exponent_r": None}
    fits["usable"] = ({t: {"usable": ok, "why": why} for t, (ok, why) in fit_usability(cal).items()}
                      if cal is not None else {})
    fits["by_arm"] = by_arm
    if ptq is not None:
        fits["ptq"] = ptq
    return {"synthetic": is_synthetic(runs.records),
            "verdicts": [v.to_dict() for v in verdicts],
            "family_alpha": family_alpha,
            "fits": fits, "bits_table": table, "notes": notes + claim_notes,
            "data": runs.summary(),
            "settings": {"arm": arm, "baseline_arm": baseline_arm,
                         "scale": cal.scale if cal else scale, "n_boot": n_boot, "seed": seed,
                         "tol_nats": tol, "intervals": "Student t clustered over seeds"}}, cal


def finalized(out: dict) -> dict:
    """``out`` with its verdicts as :func:`quantbounds.verdicts.results.write_results` writes
    them (Holm at ``family_alpha``: ``verdict`` adjusted, ``raw_verdict`` before)."""
    from quantbounds.verdicts.results import finalize_verdicts

    return {**out, "verdicts": finalize_verdicts(out["verdicts"], alpha=out["family_alpha"])}


def _parser():
    import argparse

    from quantbounds.cli.options import add_common_options

    p = argparse.ArgumentParser(prog="quantbounds calibrate", description=main.__doc__)
    p.add_argument("records", help="JSONL run records (schema quantbounds.run/1)")
    p.add_argument("--arm", default="adapter_rtn", choices=ADAPTER_ARMS,
                   help="quantized-adapter arm whose paired excess is fitted")
    p.add_argument("--baseline", default="fp16", help="16-bit baseline arm")
    p.add_argument("--scale", default=None,
                   help="LoRA scale convention to fit (default: most frequent)")
    p.add_argument("--ptq", default=None,
                   help="post-training-quantization records (quantbounds.ptq/1; default: "
                        "<records stem>.ptq.jsonl beside the records when it exists; '' = none)")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--tol", type=float, default=0.01, help="excess-loss tolerance (nats) for b*")
    p.add_argument("--ranks", default="4,8,16,32", help="ranks r of the b* table")
    p.add_argument("--n", default=None,
                   help="sample sizes N of the b* table (default: those in the records)")
    add_common_options(p, out="results/calibration.json", progress=False,
                       figures_help="folder for figures ('' = none)",
                       seed_help="seed of the bootstrap resamples (≥ 0)")
    return p


def _print_summary(out: dict, path) -> None:
    """Verdict table, notes, fitted constants and the b* table, for the terminal or a log."""
    from quantbounds.verdicts.results import print_verdicts

    tag = " (SYNTHETIC records)" if out["synthetic"] else ""
    print_verdicts(out["verdicts"], title=f"calibration verdicts{tag}")
    for n in out["notes"]:
        print("note:", n)
    for k in ("C1", "C2", "per_bit_factor", "exponent_r"):
        e = out["fits"].get(k)
        fixed = "(fixed)" if isinstance(e, dict) and e["fixed"] else ""
        print(f"{k:15s}", "not fitted" if not isinstance(e, dict)
              else f"{e['value']:.4g}  t CI {e.get('ci_t')}  (bootstrap ∪ Wald {e['ci']})  {fixed}")
    for term, u in (out["fits"].get("usable") or {}).items():
        print(f"{term} fit usable for decisions: {u['usable']} ({u['why']})")
    for row in out["bits_table"]:
        cells = [f"paper {row['paper']:.2f}"]
        for k in ("derived_balanced", "calibrated_balanced", "calibrated_tolerance"):
            e = row.get(k)
            if isinstance(e, dict):
                ci = f" [{e['ci'][0]:.2f}, {e['ci'][1]:.2f}]" if e.get("ci") else ""
                cells.append(f"{k.replace('_', ' ')} {e['b']:.2f}{ci}")
            elif e is not None:
                cells.append(f"{k.replace('_', ' ')} {e:.2f}")
        if row.get("not_calibrated"):
            cells.append(row["not_calibrated"])
        print(f"b*(r={row['r']}, N={row['N']}): " + "; ".join(cells))
    print("wrote", path)


def _ptq_path(records, given):
    """The PTQ records to read: ``given`` ('' = none), else ``<stem>.ptq.jsonl`` beside the
    run records when it exists (what ``quantbounds sweep`` writes), else None."""
    from pathlib import Path

    if given is not None:
        return Path(given) if given else None
    p = Path(records)
    sibling = p.with_name(p.name[: -len(".jsonl")] + ".ptq.jsonl") if p.name.endswith(
        ".jsonl") else p.with_name(p.name + ".ptq.jsonl")
    return sibling if sibling.exists() else None


def main(argv: list[str] | None = None) -> int:
    """``quantbounds calibrate runs.jsonl``: fits, verdicts and figures from run records."""
    import sys

    from quantbounds.calib.records import read_records
    from quantbounds.cli.options import figures_dir
    from quantbounds.verdicts.results import write_results

    argv = list(sys.argv[1:] if argv is None else argv)
    a = _parser().parse_args(argv)
    try:
        read = read_records(a.records)
    except FileNotFoundError as err:
        print(f"quantbounds calibrate: {err}")
        return 2
    notes = _schema_message(read.errors)
    if not read.records:
        print("quantbounds calibrate: no valid records in", a.records, "—",
              "; ".join(notes) or "file is empty")
        return 2
    runs = pair_runs(read.records)
    ptq_path = _ptq_path(a.records, a.ptq)
    ptq_records = None
    if ptq_path is not None:
        from quantbounds.calib.records import read_ptq_records

        try:
            got = read_ptq_records(ptq_path)
        except FileNotFoundError as err:
            print(f"quantbounds calibrate: --ptq: {err}")
            return 2
        ptq_records = got.records
        if got.errors:
            notes.append(f"{ptq_path}: {len(got.errors)} unreadable PTQ lines skipped")
    out, cal = run_calibration(runs, arm=a.arm, baseline_arm=a.baseline, scale=a.scale,
                               n_boot=a.n_boot, seed=a.seed, tol=a.tol, notes=notes,
                               ptq_records=ptq_records,
                               table_ranks=[int(x) for x in a.ranks.split(",")],
                               table_Ns=[int(x) for x in a.n.split(",")] if a.n else None)
    out["records_file"] = str(a.records)
    out["ptq_records_file"] = None if ptq_path is None else str(ptq_path)
    out["command"] = "quantbounds calibrate " + shlex.join(argv)
    shown = finalized(out)
    figures = figures_dir(a)
    if figures is not None:
        try:
            from quantbounds.report.plots import calibration_figures

            out["figures"] = calibration_figures(runs, shown, cal, outdir=figures)
        except Exception as err:  # a figure must never cost the fit; say why it is missing
            out["notes"].append(f"figures not written: {type(err).__name__}: {err}")
    write_results(a.out, out, alpha=out["family_alpha"])
    _print_summary(shown, a.out)
    return 0
