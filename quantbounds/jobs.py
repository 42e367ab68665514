"""Running independent pieces of work as submitit jobs (SLURM, or local processes).

Shared by the sweep executor (``real_runs.submit``: one fine-tune per job) and the split
Monte Carlo grid (``quantbounds.epsba.grid_jobs``: a group of cells per job); the
command-line flags that fill :class:`ClusterOptions` are ``quantbounds.cli.options``'s
``add_cluster_flags`` / ``cluster_flags``. Torch-free; submitit is an optional dependency
(its ``Checkpointable`` is the base of the job callables when it is installed, a placeholder
when not; :func:`import_submitit` says how to install it when a submitit executor is asked
for and it is missing).

What this module provides and why:

- :class:`ClusterOptions`: the scheduler options a command takes from flags or a config
  (partition, GPUs, time, concurrency cap, raw submitit parameters), validated.
- :func:`make_executor`: a ``submitit.AutoExecutor`` with those options; an option submitit
  rejects becomes an :class:`ExecutorError` naming it, before anything is submitted.
- :func:`run_jobs`: submit Checkpointable callables as ONE job array (``submit_array``, with
  ``slurm_array_parallelism`` as the cap), or, on the local cluster (where submitit starts
  every job at once), at most ``array_parallelism`` at a time; poll them, calling back each
  poll (the callers merge results and refresh the progress display there).
- :class:`DirLock` (``mkdir``-based, atomic on NFS too, so merges are serialised even where
  ``flock`` is unreliable; a lock left by a dead process on the same host is taken over).
  Result files are written whole with ``quantbounds._files.atomic_write_bytes`` (temp +
  fsync + rename + fsync of the folder), the writer every result file goes through.
- :class:`JobProgress`: the queued / running / done / failed display.

Requeue on preemption or timeout is submitit's: the callables are
``submitit.helpers.Checkpointable``, so submitit pickles them again on SIGUSR2 and requeues
the job with the same arguments. The work they do is idempotent (results keyed by run_id or
cell), so a requeued job redoes at most its unfinished item.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

from quantbounds._files import atomic_write_bytes

EXECUTORS = ("local", "submitit")
CLUSTERS = ("slurm", "local")

try:  # the job callables subclass submitit's Checkpointable when submitit is installed
    from submitit.helpers import Checkpointable
except ImportError:  # pragma: no cover - exercised where submitit is absent

    class Checkpointable:  # type: ignore[no-redef]
        """Placeholder base when submitit is not installed (nothing can be submitted then)."""


class ExecutorError(RuntimeError):
    """An executor that cannot be used as asked (not installed, an option it rejects, ...)."""


def import_submitit():
    """The submitit module, or ExecutorError saying how to install it."""
    try:
        import submitit
    except ImportError as err:
        raise ExecutorError(
            "--executor submitit needs the 'submitit' package, which is not "
            f"installed ({err}); install it with `pip install submitit` or "
            "`pip install -e '.[cluster]'`"
        ) from err
    return submitit


# ------------------------------------------------------------------ scheduler options
SLURM_STATES_QUEUED = {
    "PENDING",
    "REQUEUED",
    "CONFIGURING",
    "SUSPENDED",
    "RESIZING",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "UNKNOWN",
    "READY",
}
SLURM_STATES_RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClusterOptions:
    """Where and how jobs run.

    cluster: "slurm" (sbatch job arrays) or "local" (submitit's local executor: the same jobs
    as local processes). partition, gpus_per_node, cpus_per_task, mem_gb, timeout_min: the
    usual SLURM requests (timeout_min also bounds a local job: submitit signals it to
    checkpoint before the end). array_parallelism: at most this many jobs at once (SLURM's
    ``%N`` array cap; emulated on the local cluster). extra: further submitit parameters by
    their AutoExecutor name, e.g. {"slurm_account": "lab", "slurm_qos": "high",
    "slurm_additional_parameters": {"reservation": "x"}}; submitit validates them.
    name: the job name.
    """

    cluster: str = "slurm"
    partition: str | None = None
    gpus_per_node: int | None = None
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    timeout_min: int = 60
    array_parallelism: int = 8
    extra: dict = dataclasses.field(default_factory=dict)
    name: str = "quantbounds"

    def __post_init__(self):
        if self.cluster not in CLUSTERS:
            raise ExecutorError(f"--cluster must be one of {CLUSTERS}, got {self.cluster!r}")
        for k in ("gpus_per_node", "cpus_per_task"):
            v = getattr(self, k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ExecutorError(f"{k} must be an integer ≥ 0, got {v!r}")
        for k in ("timeout_min", "array_parallelism"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ExecutorError(f"{k} must be an integer ≥ 1, got {v!r}")
        if self.mem_gb is not None and not (
            isinstance(self.mem_gb, (int, float)) and self.mem_gb > 0
        ):
            raise ExecutorError(f"mem_gb must be > 0, got {self.mem_gb!r}")
        if not isinstance(self.extra, dict):
            raise ExecutorError(f"extra submitit parameters must be a dict, got {self.extra!r}")

    @classmethod
    def from_mapping(cls, d: dict, *, where: str = "options") -> "ClusterOptions":
        """From a config table (e.g. a sweep TOML's ``[submitit]``); unknown keys name
        themselves."""
        known = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise ExecutorError(f"{where}: unknown key(s) {bad}; known: {sorted(known)}")
        return cls(**d)

    def merged(self, **flags) -> "ClusterOptions":
        """These options with the non-None ``flags`` on top (flags win over the config)."""
        upd = {k: v for k, v in flags.items() if v is not None}
        if "extra" in upd:
            upd["extra"] = {**self.extra, **upd["extra"]}
        return dataclasses.replace(self, **upd)


def parse_slurm_option(text: str) -> tuple[str, Any]:
    """'key=value' from the command line -> (submitit name, value), value parsed as JSON when
    it is JSON (numbers, lists, objects), else kept a string. 'qos=high' -> ('slurm_qos',
    'high'); a name that already has an executor prefix is kept."""
    if "=" not in text:
        raise ExecutorError(f"--slurm-option must be KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    k = k.strip().replace("-", "_")
    try:
        val = json.loads(v)
    except json.JSONDecodeError:
        val = v
    return (k if k.startswith(("slurm_", "local_")) else f"slurm_{k}"), val


def make_executor(opts: ClusterOptions, folder: str | os.PathLike):
    """A submitit AutoExecutor for ``opts`` logging under ``folder``; ExecutorError on an
    option submitit rejects (naming it) or a missing submitit."""
    submitit = import_submitit()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        ex = submitit.AutoExecutor(folder=folder, cluster=opts.cluster)
    except Exception as err:  # noqa: BLE001 - submitit raises several types
        hint = (
            " (use --cluster local to run the jobs as local processes)"
            if opts.cluster == "slurm"
            else ""
        )
        raise ExecutorError(
            f"submitit cannot make a {opts.cluster!r} executor: {err}{hint}"
        ) from err
    params: dict[str, Any] = {"name": opts.name, "timeout_min": int(opts.timeout_min)}
    if opts.gpus_per_node is not None:
        params["gpus_per_node"] = opts.gpus_per_node
    if opts.cpus_per_task is not None:
        params["cpus_per_task"] = opts.cpus_per_task
    if opts.mem_gb is not None:
        params["mem_gb"] = opts.mem_gb
    if opts.partition is not None:
        params["slurm_partition"] = opts.partition
    params["slurm_array_parallelism"] = opts.array_parallelism
    params.update(opts.extra)
    for k, v in params.items():  # one at a time, so the message names the rejected option
        try:
            ex.update_parameters(**{k: v})
        except (NameError, ValueError, TypeError, AssertionError) as err:
            raise ExecutorError(
                f"submitit rejects the option {k}={v!r}: "
                f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
            ) from err
    return ex


# ------------------------------------------------------------------ locks
class LockBusy(RuntimeError):
    """The lock is held by another live process."""


class DirLock:
    """An exclusive lock that is a directory: ``mkdir`` is atomic on local filesystems and on
    NFS, unlike ``flock`` on some shared filesystems. The holder's host and pid are written
    inside; a lock whose holder is a dead process on this host is taken over (renamed away
    first, and given back if what was renamed turns out to be another taker's fresh lock).
    A holder on another host that died leaves the lock for ``stale_s`` seconds (default 1 h).
    The merges it serialises (``real_runs.submit.merge_records``) rewrite the records file
    from a snapshot by set difference, so even two merges at once cannot duplicate a record;
    the lock keeps one from briefly dropping the other's additions.

        with DirLock(folder / "merge.lock", timeout_s=60):
            ...
    timeout_s: 0 = try once (LockBusy if held); None = wait forever.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        timeout_s: float | None = 60.0,
        poll_s: float = 0.05,
        stale_s: float = 3600.0,
    ):
        self.path = Path(path)
        self.timeout_s, self.poll_s, self.stale_s = timeout_s, poll_s, stale_s

    def _owner(self) -> dict | None:
        try:
            return json.loads((self.path / "owner.json").read_text())
        except (OSError, ValueError):
            return None

    def _stale(self) -> bool:
        own = self._owner()
        if own is None:  # being created right now, or its creator died before writing
            try:
                return time.time() - self.path.stat().st_mtime > 30
            except FileNotFoundError:
                return False
        if own.get("host") == socket.gethostname():
            try:
                os.kill(int(own["pid"]), 0)
                return False
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
        return time.time() - float(own.get("time", time.time())) > self.stale_s

    def acquire(self) -> None:
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                os.mkdir(self.path)
            except FileExistsError:
                judged = self._owner()
                if self._stale():
                    grave = self.path.with_name(f"{self.path.name}.stale.{uuid.uuid4().hex}")
                    try:
                        os.rename(self.path, grave)  # only one taker succeeds
                    except OSError:
                        continue
                    try:
                        now = json.loads((grave / "owner.json").read_text())
                    except (OSError, ValueError):
                        now = None
                    if now != judged:  # another taker got there first and this is its live
                        try:  # lock: give it back
                            os.rename(grave, self.path)
                        except OSError:
                            pass
                        continue
                    try:
                        for p in grave.iterdir():
                            p.unlink()
                        grave.rmdir()
                    except OSError:
                        pass
                    continue
                if deadline is not None and time.monotonic() >= deadline:
                    own = self._owner() or {}
                    raise LockBusy(
                        f"lock {self.path} is held by pid {own.get('pid', '?')} on "
                        f"{own.get('host', '?')}"
                    ) from None
                time.sleep(self.poll_s)
                continue
            atomic_write_bytes(
                self.path / "owner.json",
                json.dumps(
                    {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}
                ).encode(),
            )
            return

    def release(self) -> None:
        try:
            (self.path / "owner.json").unlink()
        except FileNotFoundError:
            pass
        try:
            self.path.rmdir()
        except OSError:
            pass

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


# ------------------------------------------------------------------ submitting and polling
@dataclasses.dataclass
class Slot:
    """One task of :func:`run_jobs`: its index, its job once submitted, and its end state."""

    index: int
    job: Any = None
    finished: bool = False


def job_phase(job: Any) -> str:
    """'queued', 'running' or 'ended' from a submitit job's state (SLURM or local)."""
    try:
        if job.done():
            return "ended"
    except Exception:  # noqa: BLE001 - sacct hiccups: treat as still queued
        return "queued"
    state = str(getattr(job, "state", "UNKNOWN")).split()[0].upper()
    if state in SLURM_STATES_RUNNING:
        return "running"
    if state in SLURM_STATES_QUEUED:
        return "queued"
    return "running" if state == "RUNNING" else "queued"


def job_failure(job: Any) -> str:
    """Why a job ended (its exception, else the last lines of its stderr), for messages."""

    def first_line(e):  # submitit's messages put the summary first, then logs/tracebacks
        lines = [ln.strip() for ln in str(e).splitlines() if any(ch.isalnum() for ch in ln)]
        return lines[0] if lines else type(e).__name__

    why = ""
    try:
        exc = job.exception()
        if exc is not None:
            why = first_line(exc)
    except Exception as err:  # noqa: BLE001 - e.g. UncompletedJobError for a killed job
        why = first_line(err)
    try:
        tail = (job.stderr() or "").strip().splitlines()[-3:]
    except Exception:  # noqa: BLE001
        tail = []
    log = getattr(getattr(job, "paths", None), "stderr", None)
    parts = [f"job {getattr(job, 'job_id', '?')} ({getattr(job, 'state', '?')})"]
    if why:
        parts.append(why)
    if tail:
        parts.append("stderr: " + " | ".join(tail))
    if log is not None:
        parts.append(f"log {log}")
    return "; ".join(parts)


def run_jobs(
    executor: Any,
    tasks: Sequence[Callable[[], Any]],
    *,
    cluster: str,
    array_parallelism: int,
    poll_s: float = 1.0,
    on_poll: Callable[[list[Slot]], None] | None = None,
    on_submit: Callable[[list[Slot]], None] | None = None,
) -> list[Slot]:
    """Run no-argument callables as submitit jobs and wait for all of them.

    SLURM: one job array (``executor.submit_array``), at most ``array_parallelism`` running
    at once (submitit's ``slurm_array_parallelism``, already set by :func:`make_executor`).
    Local: submitit starts each local job at once, so at most ``array_parallelism`` are
    submitted at a time, more as they end. ``on_submit(slots)`` after each submission,
    ``on_poll(slots)`` every ``poll_s`` seconds and once at the end. Returns the slots (each
    with its job); whether a job did its work is for the caller to check (its result files).
    """
    slots = [Slot(i) for i in range(len(tasks))]
    if not slots:
        return slots
    if cluster == "slurm":
        try:
            jobs = executor.submit_array(list(tasks))
        except FileNotFoundError as err:
            raise ExecutorError(
                f"cannot submit to SLURM: {err} (is this a SLURM login node? "
                "use --cluster local to run the jobs here)"
            ) from err
        except Exception as err:  # noqa: BLE001 - sbatch rejected the request
            raise ExecutorError(f"SLURM rejected the job array: {err}") from err
        for s, j in zip(slots, jobs):
            s.job = j
        if on_submit:
            on_submit(slots)
    waiting = list(slots) if cluster != "slurm" else []
    while True:
        live = 0
        for s in slots:
            if s.job is not None and not s.finished:
                if job_phase(s.job) == "ended":
                    s.finished = True
                else:
                    live += 1
        new = []
        while waiting and live < array_parallelism:
            s = waiting.pop(0)
            s.job = executor.submit(tasks[s.index])
            new.append(s)
            live += 1
        if new and on_submit:
            on_submit(slots)
        if on_poll:
            on_poll(slots)
        if not waiting and all(s.finished for s in slots):
            return slots
        time.sleep(poll_s)


class JobProgress:
    """A one-line live display: ``name  queued Q · running R · done D · failed F  [elapsed]``
    (rich), refreshed by :meth:`update`; a no-op when disabled."""

    def __init__(self, name: str, total: int, *, enabled: bool = True, console=None):
        self.enabled, self.total = enabled, total
        self._prog = None
        if enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._prog = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TextColumn("{task.fields[counts]}"),
                TimeElapsedColumn(),
                console=console,
                transient=False,
            )
            self._task = self._prog.add_task(name, total=total, counts="")

    def update(self, *, queued: int, running: int, done: int, failed: int) -> None:
        self.counts = {"queued": queued, "running": running, "done": done, "failed": failed}
        if self._prog is not None:
            self._prog.update(
                self._task,
                completed=done,
                counts=f"queued {queued} · running {running} · done {done} · failed {failed}",
            )

    def __enter__(self):
        if self._prog is not None:
            try:
                self._prog.start()
            except Exception:  # noqa: BLE001 - rich.errors.LiveError: another live display
                self._prog = None  # (e.g. validate's own bars) is showing; stay quiet
        return self

    def __exit__(self, *exc):
        if self._prog is not None:
            self._prog.stop()
