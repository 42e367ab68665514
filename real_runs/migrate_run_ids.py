"""Rewrite records files to the portable run identity: the dataset by content, not by path.

    python -m real_runs.migrate_run_ids FILE [FILE ...] [--check] [--verbose]

Run ids used to hash the RESOLVED ABSOLUTE dataset path (``config["dataset_path"]``, e.g.
``/root/.pyenv/…/site-packages/chitchat_dataset/dataset.json``), so another Python install got
other ids for the same runs and a resumed sweep re-ran everything. The identity now holds
``dataset`` = how the data is parsed (``real_runs.data.dataset_loader``) and ``dataset_sha256`` =
the SHA-256 of its bytes (``real_runs.data.digest_dataset``). For each record this recomputes the
id from what the record itself says ran — its ``config`` (the identity its run_id hashes), with
the dataset path replaced by the digest of the file it names if that exists here, else of the
built-in dataset of the same name ("chitchat", "chatterbot"; "dailydialog" →
``$QUANTBOUNDS_DAILYDIALOG``); a record whose dataset cannot be found is an error naming it.

Record kinds, told apart by which identity hashes to the stored run_id:

- path identity (config holds ``dataset_path``): migrated — new ``run_id`` and ``config``, adds
  ``dataset_sha256`` and ``previous_run_id`` (the old id), keeps ``dataset_path`` (where it was
  read from, as information);
- portable identity (config holds ``dataset_sha256``): already current, left as is;
- legacy identity (the raw, unresolved config hashed before canonical ids; no dataset path in
  it, e.g. results/runs_embedded.jsonl): nothing machine-specific enters the id and the fields it
  would need (the embedded model's key, the resolved N) are not in the record, so it is left as is.

PTQ records (quantbounds.ptq/1, ``<stem>.ptq.jsonl`` beside the run records, as the sweep writes
them) hash ``{"ptq_of_config": <fp16 run's identity>, scheme, bits, draw[, ptq_eval_tokens,
curvature_windows]}`` (the last two since PTQ evaluated on a token budget). A PTQ file is always
migrated together with its run file: the parent's old and new identities give the PTQ record's
new id (its form, and the ptq_eval_tokens / curvature_windows it used, recovered by matching the
stored id), and ``ptq_of`` becomes the parent's new id. Giving either file of the pair migrates
both.

Nothing is written unless every record of every file given could be migrated. Files are
rewritten atomically (temporary file + ``os.replace``), unchanged lines byte for byte, lines that
are not valid records (a torn last line) kept as they were. Running it twice changes nothing.
``--check`` reports what would change without writing (exit 1 if anything would).
Exit status 2: a record could not be migrated (each one named on stderr).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
from pathlib import Path

from quantbounds._files import atomic_write_bytes
from quantbounds.calib.records import (
    PTQ_SCHEMA,
    SCHEMA,
    RecordError,
    run_id,
    validate_ptq_record,
    validate_record,
)


class MigrationError(ValueError):
    """A record whose new run id cannot be computed from what it says."""


def legacy_run_id(config: dict) -> str:
    """The run id before canonical identities (the raw config, sorted-key JSON, sha1, 16 hex)."""
    return hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def ptq_sibling(path: Path) -> tuple[Path, Path]:
    """(run records file, PTQ records file) of the pair ``path`` belongs to."""
    from real_runs.sweep import ptq_path

    stem = path.stem
    if stem.endswith(".ptq"):
        runs = path.with_name(stem[: -len(".ptq")] + path.suffix)
        if ptq_path(runs) == path:
            return runs, path
    return path, ptq_path(path)


def _ptq_budget_defaults() -> tuple[list[int], list[int]]:
    from real_runs.finetune import FinetuneConfig

    f = {x.name: x.default for x in dataclasses.fields(FinetuneConfig)}
    # the current default first, then the budgets earlier defaults and sweeps used (8,000: the
    # default before 16,000; 24,000: embedded.toml before 16,000)
    return list(dict.fromkeys([f["ptq_eval_tokens"], 8_000, 24_000])), [f["curvature_windows"]]


class Migrator:
    """Computes new identities; the dataset digests are computed once per location."""

    def __init__(self, *, ptq_eval_tokens=(), curvature_windows=()):
        pet, cw = _ptq_budget_defaults()
        self.ptq_eval_tokens = list(dict.fromkeys([*ptq_eval_tokens, *pet]))
        self.curvature_windows = list(dict.fromkeys([*curvature_windows, *cw]))
        self._ident: dict = {}

    # --- the dataset ---------------------------------------------------------------------------

    def dataset_identity(self, spec: str, location: str, where: str) -> dict:
        """{dataset, dataset_sha256} of the data a record names: ``location`` if it exists here,
        else the built-in dataset called ``spec``; MigrationError naming ``where`` otherwise."""
        from real_runs import data as D

        key = (spec, location)
        if key in self._ident:
            return self._ident[key]
        if location.startswith(D.HUB_PREFIX):
            out = D.dataset_identity(spec, location)
        else:
            here = location if Path(location).exists() else self._builtin(spec)
            if here is None:
                raise MigrationError(
                    f"{where}: its dataset {spec!r} was read from {location!r}, which does not "
                    f"exist here, and {spec!r} is not a built-in dataset found on this machine "
                    f"('chitchat', 'chatterbot', or 'dailydialog' with ${D.DAILYDIALOG_ENV} set); "
                    f"put the file at that path and rerun"
                )
            out = D.dataset_identity(spec, here)
        self._ident[key] = out
        return out

    @staticmethod
    def _builtin(spec: str) -> str | None:
        from real_runs import data as D

        if spec not in ("chitchat", "chatterbot", "dailydialog"):
            return None
        try:
            loc = D.resolve_dataset(spec)
        except D.DataError:
            return None
        return loc if Path(loc).exists() else None

    def new_config(self, config: dict, where: str) -> dict:
        """The portable identity of a path identity: dataset_path → (dataset loader, SHA-256)."""
        new = dict(config)
        location = new.pop("dataset_path")
        if not isinstance(location, str) or not isinstance(new.get("dataset"), str):
            raise MigrationError(f"{where}: config needs string 'dataset' and 'dataset_path'")
        new.update(self.dataset_identity(new["dataset"], location, where))
        return new

    # --- PTQ identities -------------------------------------------------------------------------

    def ptq_forms(self, rec: dict, parent_config: dict):
        """Every identity a PTQ record of this parent may have been hashed from."""
        base = {
            "ptq_of_config": parent_config,
            "scheme": rec["ptq_scheme"],
            "bits": rec["bits"],
            "draw": rec["ptq_draw"],
        }
        yield base
        for pet in self.ptq_eval_tokens:
            for cw in self.curvature_windows:
                yield {**base, "ptq_eval_tokens": pet, "curvature_windows": cw}


@dataclasses.dataclass
class Parent:
    """An fp16 run as PTQ records see it: its identity before and after migration."""

    old_config: dict | None  # None: unknown (a current record that was never migrated)
    new_config: dict | None  # None: a legacy record (left as is)
    new_id: str


@dataclasses.dataclass
class FileResult:
    path: Path
    lines: list[str]
    changed: bool = False
    counts: dict = dataclasses.field(
        default_factory=lambda: {"migrated": 0, "current": 0, "legacy": 0, "unreadable": 0}
    )
    renames: list = dataclasses.field(default_factory=list)  # (old id, new id)
    duplicates: int = 0


def _read_lines(path: Path) -> list[str]:
    with path.open("r", encoding="utf-8", errors="surrogateescape", newline="") as f:
        return f.readlines()


def _dump(rec: dict, original_line: str) -> str:
    return json.dumps(rec, sort_keys=True, allow_nan=False) + (
        "\n" if original_line.endswith("\n") else ""
    )


def _parse(line: str, validate):
    try:
        return validate(json.loads(line))
    except (json.JSONDecodeError, RecordError):
        return None


def _records(res: "FileResult", path: Path, mine, other, errors: list[str]):
    """(line index, record) of the lines of ``res`` that validate as ``mine`` = (validator,
    schema); a line of the ``other`` schema is an error, any other bad line is counted
    unreadable (and kept as it is)."""
    for i, line in enumerate(res.lines):
        if not line.strip():
            continue
        rec = _parse(line, mine[0])
        if rec is None:
            if _parse(line, other[0]) is not None:
                errors.append(f"{path}:{i + 1}: a {other[1]} record in a {mine[1]} file")
            res.counts["unreadable"] += 1
            continue
        yield i, rec


def migrate_runs(path: Path, m: Migrator, errors: list[str]) -> tuple[FileResult, dict]:
    """Migrate a run records file in memory: (result, {every id a parent is known by: Parent})."""
    res = FileResult(path, _read_lines(path))
    parents: dict[str, Parent] = {}
    seen: dict[str, int] = {}
    for i, rec in _records(res, path, (validate_record, SCHEMA), (validate_ptq_record, PTQ_SCHEMA),
                           errors):
        where = f"{path}:{i + 1} (run {rec['run_id']})"
        try:
            kind, new, parent = _migrate_run(rec, m, where)
        except MigrationError as err:
            errors.append(str(err))
            continue
        for rid in {rec["run_id"], new["run_id"], new.get("previous_run_id")} - {None}:
            parents[rid] = parent
        _apply(res, i, kind, rec, new, seen)
    res.duplicates = sum(n - 1 for n in seen.values())
    return res, parents


def _apply(res: "FileResult", i: int, kind: str, rec: dict, new: dict, seen: dict) -> None:
    """Count line i's outcome and put its migrated record in place (the line is rewritten only
    when the record changed); ``seen`` counts the new ids, for the duplicate check."""
    res.counts[kind] += 1
    if new != rec:
        res.lines[i] = _dump(new, res.lines[i])
        res.changed = True
        if new["run_id"] != rec["run_id"]:
            res.renames.append((rec["run_id"], new["run_id"]))
    seen[new["run_id"]] = seen.get(new["run_id"], 0) + 1


def _migrate_run(rec: dict, m: Migrator, where: str) -> tuple[str, dict, Parent]:
    cfg = rec.get("config")
    rid = rec["run_id"]
    if not isinstance(cfg, dict):
        raise MigrationError(f"{where}: no 'config' (the identity its run_id hashes)")
    if "dataset_sha256" in cfg:  # portable identity: current
        if run_id(cfg) != rid:
            raise MigrationError(f"{where}: its config does not hash to its run_id")
        new = dict(rec)
        new.setdefault("dataset_sha256", cfg["dataset_sha256"])
        old_cfg = _reconstruct_old(new)
        return "current", new, Parent(old_cfg, cfg, rid)
    if "dataset_path" in cfg:  # path identity: migrate
        if run_id(cfg) != rid:
            raise MigrationError(f"{where}: its config does not hash to its run_id")
        new_cfg = m.new_config(cfg, where)
        new = {
            **rec,
            "run_id": run_id(new_cfg),
            "config": new_cfg,
            "dataset_sha256": new_cfg["dataset_sha256"],
            "dataset_path": rec.get("dataset_path") or cfg["dataset_path"],
            "previous_run_id": rid,
        }
        return "migrated", new, Parent(cfg, new_cfg, new["run_id"])
    if legacy_run_id(cfg) == rid:  # legacy identity: nothing of the machine in it
        return "legacy", rec, Parent(None, None, rid)
    raise MigrationError(
        f"{where}: its run_id matches no known identity of its config (neither a path, a "
        f"portable nor a legacy identity)"
    )


def _reconstruct_old(rec: dict) -> dict | None:
    """The path identity a migrated record had (checked against previous_run_id), else None."""
    prev = rec.get("previous_run_id")
    if not prev or not isinstance(rec.get("dataset_path"), str):
        return None
    old = {k: v for k, v in rec["config"].items() if k != "dataset_sha256"}
    old["dataset"], old["dataset_path"] = rec["dataset"], rec["dataset_path"]
    return old if run_id(old) == prev else None


def migrate_ptq(path: Path, parents: dict, runs_path: Path, m: Migrator, errors: list[str]):
    """Migrate a PTQ records file in memory against its run file's parents."""
    res = FileResult(path, _read_lines(path))
    seen: dict[str, int] = {}
    for i, rec in _records(res, path, (validate_ptq_record, PTQ_SCHEMA), (validate_record, SCHEMA),
                           errors):
        where = f"{path}:{i + 1} (PTQ record {rec['run_id']}, ptq_of {rec.get('ptq_of')})"
        try:
            kind, new = _migrate_ptq_rec(rec, parents, runs_path, m, where)
        except MigrationError as err:
            errors.append(str(err))
            continue
        _apply(res, i, kind, rec, new, seen)
    res.duplicates = sum(n - 1 for n in seen.values())
    return res


