"""The calibrated bit-width b* for rank r and N examples, from a :class:`Calibration` (torch-free).

    balanced   C2·r^β·ρ^(−b) = C1·r^a·N^(−c)  →  b = ln(C2·r^β / (C1·r^a·N^(−c))) / ln ρ
    tolerance  C2·r^β·ρ^(−b) = tol            →  b = ln(C2·r^β / tol) / ln ρ
    cost       min_b Δ(b) + λ·b               →  b = ln(C2·r^β·ln ρ / λ) / ln ρ

with percentile intervals over the bootstrap refits of
:func:`quantbounds.calib.calibration.calibrate`
(none when a parameter the rule uses is weakly identified). A fit that is weakly identified or
whose leave-one-configuration-out R² is below 0 never drives a decision: :func:`bits_table`
takes the caller's usability verdict per term (``quantbounds.verdicts.standard.usable_fit``;
calib sits below verdicts, so it does not decide that itself) and leaves the calibrated rules
out of the table, saying why, when a term they use is not usable. Public:
:func:`calibrated_bits`, :func:`bits_table`.
"""

from __future__ import annotations

import math

import numpy as np

from quantbounds._checks import check_choice, check_positive
from quantbounds.calib.calibration import Calibration, CalibrationError
from quantbounds._bootstrap import percentile_interval


def _check_rule(cal: Calibration, rule: str, tol: float, lam) -> None:
    check_choice(rule, "rule", ("balanced", "tolerance", "cost"))
    if cal.quant is None or (rule == "balanced" and cal.gen is None):
        raise CalibrationError(f"rule {rule!r} needs the quantization"
                               + (" and generalization fits" if rule == "balanced" else " fit"))
    if rule == "tolerance":
        check_positive(tol, "tol")
    if rule == "cost":
        if lam is None:
            raise ValueError("rule='cost' needs lam > 0 (nats per bit)")
        check_positive(lam, "lam")


def calibrated_bits(cal: Calibration, r: float, N: float, *, rule: str = "balanced",
                    tol: float = 0.01, lam: float | None = None, ci: float = 0.95) -> dict:
    """Calibrated bit-width for rank r and N examples, with a bootstrap interval.

    rule = "balanced": the b where the fitted terms are equal,
        b = ln(C2·r^β / (C1·r^a·N^(−c))) / ln ρ
        (with theory exponents: ¼log₂r + ¼log₂N + ½log₂(C2/C1));
    rule = "tolerance": the least b with fitted excess ≤ tol nats, b = ln(C2·r^β/tol)/ln ρ;
    rule = "cost": minimiser of Δ(b) + λ·b, b = ln(C2·r^β·ln ρ/λ)/ln ρ.
    Returns {"b": value, "ci": [lo, hi] | None, "rule": rule} (continuous b, not clipped).
    """
    _check_rule(cal, rule, tol, lam)
    check_positive(r, "r")
    check_positive(N, "N")

    def b_of(q, g):
        lr = math.log(r)
        log_quant = q[..., 0] + q[..., 1] * lr
        if rule == "balanced":
            log_gen = g[..., 1] + g[..., 2] * lr - g[..., 3] * math.log(N)
            return (log_quant - log_gen) / q[..., 2]
        if rule == "tolerance":
            return (log_quant - math.log(tol)) / q[..., 2]
        return (log_quant + np.log(q[..., 2]) - math.log(lam)) / q[..., 2]

    gen_theta = np.asarray(cal.gen.theta) if cal.gen else np.zeros(4)
    out = {"rule": rule, "b": float(b_of(np.asarray(cal.quant.theta), gen_theta)), "ci": None}
    q_draws, g_draws = cal.quant_draws, cal.gen_draws
    if rule != "balanced" and q_draws is not None:
        g_draws = np.zeros((len(q_draws), 4))
    draws = np.array([])
    if q_draws is not None and g_draws is not None and len(g_draws) == len(q_draws):
        draws = b_of(q_draws, g_draws)
        draws = draws[np.isfinite(draws)]
    weak = list(cal.quant.weakly_identified) + (
        list(cal.gen.weakly_identified) if rule == "balanced" and cal.gen else [])
    if weak:
        out["note"] = f"no interval: {weak} weakly identified"
        return out
    if draws.size >= 20:
        out["ci"] = [float(v) for v in percentile_interval(draws, ci)]
    return out


def bits_table(cal: Calibration, ranks=(4, 8, 16, 32), Ns=(1000,), *,
               tol: float = 0.01, usable: dict[str, tuple[bool, str]]) -> list[dict]:
    """Calibrated b* (balanced, tolerance) with intervals next to the paper's and derived rules.

    The paper's rule is Thm 3.2 with C = 0, σ_g² = 1; "derived_balanced" is the balanced rule
    with the fitted C1, C2 but the theory's exponents (bounds.optimal_bits).
    ``usable`` = {"quantization": (ok, why), "generalization": (ok, why)}: the tolerance rule
    needs a usable quantization term, the balanced rules both terms; a rule whose fit is not
    usable is left out of the row and ``row["not_calibrated"]`` says why.
    """
    from quantbounds.theory.bounds import optimal_bits

    q_ok, _ = usable.get("quantization", (False, "not checked"))
    g_ok, _ = usable.get("generalization", (False, "not checked"))
    rows = []
    for N in Ns:
        for r in ranks:
            row: dict = {"r": r, "N": N, "paper": float(optimal_bits(r, N, rule="paper"))}
            why = []
            if cal.quant is not None and q_ok:
                row["calibrated_tolerance"] = calibrated_bits(cal, r, N, rule="tolerance", tol=tol)
            elif cal.quant is not None:
                why.append("quantization fit not usable")
            if cal.quant is not None and cal.gen is not None and q_ok and g_ok:
                row["calibrated_balanced"] = calibrated_bits(cal, r, N, rule="balanced")
                C1, C2 = cal.gen.params["C1"].value, cal.quant.params["C2"].value
                row["derived_balanced"] = float(optimal_bits(r, N, rule="balanced", C1=C1, C2=C2))
            elif cal.gen is not None and not g_ok:
                why.append("generalization fit not usable")
            if why:
                row["not_calibrated"] = ("; ".join(why) + " (fits.usable says why): no calibrated "
                                         "b* from it")
            rows.append(row)
    return rows
