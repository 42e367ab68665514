"""Figures from run records and the calibration: measured data only.

``analysis_figure`` draws the nine panels the seed paper's Figure 1 names (seed 001 §4.2:
(A) bit-width vs performance … (I) summary), each from run records or from the calibration
fitted to them, each labelled with its data source and count. ``additive_vs_real_figure``
compares the paper's additive-noise arm with real quantizers in the same sweep. Records
labelled synthetic (quantbounds.calib.synthetic) put "SYNTHETIC" in every title. A panel without
the data it needs says which runs would fill it instead of drawing anything.

matplotlib (Agg) is imported inside the functions: no import-time work.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from quantbounds.calib.pairing import ADAPTER_ARMS, paired_excess
from quantbounds.calib.synthetic import is_synthetic


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _empty(ax, title: str, why: str) -> None:
    ax.set_title(title, fontsize=9)
    ax.text(0.5, 0.5, why, ha="center", va="center", wrap=True, fontsize=8, transform=ax.transAxes)
    ax.set_xticks([]); ax.set_yticks([])


def _src(ax, text: str) -> None:
    ax.text(0.01, 0.01, text, transform=ax.transAxes, fontsize=6, color="0.35", va="bottom")


def _mean_sd(groups: dict) -> tuple[list, list, list, int]:
    xs = sorted(groups)
    return (xs, [float(np.mean(groups[x])) for x in xs], [float(np.std(groups[x])) for x in xs],
            sum(len(v) for v in groups.values()))


def analysis_figure(records: list[dict], out: dict, cal, path) -> Path:
    """The nine-panel analysis figure (A–I) → ``path`` (PNG). ``out`` is run_calibration's dict."""
    plt = _plt()
    tag = "SYNTHETIC — " if is_synthetic(records) else ""
    src = "synthetic records" if tag else (", ".join(sorted({r["model"] for r in records}))[:40] or "records")
    fig, axes = plt.subplots(3, 3, figsize=(15, 13))
    A, B, C, D, E, F, G, H, I = axes.ravel()
    arm = out["settings"]["arm"]

    # (A) bit-width vs performance: mean perplexity per bit-width, per adapter arm (16 = fp16)
    n_tot = 0
    for a in [x for x in ADAPTER_ARMS if any(r["arm"] == x for r in records)]:
        g = defaultdict(list)
        for r in records:
            if r["arm"] == a or r["arm"] == "fp16":
                g[r["bits"]].append(r["perplexity"])
        xs, m, sd, n = _mean_sd(g)
        n_tot += n
        A.errorbar(xs, m, yerr=sd, marker="o", capsize=3, label=a)
    if n_tot:
        A.set(xlabel="adapter bits b", ylabel="eval perplexity", title="(A) bit-width vs performance")
        A.legend(fontsize=7); _src(A, f"{src}; mean ± sd over runs; n={n_tot}")
    else:
        _empty(A, "(A) bit-width vs performance", "no adapter-quantization runs")

    # (B) rank sensitivity: paired excess eval loss vs r at each b
    P = paired_excess(records, arm=arm) if any(r["arm"] == arm for r in records) else None
    if P is not None and len(P):
        for b in sorted(set(P.bits.tolist())):
            g = defaultdict(list)
            for rk, e in zip(P.rank[P.bits == b], P.excess[P.bits == b]):
                g[rk].append(e)
            xs, m, sd, _ = _mean_sd(g)
            B.errorbar(xs, m, yerr=sd, marker="o", capsize=3, label=f"b={b}")
        B.set(xscale="log", xlabel="rank r", ylabel="excess eval loss (nats)", title="(B) rank sensitivity")
        B.axhline(0, color="0.6", lw=0.8); B.legend(fontsize=7)
        _src(B, f"{arm} − fp16, paired by rank/seed/N; n={len(P)} pairs")
    else:
        _empty(B, "(B) rank sensitivity", f"no {arm} runs paired with fp16 runs")

    # (C) gradient variance vs r·2^(−2b)
    pts = [(r["rank"] * 4.0 ** -r["bits"], r["grad_var"], r["arm"]) for r in records
           if r["arm"] in ADAPTER_ARMS and r["grad_var"] > 0]
    if pts:
        for a in sorted({p[2] for p in pts}):
            x = [p[0] for p in pts if p[2] == a]; y = [p[1] for p in pts if p[2] == a]
            C.scatter(x, y, s=12, label=a)
        C.set(xscale="log", yscale="log", xlabel="r·2^(−2b)", ylabel="grad_var (trace, across batches)",
              title="(C) gradient variance vs r·2^(−2b)")
        C.legend(fontsize=7); _src(C, f"{src}; n={len(pts)} runs")
    else:
        _empty(C, "(C) gradient variance vs r·2^(−2b)", "no adapter runs with grad_var > 0")

    # (D) prediction vs measurement: leave-one-configuration-out predictions (held out, not in-sample)
    q = (cal.quant if cal is not None else None)
    if q and q.get("loco"):
        y = np.asarray(q["data"]["excess"]); yh = np.asarray(q["loco"]["predictions"], float)
        m = np.isfinite(yh)
        D.scatter(yh[m], y[m], s=12)
        lim = [min(y[m].min(), yh[m].min()), max(y[m].max(), yh[m].max())] if m.any() else [0, 1]
        D.plot(lim, lim, color="0.5", lw=0.8)
        r2 = q["loco"]["r2"]
        D.set(xlabel="predicted excess (fit without that configuration)", ylabel="measured excess (nats)",
              title=f"(D) prediction vs measurement (LOCO R²={r2:.3f})" if r2 is not None else "(D) prediction vs measurement")
        _src(D, f"{arm}; n={int(m.sum())} pairs, {q['loco']['n_held_out']} configurations held out")
    else:
        _empty(D, "(D) prediction vs measurement", "quantization term not fitted (see notes)")

    # (E) perplexity distributions per arm and bit-width
    g = defaultdict(list)
    for r in records:
        g[f"{r['arm']}" + (f"/{r['bits']}" if r["arm"] in ADAPTER_ARMS else "")].append(r["perplexity"])
    labels = sorted(g)
    E.boxplot([g[k] for k in labels], tick_labels=labels)
    E.tick_params(axis="x", rotation=70, labelsize=6)
    E.set(ylabel="eval perplexity", title="(E) perplexity distributions")
    _src(E, f"{src}; n={len(records)} runs")

    # (F) training efficiency: tokens/s when measured, else wall time
    key = "tokens_per_s" if any(r.get("tokens_per_s") for r in records) else "wall_s"
    g = defaultdict(list)
    for r in records:
        if r.get(key):
            g[labels_of(r)].append(float(r[key]))
    if g:
        ks = sorted(g)
        F.bar(range(len(ks)), [np.median(g[k]) for k in ks])
        F.set_xticks(range(len(ks)), ks, rotation=70, fontsize=6)
        F.set(ylabel=f"median {key}", title="(F) training efficiency")
        _src(F, f"{src}; n={sum(map(len, g.values()))} runs")
    else:
        _empty(F, "(F) training efficiency", "no tokens_per_s / wall_s recorded")

    # (G) the bit-width rule: calibrated b* with intervals next to the paper's and derived rules
    rows = out.get("bits_table") or []
    if rows:
        N0 = rows[0]["N"]
        rs = [row for row in rows if row["N"] == N0]
        x = [row["r"] for row in rs]
        G.plot(x, [row["paper"] for row in rs], "k--", label="paper Thm 3.2 (C=0)")
        for k, st in (("calibrated_balanced", "o-"), ("calibrated_tolerance", "s-")):
            if k in rs[0]:
                v = np.array([row[k]["b"] for row in rs])
                ci = [row[k]["ci"] for row in rs]
                err = None if any(c is None for c in ci) else np.abs(np.array(ci).T - v)
                G.errorbar(x, v, yerr=err, fmt=st, capsize=3, label=k.replace("_", " "))
        if "derived_balanced" in rs[0]:
            G.plot(x, [row["derived_balanced"] for row in rs], ":", label="derived balanced (theory exponents)")
        G.set(xscale="log", xlabel="rank r", ylabel="b*", title=f"(G) bit-width rule (N={N0})")
        G.legend(fontsize=7); _src(G, "from the fit; 95 % bootstrap intervals")
    else:
        _empty(G, "(G) bit-width rule", "no fit, so no calibrated b*")

    # (H) error decomposition: fitted generalization term vs quantization term at b = 2, 4, 8
    if cal is not None and cal.quant and cal.gen:
        from quantbounds.calib.calibration import gen_model, quant_model

        rr = np.geomspace(1, 64, 40)
        N0 = rows[0]["N"] if rows else 1000
        gth = np.array(cal.gen["theta"])
        H.plot(rr, gen_model(gth, rr, N0) - gth[0], "k-", label=f"C1·r^a·N^(−c), N={N0}")
        for b in (2, 4, 8):
            H.plot(rr, quant_model(np.array(cal.quant["theta"]), rr, b), label=f"C2·r^β·ρ^(−{b})")
        H.set(xscale="log", yscale="log", xlabel="rank r", ylabel="nats", title="(H) error decomposition (fitted)")
        H.legend(fontsize=7); _src(H, f"terms fitted to n={cal.quant['n_pairs']} pairs, {cal.gen['n_configs']} fp16 configs")
    else:
        _empty(H, "(H) error decomposition", "needs both terms fitted")

    # (I) summary
    cnt = defaultdict(int)
    for v in out["verdicts"]:
        cnt[v["verdict"]] += 1
    lines = [f"{tag}data: {out['data']['n_valid']} valid runs ({src})",
             f"verdicts: {dict(cnt)}"]
    for k in ("C2", "per_bit_factor", "exponent_r", "C1", "exponent_r_gen", "exponent_N"):
        e = out["fits"].get(k)
        if isinstance(e, dict):
            ci = "fixed" if e.get("fixed") else (f"[{e['ci'][0]:.3g}, {e['ci'][1]:.3g}]" if e.get("ci") else "no CI")
            lines.append(f"{k} = {e['value']:.3g}  {ci}")
    lines += [f"! {n[:70]}" for n in out["notes"][:4]]
    I.axis("off")
    I.text(0, 1, "\n".join(lines), va="top", fontsize=8, family="monospace")
    I.set_title("(I) summary", fontsize=9)
    fig.suptitle(f"{tag}Quantization in LoRA fine-tuning: measured runs and calibrated Thm 3.1", fontsize=12)
    fig.tight_layout()
    path = Path(path); path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110); plt.close(fig)
    return path


