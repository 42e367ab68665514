"""Figures from run records and the calibration: measured data only.

``analysis_figure`` draws the nine panels the seed paper's Figure 1 names (seed 001 §4.2:
(A) bit-width vs performance … (I) summary), each from run records or from the calibration
fitted to them, each labelled with its data source and count; one function per panel family:
the runs (A, E, F), the pairs (B, C), the fit (D, G, H) and the summary (I).
``additive_vs_real_figure`` compares the paper's additive-noise arm with real quantizers in the
same sweep. Both read the one :class:`~quantbounds.calib.pairing.PairedRuns` that calibration
fitted. Records labelled synthetic (quantbounds.calib.synthetic) put "SYNTHETIC" in every
title. A panel without the data it needs says which runs would fill it instead of drawing
anything.

matplotlib (Agg) is imported inside the functions: no import-time work.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from quantbounds.calib.pairing import ADAPTER_ARMS, PairedRuns, pair_runs
from quantbounds.calib.synthetic import is_synthetic


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _empty(ax, title: str, why: str) -> None:
    ax.set_title(title, fontsize=9)
    ax.text(0.5, 0.5, why, ha="center", va="center", wrap=True, fontsize=8, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _src(ax, text: str) -> None:
    ax.text(0.01, 0.01, text, transform=ax.transAxes, fontsize=6, color="0.35", va="bottom")


def _mean_sd(groups: dict) -> tuple[list, list, list, int]:
    xs = sorted(groups)
    return (xs, [float(np.mean(groups[x])) for x in xs], [float(np.std(groups[x])) for x in xs],
            sum(len(v) for v in groups.values()))


def labels_of(r: dict) -> str:
    """Box/bar label of a run: its arm, with /bits for adapter arms."""
    return r["arm"] + (f"/{r['bits']}" if r["arm"] in ADAPTER_ARMS else "")


def _save(fig, plt, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---- panels from the runs: (A) bits vs perplexity, (E) distributions, (F) efficiency ----------

def _panel_bits(ax, runs: PairedRuns, src: str) -> None:
    """(A) mean perplexity per bit-width, per adapter arm (16 = fp16)."""
    records = runs.records
    n_tot = 0
    for arm in [x for x in ADAPTER_ARMS if runs.has(x)]:
        by_bits = defaultdict(list)
        for r in records:
            if r["arm"] == arm or r["arm"] == "fp16":
                by_bits[r["bits"]].append(r["perplexity"])
        xs, m, sd, n = _mean_sd(by_bits)
        n_tot += n
        ax.errorbar(xs, m, yerr=sd, marker="o", capsize=3, label=arm)
    if n_tot:
        ax.set(xlabel="adapter bits b", ylabel="eval perplexity",
               title="(A) bit-width vs performance")
        ax.legend(fontsize=7)
        _src(ax, f"{src}; mean ± sd over runs; n={n_tot}")
    else:
        _empty(ax, "(A) bit-width vs performance", "no adapter-quantization runs")


def _panel_distributions(ax, runs: PairedRuns, src: str) -> None:
    """(E) perplexity distributions per arm and bit-width."""
    by_label = defaultdict(list)
    for r in runs.records:
        by_label[labels_of(r)].append(r["perplexity"])
    labels = sorted(by_label)
    ax.boxplot([by_label[k] for k in labels], tick_labels=labels)
    ax.tick_params(axis="x", rotation=70, labelsize=6)
    ax.set(ylabel="eval perplexity", title="(E) perplexity distributions")
    _src(ax, f"{src}; n={len(runs.records)} runs")


def _panel_efficiency(ax, runs: PairedRuns, src: str) -> None:
    """(F) training efficiency: median tokens/s when measured, else wall time."""
    records = runs.records
    key = "tokens_per_s" if any(r.get("tokens_per_s") for r in records) else "wall_s"
    by_label = defaultdict(list)
    for r in records:
        if r.get(key):
            by_label[labels_of(r)].append(float(r[key]))
    if not by_label:
        _empty(ax, "(F) training efficiency", "no tokens_per_s / wall_s recorded")
        return
    ks = sorted(by_label)
    ax.bar(range(len(ks)), [np.median(by_label[k]) for k in ks])
    ax.set_xticks(range(len(ks)), ks, rotation=70, fontsize=6)
    ax.set(ylabel=f"median {key}", title="(F) training efficiency")
    _src(ax, f"{src}; n={sum(map(len, by_label.values()))} runs")


# ---- panels from the pairs: (B) rank sensitivity, (C) gradient variance -----------------------

def _panel_rank(ax, runs: PairedRuns, arm: str) -> None:
    """(B) paired excess eval loss vs r at each b."""
    pairs = runs.pairs(arm=arm) if runs.has(arm) else None
    if pairs is None or not len(pairs):
        _empty(ax, "(B) rank sensitivity", f"no {arm} runs paired with fp16 runs")
        return
    for b in sorted(set(pairs.bits.tolist())):
        by_rank = defaultdict(list)
        for rank, excess in zip(pairs.rank[pairs.bits == b], pairs.excess[pairs.bits == b]):
            by_rank[rank].append(excess)
        xs, m, sd, _ = _mean_sd(by_rank)
        ax.errorbar(xs, m, yerr=sd, marker="o", capsize=3, label=f"b={b}")
    ax.set(xscale="log", xlabel="rank r", ylabel="excess eval loss (nats)",
           title="(B) rank sensitivity")
    ax.axhline(0, color="0.6", lw=0.8)
    ax.legend(fontsize=7)
    _src(ax, f"{arm} − fp16, paired by rank/seed/N; n={len(pairs)} pairs")


def _panel_gradvar(ax, runs: PairedRuns, src: str) -> None:
    """(C) gradient variance vs r·2^(−2b), per adapter arm."""
    pts = [(r["rank"] * 4.0 ** -r["bits"], r["grad_var"], r["arm"]) for r in runs.records
           if r["arm"] in ADAPTER_ARMS and r["grad_var"] > 0]
    if not pts:
        _empty(ax, "(C) gradient variance vs r·2^(−2b)", "no adapter runs with grad_var > 0")
        return
    for arm in sorted({p[2] for p in pts}):
        ax.scatter([p[0] for p in pts if p[2] == arm], [p[1] for p in pts if p[2] == arm], s=12,
                   label=arm)
    ax.set(xscale="log", yscale="log", xlabel="r·2^(−2b)",
           ylabel="grad_var (trace, across batches)", title="(C) gradient variance vs r·2^(−2b)")
    ax.legend(fontsize=7)
    _src(ax, f"{src}; n={len(pts)} runs")


# ---- panels from the fit: (D) held-out prediction, (G) b* rule, (H) decomposition -------------

def _panel_loco(ax, cal, arm: str) -> None:
    """(D) leave-one-configuration-out predictions (held out, not in-sample) vs measured."""
    quant = cal.quant if cal is not None else None
    if not (quant and quant.loco):
        _empty(ax, "(D) prediction vs measurement", "quantization term not fitted (see notes)")
        return
    y = np.asarray(quant.data["excess"])
    yhat = np.asarray(quant.loco.predictions, float)
    m = np.isfinite(yhat)
    ax.scatter(yhat[m], y[m], s=12)
    lim = [min(y[m].min(), yhat[m].min()), max(y[m].max(), yhat[m].max())] if m.any() else [0, 1]
    ax.plot(lim, lim, color="0.5", lw=0.8)
    r2 = quant.loco.r2
    title = "(D) prediction vs measurement" + (f" (LOCO R²={r2:.3f})" if r2 is not None else "")
    ax.set(xlabel="predicted excess (fit without that configuration)",
           ylabel="measured excess (nats)", title=title)
    _src(ax, f"{arm}; n={int(m.sum())} pairs, {quant.loco.n_held_out} configurations held out")


def _panel_rule(ax, rows: list[dict]) -> None:
    """(G) calibrated b* with intervals next to the paper's and derived rules."""
    if not rows:
        _empty(ax, "(G) bit-width rule", "no fit, so no calibrated b*")
        return
    N0 = rows[0]["N"]
    rs = [row for row in rows if row["N"] == N0]
    x = [row["r"] for row in rs]
    ax.plot(x, [row["paper"] for row in rs], "k--", label="paper Thm 3.2 (C=0)")
    for k, style in (("calibrated_balanced", "o-"), ("calibrated_tolerance", "s-")):
        if k in rs[0]:
            v = np.array([row[k]["b"] for row in rs])
            ci = [row[k]["ci"] for row in rs]
            err = None if any(c is None for c in ci) else np.abs(np.array(ci).T - v)
            ax.errorbar(x, v, yerr=err, fmt=style, capsize=3, label=k.replace("_", " "))
    if "derived_balanced" in rs[0]:
        ax.plot(x, [row["derived_balanced"] for row in rs], ":",
                label="derived balanced (theory exponents)")
    ax.set(xscale="log", xlabel="rank r", ylabel="b*", title=f"(G) bit-width rule (N={N0})")
    ax.legend(fontsize=7)
    _src(ax, "from the fit; 95 % bootstrap intervals")


