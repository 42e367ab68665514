"""Predicted ÷ measured loss cost of post-training-quantized adapters, by scheme, b and r.

    python -m real_runs.ptq_report results/runs_embedded.ptq.jsonl [--out results/ptq_prediction.json]

Reads quantbounds.ptq/1 records (real_runs.ptq) and, for every (scheme, bits, rank) group,
compares the measured paired increase ΔL = L(Q) − L(fp) with three predictions made with no
constant fitted to any quantized run:

    second      ½·s²·Σ tr(ε_BA Σ_x ε_BAᵀ G)          (K-FAC Fisher, realised ε_BA)
    first+2nd   ⟨∇_W L, s·ε_BA⟩ + second             (adds the first-order term)
    moment      E over the noise model of "second"  (σ² = Δ²/12 RTN; exact Bernoulli SR)

and, where the records carry per-group values, "second|first": the second-order term against
ΔL − first-order term (both measured on the same eval groups, so that difference has a paired
interval much narrower than ΔL's own: :func:`quantbounds.calib.ptq_pairs.residual_records`) —
the curvature term's own test, with the first-order term's share of the cost removed.

The ratio is R = Σ pred / Σ measured over the group's records (seeds × SR draws), signed, with
its 95 % interval from :func:`quantbounds.calib.ptq_pairs.ratio_interval` (the delta method:
the trained adapters as independent units plus the held-out tokens' error common to all; its
coverage is checked by simulation in tests/test_real_runs_ptq_report.py. Where Σ measured's
own paired interval (:func:`quantbounds.calib.ptq_pairs.measured_interval`) contains 0 the
ratio is not defined and reported as None; so are the b = 16 rows (their cost, ~1e-9 nats, is
the float32 rounding floor of the merged weights and losses, not a quantization cost). Rows by
(scheme, b, r), and pooled over r by (scheme, b) (``rank`` "all"), show where the prediction
breaks (low bits, non-uniform codes).
Written atomically as JSON; a markdown table is printed.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

import numpy as np

from quantbounds.calib.ptq_pairs import (
    PREDICTION_GROUPS,
    PREDICTIONS,
    measured_interval,
    ratio_interval,
    residual_records,
)
from quantbounds.calib.records import read_ptq_records
from quantbounds.verdicts.ptq_claims import MAX_BITS

def summarize(records: list[dict], *, pooled: bool = False) -> list[dict]:
    """One row per (scheme, bits, rank), or per (scheme, bits) over every rank when ``pooled``
    (rank "all")."""
    groups = defaultdict(list)
    for r in records:
        groups[(r["ptq_scheme"], r["bits"], "all" if pooled else r["rank"])].append(r)
    rows = []
    for (scheme, bits, rank), recs in sorted(groups.items()):
        meas = np.array([r["delta_loss"] for r in recs])
        lo, hi = measured_interval(recs)
        row = {
            "scheme": scheme,
            "bits": bits,
            "rank": rank,
            "n_records": len(recs),
            "measured_mean": float(meas.mean()),
            "measured_sum_ci_excludes_0": bool(lo > 0 or hi < 0),
        }
        if bits > MAX_BITS:  # the float32 floor, not a quantization cost (ptq_claims.MAX_BITS)
            row.update({name: None for name in PREDICTIONS}, **{"second|first": None})
            rows.append(row)
            continue
        for name, fn in PREDICTIONS.items():
            if any(fn(r) is None for r in recs):
                row[name] = None
                continue
            pm = float(np.mean([fn(r) for r in recs]))
            if not row["measured_sum_ci_excludes_0"]:
                row[name] = {"pred_mean": pm, "ratio": None, "ci": None}
                continue
            ratio, a, b, k = ratio_interval(recs, fn, pred_groups=PREDICTION_GROUPS[name])
            row[name] = {
                "pred_mean": pm,
                "ratio": ratio,
                "ci": None if a is None else [a, b],
                "n_clusters": k,
            }
        # the second-order term against what the first-order term leaves (paired interval)
        res = residual_records(recs)
        row["second|first"] = None
        if res is not None:
            lo_r, hi_r = measured_interval(res)
            row["measured_minus_first_mean"] = float(np.mean([r["delta_loss"] for r in res]))
            if lo_r > 0 or hi_r < 0:
                ratio, a, b, k = ratio_interval(res, PREDICTIONS["second"])
                row["second|first"] = {"ratio": ratio, "ci": None if a is None else [a, b],
                                       "n_clusters": k}
            else:
                row["second|first"] = {"ratio": None, "ci": None}
        rows.append(row)
    return rows


def agreement(records: list[dict]) -> dict:
    """Signed agreement, no constant fitted: R²₀ = 1 − Σ(ΔL − pred)² / Σ(ΔL − mean ΔL)² of the
    measured increase against each prediction used as is (slope 1, intercept 0), per scheme and
    over all records; negative when the prediction is worse than predicting the mean."""
    out = {}
    by = defaultdict(list)
    for r in records:
        by[r["ptq_scheme"]].append(r)
        by["all"].append(r)
    for scheme, recs in sorted(by.items()):
        meas = np.array([r["delta_loss"] for r in recs])
        ss = float(((meas - meas.mean()) ** 2).sum())
        row = {"n": len(recs)}
        for name, fn in PREDICTIONS.items():
            if any(fn(r) is None for r in recs) or ss == 0:
                row[name] = None
                continue
            pred = np.array([fn(r) for r in recs])
            row[name] = 1 - float(((meas - pred) ** 2).sum()) / ss
        out[scheme] = row
    return out


def _fmt(x):
    if x is None or x.get("ratio") is None:
        return "—"
    ci = x["ci"]
    return f"{x['ratio']:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def markdown(rows: list[dict]) -> str:
    # the full-Hessian moment only where some record carries it (an opt-in of the sweep)
    hm = any(r.get("hessian_moment") for r in rows)
    out = [
        "| scheme | b | r | n | measured ΔL (mean) | second ÷ meas | first+2nd ÷ meas | "
        "moment ÷ meas | " + ("E_Hessian ÷ meas | first+E_Hessian ÷ meas | " if hm else "")
        + "second ÷ (meas − first) |",
        "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if hm else ""),
    ]
    for r in rows:
        out.append(
            f"| {r['scheme']} | {r['bits']} | {r['rank']} | {r['n_records']} | "
            f"{r['measured_mean']:.2e} | {_fmt(r['second'])} | {_fmt(r['first+2nd'])} | "
            f"{_fmt(r['moment'])} | "
            + (f"{_fmt(r.get('hessian_moment'))} | {_fmt(r.get('first+E_Hessian'))} | "
               if hm else "")
            + f"{_fmt(r.get('second|first'))} |"
        )
    return "\n".join(out)


def main(argv=None) -> int:
    from quantbounds.verdicts.results import write_json_atomic

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ptq_records")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    res = read_ptq_records(a.ptq_records)
    if not res.records:
        print(f"error: no PTQ records in {a.ptq_records}", file=sys.stderr)
        return 2
    rows = summarize(res.records)
    pooled = summarize(res.records, pooled=True)
    agree = agreement(res.records)
    print(markdown(pooled))
    print("\nsigned agreement R²₀ (prediction used as is):")
    for k, v in agree.items():
        print(
            f"  {k:12s} n={v['n']:3d}  "
            + "  ".join(f"{n}: {'—' if v[n] is None else f'{v[n]:+.3f}'}" for n in PREDICTIONS)
        )
    if a.out:
        write_json_atomic(
            a.out,
            {
                "source": a.ptq_records,
                "n_records": len(res.records),
                "bad_lines": len(res.errors),
                "rows": rows,
                "pooled_over_rank": pooled,
                "agreement_R2_0": agree,
                "method": __doc__,
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
