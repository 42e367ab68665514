"""Screen run records once and pair quantized runs with their 16-bit baselines (torch-free).

:func:`pair_runs` is the one screening + pairing step of calibration: it keeps the records that
can be fitted (:func:`screen_records`) and indexes the baseline runs by pair key, giving a
frozen :class:`PairedRuns` that the fits (:mod:`quantbounds.calib.calibration`), the claims
(:mod:`quantbounds.verdicts.claims`) and the figures (:mod:`quantbounds.report.plots`) share.
Its :meth:`PairedRuns.pairs` gives the :class:`Pairs` of one arm against one baseline arm.

A quantized run and a baseline run form a pair when they agree on every field of
``PAIR_KEYS`` (model, dataset, LoRA scale, α, rank r, seed, N, steps). For a metric m the
paired excess and the relative change of pair i are

    Δᵢ = m(qᵢ) − m(baseᵢ),        relᵢ = m(qᵢ)/m(baseᵢ) − 1,

where m(baseᵢ) is the mean over repeated baseline runs of one key. Pairing cancels the
seed-to-seed spread that the two runs share. Pairs sharing a baseline are correlated, so a
bootstrap resamples whole *groups* (one baseline key with all its pairs):
:func:`quantbounds._bootstrap.group_resample_counts` gives the resampling weights.

A run that repeats another run's configuration (the same canonical identity: the record's
``config`` with every default it left unset (None) resolved from the record, e.g. an N-sweep
run at ``n_train = 808`` that equals the default run with ``n_train = None``) is the same
measurement twice, not a second draw: :func:`dedupe_records` keeps the first and says so.

Besides the record fields, ``metric`` may be ``"gen_gap"``: the generalization gap
eval_loss − final train loss (the last logged ``train_loss``) of each run.

Shapes: every array of :class:`Pairs` is 1-D over pairs. Public: :func:`screen_records`,
:func:`dedupe_records`, :func:`canonical_id`, :func:`pair_runs`, :class:`PairedRuns`,
:class:`Pairs`, :func:`pair_key`, :func:`paired_excess`, :func:`metric_value`.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from quantbounds._checks import check_choice
from quantbounds.calib.records import ARMS, SCHEMA, run_id
from quantbounds.conventions import lora_scale

# fields that must agree for a quantized run and its 16-bit baseline to be a pair
PAIR_KEYS = ("model", "dataset", "scale", "lora_alpha", "rank", "seed", "n_train", "steps")
ADAPTER_ARMS = ("adapter_rtn", "adapter_sr", "adapter_nf4", "adapter_noise")
METRICS = ("eval_loss", "perplexity", "f1", "exact_match", "gen_gap")


def metric_value(r: dict, metric: str) -> float:
    """The value of ``metric`` in run record ``r``: a record field, or ``"gen_gap"`` =
    eval_loss − the last logged train loss (NaN when the record has no train_loss)."""
    if metric == "gen_gap":
        tl = r.get("train_loss")
        if not isinstance(tl, list) or not tl:
            return float("nan")
        return float(r["eval_loss"]) - float(tl[-1])
    return float(r[metric])


def run_scale(r: dict) -> float:
    """The numeric LoRA scale s of run ``r`` (its ``lora_scale`` field, else from its
    convention, α and rank)."""
    s = r.get("lora_scale")
    if isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s):
        return float(s)
    return lora_scale(r["scale"], r["lora_alpha"], r["rank"])


def canonical_id(r: dict) -> str:
    """The identity of the configuration run ``r`` measured: its ``config`` with every value
    left at None (a default) replaced by the record's resolved value of the same field (e.g.
    ``n_train``: None → 808), hashed like a run_id; the run_id when the record has no config."""
    cfg = r.get("config")
    if not isinstance(cfg, dict):
        return str(r["run_id"])
    resolved = {k: (r[k] if v is None and r.get(k) is not None else v) for k, v in cfg.items()}
    return run_id(resolved)


def dedupe_records(records: list[dict]) -> tuple[list[dict], list[str]]:
    """Keep the first run of each configuration (:func:`canonical_id`); return (kept,
    problems), one problem line per repeat naming both runs and, when their eval losses
    differ, by how much (a deterministic re-run gives the same numbers)."""
    first: dict[str, dict] = {}
    kept, problems = [], []
    for r in records:
        cid = canonical_id(r)
        if cid in first:
            f = first[cid]
            diff = abs(float(r["eval_loss"]) - float(f["eval_loss"]))
            problems.append(
                f"run {r['run_id']} ({r['arm']}, r={r['rank']}, b={r['bits']}, seed={r['seed']}, "
                f"N={r['n_train']}) repeats run {f['run_id']}'s configuration (defaults "
                f"resolved); counted once"
                + (f" (eval losses differ by {diff:.3g})" if diff > 0
                   else " (identical eval loss)"))
            continue
        first[cid] = r
        kept.append(r)
    return kept, problems


def screen_records(records: list[dict]) -> tuple[list[dict], list[str]]:
    """Keep records with finite eval_loss/perplexity/f1 and one uniform (r, b); return
    (valid, problems). Runs with a per-layer rank_pattern/bits_pattern (allocation checks)
    are left out: their ``rank``/``bits`` fields are only defaults.

    Records read by :func:`quantbounds.calib.records.read_records` already passed the schema; JSON
    still admits NaN/Infinity, which are dropped here with a message naming the run.
    """
    valid, problems = [], []
    schemas = Counter(r.get("schema") for r in records)
    if len(schemas) > 1:
        problems.append(f"mixed schema versions {dict(schemas)}; only {SCHEMA} is used")
    for r in records:
        if r.get("schema") != SCHEMA:
            continue
        cfg = r.get("config") or {}
        if cfg.get("rank_pattern") or cfg.get("bits_pattern"):
            problems.append(f"run {r['run_id']} ({r['arm']}): per-layer rank/bits pattern, not a "
                            f"uniform (r, b) configuration; left out of fits and verdicts")
            continue
        bad = [k for k in ("eval_loss", "perplexity", "f1") if not math.isfinite(float(r[k]))]
        if bad:
            problems.append(f"run {r['run_id']} ({r['arm']}, r={r['rank']}, b={r['bits']}, "
                            f"seed={r['seed']}): non-finite {bad}; dropped")
            continue
        valid.append(r)
    return valid, problems


def pair_key(r: dict) -> tuple:
    """The values of ``PAIR_KEYS`` in record ``r`` (None where absent)."""
    return tuple(r.get(k) for k in PAIR_KEYS)


_SCALE = PAIR_KEYS.index("scale")


@dataclass(frozen=True, eq=False)
class Pairs:
    """Quantized runs of ``arm`` matched to their ``baseline_arm`` run. Arrays are 1-D over pairs.

    group: index of the pair's baseline key among :meth:`PairedRuns.baseline_keys` of the
    same baseline arm and scale filter; q, base: the metric of the quantized run and the mean
    metric of its baseline runs; s: the quantized run's numeric LoRA scale; missing:
    "arm r=… b=… seed=… N=…" of runs with no baseline.
    """

    arm: str
    baseline_arm: str
    metric: str
    rank: np.ndarray
    bits: np.ndarray
    n_train: np.ndarray
    seed: np.ndarray
    group: np.ndarray
    q: np.ndarray
    base: np.ndarray
    s: np.ndarray | None = None
    missing: tuple[str, ...] = ()

    @property
    def excess(self) -> np.ndarray:
        """Δ = q − base, shape (n_pairs,)."""
        return self.q - self.base

    @property
    def rel(self) -> np.ndarray:
        """q/base − 1, shape (n_pairs,)."""
        return self.q / self.base - 1.0

    def __len__(self) -> int:
        return int(self.rank.size)


@dataclass(frozen=True, eq=False)
class PairedRuns:
    """Screened run records and their baselines indexed by pair key (see :func:`pair_runs`).

    records: the valid records, in input order, each configuration once; problems: why the
    others were left out; n_input: how many records came in; n_repeats: how many repeated a
    configuration already counted. ``baselines[arm][key]`` holds the 16-bit runs of a
    baseline arm with that pair key (several when a configuration was repeated).
    """

    records: tuple[dict, ...]
    problems: tuple[str, ...] = ()
    n_input: int = 0
    baselines: dict = field(default_factory=dict)
    n_repeats: int = 0

    def __len__(self) -> int:
        return len(self.records)

    def arms(self) -> list[str]:
        """The arms present, sorted."""
        return sorted({r["arm"] for r in self.records})

    def has(self, arm: str, *, bits: int | None = None) -> bool:
        """Whether any valid run of ``arm`` (at ``bits``, when given) is present."""
        return any(r["arm"] == arm and (bits is None or r["bits"] == bits) for r in self.records)

    def runs(self, *arms: str, scale: str | None = None) -> list[dict]:
        """The valid runs of ``arms`` (all when none given), optionally of one LoRA scale."""
        return [r for r in self.records if (not arms or r["arm"] in arms)
                and (scale is None or r["scale"] == scale)]

    def baseline_keys(self, baseline_arm: str = "fp16", *, scale: str | None = None) -> list[tuple]:
        """Pair keys of the ``baseline_arm`` 16-bit runs (of one scale), sorted by their string
        form: the group numbering of :meth:`pairs` and of the calibration's bootstrap."""
        keys = self.baselines.get(baseline_arm, {})
        return sorted((k for k in keys if scale is None or k[_SCALE] == scale), key=str)

    def pairs(self, *, arm: str, baseline_arm: str = "fp16", metric: str = "eval_loss",
              bits: int | None = None, max_bits: int | None = None,
              scale: str | None = None) -> Pairs:
        """Pair every ``arm`` run (at ``bits``, at ≤ ``max_bits``, of ``scale``, when given) with
        its ``baseline_arm`` runs; repeated baselines are averaged, runs without one are listed
        in ``missing`` and left out."""
        check_choice(arm, "arm", ARMS)
        check_choice(metric, "metric", METRICS)
        base = self.baselines.get(baseline_arm, {})
        group_of = {k: i for i, k in enumerate(self.baseline_keys(baseline_arm, scale=scale))}
        names = ("rank", "bits", "n_train", "seed", "group", "q", "base", "s")
        cols: dict[str, list] = {k: [] for k in names}
        missing = []
        for r in self.runs(arm, scale=scale):
            if bits is not None and r["bits"] != bits:
                continue
            if max_bits is not None and r["bits"] > max_bits:
                continue
            key = pair_key(r)
            if key not in base:
                missing.append(f"{arm} r={r['rank']} b={r['bits']} seed={r['seed']} "
                               f"N={r['n_train']}")
                continue
            for name in ("rank", "bits", "n_train", "seed"):
                cols[name].append(r[name])
            cols["group"].append(group_of[key])
            cols["q"].append(metric_value(r, metric))
            cols["base"].append(float(np.mean([metric_value(b, metric) for b in base[key]])))
            cols["s"].append(run_scale(r))
        arrays = {k: np.asarray(v, dtype=float if k in ("q", "base", "s") else int)
                  for k, v in cols.items()}
        return Pairs(arm=arm, baseline_arm=baseline_arm, metric=metric, **arrays,
                     missing=tuple(missing))

    def summary(self) -> dict:
        """The ``data`` object of results/calibration.json: counts and the design's values."""
        valid = self.records
        return {"n_records": self.n_input, "n_valid": len(valid),
                "n_repeats_dropped": self.n_repeats,
                "runs_by_arm": dict(Counter(f"{r['arm']} b={r['bits']}" for r in valid)),
                "ranks": sorted({r["rank"] for r in valid}),
                "n_train": sorted({r["n_train"] for r in valid}),
                "seeds": sorted({r["seed"] for r in valid}),
                "models": sorted({r["model"] for r in valid})}


