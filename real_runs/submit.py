"""``quantbounds sweep … --executor submitit``: a sweep's pending runs as one submitit job array.

    quantbounds sweep real_runs/configs/dialogpt_medium.toml --out runs/dgpt.jsonl \\
        --executor submitit --cluster slurm --partition gpu --gpus-per-node 1 \\
        --timeout-min 120 --array-parallelism 16

The results folder (``--results-dir``, default ``<out>.d``) holds

    sweep.json            the config's fingerprint (sha1 of its sorted run_ids), its path, N
    records/<run_id>.json one finished run's record, written atomically by the job that ran it
    records/<run_id>.ptq.jsonl  its PTQ records (``ptq = true`` runs), written before the record
    jobs.json             run_id -> submitit job id of the latest submission (to re-attach)
    merge.lock/           a mkdir lock serialising merges (quantbounds.jobs.DirLock)
    submitit/             submitit's pickles and logs (one stdout/stderr per job)

Flow. The config is expanded and validated, the executor made (an option submitit rejects
fails here, before anything is written), the folder's fingerprint checked (a folder written
by a different config is an error naming both), records already in the folder merged, and
the runs with no record become one job array (``slurm_array_parallelism`` caps how many
run at once; on the local cluster at most that many local processes). Each job
(:class:`RunJob`, a ``submitit.helpers.Checkpointable``: a preempted or timed-out job is
requeued by submitit with the same configuration) runs its fine-tune, writes its record
file (temp + fsync + rename) and merges. The command polls, merges, shows queued / running
/ done / failed, and reports every job that ended without a record, naming its run and log.

Exactly once. A merge, under the mkdir lock, appends to ``out`` the records whose run_id is
not yet in it (set difference), by rewriting ``out`` atomically (old bytes + new lines,
fsync, rename), so a crash leaves the old file or the new one, and merging twice adds
nothing. PTQ records go to ``real_runs.sweep.ptq_path(out)`` the same way, before their run's
record; a run measured again for PTQ records it lacked (changed PTQ settings: same run id,
other PTQ ids) is merged by ``real_runs.sweep.supersede`` (its new record replaces the old,
its PTQ records of other settings move to ``*.superseded.jsonl``), as in the local sweep. No record is ever lost (its file stays in the folder until it is in ``out``) and
none is duplicated, on a shared filesystem without reliable ``flock`` too. Rerunning the
command resumes: live jobs of an earlier invocation are waited for, not resubmitted; every
other run without a record is submitted again.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from quantbounds._files import atomic_write_bytes
from quantbounds.calib.records import RecordError, read_records, validate_record
from quantbounds.jobs import (
    Checkpointable,
    ClusterOptions,
    DirLock,
    ExecutorError,
    JobProgress,
    LockBusy,
    import_submitit,
    job_failure,
    job_phase,
    make_executor,
    run_jobs,
)

__all__ = ["run_sweep_submitit", "merge_records", "RunJob"]

FOLDER_SCHEMA = "quantbounds.sweep-folder/1"


class SweepFolderError(RuntimeError):
    """A results folder that does not belong to this sweep."""


def results_dir_for(out: str | os.PathLike, results_dir: str | os.PathLike | None = None) -> Path:
    return Path(results_dir) if results_dir is not None else Path(f"{out}.d")


def fingerprint(run_ids) -> str:
    """sha1 of the sorted run_ids: the grid itself, whatever file or order it came from."""
    return hashlib.sha1("\n".join(sorted(run_ids)).encode()).hexdigest()


def check_folder(folder: Path, *, fp: str, config_path: str, n_runs: int) -> None:
    """Create ``folder/sweep.json`` or check that it carries fingerprint ``fp``."""
    meta = folder / "sweep.json"
    if meta.exists():
        try:
            old = json.loads(meta.read_text())
        except ValueError as err:
            raise SweepFolderError(
                f"results folder {folder}: unreadable {meta.name} ({err})"
            ) from err
        if old.get("fingerprint") != fp:
            raise SweepFolderError(
                f"results folder {folder} was written by a different config "
                f"({old.get('config')!r}, {old.get('n_runs')} runs, fingerprint "
                f"{str(old.get('fingerprint'))[:12]}…) than {config_path!r} ({n_runs} runs, "
                f"{fp[:12]}…): pass another --results-dir, or remove that folder once its "
                "records are merged"
            )
        return
    atomic_write_bytes(
        meta,
        json.dumps(
            {
                "schema": FOLDER_SCHEMA,
                "fingerprint": fp,
                "config": str(config_path),
                "n_runs": n_runs,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            },
            indent=2,
        ).encode(),
    )


def record_path(folder: Path, run_id: str) -> Path:
    return folder / "records" / f"{run_id}.json"


def ptq_record_path(folder: Path, run_id: str) -> Path:
    return folder / "records" / f"{run_id}.ptq.jsonl"


def read_ptq_file(path: Path) -> list[dict] | None:
    """The PTQ records of ``path`` if every line is a valid one, else None (no file: None)."""
    from quantbounds.calib.records import read_ptq_records

    if not path.is_file():
        return None
    res = read_ptq_records(path)
    return None if res.errors else res.records


def job_done(folder: Path, run_id: str, want_ptq: set) -> bool:
    """Whether the folder holds run ``run_id`` finished: its record file and, for a PTQ run
    (``want_ptq``: the PTQ record ids its config writes, ``ptq_record_ids``; empty otherwise),
    a PTQ file holding every one of them."""
    if read_record_file(record_path(folder, run_id)) is None:
        return False
    if not want_ptq:
        return True
    got = read_ptq_file(ptq_record_path(folder, run_id))
    return got is not None and want_ptq <= {p["run_id"] for p in got}


def read_record_file(path: Path) -> dict | None:
    """The record in ``path`` if it is a valid one, else None."""
    try:
        rec = json.loads(path.read_text())
        return validate_record(rec)
    except (OSError, ValueError, RecordError):
        return None


def merge_records(
    out: str | os.PathLike,
    folder: str | os.PathLike,
    *,
    order: list[str] | None = None,
    timeout_s: float | None = 120.0,
    log=None,
    want_ptq: dict | None = None,
) -> int:
    """Append to ``out`` every record of ``folder/records`` whose run_id ``out`` lacks.

    Under ``folder/merge.lock`` (:class:`DirLock`); ``out`` is rewritten atomically with its
    old bytes (a torn last line is kept, as the local sweep keeps it, and a newline added)
    followed by the new lines in ``order`` (run_ids; default sorted). Idempotent: a second
    merge adds nothing. Returns how many records were added. timeout_s: 0 = give up at once
    (LockBusy) if another process is merging. want_ptq: {run_id: PTQ ids its config writes}
    (the driver's): a run already in ``out`` whose folder files hold exactly those PTQ ids,
    not all in ``out``, was measured again and is merged by ``real_runs.sweep.supersede``;
    without it (a job's own best-effort merge) such a run is left to the driver.
    """
    from quantbounds.calib.records import append_lines, read_ptq_records
    from real_runs.sweep import ptq_path, supersede

    out, folder = Path(out), Path(folder)
    rec_dir = folder / "records"
    if not rec_dir.is_dir():
        return 0
    with DirLock(folder / "merge.lock", timeout_s=timeout_s):
        have = {r["run_id"] for r in read_records(out).records} if out.exists() else set()
        have_ptq = None  # read only when a run needs it (the driver merges on every poll)

        def ptq_in_out() -> set:
            nonlocal have_ptq
            if have_ptq is None:
                have_ptq = {r["run_id"] for r in read_ptq_records(ptq_path(out)).records}
            return have_ptq

        new, new_ptq, again = {}, [], 0
        for p in rec_dir.glob("*.json"):
            rid = p.stem
            if rid in have:
                # merged again only as the re-measure the driver asked for (``want_ptq``: the
                # PTQ ids its config writes, not all in ``out``, exactly those in the folder),
                # never from an older folder file whose settings ``out`` has moved past
                w = (want_ptq or {}).get(rid)
                if not w or w <= ptq_in_out():
                    continue
                ptq = read_ptq_file(ptq_record_path(folder, rid)) or []
                if {q["run_id"] for q in ptq} != w:
                    continue
            else:
                ptq = read_ptq_file(ptq_record_path(folder, rid)) or []
            rec = read_record_file(p)
            if rec is None or rec["run_id"] != rid:
                if log:
                    log(f"warning: {p}: not a valid record for run {rid}; that run will be redone")
                continue
            if rid in have:  # measured again for PTQ records ``out`` lacks
                supersede(out, rec, ptq)
                ptq_in_out().update(q["run_id"] for q in ptq)
                again += 1
                continue
            new[rid] = rec
            if ptq:
                new_ptq += [q for q in ptq if q["run_id"] not in ptq_in_out()]
        # PTQ lines first, then their runs: a crash in between leaves the runs unmerged and
        # the next merge adds them (their PTQ lines, already there, are not added twice)
        append_lines(ptq_path(out), new_ptq)
        if not new:
            return again
        rank = {rid: i for i, rid in enumerate(order or [])}
        ids = sorted(new, key=lambda r: (rank.get(r, len(rank)), r))
        old = out.read_bytes() if out.exists() else b""
        if old and not old.endswith(b"\n"):
            old += b"\n"
        lines = b"".join(
            (json.dumps(new[r], sort_keys=True, allow_nan=False) + "\n").encode() for r in ids
        )
        atomic_write_bytes(out, old + lines)
        return len(ids) + again


class RunJob(Checkpointable):
    """One fine-tune as a submitit job: run it unless its record exists, write the record
    atomically, then merge (best effort: the command merges too).

    A ``submitit.helpers.Checkpointable``: on preemption or timeout submitit calls
    :meth:`checkpoint`, which resubmits this same callable (same configuration); the run
    restarts from step 0 (a fine-tune is short next to a job's time limit)."""

    def __init__(self, config, out: str, folder: str):
        self.config, self.out, self.folder = config, str(out), str(folder)

    def __call__(self) -> str:
        folder = Path(self.folder)
        from real_runs.finetune import ptq_record_ids

        rid = self.config.run_id
        path = record_path(folder, rid)
        if not job_done(folder, rid, ptq_record_ids(self.config)):
            from real_runs.finetune import run_finetune

            print(
                f"quantbounds: start run {rid} ({self.config.arm}, r={self.config.rank}, "
                f"b={self.config.bits}, seed={self.config.seed})",
                flush=True,
            )
            # a record file left by an earlier measurement (PTQ settings changed) goes first: a
            # crash after the new PTQ file then leaves no record to merge beside it, and the
            # run is redone (the old record stays in ``out`` until the new one replaces it)
            path.unlink(missing_ok=True)
            rec, ptq = run_finetune(self.config, return_ptq=True)
            if self.config.ptq:  # its PTQ records first: a record file means the run is whole
                atomic_write_bytes(ptq_record_path(folder, rid), "".join(
                    json.dumps(q, sort_keys=True, allow_nan=False) + "\n" for q in ptq).encode())
            atomic_write_bytes(
                path, (json.dumps(rec, sort_keys=True, allow_nan=False) + "\n").encode()
            )
            print(f"quantbounds: wrote {path}", flush=True)
        try:
            merge_records(self.out, folder, timeout_s=10)
        except LockBusy:
            pass  # another process is merging; the command (or the next merge) takes it
        return rid


def _load_jobs(folder: Path) -> dict:
    try:
        return json.loads((folder / "jobs.json").read_text())
    except (OSError, ValueError):
        return {}


def _reattach(submitit, folder: Path, entry: dict):
    """The job of an earlier invocation if it may still be alive, else None."""
    cluster, job_id = entry.get("cluster"), str(entry.get("job_id"))
    sub = folder / "submitit"
    if cluster == "local":
        try:
            pid = int(job_id)
            os.kill(pid, 0)
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (ValueError, OSError):
            return None
        if b"submitit" not in cmd:
            return None
        return _PidJob(sub, job_id)
    if cluster == "slurm":
        try:
            job = submitit.SlurmJob(folder=sub, job_id=job_id)
            return None if job.done() else job
        except Exception:  # noqa: BLE001 - no sacct here, or the job is unknown
            return None
    return None


class _PidJob:
    """A local job started by an earlier invocation: alive while its process is."""

    def __init__(self, folder: Path, job_id: str):
        self.job_id, self.state = job_id, "RUNNING"
        self.paths = type("P", (), {"stderr": folder / f"{job_id}_0_log.err"})()

    def done(self) -> bool:
        try:
            os.kill(int(self.job_id), 0)
            return False
        except ProcessLookupError:
            self.state = "ENDED"
            return True

    def exception(self):
        return None

    def stderr(self):
        try:
            return Path(self.paths.stderr).read_text()
        except OSError:
            return ""


def run_sweep_submitit(
    config_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    options: dict | None = None,
    results_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    overrides: dict | None = None,
    progress: bool = True,
    poll_s: float | None = None,
    log=print,
) -> dict:
    """Run a sweep's pending runs as submitit jobs; returns counts like ``run_sweep``'s
    {"total", "skipped", "done", "failed"} plus "failures": [message per run that ended
    without a record]. Errors before any job is submitted (config, executor, folder) leave
    ``out`` untouched.
    """
    from real_runs.sweep import _exclusive, expand, load_config, pending

    submitit = import_submitit()
    cfg = load_config(config_path)
    runs = expand(cfg, where=str(config_path), overrides={"progress": False, **(overrides or {})})
    opts = sweep_cluster_options(cfg, options or {}, where=str(config_path))
    out = Path(out).absolute()
    folder = results_dir_for(out, results_dir).absolute()
    executor = make_executor(opts, folder / "submitit")
    order = [r.run_id for r in runs]
    poll_s = poll_s if poll_s is not None else (1.0 if opts.cluster == "local" else 30.0)
    with _exclusive(out):
        check_folder(folder, fp=fingerprint(order), config_path=str(config_path), n_runs=len(runs))
        from real_runs.finetune import ptq_record_ids

        want = {r.run_id: ptq_record_ids(r) for r in runs if r.ptq}
        merge_records(out, folder, order=order, log=log, want_ptq=want)
        todo = pending(runs, out)[0]  # no record, or (PTQ runs) not every PTQ record
        skipped = len(runs) - len(todo)
        if limit is not None:
            todo = todo[:limit]
        counts = {"total": len(runs), "skipped": skipped, "done": 0, "failed": 0, "failures": []}
        if not todo:
            return counts
        # jobs of an earlier invocation that may still be running: wait for them, don't resubmit
        old = _load_jobs(folder)
        attached = {}
        for rc in todo:
            if rc.run_id in old:
                job = _reattach(submitit, folder, old[rc.run_id])
                if job is not None:
                    attached[rc.run_id] = job
        fresh = [rc for rc in todo if rc.run_id not in attached]
        if attached:
            log(f"waiting for {len(attached)} job(s) of an earlier invocation still alive")
        tasks = [RunJob(rc, str(out), str(folder)) for rc in fresh]
        by_index = {i: rc for i, rc in enumerate(fresh)}
        todo_ids = {rc.run_id for rc in todo}
        desc = cfg.get("sweep", {}).get("name", "sweep")

        def save_jobs(slots):
            jobs = dict(_load_jobs(folder))
            for s in slots:
                if s.job is not None:
                    jobs[by_index[s.index].run_id] = {
                        "cluster": opts.cluster,
                        "job_id": str(s.job.job_id),
                    }
            atomic_write_bytes(folder / "jobs.json", json.dumps(jobs, indent=1).encode())

        def done_ids():
            return {rid for rid in todo_ids if job_done(folder, rid, want.get(rid, set()))}

        with JobProgress(desc, len(todo), enabled=progress) as bar:

            def refresh(slots):
                try:
                    merge_records(out, folder, order=order, timeout_s=0, log=log, want_ptq=want)
                except LockBusy:
                    pass
                done = done_ids()
                phases = {}
                for s in slots:
                    rid = by_index[s.index].run_id
                    phases[rid] = "unsubmitted" if s.job is None else job_phase(s.job)
                for rid, job in attached.items():
                    phases[rid] = job_phase(job)
                q = sum(
                    1
                    for rid, p in phases.items()
                    if rid not in done and p in ("queued", "unsubmitted")
                )
                run = sum(1 for rid, p in phases.items() if rid not in done and p == "running")
                failed = sum(1 for rid, p in phases.items() if rid not in done and p == "ended")
                bar.update(queued=q, running=run, done=len(done), failed=failed)

            slots = run_jobs(
                executor,
                tasks,
                cluster=opts.cluster,
                array_parallelism=opts.array_parallelism,
                poll_s=poll_s,
                on_poll=refresh,
                on_submit=save_jobs,
            )
            # earlier invocation's jobs
            while any(not j.done() for j in attached.values()):
                refresh(slots)
                time.sleep(poll_s)
            refresh(slots)
        merge_records(out, folder, order=order, log=log, want_ptq=want)
        left = {r.run_id for r in pending(todo, out)[0]}
        ended = {by_index[s.index].run_id: s.job for s in slots}
        ended.update(attached)
        for rc in todo:
            if rc.run_id not in left:
                counts["done"] += 1
                continue
            counts["failed"] += 1
            job = ended.get(rc.run_id)
            msg = (
                f"run {rc.run_id} ({rc.arm}, r={rc.rank}, b={rc.bits}, seed={rc.seed}) "
                f"ended without a record: {job_failure(job) if job is not None else 'no job'}"
            )
            counts["failures"].append(msg)
            log(f"error: {msg}")
    return counts


def sweep_cluster_options(cfg: dict, flags: dict, *, where: str = "config") -> ClusterOptions:
    """The config's ``[submitit]`` table (any ClusterOptions field) with the given command-line
    flags on top (None = not given)."""
    table = cfg.get("submitit", {})
    if not isinstance(table, dict):
        raise ExecutorError(f"{where}: [submitit] must be a table")
    return ClusterOptions.from_mapping(table, where=f"{where} [submitit]").merged(**flags)


def main(argv=None) -> int:  # pragma: no cover - the CLI goes through real_runs.cli
    from real_runs.cli import sweep_main

    return sweep_main(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