def _panel_decomposition(ax, cal, rows: list[dict]) -> None:
    """(H) fitted generalization term vs quantization term at b = 2, 4, 8."""
    if not (cal is not None and cal.quant and cal.gen):
        _empty(ax, "(H) error decomposition", "needs both terms fitted")
        return
    from quantbounds.calib.calibration import gen_model, quant_model

    ranks = np.geomspace(1, 64, 40)
    N0 = rows[0]["N"] if rows else 1000
    gen_theta = np.array(cal.gen.theta)
    ax.plot(ranks, gen_model(gen_theta, ranks, N0) - gen_theta[0], "k-",
            label=f"C1·r^a·N^(−c), N={N0}")
    for b in (2, 4, 8):
        ax.plot(ranks, quant_model(np.array(cal.quant.theta), ranks, b), label=f"C2·r^β·ρ^(−{b})")
    ax.set(xscale="log", yscale="log", xlabel="rank r", ylabel="nats",
           title="(H) error decomposition (fitted)")
    ax.legend(fontsize=7)
    _src(ax, f"terms fitted to n={cal.quant.n} pairs, {cal.gen.n} fp16 configs")


def _panel_summary(ax, out: dict, tag: str, src: str) -> None:
    """(I) data, verdict counts, fitted constants and the first notes, as text."""
    counts = defaultdict(int)
    for v in out["verdicts"]:
        counts[v["verdict"]] += 1
    lines = [f"{tag}data: {out['data']['n_valid']} valid runs ({src})", f"verdicts: {dict(counts)}"]
    for k in ("C2", "per_bit_factor", "exponent_r", "C1", "exponent_r_gen", "exponent_N"):
        e = out["fits"].get(k)
        if isinstance(e, dict):
            ci = "fixed" if e.get("fixed") else (f"[{e['ci'][0]:.3g}, {e['ci'][1]:.3g}]"
                                                 if e.get("ci") else "no CI")
            lines.append(f"{k} = {e['value']:.3g}  {ci}")
    lines += [f"! {n[:70]}" for n in out["notes"][:4]]
    ax.axis("off")
    ax.text(0, 1, "\n".join(lines), va="top", fontsize=8, family="monospace")
    ax.set_title("(I) summary", fontsize=9)


