"""Where the zero-constant loss prediction breaks, measured: the exact second- and third-order
terms of each PTQ cell's loss change, from the cell and its mirror image.

    python -m real_runs.second_order_probe            # the default sweep's adapters, r = 4…64, seed 0
    python -m real_runs.second_order_probe --sweep-config real_runs/configs/embedded_chitchat.toml \
        --reference results/runs_chitchat.ptq.jsonl \
        --records results/second_order_probe_chitchat.ptq.jsonl \
        --out results/second_order_probe_chitchat.json                # the first chitchat sweep's
    python -m real_runs.second_order_probe --embedded tiny --steps 4 --n-train 16 \\
        --eval-tokens 300 --ranks 4 --records /tmp/sp.jsonl --out /tmp/sp.json  # smoke test

Why: the second-order prediction P₂ (``pred_plugin``: ½·s²·tr(ε_BA·Σ_x·ε_BAᵀ·G), the K-FAC
form of the held-out loss's curvature, zero fitted constants) matches ΔL − P₁ (the loss change
less its measured first-order term) at b ≥ 3 for most schemes, and falls short at 2 bits and
for per-channel RTN (``results/ptq_prediction.json``). Since ΔL − P₁ = Q + T + O(ε⁴), with Q
the exact second-order term (full Hessian of the held-out loss, every layer, no Kronecker or
Fisher approximation) and T the third-order term, the shortfall is either the curvature model
(P₂ ≠ Q) or an expansion that stops too early (T ≠ 0). Each cell and its mirror
W0 + s·(B·A − ε_BA) separate the two (``real_runs.ptq.run_ptq`` ``mirror``): the even part
(ΔL(+) + ΔL(−))/2 = Q̂ and the odd part less P₁, (ΔL(+) − ΔL(−))/2 − P₁ = T̂, group by group.

The adapters are a sweep's own (``--sweep-config``, default the default model's sweep
``real_runs/configs/embedded.toml``): its defaults and PTQ settings at each (rank, seed), so
every + cell is a cell of that sweep's PTQ records (``--reference``, default
``results/runs_chitchat_topic.ptq.jsonl``; same adapter and cell, :func:`_cell_key`) and its
re-measured ΔL (and E_Hessian, where the sweep's cell has it) is compared with the committed
one (``reproduced``). The output names the embedded model the adapters were
trained on (``embedded_model``); one result file per model, ``second_order_probe_<model>.json``.

Per (scheme, b), adapters pooled group by group (all are scored on the same held-out groups),
with :func:`quantbounds.calib.ptq_pairs.ratio_interval` (between adapters and held-out tokens,
paired):

- ``kfac_over_exact`` = Σ P₂ ÷ Σ Q̂: the curvature model against the exact second-order term;
- ``kfac_over_resid`` = Σ P₂ ÷ Σ (ΔL − P₁): the comparison ``ptq_report`` makes;
- ``exact_over_resid`` = Σ Q̂ ÷ Σ (ΔL − P₁) (paired: both from the same groups): 1 when the
  third and higher orders are negligible;
- ``third_order`` = Σ T̂ with its paired interval;
- ``heldout_kfac_over_exact``: K-FAC with Σ_x and G measured on the evaluation windows'
  inputs (labels sampled from the model: no held-out label is used), ÷ Q̂;
- ``token_fisher_over_exact``, ``seq_fisher_over_exact``, ``seq_fisher_cross_over_exact``: the
  same curvature (sampled-label Fisher on training windows) with, in turn, the Kronecker
  factorization, then the independence of positions within a window, then the block-diagonal
  (no cross-layer) structure removed (:func:`real_runs.ptq.fisher_along`), each ÷ Q̂: which
  of K-FAC's approximations loses what;
- ``train_exact_over_exact``: the exact second-order term of the TRAINING loss along the same
  ε_BA, Q̂_tr = (L_tr(+) + L_tr(−))/2 − L_tr(0) on the curvature windows with their true
  labels (full Hessian, residual term included; ``run_ptq`` ``train_batches``), ÷ Q̂: whether
  what the Fisher forms miss is the Hessian's residual term (Q̂_tr ≈ Q̂) or the shift from
  training to held-out data (Q̂_tr ≈ the Fisher forms);
- ``moment_over_exact`` and ``hessian_moment_over_exact``: the two EXPECTED second-order terms
  under the scheme's noise model (per-entry variances v_B, v_A: exact for SR, Δ²/12 for RTN),
  K-FAC's closed form (``pred_moment``) and the full Hessian's from random perturbations of
  those variances on the training windows (``pred_hessian_moment``, no quantized model
  evaluated), each ÷ Q̂ of the actual cells — for SR the comparison of an expectation with
  its draws, for RTN a test of the additive-noise model itself.

Q̂ holds the fourth-order term too (Q̂ = Q + O(ε⁴)); where T̂ is a few per cent of Q̂, as
here, the fourth order is not what moves P₂ ÷ Q̂. The three Fisher predictions split the
curvature model's error into the Kronecker factorization, the positions and the cross-layer
blocks; what the last of them still misses is the Fisher itself (Gauss–Newton, one sampled
label per position, on training windows) in place of the held-out loss's Hessian, which
``train_exact_over_exact`` splits into the residual term and the data. The predictions come
from training windows (the Fisher forms with sampled labels); their own sampling error is not
in the intervals. A diagnostic, not a claim of the paper: no verdict is issued.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from real_runs.embedded import EMBEDDED_MODELS

import numpy as np

SCHEMES = ("rtn_tensor", "rtn_channel", "rtn_block", "sr_tensor", "nf4", "fp4")


@dataclass(frozen=True, kw_only=True)
class ProbeConfig:
    """The adapters (ranks × seeds, the sweep's settings) and the cells probed."""

    embedded: str | None = None  # None: the sweep config's (sweep_config)
    ranks: tuple[int, ...] = (4, 8, 16, 32, 64)
    seeds: tuple[int, ...] = (0,)
    schemes: tuple[str, ...] = SCHEMES
    bits: tuple[int, ...] = (2, 3, 4)
    sr_draws: int = 2
    steps: int | None = None  # None: the sweep's
    n_train: int | None = None
    eval_tokens: int | None = None
    sweep_config: str = "real_runs/configs/embedded.toml"
    reference: str | None = "results/runs_chitchat_topic.ptq.jsonl"
    records: str = "results/second_order_probe_chitchat_topic.ptq.jsonl"
    out: str = "results/second_order_probe_chitchat_topic.json"
    cache_dir: str | None = None
    threads: int | None = 1

    def __post_init__(self):
        from quantbounds._checks import check_int_range
        from real_runs.ptq import check_ptq_bits, check_schemes

        if not self.ranks or not self.seeds:
            raise ValueError("ranks and seeds must each name at least one value")
        for r in self.ranks:
            check_int_range(r, "ranks", 1)
        check_schemes(self.schemes)
        check_ptq_bits(self.bits)
        check_int_range(self.sr_draws, "sr_draws", 1)


def finetune_cfg(c: ProbeConfig, rank: int, seed: int):
    """The sweep's fp16 PTQ run at (rank, seed), restricted to the probed cells."""
    from real_runs.finetune import FinetuneConfig
    from real_runs.sweep import ptq_run_defaults

    over = {k: v for k, v in (("steps", c.steps), ("n_train", c.n_train),
                              ("eval_tokens", c.eval_tokens), ("ptq_eval_tokens", c.eval_tokens))
            if v is not None}
    if c.embedded is not None:
        over["embedded"] = c.embedded
    cfg = {**ptq_run_defaults(c.sweep_config), "arm": "fp16", "bits": 16, "rank": rank, "seed": seed,
           "ptq": True, "ptq_schemes": tuple(c.schemes), "ptq_bits": tuple(c.bits),
           "ptq_sr_draws": c.sr_draws, "threads": c.threads, "progress": False, **over}
    if c.cache_dir is not None:
        cfg["cache_dir"] = c.cache_dir
    keep = set(FinetuneConfig.__dataclass_fields__)
    return FinetuneConfig(**{k: v for k, v in cfg.items() if k in keep})


def _even(r: dict) -> dict:
    """The record with its measured exact second-order term Q̂ as the "measured cost"."""
    return {**r, "delta_loss": r["second_order_measured"],
            "delta_loss_groups": r["second_order_measured_groups"],
            "delta_loss_ci": list(r["second_order_measured_ci"])}


def _ratio(recs, pred_fn, pred_groups=None) -> dict:
    from quantbounds.calib.ptq_pairs import ratio_interval

    R, lo, hi, g = ratio_interval(recs, pred_fn, pred_groups=pred_groups)
    return {"ratio": R, "ci": None if lo is None else [lo, hi], "adapters": g}


def summarize(recs: list[dict]) -> list[dict]:
    """One row per (scheme, b) of mirror-carrying PTQ records (see the module doc)."""
    from quantbounds.calib.ptq_pairs import residual_records
    from quantbounds.verdicts.intervals import grouped_total

    cells: dict = {}
    for r in recs:
        if "second_order_measured" in r and "ptq_pattern" not in r:
            cells.setdefault((r["ptq_scheme"], r["bits"]), []).append(r)
    rows = []
    for (scheme, b), rs in sorted(cells.items()):
        res = residual_records(rs)
        windows = rs[0]["group_windows"]
        T = np.sum([np.asarray(r["third_order_measured_groups"], float) for r in rs], axis=0)
        Q = np.sum([np.asarray(r["second_order_measured_groups"], float) for r in rs], axis=0)
        t3, q2 = grouped_total(T, windows), grouped_total(Q, windows)
        row = {
            "scheme": scheme,
            "bits": b,
            "records": len(rs),
            "pred_second": float(sum(r["pred_plugin"] for r in rs)),
            "resid_first_order": float(sum(r["delta_loss"] - r["pred_first_order"] for r in rs)),
            "second_order_measured": {"estimate": q2["estimate"], "ci": q2["ci"]},
            "third_order": {"estimate": t3["estimate"], "ci": t3["ci"]},
            "kfac_over_exact": _ratio([_even(r) for r in rs], lambda r: r["pred_plugin"]),
            # the same curvature with less dropped (real_runs.ptq.fisher_along), against Q̂
            **{f"{name}_over_exact": _ratio([_even(r) for r in rs], lambda r, k=key: r[k])
               for name, key in (("heldout_kfac", "pred_plugin_heldout"),
                                 ("token_fisher", "pred_token_fisher"),
                                 ("seq_fisher", "pred_seq_fisher"),
                                 ("seq_fisher_cross", "pred_seq_fisher_cross"),
                                 ("train_exact", "second_order_train"),
                                 ("moment", "pred_moment"),
                                 ("hessian_moment", "pred_hessian_moment"))
               if all(r.get(key) is not None for r in rs)},
            "kfac_over_resid": None if res is None else _ratio(res, lambda r: r["pred_plugin"]),
            "exact_over_resid": None if res is None else _ratio(
                res, lambda r: r["second_order_measured"],
                pred_groups=lambda r: r["second_order_measured_groups"]),
        }
        row["reading"] = reading(row)
        rows.append(row)
    return rows


def reading(row: dict) -> str:
    """What the cell says, in words, from its intervals (95 %)."""
    def excludes(ci, v):
        return ci is not None and not (ci[0] <= v <= ci[1])

    k, t = row["kfac_over_exact"], row["third_order"]
    parts = []
    if excludes(k["ci"], 1.0):
        parts.append(f"K-FAC {'under' if k['ratio'] < 1 else 'over'}-predicts Q "
                     f"(P₂/Q = {k['ratio']:.2f})")
    tr = row.get("train_exact_over_exact")
    if excludes(k["ci"], 1.0) and tr and tr["ci"] is not None and not excludes(tr["ci"], 1.0):
        parts.append(f"the training loss's exact Q_tr matches (Q_tr/Q = {tr['ratio']:.2f}): "
                     "K-FAC misses the Hessian's residual term, not the data")
    elif tr and excludes(tr["ci"], 1.0):
        parts.append(f"Q_tr/Q = {tr['ratio']:.2f}: the training loss curves differently")
    hm = row.get("hessian_moment_over_exact")
    if hm and excludes(hm["ci"], 1.0):
        parts.append(f"the noise model's expected Q with the full Hessian is off "
                     f"(E/Q = {hm['ratio']:.2f}): the actual ε_BA is not that noise")
    if excludes(t["ci"], 0.0):
        parts.append("third order resolved")
    return "; ".join(parts) or "consistent: P₂ ≈ Q and T ≈ 0 within their intervals"


def _cell_key(r: dict) -> tuple:
    """What a PTQ cell measured: the trained adapter (its run id), the cell (scheme, b, draw) and
    the evaluation (ptq_eval_tokens, curvature_windows). The PTQ id adds the sweep's opt-ins
    (``ptq_hessian_bits``), which add fields to a record without changing its ΔL."""
    return (r["ptq_of"], r["ptq_scheme"], r["bits"], r["ptq_draw"], r["ptq_eval_tokens"],
            r["curvature_windows"])


def reproduced(recs: list[dict], reference: str | None) -> dict | None:
    """The probe's + cells against the committed uniform cells of the same adapter and cell
    (:func:`_cell_key`): ΔL, and pred_hessian_moment where the committed cell carries it (the
    sweep's ``ptq_hessian_bits``: the same random perturbations, so the same number)."""
    from quantbounds.calib.records import read_ptq_records

    if not reference or not Path(reference).exists():
        return None
    ref = {_cell_key(r): r for r in read_ptq_records(reference).records
           if r.get("layer_bits") is None}
    pairs = [(r, ref[_cell_key(r)]) for r in recs if _cell_key(r) in ref]
    if not pairs:
        return {"cells": 0}
    diffs = [abs(a["delta_loss"] - b["delta_loss"]) for a, b in pairs]
    rel = [abs(a["delta_loss"] - b["delta_loss"]) / max(abs(b["delta_loss"]), 1e-300)
           for a, b in pairs]
    out = {"cells": len(diffs), "max_abs_delta_loss_diff": max(diffs),
           "median_rel_delta_loss_diff": float(np.median(rel)), "reference": reference,
           "note": "the same trained adapter (run id) and cell (scheme, b, draw, evaluation), "
                   "re-run here: differences are the CPU's float32 rounding (training is chaotic "
                   "in float32) and the fused GELU"}
    hm = [(a["pred_hessian_moment"], b["pred_hessian_moment"]) for a, b in pairs
          if a.get("pred_hessian_moment") is not None
          and b.get("pred_hessian_moment") is not None]
    if hm:
        out["hessian_moment_cells"] = len(hm)
        out["max_rel_hessian_moment_diff"] = max(abs(a - b) / max(abs(b), 1e-300) for a, b in hm)
    return out


def run_probe(c: ProbeConfig) -> dict:
    from quantbounds.calib.records import append_lines, read_ptq_records
    from quantbounds.verdicts.results import write_json_atomic
    from real_runs.finetune import ptq_record_ids, run_finetune

    path = Path(c.records)
    # the last record of each id that carries every probe field (an older probe's lines,
    # without the training-loss terms, are measured again)
    have = {r["run_id"]: r for r in read_ptq_records(path).records
            if "second_order_measured" in r and "second_order_train" in r
            and ("pred_hessian_moment" in r or r.get("pred_moment") is None)} if path.exists() else {}
    mine = []
    for rank in c.ranks:
        for seed in c.seeds:
            cfg = finetune_cfg(c, rank, seed)
            ids = ptq_record_ids(cfg)
            if not ids <= set(have):  # resumable: an adapter is measured once
                _, ptq = run_finetune(cfg, return_ptq=True, ptq_mirror=True)
                append_lines(path, ptq)
                have.update({r["run_id"]: r for r in ptq})
            mine += [have[i] for i in sorted(ids)]
    out = {
        "what": "exact second- and third-order terms of each PTQ cell's loss change (cell and "
                "mirror), against the K-FAC second-order prediction",
        "config": asdict(c),
        "embedded_model": finetune_cfg(c, c.ranks[0], c.seeds[0]).embedded,
        "cells": summarize(mine),
        "reproduced": reproduced(mine, c.reference),
        "command": "python -m real_runs.second_order_probe " + " ".join(_argv(c)),
    }
    write_json_atomic(c.out, out)
    return out


def _argv(c: ProbeConfig) -> list[str]:
    a = ([f"--embedded {c.embedded}"] if c.embedded is not None else []) + [
         "--ranks " + ",".join(map(str, c.ranks)),
         "--seeds " + ",".join(map(str, c.seeds)), "--schemes " + ",".join(c.schemes),
         "--bits " + ",".join(map(str, c.bits)), f"--sr-draws {c.sr_draws}",
         f"--sweep-config {c.sweep_config}", f"--reference {c.reference or ''}",
         f"--records {c.records}", f"--out {c.out}"]
    for k in ("steps", "n_train", "eval_tokens"):
        if getattr(c, k) is not None:
            a.append(f"--{k.replace('_', '-')} {getattr(c, k)}")
    return a


def main(argv: list[str] | None = None) -> int:
    from real_runs.cli import int_tuple

    d = ProbeConfig.__dataclass_fields__
    p = argparse.ArgumentParser(prog="python -m real_runs.second_order_probe",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--embedded", default=None, choices=EMBEDDED_MODELS,
                   help="embedded model (default: the sweep config's)")
    p.add_argument("--ranks", type=int_tuple, default=",".join(map(str, d["ranks"].default)))
    p.add_argument("--seeds", type=int_tuple, default=",".join(map(str, d["seeds"].default)))
    p.add_argument("--schemes", default=",".join(d["schemes"].default))
    p.add_argument("--bits", type=int_tuple, default=",".join(map(str, d["bits"].default)))
    p.add_argument("--sr-draws", type=int, default=d["sr_draws"].default)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--eval-tokens", type=int, default=None)
    p.add_argument("--sweep-config", default=d["sweep_config"].default,
                   help="the sweep whose defaults and PTQ settings train the adapters")
    p.add_argument("--reference", default=d["reference"].default)
    p.add_argument("--records", default=d["records"].default)
    p.add_argument("--out", default=d["out"].default)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    try:
        c = ProbeConfig(embedded=a.embedded, ranks=a.ranks, seeds=a.seeds,
                        schemes=tuple(s for s in a.schemes.split(",") if s), bits=a.bits,
                        sr_draws=a.sr_draws, steps=a.steps, n_train=a.n_train,
                        eval_tokens=a.eval_tokens, reference=a.reference or None,
                        records=a.records, out=a.out, cache_dir=a.cache_dir, threads=a.threads,
                        sweep_config=a.sweep_config)
    except ValueError as err:
        print(f"second_order_probe: {err}", file=sys.stderr)
        return 2
    out = run_probe(c)
    for row in out["cells"]:
        k, e = row["kfac_over_exact"], row["exact_over_resid"]
        print(f"{row['scheme']:12s} b={row['bits']}  P2/Q {k['ratio']:.3f} {k['ci']}  "
              f"Q/(dL-P1) {e['ratio'] if e else float('nan'):.3f}  T {row['third_order']['estimate']:+.2e}"
              f"  → {row['reading']}")
    print("reproduced:", out["reproduced"])
    print("wrote", c.out)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
