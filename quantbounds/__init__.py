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
    "nf4_code": "bnb4", "fp4_code": "bnb4", "quantize": "quantizers",
    "quantize_codes": "quantizers", "quantize_uniform": "quantizers", "QuantizedTensor": "quantizers",
    # noise model and diagnostics
    "uniform_noise_variance": "noise", "uniform_step": "noise", "sample_uniform_noise": "noise",
    "codebook_noise_variance": "noise", "absmax_exact": "noise",
    "lloyd_max": "lloyd_max", "LloydMaxResult": "lloyd_max",
    "optimal_uniform_quantizer": "lloyd_max", "uniform_quantizer_distortion": "lloyd_max",
    "widrow_diagnostics": "widrow", "WidrowDiagnostics": "widrow",
    # exact moments
    "EpsBAMoments": "moments", "eps_ba_moments": "moments", "eps_ba_entry_variance": "moments",
    "eps_ba_output_moment": "moments", "eps_ba_variance_bound": "moments",
    # Monte Carlo
    "simulate_eps_ba": "montecarlo", "simulate_grid": "montecarlo", "EpsBASimulation": "montecarlo",
    "EpsBAGrid": "montecarlo", "eps_ba_terms": "montecarlo", "device_mesh": "sharding",
    # bounds and the teacher–student experiment
    "excess_risk_bound": "bounds", "optimal_bits": "bounds", "grad_variance_bound": "bounds",
    "generalization_term": "bounds", "quantization_term": "bounds", "paper_worked_example": "bounds",
    "TeacherStudentConfig": "teacher_student", "make_problem": "teacher_student",
    "excess_risk": "teacher_student", "empirical_risk": "teacher_student",
    "train_student": "teacher_student", "fake_quant": "teacher_student", "LoRAStudent": "teacher_student",
    "run_grid": "ts_grid", "run_loop": "ts_grid",
    "measure_grad_variance": "gradvar", "analytic_batch_variance": "gradvar", "draw_gradvar": "gradvar",
    # the nonlinear (one-hidden-layer) student
    "NonlinearConfig": "nonlinear_student", "make_nonlinear_problem": "nonlinear_student",
    "function_distance_erf": "nonlinear_student", "function_distance_mc": "nonlinear_student",
    "excess_risk_from_labels": "nonlinear_student", "train_nonlinear": "nonlinear_student",
    "evaluate_nonlinear": "nonlinear_student",
    "run_nonlinear_grid": "nl_grid", "run_nonlinear_loop": "nl_grid",
    # calibration, allocation, report
    "calibrate": "calibration", "calibrated_bits": "calibration", "run_calibration": "calibration",
    "allocate": "allocator", "LayerSpec": "allocator", "memory_bits": "allocator",
    "build_report": "report", "synthetic_records": "synthetic", "SyntheticTruth": "synthetic",
    # conventions, records, results
    "SCALES": "scales", "lora_scale": "scales",
    "RECORD_SCHEMA": "records", "read_records": "records", "append_record": "records",
    "validate_record": "records", "make_record": "records",
    "Verdict": "results", "write_json_atomic": "results", "print_verdicts": "results",
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
