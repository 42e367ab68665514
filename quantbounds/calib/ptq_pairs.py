"""Post-training quantization (PTQ) records as paired data for the quantization term.

One full-precision fine-tune (a ``quantbounds.run/1`` fp16 record) yields one
``quantbounds.ptq/1`` record per (scheme, b, draw) (:mod:`real_runs.ptq`): the eval loss L_q of
the model with the trained B, A replaced by Q(B), Q(A) and the loss L_fp of the same model
unquantized on the SAME held-out tokens (``eval_loss_ref``). For one scheme, the pair of trained
adapter k at bit-width b is

    Δ_k(b) = mean_d L_q(k, b, d) − L_fp(k)        (d over the SR draws; one draw for RTN)

the quantity Thm 3.1's quantization term bounds (C2·r^β·ρ^(−b), :mod:`quantbounds.calib.
calibration`). The pairs are :class:`~quantbounds.calib.pairing.Pairs` like those of the
quantization-aware arms, so the same fit, bootstrap over adapters, seed jackknife and
leave-one-configuration-out check apply. Beside each pair the records carry predictions made
with NO constant fitted to any quantized run (curvature Σ_x, G measured on the full-precision
model, DESIGN.md §2 "curvature-weighted"):

    second      P₂ = ½·s²·Σ_l tr(ε_BA Σ_x ε_BAᵀ G)          (K-FAC Fisher, realised ε_BA)
    first+2nd   P₁₂ = ⟨∇_W L, s·ε_BA⟩ + P₂                  (adds the first-order term)
    moment      E over the noise model of P₂  (σ² = Δ²/12 RTN; exact Bernoulli SR)

and :func:`ratio_interval` gives Σ pred ÷ Σ measured over a group of records with its interval.
Torch-free; shapes: every array is 1-D over pairs.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from quantbounds._checks import check_choice
from quantbounds.calib.pairing import Pairs
from quantbounds.calib.records import PTQ_SCHEMES

__all__ = ["PREDICTIONS", "PREDICTION_GROUPS", "PtqPairs", "adapter_of", "measured_interval",
           "ptq_pairs", "ratio_interval", "residual_records"]

PREDICTIONS = {
    "second": lambda r: r["pred_plugin"],
    "first+2nd": lambda r: r["pred_plugin"] + r.get("pred_first_order", 0.0),
    "moment": lambda r: r.get("pred_moment"),
    # the same expectation with the full Hessian of the training loss (random perturbations of
    # the noise model's variances; real_runs.ptq.run_ptq, the sweep's opt-in ptq_hessian_bits)
    "hessian_moment": lambda r: r.get("pred_hessian_moment"),
    # … with the measured first-order term (RTN's is not 0; for SR it is the control variate)
    "first+E_Hessian": lambda r: (None if r.get("pred_hessian_moment") is None
                                  else r["pred_hessian_moment"] + r.get("pred_first_order", 0.0)),
}
# The part of each prediction measured on the held-out tokens, per eval group (None: none of
# it is; the second-order terms use curvature from training windows only).
PREDICTION_GROUPS = {
    "second": None,
    "first+2nd": lambda r: r.get("first_order_groups"),
    "moment": None,
    "hessian_moment": None,
    "first+E_Hessian": lambda r: r.get("first_order_groups"),
}


def adapter_of(rec: dict):
    """The trained adapter a PTQ record quantized: its fp16 run id (``ptq_of``), else
    (rank, seed) for records written before ``ptq_of`` existed."""
    return rec.get("ptq_of") or (rec["rank"], rec["seed"])


def _shared_windows(recs: list[dict]) -> list | None:
    """The eval groups' window counts when every record carries per-group values on the same
    groups (so their group values can be added), else None."""
    w = [r.get("group_windows") for r in recs]
    if not w or not w[0] or len(w[0]) < 2 or any(x != w[0] for x in w):
        return None
    if any(len(r.get("delta_loss_groups") or ()) != len(w[0]) for r in recs):
        return None
    return list(w[0])


def measured_interval(recs: list[dict], *, level: float = 0.95) -> tuple[float, float]:
    """The ``level`` interval of Σ ΔL over ``recs``: paired over the eval groups when the
    records share them (:func:`quantbounds.verdicts.intervals.grouped_total` of the summed
    group values: exact for records scored on the same tokens), else the sum of the records'
    own intervals (conservative: taken as perfectly correlated)."""
    from quantbounds.verdicts.intervals import grouped_total

    windows = _shared_windows(recs)
    if windows is None:
        return (sum(r["delta_loss_ci"][0] for r in recs), sum(r["delta_loss_ci"][1] for r in recs))
    tot = np.sum([np.asarray(r["delta_loss_groups"], float) for r in recs], axis=0)
    lo, hi = grouped_total(tot, windows, level=level)["ci"]
    return lo, hi


def ratio_interval(recs: list[dict], pred_fn, *, pred_groups=None, level: float = 0.95):
    """(R, lo, hi, G): R = Σ pred ÷ Σ measured over ``recs`` and its ``level`` interval by the
    delta method on the ratio estimator, from two sources of uncertainty:

    between adapters  the G trained adapters (records of one adapter share its curvature and its
                      fp reference) are the independent units: z_k = (P_k − R·M_k) / M̄,
                      se_b = sd(z)/√G;
    held-out tokens   every record is scored on the same held-out tokens, so their sampling
                      error is common. Paired (records with per-group values, ``real_runs.ptq``):
                      δR = (δP − R·δM)/M, so with u_j = Σ_records (p_j − R·D_j) over the eval
                      groups j — D_j the group's loss change, p_j the group's part of the
                      prediction measured on those tokens (``pred_groups``, e.g. the
                      first-order term; 0 for the second-order terms) —
                      se_e = se(Σ_j u_j)/|Σ M| by :func:`quantbounds.verdicts.intervals.
                      grouped_total`: the error the measured cost and a first-order term share
                      cancels. Older records (no groups): se_e = |R|·se(Σ M)/|Σ M|, se(Σ M)
                      from the records' paired intervals (half-widths summed: taken as
                      perfectly correlated), and a prediction's own eval-token error ignored.

    R ± q·√(se_b² + se_e²), q the t_{G−1} quantile (normal for G = 1: the interval is then
    conditional on that one adapter). Signed: Σ M may be negative (a first-order term can lower
    the loss); R is NaN with no interval when Σ M = 0. Coverage checked by simulation in
    tests/test_real_runs_ptq_report.py and tests/calib/test_ptq_pairs.py."""
    from scipy import stats

    from quantbounds.verdicts.intervals import grouped_total

    clusters = defaultdict(list)
    for r in recs:
        clusters[adapter_of(r)].append(r)
    keys = list(clusters)
    P = np.array([sum(pred_fn(r) for r in clusters[k]) for k in keys], float)
    M = np.array([sum(r["delta_loss"] for r in clusters[k]) for k in keys], float)
    g = len(keys)
    if M.sum() == 0:
        return math.nan, None, None, g
    ratio = float(P.sum() / M.sum())
    z_level = stats.norm.ppf(0.5 + level / 2)
    windows = _shared_windows(recs)
    if windows is not None:
        u = np.zeros(len(windows))
        for r in recs:
            p = pred_groups(r) if pred_groups is not None else None
            u += (np.zeros_like(u) if p is None else np.asarray(p, float)) - ratio * np.asarray(
                r["delta_loss_groups"], float)
        se_e = grouped_total(u, windows)["se"] / abs(M.sum())
    else:
        half_m = 0.5 * sum(r["delta_loss_ci"][1] - r["delta_loss_ci"][0] for r in recs)
        se_e = abs(ratio) * (half_m / stats.norm.ppf(0.975)) / abs(M.sum())
    if g >= 2:
        z = (P - ratio * M) / M.mean()
        se_b = float(z.std(ddof=1) / math.sqrt(g))
        q = float(stats.t.ppf(0.5 + level / 2, g - 1))
    else:
        se_b, q = 0.0, float(z_level)
    half = q * math.sqrt(se_b**2 + se_e**2)
    return ratio, ratio - half, ratio + half, g


def residual_records(recs: list[dict]) -> list[dict] | None:
    """The records with the first-order term taken out of the measured cost: ``delta_loss`` =
    ΔL − P₁, ``delta_loss_groups`` = D_j − P₁ⱼ and ``delta_loss_ci`` = the paired interval of
    ΔL − P₁ (``resid_first_order_ci``), so that ``ratio_interval(res, PREDICTIONS["second"])``
    is P₂ ÷ (ΔL − P₁): whether the second-order term predicts what the first-order term leaves.
    None unless every record carries the per-group values (``real_runs.ptq`` since they exist)."""
    if not recs or any(r.get("resid_first_order_ci") is None or not r.get("first_order_groups")
                       for r in recs):
        return None
    return [{**r, "delta_loss": r["delta_loss"] - r["pred_first_order"],
             "delta_loss_groups": [d - f for d, f in zip(r["delta_loss_groups"],
                                                         r["first_order_groups"])],
             "delta_loss_ci": list(r["resid_first_order_ci"])} for r in recs]


@dataclass(frozen=True, eq=False)
class PtqPairs:
    """The pairs of one PTQ scheme (``pairs.arm`` = "ptq_<scheme>"), the zero-constant
    prediction of each pair (``pred``, mean over draws, same order), the adapters (group ids:
    ``pairs.group`` indexes ``adapters``) and the records each pair averages."""

    scheme: str
    prediction: str
    pairs: Pairs
    pred: np.ndarray
    adapters: tuple
    records: tuple

    def __len__(self) -> int:
        return len(self.pairs)


def ptq_pairs(ptq_records, runs=None, *, scheme: str, prediction: str = "first+2nd",
              max_bits: int | None = 15) -> PtqPairs:
    """One pair per (trained adapter, b) of ``scheme`` (b ≤ ``max_bits``; 16 is the baseline's
    precision): q = mean over draws of ``eval_loss``, base = ``eval_loss_ref`` (the same tokens),
    n_train from the trained run's record in ``runs`` (run records, matched by ``run_id`` =
    ``ptq_of``; −1 when absent), s the record's numeric LoRA scale (α/r for "alpha_r")."""
    check_choice(scheme, "scheme", PTQ_SCHEMES)
    check_choice(prediction, "prediction", tuple(PREDICTIONS))
    n_train = {r.get("run_id"): r.get("n_train") for r in (runs or [])}
    cells = defaultdict(list)
    for r in ptq_records:
        if r["ptq_scheme"] != scheme or (max_bits is not None and r["bits"] > max_bits):
            continue
        cells[(adapter_of(r), r["bits"])].append(r)
    # adapters in (rank, seed) order, so that the bootstrap's resamples do not depend on ids
    about = {a: (recs[0]["rank"], recs[0]["seed"], str(a)) for (a, _), recs in cells.items()}
    adapters = sorted(about, key=about.get)
    index = {a: i for i, a in enumerate(adapters)}
    cols = {k: [] for k in ("rank", "bits", "n_train", "seed", "group", "q", "base", "s")}
    pred, kept = [], []
    fn = PREDICTIONS[prediction]
    for (adapter, bits), recs in sorted(cells.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
        first = recs[0]
        n = n_train.get(first.get("ptq_of"))
        cols["rank"].append(first["rank"])
        cols["bits"].append(bits)
        cols["n_train"].append(-1 if n is None else n)
        cols["seed"].append(first["seed"])
        cols["group"].append(index[adapter])
        cols["q"].append(float(np.mean([r["eval_loss"] for r in recs])))
        cols["base"].append(float(first["eval_loss_ref"]))
        alpha = first.get("lora_alpha")
        s = alpha / first["rank"] if (first.get("scale") == "alpha_r" and alpha) else math.nan
        cols["s"].append(s)
        values = [fn(r) for r in recs]
        pred.append(math.nan if any(v is None for v in values) else float(np.mean(values)))
        kept.append(tuple(recs))
    arrays = {k: np.asarray(v, dtype=float if k in ("q", "base", "s") else int)
              for k, v in cols.items()}
    pairs = Pairs(arm=f"ptq_{scheme}", baseline_arm="fp16", metric="eval_loss", **arrays)
    return PtqPairs(scheme=scheme, prediction=prediction, pairs=pairs,
                    pred=np.asarray(pred, float), adapters=tuple(adapters), records=tuple(kept))
