"""Typed results of the calibration fits (:func:`quantbounds.calib.calibration.calibrate`).

:class:`Calibration` holds one :class:`TermFit` per term of Thm 3.1 (quantization
Δ = C2·r^β·ρ^(−b), generalization L16 = L∞ + C1·r^a·N^(−c)), each with its parameters as
:class:`ParamEstimate` (value, fixed or free, intervals) and, for the quantization term, the
leave-one-configuration-out check as :class:`LocoResult`. All are frozen; ``to_dict`` gives
exactly the JSON objects of results/calibration.json (``fits``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


def _listed(pair):
    return None if pair is None else [pair[0], pair[1]]


@dataclass(frozen=True, kw_only=True)
class ParamEstimate:
    """One parameter: its value, whether it was fixed at the theory value, and its intervals
    (None if fixed): ``ci`` = union of the bootstrap percentile interval and the Wald interval
    (an identification diagnostic); ``ci_t`` = the clustered t interval θ ± t_dof·se the
    verdicts read, with ``se`` the seed-jackknife standard error of θ (the fitted
    parameterisation: ln of the value when ``log_scale``) and ``dof`` = seeds − 1."""

    value: float
    fixed: bool
    ci: tuple[float, float] | None = None
    ci_bootstrap: tuple[float, float] | None = None
    ci_wald: tuple[float, float] | None = None
    se: float | None = None
    dof: float | None = None
    ci_t: tuple[float, float] | None = None
    log_scale: bool = False
    theta: float | None = None

    def to_dict(self) -> dict:
        return {"value": self.value, "fixed": self.fixed, "ci": _listed(self.ci),
                "ci_bootstrap": _listed(self.ci_bootstrap), "ci_wald": _listed(self.ci_wald),
                "ci_t": _listed(self.ci_t), "se": self.se, "dof": self.dof,
                "log_scale": self.log_scale}


@dataclass(frozen=True, kw_only=True)
class LocoResult:
    """Leave one (r, b, N) configuration out: held-out predictions (NaN where skipped), their
    RMSE, the RMSE of predicting the mean of the rest, and the held-out R² over the points;
    beside it the noise ceiling of that R² and the held-out R² of the configuration means.

    With points i in configurations c (n_c points, mean ȳ_c, grand mean ȳ) and the held-out
    prediction p_c of a configuration (the model depends on the configuration only):

        r2          = 1 − Σ_i (y_i − p_c(i))² / Σ_i (y_i − ȳ)²
        r2_ceiling  = 1 − Σ_i (y_i − ȳ_c(i))² / Σ_i (y_i − ȳ)²
        r2_config_means = 1 − Σ_c n_c (ȳ_c − p_c)² / Σ_c n_c (ȳ_c − ȳ)²

    Any prediction that is a function of the configuration has Σ_i (y_i − p_c(i))² =
    Σ_i (y_i − ȳ_c(i))² + Σ_c n_c (ȳ_c − p_c)², so r2 ≤ r2_ceiling exactly: the spread
    between repeats of one configuration (seeds) is what no model of (r, b, N) can predict.
    r2_config_means is how much of the between-configuration spread the held-out fits
    predict; it still carries the means' own noise (σ²/n_c per configuration). None where
    a configuration has one point (no ceiling) or fewer than two configurations are held out."""

    n_configs: int
    n_held_out: int
    skipped: tuple[tuple, ...]
    rmse: float | None
    rmse_null_mean: float | None
    r2: float | None
    predictions: np.ndarray
    r2_ceiling: float | None = None
    r2_config_means: float | None = None

    def to_dict(self) -> dict:
        return {"n_configs": self.n_configs, "n_held_out": self.n_held_out,
                "skipped": [list(c) for c in self.skipped], "rmse": self.rmse,
                "rmse_null_mean": self.rmse_null_mean, "r2": self.r2,
                "r2_ceiling": self.r2_ceiling, "r2_config_means": self.r2_config_means,
                "predictions": self.predictions.tolist()}


@dataclass(frozen=True, kw_only=True)
class TermFit:
    """One fitted term: formula, parameters (public names), θ in the fitted parameterisation,
    data size (``n`` pairs or configurations, written under ``size_key``), successful bootstrap
    refits, in-sample R², weakly identified parameters, the number of seeds (clusters of the
    jackknife), the leave-one-configuration-out check; for the quantization term also the
    fitted data (rank, bits, n_train, excess)."""

    model: str
    params: dict[str, ParamEstimate]
    theta: np.ndarray
    size_key: str
    n: int
    n_boot_ok: int
    r2_in_sample: float
    weakly_identified: tuple[str, ...] = ()
    loco: LocoResult | None = None
    # the same LOCO with the theory's exponents (quantization term: ρ = 4, β of s²·r; only C2
    # refitted), where computed
    loco_theory: LocoResult | None = None
    data: dict | None = None
    n_clusters: int = 0

    def to_dict(self) -> dict:
        out = {"model": self.model, "params": {k: p.to_dict() for k, p in self.params.items()},
               "theta": np.asarray(self.theta).tolist(), self.size_key: self.n,
               "n_boot_ok": self.n_boot_ok, "r2_in_sample": self.r2_in_sample,
               "n_seeds": self.n_clusters}
        if self.loco is not None:
            out["loco"] = self.loco.to_dict()
        if self.loco_theory is not None:
            out["loco_theory"] = self.loco_theory.to_dict()
        if self.data is not None:
            out["data"] = self.data
        out["weakly_identified"] = list(self.weakly_identified)
        return out


@dataclass(frozen=True, kw_only=True)
class Calibration:
    """Fitted terms, bootstrap draws and diagnostics (see :func:`calibrate`).

    quant_draws (n_boot, 3) and gen_draws (n_boot, 4): θ of each bootstrap refit (NaN rows
    where the resample could not identify a free parameter)."""

    quant: TermFit | None
    gen: TermFit | None
    quant_draws: np.ndarray | None = None
    gen_draws: np.ndarray | None = None
    notes: tuple[str, ...] = ()
    arm: str = "adapter_rtn"
    baseline_arm: str = "fp16"
    scale: str | None = None

    def fits_dict(self) -> dict:
        """The ``fits`` object of results/calibration.json."""
        out: dict = {}
        for name, part in (("quantization", self.quant), ("generalization", self.gen)):
            out[name] = part.to_dict() if part is not None else {"status": "not fitted"}
        for part, names in ((self.quant, ("C2", "per_bit_factor", "exponent_r")),
                            (self.gen, ("C1", "exponent_r_gen", "exponent_N"))):
            params = part.params if part is not None else {}
            out.update({k: params[k].to_dict() if k in params else None for k in names})
        return out

    def heldout_r2(self, term: str) -> float | None:
        """LOCO R² of ``term`` ("quantization" | "generalization"); None when not fitted."""
        part = self.quant if term == "quantization" else self.gen
        return None if part is None or part.loco is None else part.loco.r2

    def weak(self, term: str) -> tuple[str, ...]:
        """Weakly identified parameters of ``term`` (() when not fitted)."""
        part = self.quant if term == "quantization" else self.gen
        return () if part is None else tuple(part.weakly_identified)

    def quantization_only(self) -> "Calibration":
        """The quantization term alone (no generalization term, draws or notes)."""
        return replace(self, gen=None, quant_draws=None, gen_draws=None, notes=())
