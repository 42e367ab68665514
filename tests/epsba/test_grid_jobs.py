"""quantbounds.epsba.grid_jobs: a Monte Carlo grid split into jobs equals the single-process grid.

Bit for bit (same platform: the per-sample terms are the same and the merge reduces them
in simulate_grid's order), for float32 and float64, both paddings, chunking, per-channel
ranges, LoRA-scale conventions, PEFT factors, and real quantizers (stochastic rounding,
NF4); in process, and as submitit jobs on the local cluster, including a job killed mid-run
and the rerun that finishes the grid from the cells already written.
"""

import json
import os
import signal
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from quantbounds.epsba.grid_jobs import GridJobError, cells_of, simulate_grid_jobs, split_cells
from quantbounds.epsba.montecarlo import GridConfig, grid_config, simulate_grid

KEY = jax.random.key(11)
SMALL = dict(m=32, n=24, ranks=[2, 5], bits=[2, 5], n_samples=6)
CASES = {
    "f32-pow2": dict(SMALL, dtype="float32"),
    "f64-max-chunked": dict(SMALL, ranks=[1, 3, 8], dtype="float64", pad="max", chunk_size=4),
    "channel-rslora-peft": dict(SMALL, axis=0, scale="rslora", lora_alpha=4.0, factors="peft"),
    "real-sr-block": dict(SMALL, mode="real", rounding="stochastic", block_size=8),
    "real-nf4": dict(SMALL, mode="real", scheme="nf4", n_samples=1),
}


def assert_identical(a, b):
    """Every field of two EpsBAGrids equal bit for bit (NaN where NaN)."""
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(x, y, equal_nan=True), np.max(np.abs(x - y))


@pytest.mark.parametrize("case", sorted(CASES))
def test_split_grid_equals_single_process_bit_for_bit(case):
    kw = CASES[case]
    ref = simulate_grid(KEY, **kw)
    assert_identical(simulate_grid_jobs(KEY, n_jobs=2, **kw), ref)
    n_cells = len(cells_of(grid_config(**kw)))
    assert_identical(simulate_grid_jobs(KEY, n_jobs=n_cells, **kw), ref)


def test_a_grid_config_is_taken_as_simulate_grid_takes_it(tmp_path):
    # simulate_grid_jobs(key, config, **fields) = simulate_grid(key, config, **fields); the
    # config's mesh and progress are not part of the grid (same folder, same numbers)
    config = GridConfig(**CASES["f32-pow2"])
    ref = simulate_grid(KEY, config, n_samples=5)
    assert_identical(simulate_grid_jobs(KEY, config, n_jobs=2, n_samples=5), ref)
    assert_identical(simulate_grid_jobs(KEY, config, folder=tmp_path, n_samples=5), ref)
    assert_identical(
        simulate_grid_jobs(KEY, config, folder=tmp_path, n_samples=5, progress=True), ref
    )
    assert len(list((tmp_path / "cells").glob("*.npy"))) == 4


def test_a_different_key_or_option_changes_the_result():
    # the equality above is not vacuous: the jobs' numbers depend on key and options
    kw = CASES["f32-pow2"]
    a = simulate_grid_jobs(KEY, n_jobs=3, **kw)
    b = simulate_grid_jobs(jax.random.key(12), n_jobs=3, **kw)
    assert not np.array_equal(np.asarray(a.mean.total), np.asarray(b.mean.total))


def test_split_covers_every_cell_once():
    for kw in CASES.values():
        config = grid_config(**kw)
        cells = cells_of(config)
        for n_jobs in (1, 2, 3, 100):
            groups = split_cells(config, n_jobs)
            flat = [c for g in groups for c in g]
            assert sorted(flat) == sorted(cells) and len(flat) == len(set(flat))
            assert 1 <= len(groups) <= min(n_jobs, len(cells))
    # additive: one cell per (rank, bit); real: one per rank (its bits share a key stream)
    assert len(cells_of(grid_config(**CASES["f32-pow2"]))) == 2 * 2
    assert len(cells_of(grid_config(**CASES["real-nf4"]))) == 2
    with pytest.raises(TypeError, match="nsamples"):
        grid_config(**dict(SMALL, nsamples=3))
    with pytest.raises(ValueError, match="ranks"):
        grid_config(**dict(SMALL, ranks=[40]))  # > min(m, n)


