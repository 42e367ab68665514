"""Figures of `quantbounds audit` (matplotlib, Agg): written as figures/audit_*.png."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _interval_title(prefix: str, fit: dict) -> str:
    return f"{prefix} {fit['value']:.2f} [{fit['ci'][0]:.2f}, {fit['ci'][1]:.2f}]"


def _save(fig, plt, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_audit(res: dict, gv: dict, out: dict, *, figures_dir="figures") -> list[Path]:
    """Three figures: excess risk vs N, quantization excess vs bits, gradient variance vs bits."""
    plt = _plt()
    d = Path(figures_dir)
    d.mkdir(parents=True, exist_ok=True)
    ts = out["config"]["teacher_student"]
    fp_key = f"fp_{ts['scale']}"
    fp = res[fp_key] if fp_key in res else res[next(k for k in res if k.startswith("fp_"))]
    return [_plot_excess_vs_N(plt, fp, ts, out["fits"]["exponent_N"], d / "audit_excess_vs_N.png"),
            _plot_quant_vs_bits(plt, fp, res, ts, out["fits"]["per_bit_factor"],
                                d / "audit_quant_vs_bits.png"),
            _plot_gradvar(plt, gv, ts, d / "audit_gradvar.png",
                          out["fits"].get("grad_variance", {}).get("thm_3_3_max_ratio"))]


def _plot_excess_vs_N(plt, fp: dict, ts: dict, fit: dict, path: Path) -> Path:
    """Full-precision excess vs N, with the paper's √(r/N) and least squares' r/N slopes."""
    ranks, Ns = np.array(ts["ranks"]), np.array(ts["Ns"], float)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    E = fp["excess_latent"].mean(-1)
    for i, r in enumerate(ranks):
        ax.loglog(Ns, E[i], "o-", label=f"r = {r}")
    ref = E[-1, 0]
    ax.loglog(Ns, ref * np.sqrt(Ns[0] / Ns), "k--", lw=1, label="∝ N^−½ (paper)")
    ax.loglog(Ns, ref * Ns[0] / Ns, "k:", lw=1, label="∝ N^−1 (least squares)")
    ax.set(xlabel="N", ylabel="excess risk ‖(W−W*)Σ^½‖²",
           title=_interval_title("fp student: exponent in N =", fit))
    ax.legend(fontsize=7)
    return _save(fig, plt, path)


def _plot_quant_vs_bits(plt, fp: dict, res: dict, ts: dict, fit: dict, path: Path) -> Path:
    """Quantization excess (post-training RTN) vs bits at the largest N, with the additive model."""
    ranks, Ns, bits = np.array(ts["ranks"]), np.array(ts["Ns"], float), np.array(ts["bits"], float)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    Q = fp["ptq_qexcess"][:, -1].mean(1)
    additive = fp["ptq_pred"][:, -1].mean(1)
    for i, r in enumerate(ranks):
        line, = ax.semilogy(bits, Q[i], "o-", label=f"r = {r}")
        ax.semilogy(bits, additive[i], "--", color=line.get_color(), lw=1)
    if "ste_rtn" in res:
        ax.semilogy(bits, res["ste_rtn"]["excess_deployed"][-1, :, -1].mean(-1), "ks-", ms=4,
                    label=f"STE-RTN total excess, r = {ranks[-1]}")
    ax.axhline(fp["excess_latent"].mean(-1)[:, -1].min(), color="gray", lw=0.8, ls=":")
    ax.set(xlabel="bits b", ylabel="‖s·ε_BA·Σ^½‖² (dashed: additive model)",
           title=_interval_title(f"N = {int(Ns[-1])}: factor per bit", fit))
    ax.legend(fontsize=7)
    return _save(fig, plt, path)


def _plot_gradvar(plt, gv: dict, ts: dict, path: Path, readings: dict | None = None) -> Path:
    """Gradient variance from quantization noise vs bits, with Theorem 3.3's added term; and,
    given ``readings`` ({reading: {"value", "ci"}}), the max ratio ρ3 under each reading."""
    from quantbounds.theory.bounds import grad_variance_bound

    ranks, bits = np.array(ts["ranks"]), np.array(ts["bits"], float)
    if readings:
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        names = list(readings)
        vals = np.array([readings[k]["value"] for k in names])
        lo = np.array([readings[k]["ci"][0] for k in names])
        hi = np.array([readings[k]["ci"][1] for k in names])
        ax2.errorbar(np.arange(len(names)), vals, yerr=[vals - lo, hi - vals], fmt="o", capsize=3)
        ax2.axhline(1.0, color="k", lw=0.8, ls="--")
        ax2.set_yscale("log")
        ax2.set_xticks(np.arange(len(names)), names, rotation=30, ha="right", fontsize=7)
        ax2.set(ylabel="max over (r, b) of ρ3 (95 % CI)",
                title="Thm 3.3 under each reading\n(label noise σ × factorisation (c·B, A/c))")
    else:
        fig, ax = plt.subplots(figsize=(5.5, 4))
    g = gv.get("additive") or next(iter(gv.values()))
    for i, r in enumerate(ranks):
        line, = ax.semilogy(bits, g["var_noise"][i].mean(-1), "o-", label=f"r = {r}")
        added = grad_variance_bound(0.0, g["loss"][i], g["x_norm2"][i], r, bits[:, None], g["R"][i])
        ax.semilogy(bits, added.mean(-1), "--", color=line.get_color(), lw=1)
    ax.set(xlabel="bits b", ylabel="Var of ∇(B, A) over noise draws",
           title="quantization share of gradient variance\n(solid: measured, additive noise; "
                 "dashed: L²‖x‖²r4^−b R²)")
    ax.legend(fontsize=7)
    return _save(fig, plt, path)


def plot_nonlinear(nl: dict, out: dict, *, figures_dir="figures") -> Path:
    """figures/audit_nonlinear.png: the nonlinear student's fp excess vs N (with σ²·d/N at r = r*)
    and its post-training quantization excess vs bits (with STE-RTN's deployed excess)."""
    plt = _plt()
    c = out["config"]["nonlinear"]
    f = out["fits"]["nonlinear"]
    ranks, Ns, bits = np.array(c["ranks"]), np.array(c["Ns"], float), np.array(c["bits"], float)
    fp = nl["fp"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    E = fp["excess_latent"].mean(-1)
    for i, r in enumerate(ranks):
        a1.loglog(Ns, E[i], "o-", label=f"r = {r}" + (" (< r*)" if r < c["r_star"] else ""))
    d = c["r_star"] * (c["h"] + c["n"] - c["r_star"])
    a1.loglog(Ns, c["label_noise"] ** 2 * d / Ns, "k:", lw=1, label=f"σ²·d/N, d = r*(h+n−r*) = {d}")
    a1.loglog(Ns, E[-1, 0] * np.sqrt(Ns[0] / Ns), "k--", lw=1, label="∝ N^−½ (paper)")
    e = f["exponent_N"]
    a1.set(xlabel="N", ylabel="excess risk E‖f − f*‖²",
           title=_interval_title("fp: exponent in N =", e))
    a1.legend(fontsize=7)
    Q = fp["ptq_qexcess"][:, -1].mean(1)  # (R, B) at the largest N
    for i, r in enumerate(ranks):
        line, = a2.semilogy(bits, Q[i], "o-", label=f"PTQ E‖f_q − f‖², r = {r}")
        if "ste_rtn" in nl:
            tb = np.array(nl["ste_rtn"]["axes"][1][1], float)
            a2.semilogy(tb, nl["ste_rtn"]["excess_deployed"][i, :, -1].mean(-1), "s--", ms=4,
                        color=line.get_color(), lw=1)
    a2.semilogy(bits, Q.mean(0)[0] * 4.0 ** -(bits - bits[0]), "k:", lw=1, label="factor 4 per bit")
    p = f["per_bit_factor"]
    a2.set(xlabel="bits b", ylabel="excess (squares: STE-RTN, deployed E‖f_q − f*‖²)",
           title=_interval_title(f"N = {int(Ns[-1])}: factor per bit", p))
    a2.legend(fontsize=7)
    fig.suptitle(f"nonlinear student W2·{c['activation']}((W1_0 + BA)x), "
                 f"{c['n']}→{c['h']}→{c['m']}, r* = {c['r_star']}", fontsize=9)
    fig.tight_layout()
    d_ = Path(figures_dir)
    d_.mkdir(parents=True, exist_ok=True)
    path = d_ / "audit_nonlinear.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
