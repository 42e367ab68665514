"""How much the embedded testbed can tell: fine-tuning gain, metric power and PTQ effect sizes.

    python -m real_runs.testbed_report results/runs_chitchat.jsonl [--out results/testbed.json]

Reads the run records (and ``<runs>.ptq.jsonl`` beside them when present) and reports, from
the records alone:

- per (arm, bits, n_train, rank): the fine-tuning gain ΔL_ft = L(base, adapter off) − L(tuned)
  on the same held-out tokens (positive = fine-tuning helped), its mean over seeds with a
  Student-t interval over the seeds (``quantbounds.verdicts.intervals.cluster_mean``; each seed
  one unit), and each run's own paired, dialogue-clustered interval; eval loss, F1 with their
  intervals; held-out tokens and pairs scored (the issue's power targets: ≥ 20k tokens,
  ≥ 500 pairs);
- per (PTQ scheme, bits, rank): the paired PTQ cost ΔL = L(Q) − L(fp) in units of its paired
  standard error (from each record's 95 % interval, se = half-width / 1.96), record by record
  (for SR one record is one rounding draw);
- per (PTQ scheme, rank) at 2 bits, the adapter's 2-bit cost (:func:`adapter_cost_rows`): an
  SR cost is the expectation over rounding draws, so the draws of one trained adapter are
  averaged eval group by eval group before the paired, dialogue-clustered interval
  (``quantbounds.verdicts.intervals.grouped_total`` on the records' ``delta_loss_groups``);
  the rank's cost pools its trained adapters (seeds) the same way, group by group, because
  every adapter is scored on the same held-out groups (this interval is conditional on the
  trained adapters); beside it the Student-t interval over seeds, which also carries the
  seed-to-seed spread of the cost. The issue asks the 2-bit adapter cost to be ≥ 10 paired
  standard errors at every rank: judged on the pooled paired cost of each rank.

Records without ``finetune_gain`` (written before it was measured) are reported with
``gain: None``. Written atomically as JSON; a short text summary is printed.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from quantbounds.calib.records import read_ptq_records, read_records
from quantbounds.verdicts.intervals import cluster_mean

Z95 = 1.959963984540054


def finetune_rows(records: list[dict]) -> list[dict]:
    """One row per (arm, bits, n_train, rank): gain, eval loss and F1 over seeds."""
    groups = defaultdict(list)
    for r in records:
        groups[(r["arm"], r["bits"], r["n_train"], r["rank"])].append(r)
    rows = []
    for (arm, bits, n, rank), recs in sorted(groups.items()):
        gains = [r["finetune_gain"] for r in recs if r.get("finetune_gain") is not None]
        g = cluster_mean(gains) if gains else None
        rows.append({
            "arm": arm,
            "bits": bits,
            "n_train": n,
            "rank": rank,
            "seeds": sorted(r["seed"] for r in recs),
            "gain": None if g is None else {k: g[k] for k in ("estimate", "se", "dof", "ci")},
            "gain_per_run": [
                {"seed": r["seed"], "gain": r["finetune_gain"], "ci": r.get("finetune_gain_ci")}
                for r in recs
                if r.get("finetune_gain") is not None
            ],
            "eval_loss": cluster_mean([r["eval_loss"] for r in recs]),
            "f1": cluster_mean([r["f1"] for r in recs]) if all(
                r.get("f1") is not None for r in recs) else None,
            "f1_ci_per_run": [r.get("f1_ci") for r in recs],
            "eval_tokens": min(r.get("eval_tokens") or 0 for r in recs),
            "eval_pairs_scored": min(r.get("eval_pairs_scored") or 0 for r in recs),
        })
    return rows


def domain_shift_rows(records: list[dict], *, info_of=None) -> list[dict]:
    """Whether the fine-tuning data is a domain shift for the embedded model, per model.

    shift = L_base(held-out) − L_pretrain-valid: the base model's (adapter off, unquantized
    base) mean per-token loss on the runs' held-out dialogues (``eval_loss_base``, mean over the
    runs, all scored on the same leading held-out tokens) minus its loss on its own pretraining
    validation conversations (``pretrain_valid_loss_fp32`` of the model's
    ``embedded_info.json``), both nats per token of the same tokenizer. A real shift makes it
    clearly positive; ≤ 0 says the held-out prompts are no harder for the model than the text
    it was pretrained on, so fine-tuning has little to gain (``best_gain``: the largest mean
    fp16 gain over the (N, rank) rows). ``info_of(name)`` → the info dict or None (default: the
    shipped model's file, :data:`real_runs.embedded.SHIPPED`)."""
    import json

    if info_of is None:
        from real_runs.embedded import SHIPPED

        def info_of(name):
            f = SHIPPED.get(name)
            f = f / "embedded_info.json" if f is not None else None
            return json.loads(f.read_text()) if f is not None and f.is_file() else None

    by_model = defaultdict(list)
    for r in records:
        if r.get("embedded_model") and r.get("base_quant", "none") == "none" and \
                r.get("eval_loss_base") is not None:
            by_model[(r["embedded_model"], r.get("dataset"))].append(r)
    rows = []
    for (name, dataset), recs in sorted(by_model.items()):
        base = float(np.mean([r["eval_loss_base"] for r in recs]))
        info = info_of(name) or {}
        valid = info.get("pretrain_valid_loss_fp32")
        gains = [g for g in finetune_rows([r for r in recs if r["arm"] == "fp16"])
                 if g["gain"] is not None]
        best = max(gains, key=lambda g: g["gain"]["estimate"]) if gains else None
        rows.append({
            "embedded_model": name,
            "dataset": dataset,
            "runs": len(recs),
            "base_loss_heldout": base,
            "base_loss_spread": float(np.ptp([r["eval_loss_base"] for r in recs])),
            "pretrain_valid_loss": valid,
            "shift": None if valid is None else base - valid,
            "best_gain": None if best is None else {
                "n_train": best["n_train"], "rank": best["rank"], **best["gain"]},
        })
    return rows


def ptq_power_rows(ptq: list[dict]) -> list[dict]:
    """One row per (scheme, bits, rank): mean paired ΔL and the smallest ΔL ÷ se over records."""
    groups = defaultdict(list)
    for r in ptq:
        groups[(r["ptq_scheme"], r["bits"], r["rank"])].append(r)
    rows = []
    for (scheme, bits, rank), recs in sorted(groups.items()):
        z = []
        for r in recs:
            lo, hi = r["delta_loss_ci"]
            se = (hi - lo) / (2 * Z95)
            z.append(r["delta_loss"] / se if se > 0 else float("inf"))
        rows.append({
            "scheme": scheme,
            "bits": bits,
            "rank": rank,
            "n_records": len(recs),
            "delta_loss_mean": float(np.mean([r["delta_loss"] for r in recs])),
            "z_min": float(min(z)),
            "z_median": float(np.median(z)),
        })
    return rows


def _z(est: dict) -> float:
    se = est["se"]
    if not np.isfinite(se):
        return float("nan")
    return est["estimate"] / se if se > 0 else float("inf")


def adapter_cost_rows(ptq: list[dict], *, bits: int = 2) -> list[dict]:
    """Per (scheme, rank) at ``bits``: the PTQ cost of each trained adapter and of the rank.

    With D_{a,d,k} the contribution of eval group k to draw d's paired ΔL of adapter a
    (record field ``delta_loss_groups``, Σ_k D_{a,d,k} = ΔL_{a,d}) and n_k its windows:

        adapter a:  u_k = mean_d D_{a,d,k}          (SR: the expected cost over draws)
        rank:       u_k = mean_a mean_d D_{a,d,k}   (every adapter scored on the same groups)

    each with the CR1 interval of :func:`quantbounds.verdicts.intervals.grouped_total`
    (t_{K−1}); ``seed_t`` is the Student-t interval over the adapters' costs
    (:func:`quantbounds.verdicts.intervals.cluster_mean`, one unit per adapter). Groups whose
    records lack ``delta_loss_groups`` or disagree on ``group_windows`` are skipped (an older
    record file has neither).

    ``cost_cv`` / ``z_cv`` (unbiased SR only, records with ``first_order_groups``): the same
    pooled cost with the measured first-order term taken out group by group,
    u_k = mean_a mean_d (D_{a,d,k} − P₁_{a,d,k}). Under unbiased stochastic rounding
    E[ε_BA] = 0, so E[P₁] = 0 and this estimates the same expected cost; P₁ carries much of
    the held-out tokens' sampling error of ΔL, which cancels (a control variate). For RTN, P₁
    is part of the cost (deterministic ε_BA), so there is none."""
    from quantbounds.verdicts.intervals import grouped_total

    cells: dict = defaultdict(lambda: defaultdict(list))
    for r in ptq:
        if r["bits"] == bits and r.get("delta_loss_groups") and r.get("group_windows"):
            cells[(r["ptq_scheme"], r["rank"])][r["ptq_of"]].append(r)
    rows = []
    for (scheme, rank), adapters in sorted(cells.items()):
        sizes = next(iter(adapters.values()))[0]["group_windows"]
        if any(r["group_windows"] != sizes for rs in adapters.values() for r in rs):
            continue
        per = {a: np.mean([r["delta_loss_groups"] for r in rs], axis=0)
               for a, rs in adapters.items()}
        ests = {a: grouped_total(u, sizes) for a, u in per.items()}
        pooled = grouped_total(np.mean(list(per.values()), axis=0), sizes)
        costs = [e["estimate"] for e in ests.values()]
        seed_t = cluster_mean(costs) if len(costs) >= 2 else None
        rows.append({
            "scheme": scheme,
            "bits": bits,
            "rank": rank,
            "adapters": len(per),
            "draws": sorted({len(rs) for rs in adapters.values()}),
            "groups": len(sizes),
            "cost": {k: pooled[k] for k in ("estimate", "se", "dof", "ci")},
            "z_paired": _z(pooled),
            "z_adapter_min": float(min(_z(e) for e in ests.values())),
            "seed_t": None if seed_t is None else {k: seed_t[k] for k in ("estimate", "se",
                                                                          "dof", "ci")},
            "z_seed_t": None if seed_t is None else _z(seed_t),
        })
        if scheme == "sr_tensor" and all(r.get("first_order_groups") for rs in adapters.values()
                                         for r in rs):
            cv = grouped_total(np.mean([np.mean([np.subtract(r["delta_loss_groups"],
                                                             r["first_order_groups"])
                                                 for r in rs], axis=0)
                                        for rs in adapters.values()], axis=0), sizes)
            rows[-1].update(cost_cv={k: cv[k] for k in ("estimate", "se", "dof", "ci")},
                            z_cv=_z(cv))
    return rows


def two_bit_power(rows: list[dict], *, scheme: str = "rtn_tensor", need: float = 10.0,
                  costs: list[dict] | None = None) -> dict:
    """The issue's power target: the 2-bit cost ≥ ``need`` paired se at every rank.

    ``rows``: :func:`ptq_power_rows` (record by record: ``z_min_by_rank``, the smallest ΔL ÷ se
    of one record). ``costs``: :func:`adapter_cost_rows` — when given, the target is judged on
    each rank's pooled paired cost (``z_by_rank``; SR draws averaged), else on ``z_min_by_rank``.
    For unbiased SR with the control variate at every rank (``z_cv``), the target is judged on
    it (``judged_on`` says so): it estimates the same expected cost E_SR[ΔL] (E[P₁] = 0 when
    E[ε_BA] = 0) with the first-order term's share of the held-out tokens' sampling error
    removed, so it is the better-powered estimate of the same quantity; the plain pooled
    ``z_by_rank`` stays beside it. RTN has no control variate (its P₁ is part of its cost).
    A negative cost (quantization lowered the loss) never meets it."""
    at2 = {r["rank"]: r["z_min"] for r in rows if r["bits"] == 2 and r["scheme"] == scheme}
    out = {"scheme": scheme, "need_z": need, "z_min_by_rank": at2}
    judged = at2
    if costs is not None:
        mine = [c for c in costs if c["scheme"] == scheme and c["bits"] == 2]
        judged = {c["rank"]: c["z_paired"] for c in mine}
        out.update(
            z_by_rank=judged,
            z_adapter_min_by_rank={c["rank"]: c["z_adapter_min"] for c in mine},
            z_seed_t_by_rank={c["rank"]: c["z_seed_t"] for c in mine},
            cost_by_rank={c["rank"]: c["cost"]["estimate"] for c in mine},
            judged_on="z_by_rank: each rank's pooled paired cost (SR draws averaged)",
        )
        if any("z_cv" in c for c in mine):
            out["z_cv_by_rank"] = {c["rank"]: c["z_cv"] for c in mine if "z_cv" in c}
            if mine and all("z_cv" in c for c in mine):
                judged = out["z_cv_by_rank"]
                out["judged_on"] = ("z_cv_by_rank: each rank's pooled paired cost with the "
                                    "first-order control variate (ΔL − P₁, SR draws averaged)")
    else:
        out["judged_on"] = "z_min_by_rank: the smallest ΔL ÷ se of one record"
    out["met_at_every_rank"] = bool(judged) and all(
        np.isfinite(z) and z >= need for z in judged.values())
    # whether the effect is resolved at all, whatever its sign (a 2-bit RTN adapter can beat the
    # full-precision one): |ΔL| ≥ need·se at every rank — reported beside the target, not for it
    out["resolved_at_every_rank"] = bool(judged) and all(
        np.isfinite(z) and abs(z) >= need for z in judged.values())
    return out


def main(argv=None) -> int:
    from quantbounds.verdicts.results import write_json_atomic

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs")
    ap.add_argument("--out", default=None)
    ap.add_argument("--shift-also", nargs="*", default=[], metavar="RUNS",
                    help="other records files (e.g. an earlier model's sweep) whose models' domain "
                    "shift is reported beside this one's")
    a = ap.parse_args(argv)
    res = read_records(a.runs)
    others = []
    for f in a.shift_also:
        o = read_records(f)
        if not o.records:
            print(f"error: no run records in {f} (--shift-also)", file=sys.stderr)
            return 2
        others.extend(o.records)
    if not res.records:
        print(f"error: no run records in {a.runs}", file=sys.stderr)
        return 2
    ptq_path = Path(a.runs).with_suffix(".ptq.jsonl")
    ptq = read_ptq_records(ptq_path).records if ptq_path.exists() else []
    ft = finetune_rows(res.records)
    pw = ptq_power_rows(ptq)
    costs = adapter_cost_rows(ptq)
    out = {
        "source": a.runs,
        "ptq_source": str(ptq_path) if ptq else None,
        "n_runs": len(res.records),
        "n_ptq_records": len(ptq),
        "finetune": ft,
        "domain_shift": domain_shift_rows(res.records) + [
            dict(d, source="--shift-also") for d in domain_shift_rows(others)],
        "ptq_power": pw,
        "adapter_cost_2bit": costs,
        "two_bit_power": {
            s: two_bit_power(pw, scheme=s, costs=costs if costs else None)
            for s in sorted({r["scheme"] for r in pw})
        },
        "method": __doc__,
    }
    for r in ft:
        g = r["gain"]
        gtxt = "—" if g is None else (
            f"{g['estimate']:+.4f}" + (f" [{g['ci'][0]:+.4f}, {g['ci'][1]:+.4f}]"
                                       if np.isfinite(g["se"]) else "")
        )
        print(f"{r['arm']:14s} b={r['bits']:2d} N={r['n_train']:4d} r={r['rank']:2d} "
              f"seeds={r['seeds']}  gain {gtxt}  eval {r['eval_loss']['estimate']:.4f}")
    for d in out["domain_shift"]:
        if d["shift"] is not None:
            print(f"{d['embedded_model']} on {d['dataset']}: base loss on the held-out dialogues "
                  f"{d['base_loss_heldout']:.4f} − pretraining validation "
                  f"{d['pretrain_valid_loss']:.4f} = shift {d['shift']:+.4f} nats")
    for s, p in out["two_bit_power"].items():
        if not (p.get("z_by_rank") or p["z_min_by_rank"]):
            continue  # no 2-bit cell (a 4- or 8-bit code)
        zs = ", ".join(f"r{k}: {v:.1f}" for k, v in sorted(
            (p["z_cv_by_rank"] if p["judged_on"].startswith("z_cv")
             else p.get("z_by_rank") or p["z_min_by_rank"]).items()))
        print(f"2-bit {s}: ΔL ÷ se  {zs}  (≥ {p['need_z']:.0f} at every rank: "
              f"{p['met_at_every_rank']})")
    if a.out:
        write_json_atomic(a.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
