"""SYNTHETIC run records generated from KNOWN constants — for tests and demos only.

Nothing here is a measurement. The generator exists so that the calibration fit can be
checked against a problem whose answer is known: records are drawn from

    16-bit eval loss   L16(r, N, seed) = L∞ + C1·r^a·N^(−c) + u_(r,N,seed) + e
    quantized adapters Lq(r, N, b, seed) = L16(r, N, seed) + C2·r^β·ρ^(−b)·(N/1000)^(−γ) + e'
    quantized W0       Lw(r, N, seed)    = L16(r, N, seed) + δ_base + e''

with u ~ N(0, seed_sd²) a per-(r, N, seed) effect SHARED by the 16-bit run and every
quantized run paired with it (it cancels in paired differences, as seed effects do in real
sweeps), and e, e', e'' ~ N(0, noise_sd²) independent; δ_base may grow with rank
(``base_rank_slope`` nats per doubling of r). The theory's values are a = c = ½, β = 1, ρ = 4
(DESIGN.md §2, Thm 3.1); the defaults below use them so that a correct fit must report them,
but any values can be passed — C1 = C2 = 0 and no shifts give a world where every effect is 0.

The other measured fields are drawn from known laws too (from a second random stream, so the
losses above do not depend on them):

    final train loss     L − gap − gap_shift(arm) + N(0, noise_sd²)   (generalization gap)
    grad_var_noise       gv_C·r^gv_beta·gv_rho^(−b)·exp(N(0, gv_sd²))   (SR / noise arms, b < 16),
                         split over two layers in proportion to their shares
    x_norm2, range_A, range_B   per layer constants (Theorem 3.3's ‖x‖², R)

and the LoRA scale convention is ``scale`` ("one": s = 1, α = r; "alpha_r": s = α/r).

Every record is labelled: ``model = "SYNTHETIC"``, ``dataset = "synthetic"`` and an extra
key ``"synthetic": true``; calibration and the figures print "SYNTHETIC" for such inputs.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass

import numpy as np

from quantbounds._checks import check_bits, check_positive, check_rank
from quantbounds.calib.records import make_record, run_id

SYNTHETIC_MODEL = "SYNTHETIC"


@dataclass(frozen=True, kw_only=True)
class SyntheticTruth:
    """The known constants the synthetic records are drawn from (see module docstring).

    Defaults: the theory's exponents (a = c = ½, β = 1, ρ = 4); magnitudes chosen so the
    quantization term spans ≈ 1e−5…2 nats over b ∈ 2…8, r ∈ 2…32 (a range real sweeps show).
    """

    L_inf: float = 2.5
    C1: float = 3.0
    a: float = 0.5          # exponent of r in the generalization term
    c: float = 0.5          # exponent of N^(−1) in the generalization term
    C2: float = 0.5
    beta: float = 1.0       # exponent of r in the quantization term
    rho: float = 4.0        # per-bit factor of the quantization term
    gamma: float = 0.0      # the quantization term ∝ (N/1000)^(−γ) (0: independent of N)
    noise_sd: float = 0.01
    seed_sd: float = 0.02
    base_shift: tuple[tuple[str, float], ...] = (("base_int8", 0.001), ("base_nf4", 0.01),
                                                ("base_fp4", 0.03))
    base_rank_slope: tuple[tuple[str, float], ...] = ()
    scale: str = "one"
    lora_alpha: float = 16.0
    gap: float = 0.3
    gap_shift: tuple[tuple[str, float], ...] = ()
    gv_C: float = 1e-6
    gv_beta: float = 1.0
    gv_rho: float = 4.0
    gv_sd: float = 0.1
    layer_shares: tuple[tuple[str, float], ...] = (("l0.attn", 0.6), ("l0.mlp", 0.4))
    x_norm2: float = 4.0
    range_A: float = 0.2
    range_B: float = 0.1

    def __post_init__(self):
        for name in ("rho", "L_inf", "gv_rho", "x_norm2", "range_A", "range_B"):
            check_positive(getattr(self, name), name)
        for name in ("C1", "C2", "noise_sd", "seed_sd", "gv_C", "gv_sd"):
            check_positive(getattr(self, name), name, allow_zero=True)
        if self.scale not in ("one", "alpha_r"):
            raise ValueError(f"scale must be 'one' or 'alpha_r', got {self.scale!r}")
        for name in ("a", "c", "beta", "gamma", "gv_beta", "gap"):
            v = getattr(self, name)
            if not math.isfinite(v):
                raise ValueError(f"{name} must be finite, got {v!r}")
        if self.rho <= 1:
            raise ValueError(f"rho must be > 1 (error falls with bits), got {self.rho}")

    def gen_term(self, r, N):
        """C1·r^a·N^(−c)."""
        return self.C1 * np.asarray(r, float) ** self.a * np.asarray(N, float) ** (-self.c)

    def quant_term(self, r, b, N=1000.0):
        """C2·r^β·ρ^(−b)·(N/1000)^(−γ)."""
        return (self.C2 * np.asarray(r, float) ** self.beta * self.rho ** (-np.asarray(b, float))
                * (np.asarray(N, float) / 1000.0) ** (-self.gamma))

    def grad_var_noise(self, r, b):
        """gv_C·r^gv_beta·gv_rho^(−b) (before its log-normal measurement noise)."""
        return self.gv_C * float(r) ** self.gv_beta * self.gv_rho ** (-float(b))

    def lora_alpha_of(self, r: int) -> float:
        return float(r) if self.scale == "one" else float(self.lora_alpha)

    def lora_scale_of(self, r: int) -> float:
        return 1.0 if self.scale == "one" else float(self.lora_alpha) / r


def _record(truth: SyntheticTruth, truth_tag: str, rng2, *, arm: str, rank: int, bits: int,
            base_quant: str, n_train: int, seed: int, loss: float, f1: float, grad_var: float,
            eps: float) -> dict:
    cfg = dict(arm=arm, rank=rank, bits=bits, n_train=n_train, seed=seed, truth=truth_tag)
    shares = dict(truth.layer_shares)
    final_train = (loss - truth.gap - dict(truth.gap_shift).get(arm, 0.0)
                   + rng2.normal(0, truth.noise_sd))
    extra = {}
    if arm in ("adapter_sr", "adapter_noise") and bits < 16:
        v = truth.grad_var_noise(rank, bits) * math.exp(rng2.normal(0, truth.gv_sd))
        extra = dict(grad_var_noise=v, grad_var_noise_layers={k: v * w for k, w in shares.items()})
    return make_record(
        run_id=run_id(cfg), arm=arm, model=SYNTHETIC_MODEL, dataset="synthetic", rank=rank,
        bits=bits, base_quant=base_quant, scale=truth.scale,
        lora_alpha=truth.lora_alpha_of(rank), seed=seed, n_train=n_train, steps=100,
        eval_loss=float(loss), perplexity=float(math.exp(loss)), f1=float(f1), exact_match=0.0,
        grad_var=float(grad_var), eps_ba_fro2=float(eps), wall_s=0.0, synthetic=True,
        lora_scale=truth.lora_scale_of(rank), train_loss=[float(loss) + 1.0, float(final_train)],
        train_loss_steps=[10, 100], x_norm2={k: truth.x_norm2 for k in shares},
        range_A={k: truth.range_A for k in shares}, range_B={k: truth.range_B for k in shares},
        **extra)


def synthetic_records(*, seed: int, truth: SyntheticTruth | None = None,
                      ranks=(2, 4, 8, 16, 32), bits=(2, 3, 4, 8), n_trains=(500, 1000, 2000, 4000),
                      seeds=(0, 1, 2), adapter_arm: str = "adapter_rtn",
                      base_arms: tuple[str, ...] = ("base_int8", "base_nf4", "base_fp4"),
                      extra_adapter_arms: tuple[tuple[str, float, float], ...] = (),
                      f1_slope: float = 0.2) -> list[dict]:
    """SYNTHETIC records (schema ``quantbounds.run/1``) drawn from ``truth``.

    For each (r, N, seed): one "fp16" run, one ``adapter_arm`` run per b in ``bits`` and one run
    per arm in ``base_arms``; each (arm, C2, ρ) in ``extra_adapter_arms`` adds runs of that arm
    with its own quantization constants on the same shared baseline.
    f1 = 0.6 − f1_slope·(loss − L∞) + N(0, noise_sd²) (a made-up monotone link, for the F1
    verdicts' plumbing only). grad_var = 1 + r·4^(−b) and
    eps_ba_fro2 = r·4^(−b)/3 without noise (labels for the figures, not measurements); the
    train losses, gradient-noise variances, ‖x‖² and ranges follow the module docstring.
    ``seed`` drives two numpy Generators (explicit randomness). Returns a list of dicts.
    """
    truth = SyntheticTruth() if truth is None else truth
    rng = np.random.default_rng(seed)
    rng2 = np.random.default_rng([seed, 1])
    slopes = dict(truth.base_rank_slope)
    for r in ranks:
        check_rank(r, "ranks[i]")
    for b in bits:
        check_bits(b, "bits[i]")
    shifts = dict(truth.base_shift)
    tag = run_id(asdict(truth))
    out: list[dict] = []
    for r in ranks:
        for N in n_trains:
            for s in seeds:
                base = truth.L_inf + float(truth.gen_term(r, N)) + rng.normal(0, truth.seed_sd)
                l16 = base + rng.normal(0, truth.noise_sd)
                f1_of = lambda L: 0.6 - f1_slope * (L - truth.L_inf) + rng.normal(0, truth.noise_sd)  # noqa: E731
                out.append(_record(truth, tag, rng2, arm="fp16", rank=r, bits=16,
                                   base_quant="none",
                                   n_train=N, seed=s, loss=l16, f1=f1_of(l16), grad_var=1.0,
                                   eps=0.0))
                for b in bits:
                    lq = base + float(truth.quant_term(r, b, N)) + rng.normal(0, truth.noise_sd)
                    out.append(_record(truth, tag, rng2, arm=adapter_arm, rank=r, bits=b,
                                       base_quant="none",
                                       n_train=N, seed=s, loss=lq, f1=f1_of(lq),
                                       grad_var=1.0 + r * 4.0 ** -b, eps=r * 4.0 ** -b / 3))
                for arm, c2, rho in extra_adapter_arms:
                    for b in bits:
                        lq = base + c2 * r ** truth.beta * rho ** -b + rng.normal(0, truth.noise_sd)
                        out.append(_record(truth, tag, rng2, arm=arm, rank=r, bits=b,
                                           base_quant="none",
                                           n_train=N, seed=s, loss=lq, f1=f1_of(lq),
                                           grad_var=1.0 + r * 4.0 ** -b, eps=r * 4.0 ** -b / 3))
                for arm in base_arms:
                    bq = {"base_int8": "int8", "base_nf4": "nf4", "base_fp4": "fp4"}[arm]
                    lw = (base + shifts.get(arm, 0.0) + slopes.get(arm, 0.0) * math.log2(r)
                          + rng.normal(0, truth.noise_sd))
                    out.append(_record(truth, tag, rng2, arm=arm, rank=r, bits=16, base_quant=bq,
                                       n_train=N,
                                       seed=s, loss=lw, f1=f1_of(lw), grad_var=1.0, eps=0.0))
    return out


def is_synthetic(records) -> bool:
    """True if any record is labelled synthetic."""
    return any(r.get("synthetic") or r.get("model") == SYNTHETIC_MODEL for r in records)


def main(argv: list[str] | None = None) -> int:
    """``python -m quantbounds.calib.synthetic OUT.jsonl [--seed S]``: write a SYNTHETIC demo
    file."""
    import argparse

    import json
    import os
    import tempfile
    from pathlib import Path

    from quantbounds.calib.records import validate_record

    p = argparse.ArgumentParser(prog="python -m quantbounds.calib.synthetic",
                                description="write SYNTHETIC run records (known constants)")
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    recs = synthetic_records(seed=a.seed)
    # replace (not append to) OUT, atomically: a demo file is regenerated whole
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        for rec in recs:
            f.write(json.dumps(validate_record(rec), sort_keys=True) + "\n")
    os.replace(tmp, out)
    print(f"wrote {len(recs)} SYNTHETIC records to {a.out} (constants: {SyntheticTruth()})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