def _migrate_ptq_rec(rec, parents, runs_path, m, where) -> tuple[str, dict]:
    of = rec.get("ptq_of")
    if of is not None:
        cands = [parents[of]] if of in parents else []
    else:  # written before ptq_of existed: the parent is found by the hash
        cands = list({id(p): p for p in parents.values()}.values())
    if not cands:
        raise MigrationError(f"{where}: its fp16 run is not in {runs_path}")
    for p in cands:
        if p.new_config is None:  # the parent is legacy: so is its PTQ identity
            if of is not None:
                return "legacy", rec
            continue
        for ident in m.ptq_forms(rec, p.new_config):
            if run_id(ident) == rec["run_id"]:  # already current
                new = {**rec, "ptq_of": p.new_id}
                new.setdefault("dataset_sha256", p.new_config["dataset_sha256"])
                return "current", new
        if p.old_config is None:
            continue
        for ident in m.ptq_forms(rec, p.old_config):
            if run_id(ident) == rec["run_id"]:
                new_ident = dict(ident, ptq_of_config=p.new_config)
                return "migrated", {
                    **rec,
                    "run_id": run_id(new_ident),
                    "ptq_of": p.new_id,
                    "dataset_sha256": p.new_config["dataset_sha256"],
                    "previous_run_id": rec["run_id"],
                }
    raise MigrationError(
        f"{where}: its run_id matches no PTQ identity of its fp16 run in {runs_path} (tried "
        f"without and with ptq_eval_tokens ∈ {m.ptq_eval_tokens}, curvature_windows ∈ "
        f"{m.curvature_windows}; pass the sweep's values with --ptq-eval-tokens / "
        f"--curvature-windows)"
    )