def analysis_figure(records, out: dict, cal, path) -> Path:
    """The nine-panel analysis figure (A–I) → ``path`` (PNG). ``records``: a PairedRuns (or
    run records, screened here); ``out`` is run_calibration's dict, ``cal`` its Calibration."""
    plt = _plt()
    runs = pair_runs(records)
    tag = "SYNTHETIC — " if is_synthetic(runs.records) else ""
    models = ", ".join(sorted({r["model"] for r in runs.records}))[:40]
    src = "synthetic records" if tag else (models or "records")
    fig, axes = plt.subplots(3, 3, figsize=(15, 13))
    panel = dict(zip("ABCDEFGHI", axes.ravel()))
    arm = out["settings"]["arm"]
    rows = out.get("bits_table") or []
    _panel_bits(panel["A"], runs, src)
    _panel_rank(panel["B"], runs, arm)
    _panel_gradvar(panel["C"], runs, src)
    _panel_loco(panel["D"], cal, arm)
    _panel_distributions(panel["E"], runs, src)
    _panel_efficiency(panel["F"], runs, src)
    _panel_rule(panel["G"], rows)
    _panel_decomposition(panel["H"], cal, rows)
    _panel_summary(panel["I"], out, tag, src)
    fig.suptitle(f"{tag}Quantization in LoRA fine-tuning: measured runs and calibrated Thm 3.1",
                 fontsize=12)
    fig.tight_layout()
    return _save(fig, plt, path)


