"""Resumable sweeps: a TOML grid of fine-tunes, one record line per finished run.

Config format (``real_runs/configs/*.toml``)::

    [sweep]                       # optional metadata
    name = "embedded"
    description = "..."

    [defaults]                    # any FinetuneConfig field, applied to every run
    model = "embedded"
    steps = 120

    [[grid]]                      # a block: list values are crossed (Cartesian product),
    arm = ["fp16", "base_int8"]   # scalars are fixed; keys are FinetuneConfig fields
    rank = [4, 16, 64]
    seed = [0, 1]
    ptq_bits = [2, 3, 4]          # a list-valued field (LIST_FIELDS): a flat list fixes it,
                                  # a list of lists sweeps it

Runs = the union over blocks, de-duplicated by run_id in config order. Every run's
configuration is validated before the first one starts, so a typo fails in a second, not
after an hour; an unknown key anywhere is an error naming it.

PTQ: an fp16 run with ``ptq = true`` also writes its post-training-quantization records
(quantbounds.ptq/1) to ``ptq_path(out)`` (``<stem>.ptq.jsonl``); it counts as done when its run
record and all its PTQ records are there. A run that has its record but not every PTQ record
(its PTQ settings changed) is trained again and :func:`supersede` makes the files say what
ran: the new run record in place of the old one, the run's PTQ records from other settings
moved out; every line replaced is kept in ``<file>.superseded.jsonl`` beside it.

Resume: the out file is the state. Runs whose run_id has a good record there are skipped;
a torn last line (``kill -9`` during the write) fails the schema check in ``read_records``,
so that run is simply re-run and its new line starts on a fresh line (``append_record``).
Each record is one ``write`` + ``fsync`` on an O_APPEND descriptor, so no finished run is
lost and none is written twice. An exclusive ``flock`` on ``<out>.lock`` stops two sweeps
from writing the same file at once.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import sys
import tomllib
from contextlib import contextmanager
from pathlib import Path


from quantbounds._files import atomic_write_bytes
from quantbounds.calib.records import (
    RecordError,
    append_lines,
    append_record,
    completed_ids,
    read_ptq_records,
    read_records,
    validate_ptq_record,
    validate_record,
)
from real_runs.finetune import LIST_FIELDS, FinetuneConfig

TOP_KEYS = ("sweep", "defaults", "grid", "submitit")  # [submitit]: real_runs.submit
SWEEP_KEYS = ("name", "description")


class SweepConfigError(ValueError):
    """A sweep TOML that cannot be expanded into valid runs."""


def load_config(path: str | os.PathLike) -> dict:
    """Parse a sweep TOML file; FileNotFoundError / SweepConfigError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep config not found: {path}")
    try:
        with path.open("rb") as f:
            cfg = tomllib.load(f)
    except tomllib.TOMLDecodeError as err:
        raise SweepConfigError(f"{path}: not valid TOML: {err}") from err
    unknown = sorted(set(cfg) - set(TOP_KEYS))
    if unknown:
        raise SweepConfigError(
            f"{path}: unknown top-level key(s) {unknown}; allowed: {list(TOP_KEYS)}"
        )
    bad = sorted(set(cfg.get("sweep", {})) - set(SWEEP_KEYS))
    if bad:
        raise SweepConfigError(
            f"{path}: unknown key(s) {bad} in [sweep]; allowed: {list(SWEEP_KEYS)}"
        )
    if not isinstance(cfg.get("grid", []), list) or not cfg.get("grid"):
        raise SweepConfigError(f"{path}: needs at least one [[grid]] block")
    return cfg


def ptq_run_defaults(path: str | os.PathLike) -> dict:
    """The settings of a sweep's PTQ runs: its ``[defaults]`` with the scalar ``ptq_*`` keys of
    its first ``ptq = true`` grid block over them (e.g. PTQ on the whole held-out set), for
    running one such run outside the sweep (the benchmark, the second-order probe)."""
    cfg = load_config(path)
    block = next((g for g in cfg["grid"] if g.get("ptq")), {})
    return {**cfg.get("defaults", {}),
            **{k: v for k, v in block.items() if k.startswith("ptq_") and not isinstance(v, list)}}