def migrate_files(
    files, *, check: bool = False, ptq_eval_tokens=(), curvature_windows=()
) -> tuple[list[FileResult], list[str]]:
    """Migrate the files (each with its run/PTQ partner); write them unless ``check`` or any
    record failed. Returns (one result per file, error messages)."""
    m = Migrator(ptq_eval_tokens=ptq_eval_tokens, curvature_windows=curvature_windows)
    pairs: dict = {}
    errors: list[str] = []
    for f in files:
        f = Path(f)
        if not f.is_file():
            errors.append(f"records file not found: {f}")
            continue
        runs, ptq = ptq_sibling(f)
        if f == ptq and not runs.is_file():
            errors.append(f"{ptq}: PTQ records need their fp16 run records, {runs} not found")
            continue
        pairs[(runs.resolve(), ptq.resolve())] = (runs, ptq)
    results = []
    for runs, ptq in pairs.values():
        r, parents = migrate_runs(runs, m, errors)
        results.append(r)
        if ptq.is_file():
            results.append(migrate_ptq(ptq, parents, runs, m, errors))
    if not errors and not check:
        for r in sorted(results, key=lambda r: not r.path.name.endswith(".ptq.jsonl")):
            if r.changed:
                atomic_write_bytes(r.path, "".join(r.lines).encode("utf-8", "surrogateescape"),
                                   keep_mode=True)
    return results, errors


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m real_runs.migrate_run_ids",
        description="Rewrite run ids to the portable identity (dataset by SHA-256, not path).",
    )
    ap.add_argument("files", nargs="+", metavar="FILE", help="run or PTQ records (JSONL)")
    ap.add_argument("--check", action="store_true", help="report only; exit 1 if any would change")
    ap.add_argument("--verbose", "-v", action="store_true", help="print every old → new id")
    ap.add_argument(
        "--ptq-eval-tokens",
        type=int,
        action="append",
        default=[],
        metavar="N",
        help="a ptq_eval_tokens value PTQ ids may hold (besides the default)",
    )
    ap.add_argument(
        "--curvature-windows",
        type=int,
        action="append",
        default=[],
        metavar="N",
        help="a curvature_windows value PTQ ids may hold (besides the default)",
    )
    a = ap.parse_args(argv)
    for name in ("ptq_eval_tokens", "curvature_windows"):
        bad = [v for v in getattr(a, name) if v < 1]
        if bad:
            ap.error(f"--{name.replace('_', '-')} must be ≥ 1, got {bad[0]}")
    results, errors = migrate_files(
        a.files,
        check=a.check,
        ptq_eval_tokens=a.ptq_eval_tokens,
        curvature_windows=a.curvature_windows,
    )
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    for r in results:
        c = r.counts
        n = c["migrated"] + c["current"] + c["legacy"]
        print(
            f"{r.path}: {n} records — {c['migrated']} old→new ids, {c['current']} already "
            f"current, {c['legacy']} legacy (kept); {c['unreadable']} unreadable lines kept"
            + (f"; {r.duplicates} repeated ids" if r.duplicates else "")
            + ("" if not r.changed else " — would rewrite" if a.check or errors else " — rewritten")
        )
        if a.verbose:
            for old, new in r.renames:
                print(f"  {old} → {new}")
    if errors:
        print(f"nothing written: {len(errors)} record(s) could not be migrated", file=sys.stderr)
        return 2
    return 1 if a.check and any(r.changed for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
