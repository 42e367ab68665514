"""real_runs.submit / quantbounds.jobs: sweeps as submitit jobs (submitit's local executor).

Killed jobs and a killed driver are resumed into records = the grid, no duplicates; a
preempted job is requeued by submitit with the same run; merges add each record exactly
once, also from concurrent processes; bad input (no submitit, an option submitit rejects,
a folder of another config) is an error naming it, with the records file unchanged.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

submitit = pytest.importorskip("submitit")

from quantbounds._files import atomic_write_bytes  # noqa: E402
from quantbounds.calib.records import make_record, read_records  # noqa: E402
from quantbounds.jobs import (  # noqa: E402
    ClusterOptions,
    DirLock,
    ExecutorError,
    LockBusy,
    make_executor,
    parse_slurm_option,
)
from real_runs import submit  # noqa: E402
from real_runs.submit import (  # noqa: E402
    SweepFolderError,
    check_folder,
    fingerprint,  # noqa: E402
    merge_records,
    record_path,
)

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(
    model="embedded",
    embedded="tiny",
    steps=3,
    batch_size=4,
    seq_len=32,
    n_train=16,
    grad_var_batches=2,
    noise_draws=2,
    eval_pairs=2,
    max_new_tokens=2,
    log_every=1,
    device="cpu",
)
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _fake_record(i: int) -> dict:
    return make_record(
        run_id=f"{i:016x}",
        arm="fp16",
        model="embedded",
        dataset="chatterbot",
        rank=2,
        bits=16,
        base_quant="none",
        scale="alpha_r",
        lora_alpha=16.0,
        seed=i,
        n_train=16,
        steps=3,
        eval_loss=1.0 + i,
        perplexity=2.7,
        f1=0.1,
        exact_match=0.0,
        grad_var=1.0,
        eps_ba_fro2=0.0,
        wall_s=1.0,
    )


def _write_config(path, defaults, grid, submitit_table=None):
    lines = ["[sweep]", 'name = "t"', "", "[defaults]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in defaults.items()]
    lines += ["", "[[grid]]"] + [f"{k} = {json.dumps(v)}" for k, v in grid.items()]
    if submitit_table:
        lines += ["", "[submitit]"] + [f"{k} = {json.dumps(v)}" for k, v in submitit_table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------------ merge, lock, files
def test_merge_adds_each_record_exactly_once(tmp_path):
    folder, out = tmp_path / "d", tmp_path / "runs.jsonl"
    recs = [_fake_record(i) for i in range(4)]
    for r in recs:
        atomic_write_bytes(record_path(folder, r["run_id"]), json.dumps(r).encode())
    # out already holds record 0 and a torn last line (a local sweep killed mid-write)
    out.write_text(json.dumps(recs[0], sort_keys=True) + "\n" + '{"schema": "quantb')
    before = out.read_bytes()
    order = [r["run_id"] for r in reversed(recs)]
    assert merge_records(out, folder, order=order) == 3
    assert out.read_bytes().startswith(before)  # old bytes kept, torn line included
    res = read_records(out)
    assert [r["run_id"] for r in res.records] == [recs[0]["run_id"]] + order[:3]
    assert len(res.errors) == 1  # the torn line, reported
    after = out.read_bytes()
    assert merge_records(out, folder, order=order) == 0 and out.read_bytes() == after
    # a corrupt record file is skipped with a warning, never merged
    (folder / "records" / f"{9:016x}.json").write_text('{"schema": 1')
    logs = []
    assert merge_records(out, folder, log=logs.append) == 0 and any(
        "not a valid" in m for m in logs
    )


def test_concurrent_merges_from_processes_add_each_record_once(tmp_path):
    folder, out = tmp_path / "d", tmp_path / "runs.jsonl"
    n = 40
    for i in range(n):
        r = _fake_record(i)
        atomic_write_bytes(record_path(folder, r["run_id"]), json.dumps(r).encode())
    code = (
        "import sys; from real_runs.submit import merge_records; "
        "print(merge_records(sys.argv[1], sys.argv[2], timeout_s=60))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(out), str(folder)],
            cwd=ROOT,
            env=ENV,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    added = [int(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(added) == n  # one merger added them; the others found none
    ids = [r["run_id"] for r in read_records(out, strict=True).records]
    assert len(ids) == n and len(set(ids)) == n


def test_dir_lock_busy_and_stale(tmp_path):
    lock = tmp_path / "m.lock"
    with DirLock(lock, timeout_s=0):
        with pytest.raises(LockBusy, match="m.lock"):
            DirLock(lock, timeout_s=0).acquire()
    assert not lock.exists()
    # a lock left by a dead process on this host is taken over
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    os.mkdir(lock)
    (lock / "owner.json").write_text(
        json.dumps({"host": socket.gethostname(), "pid": p.pid, "time": time.time()})
    )
    with DirLock(lock, timeout_s=0):
        assert json.loads((lock / "owner.json").read_text())["pid"] == os.getpid()


def test_folder_fingerprint(tmp_path):
    check_folder(tmp_path, fp=fingerprint(["a", "b"]), config_path="one.toml", n_runs=2)
    check_folder(
        tmp_path, fp=fingerprint(["b", "a"]), config_path="same.toml", n_runs=2
    )  # order-free
    with pytest.raises(SweepFolderError, match="different config.*one.toml"):
        check_folder(tmp_path, fp=fingerprint(["a", "c"]), config_path="other.toml", n_runs=2)


def test_options_and_rejections(tmp_path):
    assert parse_slurm_option("qos=high") == ("slurm_qos", "high")
    assert parse_slurm_option('additional_parameters={"x": 1}') == (
        "slurm_additional_parameters",
        {"x": 1},
    )
    with pytest.raises(ExecutorError, match="KEY=VALUE"):
        parse_slurm_option("qos")
    with pytest.raises(ExecutorError, match="slurm_partitionn"):
        make_executor(ClusterOptions(cluster="local", extra={"slurm_partitionn": "gpu"}), tmp_path)
    with pytest.raises(ExecutorError, match="array_parallelism"):
        ClusterOptions(array_parallelism=0)
    with pytest.raises(ExecutorError, match="cluster"):
        ClusterOptions(cluster="pbs")
    with pytest.raises(ExecutorError, match="partitio"):
        ClusterOptions.from_mapping({"partitio": "gpu"})
    merged = ClusterOptions.from_mapping({"partition": "a", "timeout_min": 30}).merged(
        partition="b", timeout_min=None
    )
    assert merged.partition == "b" and merged.timeout_min == 30
    if not Path("/usr/bin/srun").exists():  # no SLURM here: a clear message, not a traceback
        with pytest.raises(ExecutorError, match="--cluster local"):
            make_executor(ClusterOptions(cluster="slurm"), tmp_path)


def test_bad_input_leaves_records_unchanged(tmp_path, capsys, monkeypatch):
    from real_runs.cli import sweep_main

    cfg = _write_config(
        tmp_path / "c.toml",
        {**FAST, "cache_dir": str(tmp_path)},
        {"arm": "fp16", "bits": 16, "rank": 2, "seed": [0, 1]},
    )
    out = tmp_path / "runs.jsonl"
    out.write_text(json.dumps(_fake_record(7), sort_keys=True) + "\n")
    before = out.read_bytes()
    base = [
        str(cfg),
        "--out",
        str(out),
        "--executor",
        "submitit",
        "--cluster",
        "local",
        "--no-progress",
    ]
    # an option submitit rejects
    assert sweep_main(base + ["--slurm-option", "partitionn=gpu"]) == 2
    assert "slurm_partitionn" in capsys.readouterr().err and out.read_bytes() == before
    # a [submitit] table with an unknown key
    bad = _write_config(
        tmp_path / "b.toml", {**FAST}, {"arm": "fp16", "bits": 16, "rank": 2}, {"gpus": 1}
    )
    assert sweep_main([str(bad)] + base[1:]) == 2
    assert "gpus" in capsys.readouterr().err and out.read_bytes() == before
    # a results folder written by a different config
    check_folder(Path(f"{out}.d"), fp=fingerprint(["x"]), config_path="other.toml", n_runs=1)
    assert sweep_main(base) == 2
    err = capsys.readouterr().err
    assert "different config" in err and "other.toml" in err and out.read_bytes() == before
    # submitit not installed
    monkeypatch.setitem(sys.modules, "submitit", None)
    assert sweep_main(base + ["--results-dir", str(tmp_path / "fresh")]) == 2
    assert "pip install submitit" in capsys.readouterr().err and out.read_bytes() == before
    assert not (tmp_path / "fresh").exists()


# ------------------------------------------------------------------ real jobs (local executor)
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def cache(embedded_tiny_cache):
    return embedded_tiny_cache


def _wait(pred, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _started(folder: Path) -> dict:
    """run_id -> how many times a job started it (from the submitit job logs)."""
    n = {}
    for p in (folder / "submitit").glob("*_log.out"):
        for line in p.read_text(errors="replace").splitlines():
            if line.startswith("quantbounds: start run "):
                rid = line.split()[3]
                n[rid] = n.get(rid, 0) + 1
    return n


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@pytest.mark.slow
def test_killed_job_is_reported_and_the_rerun_completes(tmp_path, cache):
    from real_runs.cli import sweep_main
    from real_runs.sweep import expand, load_config

    cfg = _write_config(
        tmp_path / "k.toml",
        {**FAST, "cache_dir": str(cache)},
        {"arm": "fp16", "bits": 16, "rank": 2, "seed": [0, 1, 2]},
        {"timeout_min": 20},
    )
    out = tmp_path / "runs.jsonl"
    folder = Path(f"{out}.d")
    grid = [r.run_id for r in expand(load_config(cfg))]
    drv = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "real_runs.cli",
            "sweep",
            str(cfg),
            "--out",
            str(out),
            "--executor",
            "submitit",
            "--cluster",
            "local",
            "--array-parallelism",
            "2",
            "--poll-s",
            "0.3",
            "--no-progress",
        ],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait(lambda: grid[0] in _started(folder), 150, "the first run to start")
        job_pid = int(json.loads((folder / "jobs.json").read_text())[grid[0]]["job_id"])
        victims = _children(job_pid) + [job_pid]  # the task process and its controller
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        stdout, stderr = drv.communicate(timeout=400)
    finally:
        if drv.poll() is None:
            drv.kill()
    assert drv.returncode == 1, stderr
    counts = json.loads(stdout.strip().splitlines()[-1])
    assert counts["failed"] == 1 and counts["done"] == 2
    assert f"run {grid[0]}" in stderr and "ended without a record" in stderr
    ids = [r["run_id"] for r in read_records(out).records]
    assert sorted(ids) == sorted(grid[1:])
    # rerun: only the killed run is submitted again
    assert (
        sweep_main(
            [
                str(cfg),
                "--out",
                str(out),
                "--executor",
                "submitit",
                "--cluster",
                "local",
                "--poll-s",
                "0.3",
                "--no-progress",
            ]
        )
        == 0
    )
    ids = [r["run_id"] for r in read_records(out, strict=True).records]
    assert sorted(ids) == sorted(grid) and len(set(ids)) == len(ids)
    started = _started(folder)
    assert started == {grid[0]: 2, grid[1]: 1, grid[2]: 1}
    # all done: a third invocation submits nothing and leaves the file as it is
    before = out.read_bytes()
    assert (
        sweep_main(
            [
                str(cfg),
                "--out",
                str(out),
                "--executor",
                "submitit",
                "--cluster",
                "local",
                "--no-progress",
            ]
        )
        == 0
    )
    assert out.read_bytes() == before and _started(folder) == started


@pytest.mark.slow
def test_killed_driver_resumes_and_waits_for_its_live_jobs(tmp_path, cache):
    from real_runs.cli import sweep_main
    from real_runs.sweep import expand, load_config

    cfg = _write_config(
        tmp_path / "d.toml",
        {**FAST, "cache_dir": str(cache)},
        {"arm": "fp16", "bits": 16, "rank": 2, "seed": [0, 1, 2]},
        {"timeout_min": 20, "array_parallelism": 2},
    )
    out = tmp_path / "runs.jsonl"
    folder = Path(f"{out}.d")
    grid = [r.run_id for r in expand(load_config(cfg))]
    drv = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "real_runs.cli",
            "sweep",
            str(cfg),
            "--out",
            str(out),
            "--executor",
            "submitit",
            "--cluster",
            "local",
            "--poll-s",
            "0.3",
            "--no-progress",
        ],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait(lambda: len(_started(folder)) >= 2, 150, "two runs to start")
        drv.send_signal(signal.SIGKILL)  # the driver only: its local jobs live on
        drv.wait(timeout=30)
    finally:
        if drv.poll() is None:
            drv.kill()
    assert len(read_records(out).records) < 3 if out.exists() else True
    assert (
        sweep_main(
            [
                str(cfg),
                "--out",
                str(out),
                "--executor",
                "submitit",
                "--cluster",
                "local",
                "--poll-s",
                "0.3",
                "--no-progress",
            ]
        )
        == 0
    )
    ids = [r["run_id"] for r in read_records(out, strict=True).records]
    assert sorted(ids) == sorted(grid) and len(set(ids)) == 3
    # the live jobs were waited for, not resubmitted: every run started exactly once
    assert _started(folder) == {g: 1 for g in grid}


def test_preempted_job_is_requeued_with_the_same_run(tmp_path, cache):
    from real_runs.finetune import FinetuneConfig

    rc = FinetuneConfig(
        arm="fp16", bits=16, rank=2, seed=5, cache_dir=str(cache), progress=False, **FAST
    )
    out, folder = tmp_path / "runs.jsonl", tmp_path / "d"
    ex = make_executor(ClusterOptions(cluster="local", timeout_min=20), folder / "submitit")
    job = ex.submit(submit.RunJob(rc, str(out), str(folder)))
    _wait(lambda: rc.run_id in _started(folder), 150, "the run to start")
    # SIGUSR2 to the task, as SLURM signals a job before preempting it: submitit checkpoints
    # the Checkpointable and the local controller restarts the task from the new pickle
    (task,) = _children(int(job.job_id))
    os.kill(task, signal.SIGUSR2)
    assert job.result() == rc.run_id
    assert _started(folder) == {rc.run_id: 2}  # started, preempted, started again
    assert "Requeued job" in Path(job.paths.stderr).read_text() + Path(job.paths.stdout).read_text()
    (rec,) = read_records(out, strict=True).records
    assert rec["run_id"] == rc.run_id and rec["seed"] == 5


# ------------------------------------------------------------------ the SLURM path, without SLURM
class _FakeSlurmJob:
    """Reports PENDING, then RUNNING, then COMPLETED over successive polls (sacct's states)."""

    def __init__(self, i, fn):
        self.job_id, self.fn, self.polls = f"100_{i}", fn, 0

    @property
    def state(self):
        return ["PENDING", "RUNNING", "COMPLETED"][min(self.polls, 2)]

    def done(self):
        self.polls += 1
        if self.polls == 3:
            self.fn()
        return self.polls >= 3


class _FakeSlurmExecutor:
    def __init__(self):
        self.arrays = []

    def submit_array(self, fns):
        self.arrays.append(len(fns))
        return [_FakeSlurmJob(i, f) for i, f in enumerate(fns)]

    def submit(self, fn):  # pragma: no cover - must not be used on SLURM
        raise AssertionError("SLURM jobs go in one array")


def test_slurm_path_submits_one_array_and_maps_states():
    from quantbounds.jobs import job_phase, run_jobs

    ran, seen = [], []
    ex = _FakeSlurmExecutor()
    slots = run_jobs(
        ex,
        [lambda i=i: ran.append(i) for i in range(5)],
        cluster="slurm",
        array_parallelism=2,
        poll_s=0,
        on_poll=lambda s: seen.append(sorted({job_phase(x.job) for x in s})),
    )
    assert ex.arrays == [5] and sorted(ran) == list(range(5))
    assert all(s.finished for s in slots) and [s.job.job_id for s in slots][0] == "100_0"

    class J:
        def __init__(self, state, done=False):
            self.state, self._done = state, done

        def done(self):
            return self._done

    assert job_phase(J("PENDING")) == job_phase(J("REQUEUED")) == "queued"
    assert job_phase(J("RUNNING")) == job_phase(J("COMPLETING")) == "running"
    assert job_phase(J("FAILED", done=True)) == "ended"


def test_local_path_caps_concurrent_jobs():
    from quantbounds.jobs import run_jobs

    live, peak = [], [0]

    class Job:
        def __init__(self):
            self.left = 2
            live.append(self)
            peak[0] = max(peak[0], sum(j.left > 0 for j in live))

        def done(self):
            self.left -= 1
            return self.left <= 0

    class Ex:
        def submit(self, fn):
            return Job()

    slots = run_jobs(Ex(), [lambda: None] * 7, cluster="local", array_parallelism=3, poll_s=0)
    assert len(slots) == 7 and all(s.finished for s in slots) and peak[0] == 3


def test_progress_display_counts():
    import io

    from rich.console import Console

    from quantbounds.jobs import JobProgress

    buf = io.StringIO()
    with JobProgress("sweep", 6, console=Console(file=buf, width=200, force_terminal=False)) as bar:
        bar.update(queued=1, running=2, done=3, failed=0)
    assert "queued 1 · running 2 · done 3 · failed 0" in buf.getvalue() and "3/6" in buf.getvalue()


def test_config_table_under_flags():
    from real_runs.submit import sweep_cluster_options

    cfg = {
        "submitit": {
            "partition": "gpu",
            "gpus_per_node": 1,
            "timeout_min": 90,
            "extra": {"slurm_qos": "low"},
        }
    }
    o = sweep_cluster_options(
        cfg, {"cluster": "local", "timeout_min": None, "extra": {"slurm_account": "lab"}}
    )
    assert (o.cluster, o.partition, o.gpus_per_node, o.timeout_min) == ("local", "gpu", 1, 90)
    assert o.extra == {"slurm_qos": "low", "slurm_account": "lab"}
    assert sweep_cluster_options({}, {}).cluster == "slurm"
    with pytest.raises(ExecutorError, match="must be a table"):
        sweep_cluster_options({"submitit": 3}, {})


def test_ptq_runs_write_their_ptq_records_and_a_re_measure_supersedes(tmp_path, cache):
    """A ``ptq = true`` run under submitit writes its PTQ records (beside ``out``, as the local
    sweep does); changing the PTQ settings (same run id, other PTQ ids) re-measures it and the
    merge replaces its record and moves its old PTQ records to the superseded files."""
    from quantbounds.calib.records import read_ptq_records
    from real_runs.cli import sweep_main
    from real_runs.finetune import ptq_record_ids
    from real_runs.sweep import expand, load_config, pending, ptq_path, superseded_path

    base = {**FAST, "cache_dir": str(cache), "ptq_bits": [3], "ptq_schemes": ["rtn_tensor", "int8"]}
    grid = {"arm": "fp16", "bits": 16, "rank": 2, "seed": 0, "ptq": True}
    out = tmp_path / "runs.jsonl"
    argv = ["--out", str(out), "--executor", "submitit", "--cluster", "local", "--poll-s", "0.3",
            "--no-progress"]
    cfg = _write_config(tmp_path / "p.toml", base, grid)
    (run,) = expand(load_config(cfg))
    assert sweep_main([str(cfg), *argv]) == 0
    (rec,) = read_records(out, strict=True).records
    ptq = read_ptq_records(ptq_path(out)).records
    assert {p["run_id"] for p in ptq} == ptq_record_ids(run) and len(ptq) == 2
    assert all(p["ptq_of"] == rec["run_id"] for p in ptq) and pending([run], out)[0] == []
    cfg2 = _write_config(tmp_path / "p2.toml", {**base, "ptq_eval_tokens": 2 * run.ptq_eval_tokens},
                         grid)
    (run2,) = expand(load_config(cfg2))
    assert run2.run_id == run.run_id and pending([run2], out)[0] == [run2]
    assert sweep_main([str(cfg2), *argv]) == 0
    (rec2,) = read_records(out, strict=True).records
    assert rec2["run_id"] == rec["run_id"] and rec2["started_at"] >= rec["started_at"]
    assert {p["run_id"] for p in read_ptq_records(ptq_path(out)).records} == ptq_record_ids(run2)
    assert read_records(superseded_path(out), strict=True).records == [rec]
    assert {p["run_id"] for p in read_ptq_records(superseded_path(ptq_path(out))).records} == \
        ptq_record_ids(run)
    assert _started(Path(f"{out}.d")) == {rec["run_id"]: 2}
    # done: nothing is submitted again and the files stay as they are
    before = (out.read_bytes(), ptq_path(out).read_bytes())
    assert sweep_main([str(cfg2), *argv]) == 0
    assert (out.read_bytes(), ptq_path(out).read_bytes()) == before
    # measured again locally under a third setting: the folder's older files never win back
    from real_runs.sweep import run_sweep

    cfg3 = _write_config(tmp_path / "p3.toml", {**base, "ptq_eval_tokens": 3 * run.ptq_eval_tokens},
                         grid)
    (run3,) = expand(load_config(cfg3))
    assert run_sweep(cfg3, out, progress=False)["done"] == 1
    after = (out.read_bytes(), ptq_path(out).read_bytes())
    folder = Path(f"{out}.d")
    assert merge_records(out, folder) == 0
    assert merge_records(out, folder, want_ptq={run3.run_id: ptq_record_ids(run3)}) == 0
    assert (out.read_bytes(), ptq_path(out).read_bytes()) == after
    assert {p["run_id"] for p in read_ptq_records(ptq_path(out)).records} == ptq_record_ids(run3)
