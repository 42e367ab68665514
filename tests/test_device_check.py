"""benchmarks/device_check.sh: valid bash, and every piece it runs works on the CPU (--cpu-smoke).

Without a device the script must still be complete: the smoke run executes the same code
(engine roofline, bitsandbytes vs our quantizer, one step per arm, validate) at tiny sizes
and checks what each piece measured, not only that it ran.
"""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "device_check.sh"


def test_script_is_valid_bash_and_names_every_piece():
    assert shutil.which("bash")
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    text = SCRIPT.read_text()
    for piece in ("engine", "bnb", "finetune", "validate", "collect"):
        assert piece in text
    assert "benchmarks/results/device.json" in text


def test_collect_reports_missing_and_timed_out_parts(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import device_check
    finally:
        sys.path.pop(0)
    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "engine.json").write_text(json.dumps({"fraction_of_roofline": {"a": 0.7}}))
    (parts / "engine.rc").write_text("0\n")
    (parts / "bnb.rc").write_text("124\n")
    (parts / "bnb.log").write_text("line 1\nKilled\n")
    res = device_check.collect(parts, tmp_path / "device.json", smoke=True)
    assert json.loads((tmp_path / "device.json").read_text()) == json.loads(json.dumps(res))
    assert res["parts"]["engine"]["result"]["fraction_of_roofline"]["a"] == 0.7
    assert res["parts"]["bnb"]["error"] == "no result (timed out)"
    assert res["parts"]["bnb"]["log_tail"][-1] == "Killed"
    assert res["parts"]["finetune"] == {"rc": None, "error": "no result"}
    assert res["warnings"] == []  # smoke: CPU is expected
    (parts / "engine.json").write_text(json.dumps({"platform": "cpu"}))
    res = device_check.collect(parts, tmp_path / "device.json", smoke=False)
    assert res["warnings"] == ["engine ran on 'cpu', not the GPU (jax without CUDA?)"]


@pytest.mark.slow
@pytest.mark.torch
def test_cpu_smoke_run_of_the_whole_script(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("bitsandbytes")
    out = tmp_path / "device.json"
    env = {
        **os.environ,
        "DEVICE_CHECK_OUT": str(out),
        "DEVICE_CHECK_WORK": str(tmp_path / "w"),
        "PYTHONPATH": str(ROOT),
        "PYTHON": sys.executable,
        "OMP_NUM_THREADS": "1",
    }
    p = subprocess.run(
        ["bash", str(SCRIPT), "--cpu-smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["schema"] == "quantbounds.device/1" and res["smoke"] is True
    parts = res["parts"]
    for name in ("engine", "bnb", "finetune", "validate"):
        assert parts[name]["rc"] == 0 and "result" in parts[name], (name, parts[name])
    # engine: rates positive, the roofline combines noise and GEMM time as documented
    eng = parts["engine"]["result"]
    assert eng["platform"] == "cpu" and eng["gemm_flops_default"] > 0
    for c in eng["cases"]:
        roof = 1 / (
            1 / c["noise_only_samples_s"] + c["flops_per_sample"] / eng["gemm_flops_default"]
        )
        assert math.isclose(c["roofline_samples_s"], roof, rel_tol=1e-12)
        assert c["flops_per_sample"] == 4 * c["r"] ** 2 * (c["m"] + c["n"])
        assert 0 < c["fraction_of_roofline"] == c["engine_samples_s"] / c["roofline_samples_s"]
    assert set(eng["fraction_of_roofline"]) == {"256x256_r4", "256x256_r16"}
    # bnb on the CPU: codes always equal ours (the quantizer is the reference path); values
    # differ only where the AVX-512 kernel is known wrong (and only on an AVX-512 CPU)
    bnb = parts["bnb"]["result"]
    assert bnb["n_errors"] == 0 and bnb["n_cases_code_mismatch"] == 0 and bnb["n_cases"] == 10
    for r in bnb["rows"]:
        if r["n_value"]:
            assert r["cpu_avx512_kernel_known_bad"], r
    from real_runs.bnb_reference import cpu_isa

    if cpu_isa() == "avx512":
        assert bnb["cpu_known_bad_cases_value_mismatch"] == bnb["cpu_known_bad_cases"] > 0
    # one step per arm, every arm
    from quantbounds.calib.records import ARMS

    ft = parts["finetune"]["result"]
    assert [a["arm"] for a in ft["arms"]] == list(ARMS) and ft["n_errors"] == 0
    assert all(a["step_s"] > 0 and math.isfinite(a["loss"]) for a in ft["arms"])
    # validate ran to the end and counted its verdicts
    val = parts["validate"]["result"]
    assert val["scale"] == "tiny" and val["rc"] == 0 and not val["timed_out"]
    assert sum(val["verdicts"].values()) > 0 and val["wall_s"] > 0