def additive_vs_real_figure(records, path) -> Path:
    """The paper's additive uniform noise (arm adapter_noise) against real quantizers (RTN,
    SR, NF4 on B, A): paired excess eval loss and ‖ε_BA‖_F² per bit-width, mean ± sd."""
    plt = _plt()
    runs = pair_runs(records)
    tag = "SYNTHETIC — " if is_synthetic(runs.records) else ""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    arms = [a for a in ADAPTER_ARMS if runs.has(a)]
    n = 0
    for arm in arms:
        pairs = runs.pairs(arm=arm)
        if not len(pairs):
            continue
        by_bits = defaultdict(list)
        for b, e in zip(pairs.bits, pairs.excess):
            by_bits[int(b)].append(e)
        xs, m, sd, k = _mean_sd(by_bits)
        n += k
        left.errorbar(xs, m, yerr=sd, marker="o", capsize=3, label=arm)
        eps = defaultdict(list)
        for r in runs.runs(arm):
            if r["eps_ba_fro2"] > 0:
                eps[r["bits"]].append(r["eps_ba_fro2"])
        if eps:
            xs, m, sd, _ = _mean_sd(eps)
            right.errorbar(xs, m, yerr=sd, marker="o", capsize=3, label=arm)
    if n:
        left.axhline(0, color="0.6", lw=0.8)
        left.set(xlabel="bits b", ylabel="excess eval loss over fp16 (nats)",
                 title=f"{tag}excess loss by quantizer")
        left.legend(fontsize=8)
        right.set(yscale="log", xlabel="bits b", ylabel="Σ‖Q(B)Q(A) − BA‖_F²",
                  title=f"{tag}‖ε_BA‖² of final adapters")
        right.legend(fontsize=8)
        _src(left, f"paired with fp16 by rank/seed/N; n={n} pairs")
    else:
        _empty(left, f"{tag}additive model vs real quantizers",
               "no adapter-quantization runs paired with fp16: run the sweep with arms "
               "adapter_noise, adapter_rtn")
        right.axis("off")
    if "adapter_noise" not in arms:
        fig.text(0.5, 0.01, "no adapter_noise runs: the additive model is not in this sweep",
                 ha="center", fontsize=8)
    fig.tight_layout()
    return _save(fig, plt, path)


def calibration_figures(records, out: dict, cal, *, outdir="figures") -> list[str]:
    """Both figures into ``outdir`` (prefixed "synthetic_" for synthetic records); ``records``
    a PairedRuns or run records (screened here)."""
    runs = pair_runs(records)
    pre = "synthetic_" if is_synthetic(runs.records) else ""
    d = Path(outdir)
    return [str(analysis_figure(runs, out, cal, d / f"{pre}calibration_analysis.png")),
            str(additive_vs_real_figure(runs, d / f"{pre}additive_vs_real.png"))]