def pair_runs(records) -> PairedRuns:
    """Screen ``records`` (:func:`screen_records`), count each configuration once
    (:func:`dedupe_records`) and index their 16-bit baselines by pair key: the one pairing step
    of calibration. A :class:`PairedRuns` is returned unchanged."""
    if isinstance(records, PairedRuns):
        return records
    records = list(records)
    valid, problems = screen_records(records)
    valid, repeats = dedupe_records(valid)
    problems = problems + repeats
    baselines: dict[str, dict[tuple, list[dict]]] = {}
    for r in valid:
        if r["bits"] == 16:
            baselines.setdefault(r["arm"], {}).setdefault(pair_key(r), []).append(r)
    frozen = {arm: {k: tuple(v) for k, v in by_key.items()} for arm, by_key in baselines.items()}
    return PairedRuns(records=tuple(valid), problems=tuple(problems), n_input=len(records),
                      baselines=frozen, n_repeats=len(repeats))


def paired_excess(records, *, arm: str, baseline_arm: str = "fp16", metric: str = "eval_loss",
                  bits: int | None = None) -> Pairs:
    """:meth:`PairedRuns.pairs` of ``records`` (a list, screened first, or a PairedRuns)."""
    return pair_runs(records).pairs(arm=arm, baseline_arm=baseline_arm, metric=metric, bits=bits)
