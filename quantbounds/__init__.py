"""quantbounds: what quantization costs in LoRA fine-tuning, and whether the theory holds.

The JAX/numpy core; never imports torch. DESIGN.md §2 is the mathematics. Public names are
re-exported lazily (PEP 562) so ``import quantbounds`` does no work and loads JAX only when a
JAX-backed name is first used.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    # quantizers
    "nf4_code": "quant.bnb4",
    "fp4_code": "quant.bnb4",
    "quantize": "quant.quantizers",
    "quantize_codes": "quant.quantizers",
    "quantize_uniform": "quant.quantizers",
    "QuantizedTensor": "quant.quantizers",
    # noise model and diagnostics
    "uniform_noise_variance": "quant.noise",
    "uniform_step": "quant.noise",
    "sample_uniform_noise": "quant.noise",
    "codebook_noise_variance": "quant.noise",
    "absmax_exact": "quant.noise",
    "lloyd_max": "quant.lloyd_max",
    "LloydMaxResult": "quant.lloyd_max",
    "optimal_uniform_quantizer": "quant.lloyd_max",
    "uniform_quantizer_distortion": "quant.lloyd_max",
    "widrow_diagnostics": "quant.widrow",
    "WidrowDiagnostics": "quant.widrow",
    # exact moments
    "EpsBAMoments": "epsba.moments",
    "eps_ba_moments": "epsba.moments",
    "eps_ba_entry_variance": "epsba.moments",
    "eps_ba_output_moment": "epsba.moments",
    "eps_ba_variance_bound": "epsba.moments",
    # Monte Carlo
    "simulate_eps_ba": "epsba.montecarlo",
    "simulate_grid": "epsba.montecarlo",
    "EpsBASimulation": "epsba.montecarlo",
    "EpsBAGrid": "epsba.montecarlo",
    "eps_ba_terms": "epsba.montecarlo",
    "device_mesh": "epsba.sharding",
    "simulate_grid_jobs": "epsba.grid_jobs",
    "GridJobs": "epsba.grid_jobs",
    # bounds and the teacher–student experiment
    "excess_risk_bound": "theory.bounds",
    "optimal_bits": "theory.bounds",
    "grad_variance_bound": "theory.bounds",
    "generalization_term": "theory.bounds",
    "quantization_term": "theory.bounds",
    "TeacherStudentConfig": "theory.teacher_student",
    "make_problem": "theory.teacher_student",
    "excess_risk": "theory.teacher_student",
    "empirical_risk": "theory.teacher_student",
    "train_student": "theory.teacher_student",
    "fake_quant": "theory.teacher_student",
    "LoRAStudent": "theory.teacher_student",
    "run_grid": "theory.ts_grid",
    "run_loop": "theory.ts_grid",
    "measure_grad_variance": "theory.gradvar",
    "analytic_batch_variance": "theory.gradvar",
    "draw_gradvar": "theory.gradvar",
    # the nonlinear (one-hidden-layer) student
    "NonlinearConfig": "theory.nonlinear_student",
    "make_nonlinear_problem": "theory.nonlinear_student",
    "function_distance_erf": "theory.nonlinear_student",
    "function_distance_mc": "theory.nonlinear_student",
    "excess_risk_from_labels": "theory.nonlinear_student",
    "train_nonlinear": "theory.nonlinear_student",
    "evaluate_nonlinear": "theory.nonlinear_student",
    "run_nonlinear_grid": "theory.nl_grid",
    "run_nonlinear_loop": "theory.nl_grid",
    # calibration, allocation, report
    "calibrate": "calib.calibration",
    "calibrated_bits": "calib.bstar",
    "run_calibration": "cli.calibrate",
    "allocate": "calib.allocator",
    "LayerSpec": "calib.allocator",
    "memory_bits": "calib.allocator",
    "build_report": "report.report",
    "synthetic_records": "calib.synthetic",
    "SyntheticTruth": "calib.synthetic",
    # conventions, records, results
    "SCALES": "conventions",
    "lora_scale": "conventions",
    "RECORD_SCHEMA": "calib.records",
    "read_records": "calib.records",
    "append_record": "calib.records",
    "validate_record": "calib.records",
    "make_record": "calib.records",
    "Verdict": "verdicts.results",
    "write_json_atomic": "verdicts.results",
    "print_verdicts": "verdicts.results",
}
_RENAMES = {"RECORD_SCHEMA": "SCHEMA"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        mod = importlib.import_module(f"quantbounds.{_EXPORTS[name]}")
        value = getattr(mod, _RENAMES.get(name, name))
        globals()[name] = value
        return value
    raise AttributeError(f"module 'quantbounds' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