def test_local_folder_resume_and_foreign_folder(tmp_path):
    kw = CASES["f64-max-chunked"]
    ref = simulate_grid(KEY, **kw)
    assert_identical(simulate_grid_jobs(KEY, folder=tmp_path, n_jobs=2, **kw), ref)
    files = sorted((tmp_path / "cells").glob("*.npy"))
    assert len(files) == 6
    # a rerun recomputes a missing cell and reads the others from their files
    files[0].unlink()
    assert_identical(simulate_grid_jobs(KEY, folder=tmp_path, n_jobs=2, **kw), ref)
    assert files[0].exists()
    good = files[1].read_bytes()
    np.save(files[1], np.zeros_like(np.load(files[1])))
    assert not np.array_equal(
        np.asarray(simulate_grid_jobs(KEY, folder=tmp_path, **kw).mean.total),
        np.asarray(ref.mean.total),
    )
    files[1].write_bytes(good)
    with pytest.raises(GridJobError, match="different grid"):
        simulate_grid_jobs(KEY, folder=tmp_path, **dict(kw, n_samples=7))
    with pytest.raises(GridJobError, match="different grid"):
        simulate_grid_jobs(jax.random.key(0), folder=tmp_path, **kw)


submitit = pytest.importorskip("submitit")


def _kill_first_job(folder: Path, stop: threading.Event, killed: list):
    """Kill -9 the first local job (its task process and controller) as soon as it starts."""
    sub = folder / "submitit"
    while not stop.is_set():
        logs = sorted(sub.glob("*_0_log.out")) if sub.exists() else []
        if logs:
            pid = int(logs[0].name.split("_")[0])
            try:
                kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                kids = []
            for p in [int(k) for k in kids] + [pid]:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            killed.append(pid)
            return
        time.sleep(0.05)


@pytest.mark.slow
def test_submitit_local_jobs_killed_and_resumed(tmp_path):
    kw = dict(SMALL, dtype="float32")
    ref = simulate_grid(KEY, **kw)
    stop, killed = threading.Event(), []
    t = threading.Thread(target=_kill_first_job, args=(tmp_path, stop, killed), daemon=True)
    t.start()
    try:
        with pytest.raises(GridJobError, match=r"cells \[.*\] of .* have no results: job .*log"):
            simulate_grid_jobs(
                KEY,
                executor="submitit",
                cluster="local",
                folder=tmp_path,
                n_jobs=2,
                options={"array_parallelism": 2, "timeout_min": 10},
                poll_s=0.2,
                **kw,
            )
    finally:
        stop.set()
        t.join(5)
    assert killed
    n_before = len(list((tmp_path / "cells").glob("*.npy"))) if (tmp_path / "cells").exists() else 0
    assert n_before < 4
    grid = simulate_grid_jobs(
        KEY,
        executor="submitit",
        cluster="local",
        folder=tmp_path,
        n_jobs=2,
        options={"array_parallelism": 2, "timeout_min": 10},
        poll_s=0.2,
        **kw,
    )
    assert_identical(grid, ref)
    assert len(list((tmp_path / "cells").glob("*.npy"))) == 4
    meta = json.loads((tmp_path / "grid.json").read_text())
    assert meta["ranks"] == [2, 5] and meta["bits"] == [2, 5]
    # finished: a third call submits nothing
    n_sub = len(list((tmp_path / "submitit").glob("*_submitted.pkl")))
    assert_identical(
        simulate_grid_jobs(
            KEY, executor="submitit", cluster="local", folder=tmp_path, n_jobs=2, **kw
        ),
        ref,
    )
    assert len(list((tmp_path / "submitit").glob("*_submitted.pkl"))) == n_sub


def test_submitit_needs_a_folder_and_valid_options(tmp_path):
    from quantbounds.jobs import ExecutorError

    with pytest.raises(ExecutorError, match="folder"):
        simulate_grid_jobs(KEY, executor="submitit", cluster="local", **SMALL)
    with pytest.raises(ExecutorError, match="slurm_qoss"):
        simulate_grid_jobs(
            KEY,
            executor="submitit",
            cluster="local",
            folder=tmp_path,
            options={"extra": {"slurm_qoss": "x"}},
            **SMALL,
        )
    with pytest.raises(ExecutorError, match="executor"):
        simulate_grid_jobs(KEY, executor="dask", **SMALL)


def _moments(result):
    return json.dumps(result["experiments"]["moments"], sort_keys=True)


