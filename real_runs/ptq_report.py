"""Predicted ÷ measured loss cost of post-training-quantized adapters, by scheme, b and r.

    python -m real_runs.ptq_report results/runs_embedded.ptq.jsonl [--out results/ptq_prediction.json]

Reads quantbounds.ptq/1 records (real_runs.ptq) and, for every (scheme, bits, rank) group,
compares the measured paired increase ΔL = L(Q) − L(fp) with three predictions made with no
constant fitted to any quantized run:

    second      ½·s²·Σ tr(ε_BA Σ_x ε_BAᵀ G)          (K-FAC Fisher, realised ε_BA)
    first+2nd   ⟨∇_W L, s·ε_BA⟩ + second             (adds the first-order term)
    moment      E over the noise model of "second"  (σ² = Δ²/12 RTN; exact Bernoulli SR)

The ratio is R = Σ pred / Σ measured over the group's records (seeds × SR draws). Its 95 %
interval combines the two sources of its uncertainty (the delta method on the ratio estimator):

    between adapters  the trained adapters (the ptq_of clusters: records of one training share
                      its curvature and its fp reference) are the independent units: with
                      z_k = (P_k − R·M_k) / M̄ over the G clusters, se_b = sd(z)/√G;
    held-out tokens   every record is scored on the same held-out tokens, so their sampling
                      error is common to all clusters: se_e = R·se(Σ M)/Σ M, se(Σ M) from the
                      records' paired, dialogue-clustered intervals (their half-widths summed,
                      i.e. taken as perfectly correlated: conservative);

R ± q·√(se_b² + se_e²), q the t_{G−1} quantile (normal for G = 1, where only se_e is known;
the interval is then conditional on that one trained adapter, which n_clusters says). Its
coverage is checked by simulation in tests/test_real_runs_ptq_report.py. Where |Σ measured| is
within its own paired interval of 0 the ratio is not defined and reported as None. Rows by
(scheme, b, r), and pooled over r by (scheme, b) (``rank`` "all"), show where the prediction
breaks (low bits, non-uniform codes).
Written atomically as JSON; a markdown table is printed.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict

import numpy as np

from quantbounds.calib.records import read_ptq_records

PREDICTIONS = {
    "second": lambda r: r["pred_plugin"],
    "first+2nd": lambda r: r["pred_plugin"] + r.get("pred_first_order", 0.0),
    "moment": lambda r: r.get("pred_moment"),
}


def _ratio_ci(recs, pred_fn):
    """(R, lo, hi, G): the ratio of sums and its 95 % interval (module docstring)."""
    from scipy import stats

    clusters = defaultdict(list)
    for r in recs:
        clusters[r.get("ptq_of") or (r["rank"], r["seed"])].append(r)
    keys = list(clusters)
    P = np.array([sum(pred_fn(r) for r in clusters[k]) for k in keys], float)
    M = np.array([sum(r["delta_loss"] for r in clusters[k]) for k in keys], float)
    if M.sum() <= 0:
        return math.nan, None, None, len(keys)
    ratio = float(P.sum() / M.sum())
    half_m = 0.5 * sum(r["delta_loss_ci"][1] - r["delta_loss_ci"][0] for r in recs)
    se_e = abs(ratio) * (half_m / stats.norm.ppf(0.975)) / M.sum()
    g = len(keys)
    if g >= 2:
        z = (P - ratio * M) / M.mean()
        se_b = float(z.std(ddof=1) / math.sqrt(g))
        q = float(stats.t.ppf(0.975, g - 1))
    else:
        se_b, q = 0.0, float(stats.norm.ppf(0.975))
    half = q * math.sqrt(se_b**2 + se_e**2)
    return ratio, ratio - half, ratio + half, g


def summarize(records: list[dict], *, pooled: bool = False) -> list[dict]:
    """One row per (scheme, bits, rank), or per (scheme, bits) over every rank when ``pooled``
    (rank "all")."""
    groups = defaultdict(list)
    for r in records:
        groups[(r["ptq_scheme"], r["bits"], "all" if pooled else r["rank"])].append(r)
    rows = []
    for (scheme, bits, rank), recs in sorted(groups.items()):
        meas = np.array([r["delta_loss"] for r in recs])
        lo = sum(r["delta_loss_ci"][0] for r in recs)
        hi = sum(r["delta_loss_ci"][1] for r in recs)
        row = {
            "scheme": scheme,
            "bits": bits,
            "rank": rank,
            "n_records": len(recs),
            "measured_mean": float(meas.mean()),
            "measured_sum_ci_excludes_0": bool(lo > 0 or hi < 0),
        }
        for name, fn in PREDICTIONS.items():
            if any(fn(r) is None for r in recs):
                row[name] = None
                continue
            pm = float(np.mean([fn(r) for r in recs]))
            if not row["measured_sum_ci_excludes_0"] or meas.sum() <= 0:
                row[name] = {"pred_mean": pm, "ratio": None, "ci": None}
                continue
            ratio, a, b, k = _ratio_ci(recs, fn)
            row[name] = {
                "pred_mean": pm,
                "ratio": ratio,
                "ci": None if a is None else [a, b],
                "n_clusters": k,
            }
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
    out = [
        "| scheme | b | r | n | measured ΔL (mean) | second ÷ meas | first+2nd ÷ meas | moment ÷ meas |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['scheme']} | {r['bits']} | {r['rank']} | {r['n_records']} | "
            f"{r['measured_mean']:.2e} | {_fmt(r['second'])} | {_fmt(r['first+2nd'])} | "
            f"{_fmt(r['moment'])} |"
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