def expand(
    cfg: dict, *, where: str = "config", overrides: dict | None = None
) -> list[FinetuneConfig]:
    """All runs of a parsed config, validated, de-duplicated by run_id (first occurrence kept)."""
    import dataclasses

    known = {f.name for f in dataclasses.fields(FinetuneConfig)}
    defaults = dict(cfg.get("defaults", {}))
    bad = sorted(set(defaults) - known)
    if bad:
        raise SweepConfigError(
            f"{where}: unknown key(s) {bad} in [defaults]; known: {sorted(known)}"
        )
    runs, seen = [], {}
    for i, block in enumerate(cfg["grid"]):
        bad = sorted(set(block) - known)
        if bad:
            raise SweepConfigError(
                f"{where}: unknown key(s) {bad} in [[grid]] block {i + 1}; known: {sorted(known)}"
            )
        # a list-valued field (LIST_FIELDS) is fixed by a flat list, swept by a list of lists
        axes = {
            k: v
            for k, v in block.items()
            if isinstance(v, list)
            and not (k in LIST_FIELDS and not (v and isinstance(v[0], list)))
        }
        fixed = {k: v for k, v in block.items() if k not in axes}
        for combo in itertools.product(*axes.values()):
            d = {**defaults, **fixed, **dict(zip(axes, combo)), **(overrides or {})}
            try:
                rc = FinetuneConfig.from_dict(d)
            except (TypeError, ValueError) as err:
                raise SweepConfigError(f"{where}: [[grid]] block {i + 1}, run {d}: {err}") from err
            rid = rc.run_id
            if rid not in seen:
                seen[rid] = len(runs)
                runs.append(rc)
            elif rc.ptq and not runs[seen[rid]].ptq:
                runs[seen[rid]] = rc  # the same fp16 run, now also with its PTQ measurements
    return runs


def ptq_path(out: str | os.PathLike) -> Path:
    """Where a sweep writing ``out`` puts the PTQ records: ``<stem>.ptq<suffix>`` beside it."""
    out = Path(out)
    return out.with_name(out.stem + ".ptq" + (out.suffix or ".jsonl"))


def superseded_path(path: str | os.PathLike) -> Path:
    """Where :func:`supersede` keeps the lines it replaces in ``path``: ``<stem>.superseded<suffix>``."""
    path = Path(path)
    return path.with_name(path.stem + ".superseded" + (path.suffix or ".jsonl"))


