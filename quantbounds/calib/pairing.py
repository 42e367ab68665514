"""Pair quantized runs with their 16-bit baseline runs (torch-free).

A quantized run and a baseline run form a pair when they agree on every field of
``PAIR_KEYS`` (model, dataset, LoRA scale, α, rank r, seed, N, steps). For a metric m the
paired excess and the relative change of pair i are

    Δᵢ = m(qᵢ) − m(baseᵢ),        relᵢ = m(qᵢ)/m(baseᵢ) − 1,

where m(baseᵢ) is the mean over repeated baseline runs of one key. Pairing cancels the
seed-to-seed spread that the two runs share. Pairs sharing a baseline are correlated, so a
bootstrap resamples whole *groups* (one baseline key with all its pairs):
:func:`group_resample_counts` gives the resampling weights.

Shapes: every array of :class:`Pairs` is 1-D over pairs. Public: :func:`screen_records`,
:class:`Pairs`, :func:`baselines`, :func:`paired_excess`, :func:`group_resample_counts`.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from quantbounds._checks import check_choice
from quantbounds.calib.records import ARMS

# fields that must agree for a quantized run and its 16-bit baseline to be a pair
PAIR_KEYS = ("model", "dataset", "scale", "lora_alpha", "rank", "seed", "n_train", "steps")
ADAPTER_ARMS = ("adapter_rtn", "adapter_sr", "adapter_nf4", "adapter_noise")
METRICS = ("eval_loss", "perplexity", "f1", "exact_match")


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
        problems.append(f"mixed schema versions {dict(schemas)}; only quantbounds.run/1 is used")
    for r in records:
        if r.get("schema") != "quantbounds.run/1":
            continue
        cfg = r.get("config") or {}
        if cfg.get("rank_pattern") or cfg.get("bits_pattern"):
            problems.append(f"run {r['run_id']} ({r['arm']}): per-layer rank/bits pattern, not a uniform "
                            f"(r, b) configuration; left out of fits and verdicts")
            continue
        bad = [k for k in ("eval_loss", "perplexity", "f1") if not math.isfinite(float(r[k]))]
        if bad:
            problems.append(f"run {r['run_id']} ({r['arm']}, r={r['rank']}, b={r['bits']}, "
                            f"seed={r['seed']}): non-finite {bad}; dropped")
            continue
        valid.append(r)
    return valid, problems


@dataclass
class Pairs:
    """Quantized runs matched to their 16-bit baseline. Arrays are 1-D over pairs."""

    rank: np.ndarray
    bits: np.ndarray
    n_train: np.ndarray
    seed: np.ndarray
    group: np.ndarray          # index of the baseline group (one per baseline key)
    q: np.ndarray              # metric of the quantized run
    base: np.ndarray           # metric of the baseline
    missing: list[str] = field(default_factory=list)

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


def pair_key(r: dict) -> tuple:
    """The values of ``PAIR_KEYS`` in record ``r`` (None where absent)."""
    return tuple(r.get(k) for k in PAIR_KEYS)


def baselines(records: list[dict], *, baseline_arm: str = "fp16") -> dict[tuple, list[dict]]:
    """16-bit baseline runs by pair key (several when a configuration was repeated)."""
    out: dict[tuple, list[dict]] = {}
    for r in records:
        if r["arm"] == baseline_arm and r["bits"] == 16:
            out.setdefault(pair_key(r), []).append(r)
    return out


def paired_excess(records: list[dict], *, arm: str, baseline_arm: str = "fp16",
                  metric: str = "eval_loss", bits: int | None = None,
                  group_index: dict[tuple, int] | None = None) -> Pairs:
    """Pair every ``arm`` run (optionally at one bit-width) with its ``baseline_arm`` run.

    Repeated baselines for one key are averaged. Runs without a baseline are listed in
    ``missing`` as "arm r=… b=… seed=… N=…" and left out. ``group_index`` maps baseline keys
    to group ids (default: the keys sorted by their string form, numbered from 0).
    """
    check_choice(arm, "arm", ARMS)
    check_choice(metric, "metric", METRICS)
    base = baselines(records, baseline_arm=baseline_arm)
    gi = group_index if group_index is not None else {k: i for i, k in enumerate(sorted(base, key=str))}
    cols: dict[str, list] = {k: [] for k in ("rank", "bits", "n_train", "seed", "group", "q", "base")}
    missing = []
    for r in records:
        if r["arm"] != arm or (bits is not None and r["bits"] != bits):
            continue
        k = pair_key(r)
        if k not in base:
            missing.append(f"{arm} r={r['rank']} b={r['bits']} seed={r['seed']} N={r['n_train']}")
            continue
        cols["rank"].append(r["rank"]); cols["bits"].append(r["bits"])
        cols["n_train"].append(r["n_train"]); cols["seed"].append(r["seed"])
        cols["group"].append(gi[k]); cols["q"].append(float(r[metric]))
        cols["base"].append(float(np.mean([float(b[metric]) for b in base[k]])))
    arr = {k: np.asarray(v, dtype=float if k in ("q", "base") else int) for k, v in cols.items()}
    return Pairs(**arr, missing=missing)


def group_resample_counts(groups, *, n_boot: int, rng: np.random.Generator, minlength: int) -> np.ndarray:
    """Cluster-bootstrap weights over baseline groups.

    Resample k draws len(groups) ids with replacement from ``groups`` (1-D array of group
    ids < ``minlength``); counts[k, g] = how often id g was drawn. Returns (n_boot, minlength),
    or (0, minlength) when n_boot = 0 or there are no groups. Draws in the order
    resample 0, 1, …, so a given ``rng`` state gives one fixed set of resamples.
    """
    groups = np.asarray(groups)
    if not n_boot or not groups.size:
        return np.zeros((0, minlength))
    return np.stack([np.bincount(rng.choice(groups, size=groups.size), minlength=minlength)
                     for _ in range(n_boot)])
