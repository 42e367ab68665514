"""Real-run check of the allocator's precision choice on trained adapters: per-layer bit-widths
chosen by the calibrated bound against the uniform bit-width at EQUAL adapter memory, both
applied by post-training stochastic rounding to the SAME trained adapter.

    python -m real_runs.ptq_allocation          # the default model, r = 8, b₀ = 3, seeds 1-6
    python -m real_runs.ptq_allocation --embedded tiny --steps 5 --seeds 1 --pilot-seed 0 \\
        --n-train 8 --eval-tokens 400 --records /tmp/pa.jsonl --out /tmp/pa.json   # smoke test

Why a second check beside ``real_runs.allocation_check`` (quantization-aware fine-tunes, one
per choice): there, each choice is its own training, so the comparison carries the
seed-to-seed spread of fine-tuning, which on the embedded testbed is larger than any saving
the bound predicts. Here the rank is fixed and only the precision is allocated, so both
choices quantize one trained adapter and are scored on the same held-out tokens: the
comparison is paired down to the token, and what it tests is the precision half of the
claim (s000.summary.joint_allocation, "joint optimization of precision and rank yields
superior results") with the quantization term of the bound — the term the PTQ b-curves of
``results/calibration.json`` (``fits.ptq.sr_tensor``) calibrate.

Procedure (the allocation is fixed before the runs that test it):

1. A pilot fine-tune (``pilot_seed``, full precision, the sweep's settings) gives each
   layer's trained factor ranges R_A, R_B and input energy ‖x‖² (``range_A``, ``range_B``,
   ``x_norm2`` of its record; ``real_runs.allocation_check.layers_from_pilot``).
2. The budget is the uniform (r, b₀) adapter memory, scales charged per tensor (the SR
   quantizer keeps one absmax per factor): Σ_l r·(m_l + n_l)·b₀ + 2·32 bits. The allocator
   (:func:`quantbounds.calib.allocator.allocate`, ranks fixed at r) minimises
   Σ_l C2·w_l·r^β·ρ^(−b_l) within it, with C2, ρ, β from the sr_tensor PTQ fit when that fit
   is usable for decisions (else the theory's, said in the notes). The bound's predicted saving
   is F(uniform) − F(allocation) (the generalization term is the same for both and cancels).
3. For every test seed (disjoint from the pilot): one full-precision fine-tune, then
   ``draws`` SR quantizations of its trained B, A at b₀ everywhere and ``draws`` at the
   allocation's per-layer bits (``real_runs.ptq.run_ptq`` ``patterns``), on the whole held-out
   evaluation. With D_{c,d,k} the contribution of eval group k to cell c's draw d,
   u_k = mean_d D_{alloc,d,k} − mean_d D_{uniform,d,k}: the per-seed difference Σ_k u_k.

Beside it, not judged: the same allocator with each layer's sensitivity S_l replaced by the
toolkit's measured zero-constant K-FAC cost of that layer at b₀ on the pilot adapter
(:func:`measured_sensitivity`), evaluated on the same adapters as a third choice
(``measured_sensitivity_allocation``): whether the failure is the bound's sensitivity model or
per-layer precision as such.

The verdict is the difference pooled over seeds group by group (every seed is scored on the
same groups) with its paired CR1 interval (``quantbounds.verdicts.intervals.grouped_total``,
t_{K−1}), decided by :mod:`quantbounds.verdicts.standard` (claimed: < 0); beside it the
Student-t interval over seeds (which also carries the spread between trained adapters), and
the power: the predicted saving against the interval's half-width (target ≥ 3×).

Records (one summary line per seed, and the raw PTQ records in ``<records>.ptq.jsonl``) are
appended as each seed finishes; a rerun resumes, skipping seeds already measured under the
same allocation. The summary goes to ``--out`` (:func:`quantbounds.verdicts.results.
write_results`).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from quantbounds.calib.allocator import THEORY, LayerSpec, allocate, memory_bits, objective
from quantbounds.calib.records import append_lines, read_ptq_records
from quantbounds.verdicts.results import Verdict, write_results
from real_runs.embedded import DEFAULT_EMBEDDED, EMBEDDED_MODELS

CLAIM = "s000.summary.joint_allocation"
SCHEME = "sr_tensor"


@dataclass(frozen=True, kw_only=True)
class PTQAllocationConfig:
    """What the check runs: the reference (rank, bits), the menu, the seeds, the PTQ draws."""

    embedded: str = DEFAULT_EMBEDDED
    dataset: str = "chitchat"
    rank: int = 8
    bits: int = 3
    bits_menu: tuple[int, ...] = (2, 3, 4, 5)
    pilot_seed: int = 0
    seeds: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
    draws: int = 8
    steps: int = 120
    n_train: int = 200
    eval_tokens: int = 24_000
    groups: int = 40
    calibration: str | None = "results/calibration.json"
    # None: per model, results/runs_allocation_check_ptq_<model>.jsonl and
    # results/allocation_check_ptq_<model>.json (``-`` → ``_``), so that checks of different
    # embedded models never write one file
    records: str | None = None
    out: str | None = None
    cache_dir: str | None = None
    threads: int | None = 1

    def __post_init__(self):
        from quantbounds._checks import check_bits, check_int_range

        stem = str(self.embedded).replace("-", "_")
        if self.records is None:
            object.__setattr__(self, "records", f"results/runs_allocation_check_ptq_{stem}.jsonl")
        if self.out is None:
            object.__setattr__(self, "out", f"results/allocation_check_ptq_{stem}.json")
        if self.bits not in self.bits_menu:
            raise ValueError(f"bits={self.bits} must be in bits_menu={self.bits_menu}")
        for b in self.bits_menu:
            check_bits(b)
        if any(b >= 16 for b in self.bits_menu) or min(self.bits_menu) < 2:
            raise ValueError(f"bits_menu must hold bit-widths in 2…15 (SR's grid), got "
                             f"{self.bits_menu}")
        if not self.seeds:
            raise ValueError("seeds must name at least one seed")
        if self.pilot_seed in self.seeds:
            raise ValueError(f"pilot_seed={self.pilot_seed} must not be a test seed "
                             f"{self.seeds}: the allocation is fixed before the runs test it")
        check_int_range(self.draws, "draws", 1)
        check_int_range(self.groups, "groups", 2)


def _finetune_cfg(c: PTQAllocationConfig, seed: int, *, ptq: bool):
    from real_runs.finetune import FinetuneConfig

    return FinetuneConfig(
        arm="fp16", bits=16, embedded=c.embedded, dataset=c.dataset, rank=c.rank, seed=seed,
        steps=c.steps, n_train=c.n_train, eval_tokens=c.eval_tokens, cache_dir=c.cache_dir,
        threads=c.threads, ptq=ptq, ptq_schemes=(SCHEME,), ptq_bits=(c.bits,),
        ptq_sr_draws=c.draws, ptq_eval_tokens=c.eval_tokens, ptq_groups=c.groups,
    )


def ptq_params(calibration: str | None) -> tuple[dict, list[str], bool | None]:
    """(allocator constants, notes, fit usable?) from the sr_tensor PTQ fit of a calibration
    file (``fits.ptq.sr_tensor``: C2, per_bit_factor, exponent_r); theory constants when the
    file, the fit or its usability is missing (usable None) or the fit is not usable (False)."""
    if not calibration or not Path(calibration).exists():
        return dict(THEORY), [f"no calibration file {calibration!r}: theory constants"], None
    fit = ((json.loads(Path(calibration).read_text()).get("fits") or {}).get("ptq") or {}).get(
        SCHEME)
    if not isinstance(fit, dict):
        return dict(THEORY), [f"{calibration} has no {SCHEME} PTQ fit: theory constants"], None
    if not fit.get("usable"):
        return dict(THEORY), [f"the {SCHEME} PTQ fit is not usable for decisions "
                              f"({fit.get('why')}): theory constants"], False
    params = dict(THEORY)
    for k in ("C2", "per_bit_factor", "exponent_r"):
        params[k] = float(fit[k]["value"])
    return params, [f"allocator constants from {calibration} fits.ptq.{SCHEME} ("
                    + ", ".join(f"{k} {params[k]:.3g}" for k in ("C2", "per_bit_factor",
                                                                  "exponent_r"))
                    + f"; {fit.get('why')})"], True


def plan_allocation(c: PTQAllocationConfig, layers: list[LayerSpec], params: dict, N: float):
    """(allocation {layer: bits}, budget bytes, memory bytes, predicted saving)."""
    budget = sum(memory_bits(lay, c.rank, c.bits) for lay in layers) / 8
    alloc = allocate(layers, budget_bytes=budget, params=params, N=N, ranks=(c.rank,),
                     bits=c.bits_menu)
    bits = {k: int(b) for k, (_r, b) in alloc.choice.items()}
    uniform = objective(layers, {lay.name: (c.rank, c.bits) for lay in layers}, params=params,
                        N=N)
    return bits, budget, alloc.memory_bytes, uniform - alloc.objective


def seed_difference(ptq: list[dict], label: str = "allocation") -> dict:
    """Per group u_k = mean_d D_{alloc,d,k} − mean_d D_{uniform,d,k} of one trained adapter's
    PTQ records (the allocation's carry ``ptq_pattern`` = ``label``), and its paired interval."""
    from quantbounds.verdicts.intervals import grouped_total

    al = [r for r in ptq if r.get("ptq_pattern") == label]
    un = [r for r in ptq if r.get("ptq_pattern") is None]
    if not al or not un:
        raise ValueError("seed_difference needs allocation and uniform PTQ records")
    w = un[0]["group_windows"]
    if any(r["group_windows"] != w for r in al + un):
        raise ValueError("the PTQ records of one adapter disagree on their eval groups")
    def mean(recs, key):
        return np.mean([r[key] for r in recs], 0)

    u = mean(al, "delta_loss_groups") - mean(un, "delta_loss_groups")
    g = grouped_total(u, w)
    out = {"u": u.tolist(), "group_windows": list(w), "estimate": g["estimate"], "se": g["se"],
           "ci": g["ci"], "cost_uniform": float(np.mean([r["delta_loss"] for r in un])),
           "cost_allocation": float(np.mean([r["delta_loss"] for r in al]))}
    if all(r.get("first_order_groups") for r in al + un):
        # control variate: the first-order term P₁ = s·⟨∇L, ε_BA⟩ has mean 0 under unbiased SR
        # (the mid-tread grid), so ΔL − P₁ has ΔL's expectation and, P₁ being measured on the
        # same tokens, much less spread; reported beside the plain difference, not for it
        u_cv = (u - mean(al, "first_order_groups") + mean(un, "first_order_groups"))
        gc = grouped_total(u_cv, w)
        out.update(u_cv=u_cv.tolist(), estimate_cv=gc["estimate"], ci_cv=gc["ci"])
    return out


def measured_sensitivity(layers: list[LayerSpec], pilot_ptq: list[dict]) -> list[LayerSpec]:
    """``layers`` with sensitivity S_l = the mean zero-constant K-FAC cost of layer l
    (``layers[l]["pred_moment"]``) over the pilot's uniform SR PTQ records."""
    import dataclasses

    uni = [r for r in pilot_ptq if r.get("ptq_pattern") is None and r["ptq_scheme"] == SCHEME]
    if not uni:
        raise ValueError("measured_sensitivity needs the pilot's uniform sr_tensor PTQ records")
    out = []
    for lay in layers:
        vals = [r["layers"][lay.name]["pred_moment"] for r in uni]
        out.append(dataclasses.replace(lay, sensitivity=max(float(np.mean(vals)), 1e-300)))
    return out


def pooled_difference(rows: list[dict], key: str = "u") -> dict:
    """Seeds' per-group differences (``rows[i][key]``) pooled group by group, with the paired
    CR1 interval (``grouped_total``: estimate, se, dof, ci, groups) and the Student-t interval
    over the seeds' own estimates (``seed_t``; None for one seed)."""
    from quantbounds.verdicts.intervals import cluster_mean, grouped_total

    w = rows[0]["group_windows"]
    if any(r["group_windows"] != w for r in rows):
        raise ValueError("the seeds were scored on different eval groups; cannot pool them")
    g = grouped_total(np.mean([r[key] for r in rows], 0), w)
    per_seed = [float(np.sum(r[key])) for r in rows]
    st = cluster_mean(per_seed) if len(rows) >= 2 else None
    return {**g, "seed_t": None if st is None else {k: st[k] for k in ("estimate", "se", "dof",
                                                                       "ci")},
            "per_seed": per_seed}


def curvature_prediction(ptq: list[dict]) -> dict | None:
    """The toolkit's zero-constant prediction of both choices' cost (``pred_moment``: ½·s²·
    tr(E[ε_BA Σ_x ε_BAᵀ] G) with K-FAC curvature measured on the full-precision model, summed
    over layers; real_runs.ptq), mean over the PTQ records of each choice — what the bound's
    sensitivity model is set against. None when a record has no moment prediction."""
    out = {}
    for label, recs in (("uniform", [r for r in ptq if r.get("ptq_pattern") is None]),
                        ("allocation", [r for r in ptq if r.get("ptq_pattern") == "allocation"])):
        vals = [r.get("pred_moment") for r in recs]
        if not vals or any(v is None for v in vals):
            return None
        out[label] = float(np.mean(vals))
    out["difference"] = out["allocation"] - out["uniform"]
    return out


def verdict(rows: list[dict], c: PTQAllocationConfig, *, predicted: float,
            fit_usable: bool | None, need_ratio: float = 3.0,
            curvature: dict | None = None) -> Verdict:
    """The pooled paired difference allocation − uniform over the seeds' summary rows."""
    from quantbounds.verdicts import standard

    pooled = pooled_difference(rows)
    cv = pooled_difference(rows, "u_cv") if all("u_cv" in r for r in rows) else None
    seed_t = pooled["seed_t"]
    if pooled["groups"] < 2 or not pooled["se"] > 0:
        dec = standard.Decision(verdict="inconclusive", p_holds=None, p_fails=None,
                                reason=f"no interval ({pooled['groups']} groups, se "
                                       f"{pooled['se']})")
    else:
        dec = standard.judge(CLAIM, pooled["estimate"], pooled["se"], dof=pooled["dof"])
    half = (pooled["ci"][1] - pooled["ci"][0]) / 2
    ratio = predicted / half if np.isfinite(half) and half > 0 else None
    powered = None if ratio is None else bool(ratio >= need_ratio)
    why = []
    if fit_usable is not True:
        why.append("theory constants (the sr_tensor PTQ fit was missing or not usable)")
    if powered is False and dec.verdict == "inconclusive":
        why.append(f"underpowered: the bound predicts a saving of {predicted:.3g} nats, "
                   f"{ratio:.2g}× the half-width {half:.3g} (target ≥ {need_ratio:g}×)")
    if why:
        dec = standard.Decision(verdict=dec.verdict, p_holds=dec.p_holds, p_fails=dec.p_fails,
                                reason="; ".join([dec.reason, *why]))
    return Verdict.from_decision(
        CLAIM, dec,
        claim="the bound-optimal per-layer precision beats the uniform precision at ≤ equal "
              "adapter memory (post-training SR of the same trained adapter)",
        predicted="eval-loss difference < 0",
        measured=pooled["estimate"], ci=pooled["ci"],
        source="seed 000 summary item 2 (joint precision/rank optimisation), its precision "
               "half, with the toolkit's bound-based allocator (issue 14)",
        conditions=f"embedded:{c.embedded}, fp16 fine-tune r={c.rank} N={c.n_train} "
                   f"{c.steps} steps, SR PTQ {c.draws} draws per choice, uniform b={c.bits} vs "
                   f"menu {list(c.bits_menu)}; seeds {[r['seed'] for r in rows]} (pilot "
                   f"{c.pilot_seed}); 95 % CR1 interval over {pooled['groups']} held-out "
                   f"dialogue groups, paired, pooled over seeds",
        details={
            "per_seed": [{"seed": r["seed"], "estimate": r["estimate"], "ci": r["ci"],
                          "cost_uniform": r["cost_uniform"],
                          "cost_allocation": r["cost_allocation"]} for r in rows],
            "seed_t": seed_t,
            "control_variate": None if cv is None else {
                "what": "ΔL − first-order term (mean 0 under unbiased SR), pooled the same way",
                "estimate": cv["estimate"], "ci": cv["ci"],
                "predicted_over_half_width": predicted / ((cv["ci"][1] - cv["ci"][0]) / 2)
                if np.all(np.isfinite(cv["ci"])) and cv["ci"][1] > cv["ci"][0] else None},
            "curvature_prediction": curvature,
            "predicted_gain": predicted,
            "half_width": half,
            "predicted_over_half_width": ratio,
            "powered": powered,
        },
    )


def run_check(c: PTQAllocationConfig) -> dict:
    from real_runs.finetune import run_finetune

    records = Path(c.records)
    ptq_file = records.with_name(records.stem + ".ptq" + (records.suffix or ".jsonl"))
    from real_runs.allocation_check import layer_shapes, layers_from_pilot

    pilot, pilot_ptq = run_finetune(_finetune_cfg(c, c.pilot_seed, ptq=True), return_ptq=True)
    layers = layers_from_pilot(layer_shapes(c), pilot)
    params, notes, usable = ptq_params(c.calibration)
    bits, budget, mem, predicted = plan_allocation(c, layers, params, pilot["n_train"])
    if len(set(bits.values())) == 1:
        notes.append(f"the allocation is uniform ({next(iter(bits.values()))} bits): nothing "
                     "to compare")
    # beside the bound's: the same allocator with each layer's sensitivity S_l replaced by the
    # toolkit's measured zero-constant K-FAC cost of that layer at b₀ on the pilot adapter
    # (``layers[l].pred_moment`` of its uniform PTQ records), the form C2·w_l·r^β·ρ^(−b) kept
    kfac_layers = measured_sensitivity(layers, pilot_ptq)
    bits_k, _, mem_k, predicted_k = plan_allocation(c, kfac_layers, params, pilot["n_train"])
    patterns = {"allocation": bits}
    if len(set(bits_k.values())) > 1 and bits_k != bits:
        patterns["kfac"] = bits_k
    # what a seed's line was measured under (as JSON holds it, so a reread line compares equal)
    key = json.loads(json.dumps({"allocation": dict(sorted(bits.items())),
                                 "kfac": dict(sorted(bits_k.items())), "config": {
        k: v for k, v in asdict(c).items() if k not in ("records", "out", "cache_dir", "threads",
                                                         "seeds")}}))
    done = {}
    if records.exists():
        for r in _read(records):
            if r.get("key") == key:
                done[r["seed"]] = r
    rows = []
    for seed in c.seeds:
        if seed not in done:
            rec, ptq = run_finetune(_finetune_cfg(c, seed, ptq=True), return_ptq=True,
                                    ptq_patterns=patterns)
            append_lines(ptq_file, ptq)
            row = {"seed": seed, "run_id": rec["run_id"], "key": key,
                   "eval_loss": rec["eval_loss"], **seed_difference(ptq)}
            if "kfac" in patterns:
                row["kfac"] = seed_difference(ptq, "kfac")
            append_lines(records, [row])
            done[seed] = row
        rows.append(done[seed])
    mine = {r["run_id"] for r in rows}
    # one record per PTQ id (a seed re-run under another key wrote its uniform cells again)
    ptq_all = list({r["run_id"]: r for r in read_ptq_records(ptq_file).records
                    if r.get("ptq_of") in mine}.values())
    v = verdict(rows, c, predicted=predicted, fit_usable=usable,
                curvature=curvature_prediction(ptq_all))
    kfac = None
    if "kfac" in patterns:
        kfac = {
            "what": "the allocator with each layer's sensitivity measured (K-FAC cost at b₀ on "
                    "the pilot adapter) instead of the bound's ranges × sizes; the toolkit's "
                    "rule, reported beside the claim's verdict, not judged",
            "allocation": bits_k,
            "memory_bytes": mem_k,
            "predicted_gain": predicted_k,
            **{k: v for k, v in pooled_difference([r["kfac"] for r in rows]).items()
               if k in ("estimate", "ci", "seed_t", "per_seed")},
        }
    out = {
        "config": asdict(c),
        "params": params,
        "notes": notes,
        "budget_bytes": budget,
        "memory_bytes": {"allocation": mem, "uniform": budget},
        "allocation": bits,
        "pilot_run_id": pilot["run_id"],
        "predicted_gain": predicted,
        "measured_sensitivity_allocation": kfac,
        "verdicts": [v.to_dict()],
        "command": "python -m real_runs.ptq_allocation " + " ".join(_argv(c)),
    }
    write_results(c.out, out)
    return out


def _read(path: Path) -> list[dict]:
    """The summary lines of the check's records file (not run records: no schema to validate
    against; a torn last line is skipped)."""
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _argv(c: PTQAllocationConfig) -> list[str]:
    return [f"--embedded {c.embedded}", f"--dataset {c.dataset}", f"--rank {c.rank}",
            f"--bits {c.bits}", "--bits-menu " + ",".join(map(str, c.bits_menu)),
            f"--pilot-seed {c.pilot_seed}", "--seeds " + ",".join(map(str, c.seeds)),
            f"--draws {c.draws}", f"--steps {c.steps}", f"--n-train {c.n_train}",
            f"--eval-tokens {c.eval_tokens}", f"--records {c.records}", f"--out {c.out}"]


def main(argv: list[str] | None = None) -> int:
    from real_runs.cli import int_tuple

    d = PTQAllocationConfig.__dataclass_fields__
    p = argparse.ArgumentParser(prog="python -m real_runs.ptq_allocation",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--embedded", default=d["embedded"].default,
                   choices=EMBEDDED_MODELS)
    p.add_argument("--dataset", default=d["dataset"].default)
    p.add_argument("--rank", type=int, default=d["rank"].default)
    p.add_argument("--bits", type=int, default=d["bits"].default)
    p.add_argument("--bits-menu", type=int_tuple,
                   default=",".join(map(str, d["bits_menu"].default)))
    p.add_argument("--pilot-seed", type=int, default=d["pilot_seed"].default)
    p.add_argument("--seeds", type=int_tuple, default=",".join(map(str, d["seeds"].default)))
    p.add_argument("--draws", type=int, default=d["draws"].default)
    p.add_argument("--steps", type=int, default=d["steps"].default)
    p.add_argument("--n-train", type=int, default=d["n_train"].default)
    p.add_argument("--eval-tokens", type=int, default=d["eval_tokens"].default)
    p.add_argument("--groups", type=int, default=d["groups"].default)
    p.add_argument("--calibration", default=d["calibration"].default)
    p.add_argument("--records", default=d["records"].default)
    p.add_argument("--out", default=d["out"].default)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    try:
        c = PTQAllocationConfig(
            embedded=a.embedded, dataset=a.dataset, rank=a.rank, bits=a.bits,
            bits_menu=a.bits_menu, pilot_seed=a.pilot_seed,
            seeds=a.seeds, draws=a.draws, steps=a.steps,
            n_train=a.n_train, eval_tokens=a.eval_tokens, groups=a.groups,
            calibration=a.calibration or None, records=a.records, out=a.out,
            cache_dir=a.cache_dir, threads=a.threads)
    except ValueError as err:
        print(f"ptq_allocation: {err}", file=sys.stderr)
        return 2
    out = run_check(c)
    from quantbounds.verdicts.results import print_verdicts

    print_verdicts(out["verdicts"], title="per-layer precision vs uniform (post-training SR)")
    print("allocation:", out["allocation"])
    print("wrote", c.out)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