def _lines(path: Path, validate) -> list[tuple[str, dict | None]]:
    """(line, record or None) of every non-blank line (None: not a valid record — a torn line)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="surrogateescape").splitlines(True):
        if not line.strip():
            continue
        try:
            rec = validate(json.loads(line))
        except (json.JSONDecodeError, RecordError):
            rec = None
        out.append((line if line.endswith("\n") else line + "\n", rec))
    return out


def supersede(out: str | os.PathLike, rec: dict, ptq_recs: list[dict]) -> dict:
    """Make ``out`` hold ``rec`` as its run's record and ``ptq_path(out)`` hold ``ptq_recs``
    as that run's PTQ records, for a run measured again (its PTQ settings changed, or a
    re-measure on another machine: float32 training is chaotic, so the old record and the new
    PTQ records could describe different trained adapters).

    In ``out`` the first line with ``rec``'s run_id is replaced by ``rec`` (further lines of
    that id dropped; ``rec`` appended if there is none); in the PTQ file the run's records
    (``ptq_of`` = its id) whose ids are not among ``ptq_recs``' are dropped, and ``ptq_recs``
    replace or join the rest. Every line dropped or replaced is first appended to
    :func:`superseded_path` of its file (nothing is lost); lines that are not valid records
    (a torn line) stay where they are. Each file is rewritten atomically, the run file first:
    a crash between the two leaves the run record new and a PTQ record missing, so the run is
    pending again and redone. Returns {"runs": lines replaced, "ptq": PTQ lines superseded}.
    """
    out = Path(out)
    rid = rec["run_id"]
    new_ids = {p["run_id"] for p in ptq_recs}
    new_by_id = {p["run_id"]: p for p in ptq_recs}

    def dump(r):
        return json.dumps(r, sort_keys=True, allow_nan=False) + "\n"

    run_lines = _lines(out, validate_record)
    kept, gone, placed = [], [], False
    for line, r in run_lines:
        if r is not None and r["run_id"] == rid:
            gone.append(r)
            if not placed:
                kept.append(dump(validate_record(rec)))
                placed = True
            continue
        kept.append(line)
    if not placed:
        kept.append(dump(validate_record(rec)))
    pp = ptq_path(out)
    pkept, pgone, seen = [], [], set()
    for line, r in _lines(pp, validate_ptq_record):
        if r is not None and r["run_id"] in new_ids:
            if r["run_id"] not in seen:
                pkept.append(dump(new_by_id[r["run_id"]]))
                seen.add(r["run_id"])
            if r != new_by_id[r["run_id"]]:
                pgone.append(r)
            continue
        if r is not None and r.get("ptq_of") == rid:
            pgone.append(r)
            continue
        pkept.append(line)
    pkept += [dump(validate_ptq_record(p)) for p in ptq_recs if p["run_id"] not in seen]
    append_lines(superseded_path(out), gone)
    append_lines(superseded_path(pp), pgone)
    atomic_write_bytes(out, "".join(kept).encode("utf-8", "surrogateescape"))
    if ptq_recs or pgone:
        atomic_write_bytes(pp, "".join(pkept).encode("utf-8", "surrogateescape"))
    return {"runs": len(gone), "ptq": len(pgone)}


@contextmanager
def _exclusive(out: Path):
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(f"{out}.lock", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise RuntimeError(f"another sweep is writing {out} (lock {out}.lock is held)") from err
        yield
    finally:
        os.close(fd)


def pending(
    runs: list[FinetuneConfig], out: str | os.PathLike
) -> tuple[list[FinetuneConfig], list]:
    """(runs without a good record in ``out`` — or, with ptq, without every one of their PTQ
    records in ``ptq_path(out)`` —, [(line, reason)] of the corrupt lines of ``out``).

    A PTQ record counts by its id (``real_runs.finetune.ptq_record_ids``), which hashes the
    PTQ settings that change the measurement (ptq_eval_tokens, curvature_windows) besides the
    cell: records measured under other settings leave the run pending. Such a run is trained
    again for its PTQ records, and :func:`supersede` replaces its run record and moves its
    PTQ records of other settings out."""
    from real_runs.finetune import ptq_record_ids

    out = Path(out)
    done, errors = set(), []
    if out.exists():
        res = read_records(out)
        done, errors = {r["run_id"] for r in res.records}, res.errors
    have = {r["run_id"] for r in read_ptq_records(ptq_path(out)).records} if any(
        r.ptq for r in runs) else set()
    todo = [r for r in runs if r.run_id not in done or not ptq_record_ids(r) <= have]
    return todo, errors


def run_sweep(
    config_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    limit: int | None = None,
    keep_going: bool = False,
    overrides: dict | None = None,
    progress: bool = True,
    log=print,
    executor: str = "local",
    cluster_flags: dict | None = None,
    results_dir: str | os.PathLike | None = None,
    poll_s: float | None = None,
) -> dict:
    """Run every pending run of a sweep config, appending one record per finished run.

    limit: stop after this many new runs (None = all). keep_going: log a failing run and go
    on (it stays pending). Returns counts {"total", "skipped", "done", "failed"}.
    executor="submitit": the pending runs as submitit jobs (``real_runs.submit``; cluster_flags
    and results_dir go there).
    """
    if executor == "submitit":
        from real_runs.submit import run_sweep_submitit

        return run_sweep_submitit(
            config_path,
            out,
            options=cluster_flags,
            results_dir=results_dir,
            limit=limit,
            overrides=overrides,
            progress=progress,
            log=log,
            poll_s=poll_s,
        )
    from real_runs.finetune import run_finetune

    cfg = load_config(config_path)
    runs = expand(cfg, where=str(config_path), overrides=overrides)
    out = Path(out)
    with _exclusive(out):
        todo, errors = pending(runs, out)
        for line, why in errors:
            log(f"warning: {out}:{line}: skipped a corrupt record ({why}); its run will be redone")
        skipped = len(runs) - len(todo)
        if limit is not None:
            todo = todo[:limit]
        counts = {"total": len(runs), "skipped": skipped, "done": 0, "failed": 0}
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(
                total=len(runs),
                initial=skipped,
                desc=cfg.get("sweep", {}).get("name", "sweep"),
                unit="run",
                file=sys.stderr,
            )
        try:
            for rc in todo:
                if bar is not None:
                    bar.set_postfix_str(f"{rc.arm} r={rc.rank} b={rc.bits} seed={rc.seed}")
                try:
                    rec, ptq_recs = run_finetune(rc, return_ptq=True)
                except Exception as err:  # noqa: BLE001 - reported, run stays pending
                    if not keep_going:
                        raise
                    counts["failed"] += 1
                    log(
                        f"error: run {rc.run_id} ({rc.arm}, r={rc.rank}, b={rc.bits}) failed: {err!r}"
                    )
                    continue
                if rec["run_id"] in completed_ids(out):
                    # measured again (its PTQ records were missing): the files say what ran
                    n = supersede(out, rec, ptq_recs)
                    log(f"run {rec['run_id']} measured again: its old record and "
                        f"{n['ptq']} PTQ record(s) of other settings moved to "
                        f"{superseded_path(out).name} / {superseded_path(ptq_path(out)).name}")
                else:
                    if ptq_recs:  # PTQ lines first (one write), then the run: a crash in
                        # between leaves the run pending, and its redo supersedes them
                        have = {r["run_id"] for r in read_ptq_records(ptq_path(out)).records}
                        append_lines(ptq_path(out),
                                     [p for p in ptq_recs if p["run_id"] not in have])
                    append_record(out, rec)
                counts["done"] += 1
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
    return counts
