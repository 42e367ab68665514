"""Figures of `quantbounds validate` (plotting only; reads the result dict of ``run_all``).

validation_decomposition.png  identity residual ÷ rounding bound per quantizer case
validation_moments.png        MC-vs-exact z-scores; bound tightness (measured/bound) vs r
validation_slopes.png         E‖ε_BA‖² vs bits (real RTN) and s²·E‖ε_BA‖² vs r per convention
validation_breakdown.png      real ÷ additive E‖ε_BA‖² over bits × granularity × rounding
validation_codebooks.png      4-bit distortions of N(0,1): NF4, FP4, int4, Lloyd–Max, uniform
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

FAMILY_COLORS = {"gaussian": "tab:blue", "trained_like": "tab:orange", "peft_init": "tab:green"}
CONV_COLORS = {"one": "tab:blue", "alpha_r": "tab:red", "rslora": "tab:green"}
CONV_LABEL = {
    "one": "s = 1 (seed paper)",
    "alpha_r": "s = α/r (PEFT)",
    "rslora": "s = α/√r (rsLoRA)",
}


def _save(fig, outdir: Path, name: str) -> Path:
    path = outdir / f"validation_{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def plot_decomposition(res: dict, outdir: Path) -> Path:
    import matplotlib.pyplot as plt

    rows = res["rows"]
    cases = list(dict.fromkeys(r["case"] for r in rows))
    dtypes = sorted({r["dtype"] for r in rows})
    fig, ax = plt.subplots(figsize=(8, 3.8))
    w = 0.8 / len(dtypes)
    for di, dt in enumerate(dtypes):
        worst = [
            max(
                (r["max_ratio"] for r in rows if r["case"] == c and r["dtype"] == dt),
                default=np.nan,
            )
            for c in cases
        ]
        ax.bar(np.arange(len(cases)) + (di - (len(dtypes) - 1) / 2) * w, worst, w, label=dt)
    ax.axhline(1.0, color="k", ls="--", lw=1, label="rounding bound")
    ax.set_xticks(range(len(cases)), cases, rotation=30, ha="right")
    ax.set_ylabel("max |lhs − rhs| ÷ bound")
    ax.set_ylim(0, 1.15)
    ax.set_title(
        "Q(B)Q(A) − BA = Bε_A + ε_B·A + ε_Bε_A on real quantized tensors\n"
        "(worst entry over shapes, bits, families; < 1 means within rounding)",
        fontsize=10,
    )
    ax.legend(fontsize=8, loc="upper right", ncol=3)
    return _save(fig, outdir, "decomposition")


def plot_moments(res: dict, outdir: Path, zc: float | None = None) -> Path:
    import matplotlib.pyplot as plt

    cells = res["cells"]
    terms = res["terms"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for ti, _term in enumerate(terms):
        z = np.array([c["z"][ti] for c in cells], float)
        z = z[np.isfinite(z)]
        a1.scatter(
            np.full(z.size, ti) + np.random.default_rng(ti).uniform(-0.25, 0.25, z.size),
            z,
            s=8,
            alpha=0.6,
        )
    if zc is not None:
        for s in (-1, 1):
            a1.axhline(s * zc, color="r", ls="--", lw=1)
        a1.text(
            len(terms) - 0.6,
            zc * 0.97,
            f"±z* = {zc:.2f} (Bonferroni, α = 1 %)",
            color="r",
            va="top",
            ha="right",
            fontsize=8,
        )
    a1.set_xticks(range(len(terms)), ["‖Bε_A‖²", "‖ε_B·A‖²", "‖ε_Bε_A‖²", "‖ε_BA‖²"])
    a1.set_ylabel("z = (MC − exact) / se")
    a1.set_title("Monte Carlo vs exact moments (additive model)", fontsize=10)
    for fam in dict.fromkeys(c["family"] for c in cells):
        sub = [
            c
            for c in cells
            if c["family"] == fam and c["granularity"] == "tensor" and c["bound"] > 0
        ]
        if not sub:
            continue
        for b in sorted({c["bits"] for c in sub}):
            pts = sorted((c["r"], c["bound_ratio"], c["m"]) for c in sub if c["bits"] == b)
            for mm in sorted({p[2] for p in pts}):
                xs = [p[0] for p in pts if p[2] == mm]
                ys = [p[1] for p in pts if p[2] == mm]
                a2.plot(
                    xs,
                    ys,
                    "o-",
                    color=FAMILY_COLORS.get(fam),
                    alpha=0.35 + 0.1 * (b % 4),
                    ms=3,
                    lw=1,
                    label=f"{fam}"
                    if (b == min(c["bits"] for c in sub) and mm == min(p[2] for p in pts))
                    else None,
                )
    a2.axhline(1.0, color="k", ls="--", lw=1, label="bound")
    a2.set_xscale("log", base=2)
    a2.set_yscale("log")
    a2.set_xlabel("rank r")
    a2.set_ylabel("MC E‖ε_BA‖² ÷ bound")
    a2.set_title(
        "tightness of m·n·r·R_A²R_B²(⅔4^−b + ⅑16^−b)\n(one line per bit-width × layer)", fontsize=10
    )
    a2.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, outdir, "moments")


def plot_slopes(res: dict, outdir: Path) -> Path:
    import matplotlib.pyplot as plt

    cfg = res["config"]
    bits = np.asarray(cfg["bits"])
    fams = list(res["data"])
    fig, axes = plt.subplots(1, 1 + len(fams), figsize=(5 * (1 + len(fams)), 4))
    a1 = axes[0]
    cmap = plt.get_cmap("viridis")
    for fam, ls in zip(fams, ("-", "--", ":")):
        per = res["data"][fam]
        for i, pr in enumerate(per):
            if i % 2:
                continue
            t = np.mean(np.asarray(pr["real"]) * 4.0**bits, axis=0)
            a1.plot(
                bits,
                t / t[-1],
                ls,
                color=cmap(i / max(len(per) - 1, 1)),
                lw=1.2,
                label=f"{fam}, r={pr['r']}",
            )
    a1.axhline(1.0, color="k", lw=0.8)
    a1.set_yscale("log")
    a1.set_xlabel("bits b")
    a1.set_ylabel("4^b·‖Q(B)Q(A) − BA‖², ÷ its value at max b\n(flat = factor 4 per bit)")
    a1.set_title("real RTN, per tensor: factor per bit", fontsize=10)
    a1.legend(fontsize=6, ncol=2)
    j = list(bits).index(cfg["rank_bits"])
    for ax, fam in zip(axes[1:], fams):
        per = res["data"][fam]
        r = np.array([pr["r"] for pr in per], float)
        for conv, fit in res["fits"][fam]["rank"].items():
            y = np.array(fit["mean_total"])
            ax.errorbar(
                r,
                y,
                yerr=1.96 * np.array(fit["mean_total_se"]),
                fmt="o",
                color=CONV_COLORS[conv],
                ms=4,
                label=f"{CONV_LABEL[conv]}: slope {fit['absmax']['slope']:.2f}",
            )
            ax.plot(
                r,
                2.0 ** (fit["absmax"]["intercept"] + fit["absmax"]["slope"] * np.log2(r)),
                color=CONV_COLORS[conv],
                lw=1,
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("rank r")
        ax.set_ylabel(f"s²·E‖ε_BA‖² at b = {cfg['rank_bits']}")
        ax.set_title(
            f"rank dependence per LoRA scale ({fam})\ntheory: slope +1, −1, 0 (fixed ranges)",
            fontsize=10,
        )
        ax.legend(fontsize=7)
    del j
    fig.tight_layout()
    return _save(fig, outdir, "slopes")


def plot_breakdown(res: dict, outdir: Path) -> Path:
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    cells = res["cells"]
    fams = list(dict.fromkeys(c["family"] for c in cells))
    bits = sorted({c["bits"] for c in cells})
    cols = list(dict.fromkeys((c["rounding"], c["step"], c["granularity"]) for c in cells))
    fig, axes = plt.subplots(
        1, len(fams), figsize=(1.1 * len(cols) * len(fams) + 2, 4.2), squeeze=False
    )
    norm = LogNorm(vmin=0.25, vmax=4.0)
    im = None
    for ax, fam in zip(axes[0], fams):
        grid = np.full((len(bits), len(cols)), np.nan)
        for c in cells:
            if c["family"] == fam:
                grid[
                    bits.index(c["bits"]), cols.index((c["rounding"], c["step"], c["granularity"]))
                ] = c["ratio"]
        im = ax.imshow(
            np.clip(grid, 0.25, 4.0), cmap="RdBu_r", norm=norm, aspect="auto", origin="lower"
        )
        for i in range(len(bits)):
            for k in range(len(cols)):
                if np.isfinite(grid[i, k]):
                    dark = abs(np.log(max(grid[i, k], 1e-9))) > np.log(2.5)
                    ax.text(
                        k,
                        i,
                        f"{grid[i, k]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if dark else "black",
                    )
        ax.set_yticks(range(len(bits)), [str(b) for b in bits])
        ax.set_xticks(
            range(len(cols)),
            [f"{'RTN' if r == 'nearest' else 'SR'} {s}\n{g}" for r, s, g in cols],
            rotation=45,
            ha="right",
            fontsize=7,
        )
        ax.set_ylabel("bits b")
        ax.set_title(f"{fam}: real ÷ additive E‖ε_BA‖²", fontsize=10)
    cb = fig.colorbar(im, ax=axes[0].tolist(), label="ratio (1 = additive model exact)")
    cb.ax.minorticks_off()
    cb.set_ticks([0.25, 0.5, 1, 2, 4], labels=["≤0.25", "0.5", "1", "2", "≥4"])
    return _save(fig, outdir, "breakdown")


def plot_codebooks(res: dict, outdir: Path) -> Path:
    import matplotlib.pyplot as plt

    from simulations.codebooks import REFERENCES

    mc, ex = res["mc"], res["exact"]
    rows = [  # (label, value, 95 % half-width, reference or None, colour)
        (
            "Lloyd–Max (exact, fixed scale)",
            ex["lloyd_max"]["integral"],
            0,
            REFERENCES["lloyd_max"][0],
            "grey",
        ),
        (
            "optimal uniform (exact, fixed scale)",
            ex["optimal_uniform"]["distortion"],
            0,
            REFERENCES["optimal_uniform"][0],
            "grey",
        ),
        ("NF4 (exact, best fixed scale)", ex["nf4_best_scale"]["distortion"], 0, None, "tab:blue"),
        ("FP4 (exact, best fixed scale)", ex["fp4_best_scale"]["distortion"], 0, None, "tab:red"),
        (
            "NF4, block 64 absmax",
            mc["nf4_block"]["distortion"],
            1.96 * mc["nf4_block"]["se"],
            REFERENCES["nf4_block"][0],
            "tab:blue",
        ),
        (
            "int4 mid-tread R/7, block 64",
            mc["int4_block"]["distortion"],
            1.96 * mc["int4_block"]["se"],
            REFERENCES["int4_block"][0],
            "tab:orange",
        ),
        (
            "uniform 4-bit paper step R/8, block 64",
            mc["uniform4_paper_block"]["distortion"],
            1.96 * mc["uniform4_paper_block"]["se"],
            None,
            "tab:orange",
        ),
        (
            "FP4 (bnb), block 64 absmax",
            mc["fp4_block"]["distortion"],
            1.96 * mc["fp4_block"]["se"],
            REFERENCES["fp4_block"][0],
            "tab:red",
        ),
    ]
    rows.sort(key=lambda t: t[1])
    fig, ax = plt.subplots(figsize=(8.5, 4))
    y = np.arange(len(rows))
    ax.barh(
        y,
        [t[1] for t in rows],
        xerr=[t[2] for t in rows],
        color=[t[4] for t in rows],
        alpha=0.8,
        capsize=3,
    )
    for yi, t in zip(y, rows):
        if t[3] is not None:
            ax.plot([t[3], t[3]], [yi - 0.4, yi + 0.4], "k-", lw=2)
        ax.text(t[1] + t[2] + 1e-5, yi, f" {t[1]:.5f}", va="center", fontsize=8)
    ax.plot([], [], "k-", lw=2, label="reference value (DESIGN.md §2 / Max 1960)")
    ax.set_yticks(y, [t[0] for t in rows], fontsize=8)
    ax.set_xlim(0.007, max(t[1] for t in rows) * 1.12)
    ax.set_xlabel("E(x − Q(x))², x ~ N(0, 1)  (bars: 95 % CI for Monte Carlo rows)")
    ax.set_title("4-bit distortion on Gaussian weights", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, outdir, "codebooks")


def plot_all(result: dict, outdir) -> list[Path]:
    """Write every figure for a ``run_all`` result into ``outdir``; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    ex = result["experiments"]
    zc = next(
        (
            v["details"].get("z_critical")
            for v in result["verdicts"]
            if v["details"].get("experiment") == "moments" and "z_critical" in v["details"]
        ),
        None,
    )
    paths = []
    if "decomposition" in ex:
        paths.append(plot_decomposition(ex["decomposition"], outdir))
    if "moments" in ex:
        paths.append(plot_moments(ex["moments"], outdir, zc))
    if "slopes" in ex:
        paths.append(plot_slopes(ex["slopes"], outdir))
    if "breakdown" in ex:
        paths.append(plot_breakdown(ex["breakdown"], outdir))
    if "codebooks" in ex:
        paths.append(plot_codebooks(ex["codebooks"], outdir))
    return paths