def labels_of(r: dict) -> str:
    return r["arm"] + (f"/{r['bits']}" if r["arm"] in ADAPTER_ARMS else "")


def additive_vs_real_figure(records: list[dict], path) -> Path:
    """The paper's additive uniform noise (arm adapter_noise) against real quantizers (RTN,
    SR, NF4 on B, A): paired excess eval loss and ‖ε_BA‖_F² per bit-width, mean ± sd."""
    plt = _plt()
    tag = "SYNTHETIC — " if is_synthetic(records) else ""
    fig, (L, R) = plt.subplots(1, 2, figsize=(12, 4.8))
    arms = [a for a in ADAPTER_ARMS if any(r["arm"] == a for r in records)]
    n = 0
    for a in arms:
        P = paired_excess(records, arm=a)
        if not len(P):
            continue
        g = defaultdict(list)
        for b, e in zip(P.bits, P.excess):
            g[int(b)].append(e)
        xs, m, sd, k = _mean_sd(g); n += k
        L.errorbar(xs, m, yerr=sd, marker="o", capsize=3, label=a)
        g = defaultdict(list)
        for r in records:
            if r["arm"] == a and r["eps_ba_fro2"] > 0:
                g[r["bits"]].append(r["eps_ba_fro2"])
        if g:
            xs, m, sd, _ = _mean_sd(g)
            R.errorbar(xs, m, yerr=sd, marker="o", capsize=3, label=a)
    if n:
        L.axhline(0, color="0.6", lw=0.8)
        L.set(xlabel="bits b", ylabel="excess eval loss over fp16 (nats)", title=f"{tag}excess loss by quantizer")
        L.legend(fontsize=8)
        R.set(yscale="log", xlabel="bits b", ylabel="Σ‖Q(B)Q(A) − BA‖_F²", title=f"{tag}‖ε_BA‖² of final adapters")
        R.legend(fontsize=8)
        _src(L, f"paired with fp16 by rank/seed/N; n={n} pairs")
    else:
        _empty(L, f"{tag}additive model vs real quantizers",
               "no adapter-quantization runs paired with fp16: run the sweep with arms adapter_noise, adapter_rtn")
        R.axis("off")
    if "adapter_noise" not in arms:
        fig.text(0.5, 0.01, "no adapter_noise runs: the additive model is not in this sweep", ha="center", fontsize=8)
    fig.tight_layout()
    path = Path(path); path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110); plt.close(fig)
    return path


def calibration_figures(records: list[dict], out: dict, cal, *, outdir="figures") -> list[str]:
    """Both figures into ``outdir`` (prefixed "synthetic_" for synthetic records)."""
    pre = "synthetic_" if is_synthetic(records) else ""
    d = Path(outdir)
    return [str(analysis_figure(records, out, cal, d / f"{pre}calibration_analysis.png")),
            str(additive_vs_real_figure(records, d / f"{pre}additive_vs_real.png"))]