def test_validate_moments_through_grid_jobs_equal_the_local_run(tmp_path):
    import functools

    from quantbounds.verdicts.results import to_jsonable
    from simulations import moments_mc
    from simulations.validate import config_for

    cfg = config_for("tiny").moments
    key = jax.random.key(3)
    ref = moments_mc.run(cfg, key)
    sim = functools.partial(simulate_grid_jobs, executor="local", root=tmp_path, n_jobs=3)
    got = moments_mc.run(cfg, key, simulate=sim)
    assert json.dumps(to_jsonable(got), sort_keys=True) == json.dumps(
        to_jsonable(ref), sort_keys=True
    )
    assert len(list(tmp_path.glob("grid-*"))) == 2  # one folder per grid (gaussian, peft_init)


@pytest.mark.slow
def test_validate_cli_with_submitit_local(tmp_path, capsys):
    from simulations.validate import main

    ref_out, out = tmp_path / "ref.json", tmp_path / "sub.json"
    assert (
        main(
            [
                "--scale",
                "tiny",
                "--out",
                str(ref_out),
                "--figures",
                "",
                "--no-progress",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "--scale",
                "tiny",
                "--out",
                str(out),
                "--figures",
                "",
                "--no-progress",
                "--seed",
                "1",
                "--executor",
                "submitit",
                "--cluster",
                "local",
                "--array-parallelism",
                "2",
                "--poll-s",
                "0.2",
            ]
        )
        == 0
    )
    a, b = json.loads(ref_out.read_text()), json.loads(out.read_text())
    assert _moments(a) == _moments(b)
    assert [v["verdict"] for v in a["verdicts"]] == [v["verdict"] for v in b["verdicts"]]
    assert len(list((tmp_path / "sub.jobs").glob("grid-*/cells/*.npy"))) == 2 * 4
    # a SLURM option submitit rejects: exit 2 naming it, nothing written
    bad = tmp_path / "bad.json"
    assert (
        main(
            [
                "--scale",
                "tiny",
                "--out",
                str(bad),
                "--executor",
                "submitit",
                "--cluster",
                "local",
                "--slurm-option",
                "qoss=x",
                "--no-progress",
            ]
        )
        == 2
    )
    assert "slurm_qoss" in capsys.readouterr().err and not bad.exists()


def test_a_job_computes_in_the_submitters_x64_mode(tmp_path):
    # validate enables x64 in main(), not in the environment a job process inherits
    from quantbounds.epsba.grid_jobs import GridJob
    from quantbounds.epsba.montecarlo import _key_parts

    kw = CASES["f32-pow2"]
    simulate_grid_jobs(KEY, folder=tmp_path, **kw)  # cells on disk: the job only checks them
    kd, impl = _key_parts(KEY)
    config = grid_config(**kw)
    try:
        jax.config.update("jax_enable_x64", False)
        job = GridJob(kd, impl, config, cells_of(config), str(tmp_path))
        jax.config.update("jax_enable_x64", True)
        assert job() == ["r0_b0", "r0_b1", "r1_b0", "r1_b1"]
        assert jax.config.jax_enable_x64 is False
    finally:
        jax.config.update("jax_enable_x64", True)


def test_grid_jobs_prefetch_runs_every_grid_then_calls_only_read(tmp_path):
    from quantbounds.epsba.grid_jobs import GridJobs
    from quantbounds.verdicts.results import to_jsonable
    from simulations import moments_mc
    from simulations.validate import config_for

    cfg = config_for("tiny").moments
    key = jax.random.key(3)
    ref = moments_mc.run(cfg, key)
    runner = GridJobs(root=tmp_path, executor="local", n_jobs=2)
    calls = []
    orig = runner.prefetch
    runner.prefetch = lambda reqs: (calls.append(len(reqs)), orig(reqs))
    got = moments_mc.run(cfg, key, simulate=runner)
    assert calls == [2]  # both grids, in one prefetch
    assert json.dumps(to_jsonable(got), sort_keys=True) == json.dumps(
        to_jsonable(ref), sort_keys=True
    )
    cells = sorted(tmp_path.glob("grid-*/cells/*.npy"))
    assert len(cells) == 2 * 4
    stamp = [c.stat().st_mtime_ns for c in cells]
    moments_mc.run(cfg, key, simulate=runner)  # everything on disk: nothing recomputed
    assert [c.stat().st_mtime_ns for c in sorted(tmp_path.glob("grid-*/cells/*.npy"))] == stamp
