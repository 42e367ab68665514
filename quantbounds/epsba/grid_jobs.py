"""A Monte Carlo grid's cells as independent jobs, merged into ``simulate_grid``'s result.

    grid = simulate_grid_jobs(key, m=4096, n=4096, ranks=[16, 64, 256], bits=[2, 4, 8],
                              n_samples=256, executor="submitit", cluster="slurm",
                              folder="/shared/qb-grid", n_jobs=9,
                              options={"gpus_per_node": 1, "partition": "gpu"})

Why it is exact. ``simulate_grid`` keys sample t of cell c (c = rank index · n_bits + bit
index) by fold_in(fold_in(k_noise, c), t) (``units.sample_keys``), pads a rank to a width
that depends on that rank alone ("pow2") or on the grid's largest rank ("max"), and draws
the factors once at the grid's largest rank. A job here recomputes the same factors, pads
its ranks the same way and runs its cells through the same engine call
(``units.run_additive`` with the cells' global ids; ``run_real`` per rank, whose cells are
its bit-widths), so each cell's per-sample terms are the ones the single process computes.
Jobs write those per-sample terms (the finest partial sums: an (n_samples, 4) array per
cell, float64 or float32 as the engine made them); the merge stacks them in the grid's
order and reduces them with ``montecarlo.grid_result``, the single process's own
reduction, in the same order. So the merged grid equals ``simulate_grid``'s bit for bit whenever the
jobs run on the same kind of device as the single process (tests/epsba/test_grid_jobs.py checks
it, float32 and float64, both paddings, additive and real mode). On another platform the
per-sample GEMMs round differently (as ``epsba.units`` says of devices) and the chunk size
differs; then the means agree to the GEMMs' rounding, not bit for bit.

Options are simulate_grid's: a ``montecarlo.GridConfig`` (or its fields as keywords), which
validates itself; its ``mesh`` applies to cells computed in this process only (a job spreads
its cells over its own devices) and, like ``progress``, is not part of the grid.

Cells: additive mode, one per (rank, bit-width); real mode, one per rank (its bit-widths
share one noise key stream, fold_in(k_noise, r), indexed by bit position). Jobs get cells by
a greedy longest-processing-time split on the cost ∝ r_pad·(m + n)·(r_pad + 1) per cell.

Files under ``folder``: ``grid.json`` (the grid's fingerprint: every option, the key, the
factors), ``cells/r{i}_b{j}.npy`` (a cell's samples; real mode ``r{i}.npy`` holds all bit
widths), each written atomically (temp + fsync + rename) by the job that computed it. A
rerun reuses the cells already there; a requeued (preempted) job skips them. A folder of a
different grid is refused.

:class:`GridJobs` runs many grids' missing cells as one job array (``prefetch``), which is
how ``quantbounds validate --executor submitit`` runs the moments experiment's grids.
Cells are the unit: a grid of one cell is one job (a cell's samples are not split).

The ``jax.distributed`` path (``epsba.sharding``) stays for one computation that must span hosts;
this one is for many cells that need not, where a failed job costs its own cells only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pickle
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np

from quantbounds._files import atomic_write_bytes
from quantbounds.epsba.montecarlo import (
    GridConfig,
    _key_parts,
    _padded,
    grid_config,
    grid_factors,
    grid_result,
    padded_rank,
    real_rank_samples,
)
from quantbounds.epsba.units import run_additive
from quantbounds.jobs import (
    Checkpointable,
    ClusterOptions,
    ExecutorError,
    JobProgress,
    job_failure,
    job_phase,
    make_executor,
    run_jobs,
)

SCHEMA = "quantbounds.grid-jobs/1"
# the GridConfig fields that are not part of the grid (where and how visibly it runs)
NOT_GRID = ("mesh", "progress")


class GridJobError(RuntimeError):
    """A split grid that could not be completed (a job died, a folder of another grid)."""


# ------------------------------------------------------------------ options, cells, split
def cells_of(config: GridConfig) -> list[tuple[int, tuple[int, ...]]]:
    """The grid's independent cells: (rank index, bit indices). Additive: one bit each;
    real: all bit-widths of a rank (they share the rank's key stream)."""
    K = len(config.bits)
    if config.mode == "additive":
        return [(i, (j,)) for i in range(len(config.ranks)) for j in range(K)]
    return [(i, tuple(range(K))) for i in range(len(config.ranks))]


def split_cells(config: GridConfig, n_jobs: int) -> list[list[tuple[int, tuple[int, ...]]]]:
    """Cells into ≤ n_jobs non-empty groups of similar cost (longest processing time first);
    within a group, cells in grid order."""
    cells = cells_of(config)
    n_jobs = max(1, min(int(n_jobs), len(cells)))
    m, n = config.m, config.n

    def cost(c):
        r = config.ranks[c[0]]
        rp = padded_rank(config, r) if config.mode == "additive" else r
        return rp * (m + n) * (rp + 1) * len(c[1])

    bins: list[list] = [[] for _ in range(n_jobs)]
    load = [0.0] * n_jobs
    for c in sorted(cells, key=cost, reverse=True):
        k = int(np.argmin(load))
        bins[k].append(c)
        load[k] += cost(c)
    order = {c: i for i, c in enumerate(cells)}
    return [sorted(b, key=order.__getitem__) for b in bins if b]


def cell_name(cell: tuple[int, tuple[int, ...]], mode: str) -> str:
    i, js = cell
    return f"r{i}" if mode == "real" else f"r{i}_b{js[0]}"


def _key_split(keydata, impl):
    return jax.random.split(jax.random.wrap_key_data(np.asarray(keydata), impl=impl))


def _factors_for(config: GridConfig, k_fac, rank_idx: Sequence[int]) -> dict:
    """Factors of the given rank indices, exactly as simulate_grid draws them."""
    m, n, ranks, f = config.m, config.n, config.ranks, config.factors
    if callable(f):  # simulate_grid calls it per rank with fold_in(k_fac, r)
        sub = [ranks[i] for i in rank_idx]
        fac = grid_factors(k_fac, m=m, n=n, ranks=sub, factors=f, dtype=config.dtype)
        return dict(zip(rank_idx, fac))
    fac = grid_factors(k_fac, m=m, n=n, ranks=ranks, factors=f, dtype=config.dtype)
    return {i: fac[i] for i in rank_idx}


def compute_cells(keydata, impl: str, config: GridConfig, cells) -> dict:
    """Per-sample terms of ``cells``: {cell: array (n_cell_bits, n_samples, 4)} — the same
    numbers simulate_grid computes for those cells (module docstring)."""
    k_fac, k_noise = _key_split(keydata, impl)
    fac = _factors_for(config, k_fac, sorted({c[0] for c in cells}))
    K = len(config.bits)
    out = {}
    for cell in cells:
        i, js = cell
        r = config.ranks[i]
        if config.mode == "additive":
            Bs, As, RBt, RA = _padded(
                [fac[i]],
                padded_rank(config, r),
                block_size=config.block_size,
                axis=config.axis,
                dtype=config.dtype,
            )
            x = run_additive(
                np.asarray(jax.random.key_data(k_noise)),
                impl,
                [config.bits[j] for j in js],
                Bs,
                As,
                RBt,
                RA,
                n_samples=config.n_samples,
                step=config.step,
                dtype=config.dtype,
                chunk_size=config.chunk_size,
                mesh=config.mesh,
                cell_ids=[i * K + j for j in js],
            )[0]
        else:
            B, A = fac[i]
            x = real_rank_samples(config, B, A, k_noise, r, impl)
        out[cell] = np.asarray(x)
    return out


def assemble(keydata, impl: str, config: GridConfig, arrays: dict):
    """The EpsBAGrid of per-cell samples ``arrays`` (every cell of the grid), reduced as
    simulate_grid reduces its own (``montecarlo.grid_result`` over the stacked samples)."""
    missing = [c for c in cells_of(config) if c not in arrays]
    if missing:
        raise GridJobError(f"cells {[cell_name(c, config.mode) for c in missing]} have no results")
    rows = []
    for i in range(len(config.ranks)):
        if config.mode == "additive":
            rows.append(np.stack([arrays[(i, (j,))][0] for j in range(len(config.bits))]))
        else:
            rows.append(arrays[(i, tuple(range(len(config.bits))))])
    k_fac, _ = _key_split(keydata, impl)
    fac = _factors_for(config, k_fac, range(len(config.ranks)))
    return grid_result(
        config, [fac[i] for i in range(len(config.ranks))], np.stack(rows)
    )  # (R, K, n_samples, 4)


# ------------------------------------------------------------------ files and the job
def grid_fingerprint(keydata, impl: str, config: GridConfig) -> str:
    """sha1 over every option, the key and the factors (a callable by its pickle)."""
    f = config.factors
    if callable(f):
        try:
            fb = pickle.dumps(f)
        except Exception:  # noqa: BLE001 - lambdas, closures
            try:
                import cloudpickle

                fb = cloudpickle.dumps(f)
            except Exception as err:  # noqa: BLE001
                raise TypeError(
                    "factors must be picklable to run a grid as jobs "
                    f"(a module-level function or class instance): {err}"
                ) from err
        fdesc = hashlib.sha1(fb).hexdigest()
    else:
        fdesc = f
    fields = {
        fl.name: getattr(config, fl.name)
        for fl in dataclasses.fields(config)
        if fl.name not in NOT_GRID and fl.name != "factors"
    }
    blob = json.dumps(
        {**fields, "factors": fdesc, "key": np.asarray(keydata).tolist(), "impl": impl},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha1(blob.encode()).hexdigest()


def _save(path: Path, x: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, np.asarray(x), allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def load_cell(folder: Path, cell, mode: str) -> np.ndarray | None:
    p = Path(folder) / "cells" / f"{cell_name(cell, mode)}.npy"
    try:
        x = np.load(p, allow_pickle=False)
    except (OSError, ValueError):
        return None
    arr = x if mode == "real" else x[None]
    return arr


class GridJob(Checkpointable):
    """One job's cells: compute those without a file, write each atomically. A
    ``submitit.helpers.Checkpointable``: requeued after preemption with the same cells, it
    redoes only the cells not yet written."""

    def __init__(self, keydata, impl: str, config: GridConfig, cells, folder: str):
        self.keydata, self.impl, self.config = np.asarray(keydata), impl, config
        self.cells, self.folder = [tuple((c[0], tuple(c[1]))) for c in cells], str(folder)
        # the submitting process's x64 mode (validate turns it on in main(), not in the
        # environment a job inherits), so a job computes with the same JAX settings
        self.x64 = bool(jax.config.jax_enable_x64)

    def __call__(self) -> list[str]:
        if bool(jax.config.jax_enable_x64) != self.x64:
            jax.config.update("jax_enable_x64", self.x64)
        folder, mode = Path(self.folder), self.config.mode
        todo = [c for c in self.cells if load_cell(folder, c, mode) is None]
        for c in todo:  # one at a time, so a preempted job keeps what it finished
            x = compute_cells(self.keydata, self.impl, self.config, [c])[c]
            _save(folder / "cells" / f"{cell_name(c, mode)}.npy", x if mode == "real" else x[0])
        return [cell_name(c, mode) for c in self.cells]


def _check_folder(folder: Path, fp: str, config: GridConfig) -> None:
    meta = folder / "grid.json"
    if meta.exists():
        try:
            old = json.loads(meta.read_text())
        except ValueError as err:
            raise GridJobError(f"grid folder {folder}: unreadable grid.json ({err})") from err
        if old.get("fingerprint") != fp:
            raise GridJobError(
                f"grid folder {folder} holds a different grid (fingerprint "
                f"{str(old.get('fingerprint'))[:12]}…, m={old.get('m')}, n={old.get('n')}, "
                f"ranks={old.get('ranks')}, bits={old.get('bits')}) than this one ({fp[:12]}…, "
                f"m={config.m}, n={config.n}, ranks={list(config.ranks)}, "
                f"bits={list(config.bits)}): "
                "use another folder"
            )
        return
    atomic_write_bytes(
        meta,
        json.dumps(
            {
                "schema": SCHEMA,
                "fingerprint": fp,
                "m": config.m,
                "n": config.n,
                "ranks": list(config.ranks),
                "bits": list(config.bits),
                "mode": config.mode,
                "n_samples": config.n_samples,
            },
            indent=1,
        ).encode(),
    )


def _cluster_options(cluster, options) -> ClusterOptions:
    if isinstance(options, ClusterOptions):
        return options if cluster is None else options.merged(cluster=cluster)
    return ClusterOptions().merged(**{"cluster": cluster, **(options or {})})


def _prepare(key, config, *, executor, folder, root, n_jobs, grid_kwargs):
    """(config, keydata, impl, folder or None (in-process without files), groups of cells)."""
    if executor not in ("local", "submitit"):
        raise ExecutorError(f"executor must be 'local' or 'submitit', got {executor!r}")
    config = grid_config(config, **grid_kwargs)
    keydata, impl = _key_parts(key)
    groups = split_cells(config, n_jobs or len(cells_of(config)))
    if folder is not None and root is not None:
        raise ExecutorError("give folder= or root=, not both")
    if root is not None:
        folder = Path(root) / f"grid-{grid_fingerprint(keydata, impl, config)[:16]}"
    if executor == "submitit" and folder is None:
        raise ExecutorError(
            "executor='submitit' needs folder= or root= (a directory every job can reach)"
        )
    if folder is None:
        return config, keydata, impl, None, groups
    return config, keydata, impl, Path(folder).absolute(), groups


def _have(folder: Path, c, mode: str) -> bool:
    return (folder / "cells" / f"{cell_name(c, mode)}.npy").exists()


def _submit_all(
    batches, *, opts: ClusterOptions, log_dir: Path, progress: bool, poll_s: float | None
) -> None:
    """Run every (folder, config, keydata, impl, group) as ONE job array (submitit's files and
    logs in log_dir); GridJobError if any job ends without its cells."""
    ex = make_executor(opts, log_dir)
    # a job runs on its own devices: the submitter's mesh (and progress) stay here
    tasks = [
        GridJob(kd, impl, dataclasses.replace(config, mesh=None, progress=False), g, str(f))
        for f, config, kd, impl, g in batches
    ]

    def complete(i):
        f, config, _, _, g = batches[i]
        return all(_have(f, c, config.mode) for c in g)

    poll = poll_s if poll_s is not None else (0.5 if opts.cluster == "local" else 20.0)
    with JobProgress("ε_BA grid jobs", len(tasks), enabled=progress) as bar:

        def refresh(slots):
            ph = [("unsubmitted" if s.job is None else job_phase(s.job)) for s in slots]
            pend = [p for s, p in zip(slots, ph) if not complete(s.index)]
            bar.update(
                queued=sum(p in ("queued", "unsubmitted") for p in pend),
                running=sum(p == "running" for p in pend),
                done=len(slots) - len(pend),
                failed=sum(p == "ended" for p in pend),
            )

        slots = run_jobs(
            ex,
            tasks,
            cluster=opts.cluster,
            array_parallelism=opts.array_parallelism,
            poll_s=poll,
            on_poll=refresh,
        )
    failed = [s for s in slots if not complete(s.index)]
    if failed:
        msgs = []
        for s in failed:
            f, config, _, _, g = batches[s.index]
            miss = [cell_name(c, config.mode) for c in g if not _have(f, c, config.mode)]
            msgs.append(f"cells {miss} of {f} have no results: {job_failure(s.job)}")
        raise GridJobError("; ".join(msgs) + " (the cells written are kept; rerun to finish)")


def _load_all(folder: Path, config, keydata, impl):
    arrays = {}
    for c in cells_of(config):
        x = load_cell(folder, c, config.mode)
        if x is None:
            raise GridJobError(
                f"cell {cell_name(c, config.mode)} in {folder} is missing or unreadable"
            )
        arrays[c] = x
    return assemble(keydata, impl, config, arrays)


def simulate_grid_jobs(
    key: Any,
    config: GridConfig | None = None,
    *,
    executor: str = "local",
    cluster: str | None = None,
    folder: str | os.PathLike | None = None,
    root: str | os.PathLike | None = None,
    n_jobs: int | None = None,
    options: dict | ClusterOptions | None = None,
    progress: bool = False,
    poll_s: float | None = None,
    **grid_kwargs,
):
    """``montecarlo.simulate_grid(key, config, **grid_kwargs)`` with its cells run as
    independent jobs (the same ``GridConfig``, or its fields as keywords).

    executor: "local" (in this process, job by job; with ``folder``, cells already there are
    reused and new ones written) or "submitit" (``folder`` or ``root`` required, on a
    filesystem the jobs see; ``root``: a directory under which each grid gets its own folder,
    named by the grid's fingerprint, so one root serves many grids; ``cluster`` "slurm" or
    "local"; ``options``: ``jobs.ClusterOptions`` fields, e.g. partition, gpus_per_node,
    timeout_min, array_parallelism). n_jobs: how many jobs (default: one per cell). Returns
    the ``EpsBAGrid`` simulate_grid returns (equal to it bit for bit on the same platform:
    module docstring). GridJobError names the cells a dead job left without results and its
    log; the cells that were written stay for the rerun. ``progress``: the queued / running
    / done / failed display of the jobs. The config's ``mesh`` serves the cells computed in
    this process (executor "local"); a submitit job uses its own devices.
    :class:`GridJobs` runs several grids' jobs as one array.
    """
    config, keydata, impl, folder, groups = _prepare(
        key,
        config,
        executor=executor,
        folder=folder,
        root=root,
        n_jobs=n_jobs,
        grid_kwargs=grid_kwargs,
    )
    if folder is None:
        arrays = {}
        for g in groups:
            arrays.update(compute_cells(keydata, impl, config, g))
        return assemble(keydata, impl, config, arrays)
    opts = _cluster_options(cluster, options) if executor == "submitit" else None
    if opts is not None:
        make_executor(opts, folder / "submitit")  # a rejected option fails before any write
    _check_folder(folder, grid_fingerprint(keydata, impl, config), config)
    todo = [g for g in groups if not all(_have(folder, c, config.mode) for c in g)]
    if todo and executor == "local":
        for g in todo:
            GridJob(keydata, impl, config, g, str(folder))()
    elif todo:
        _submit_all(
            [(folder, config, keydata, impl, g) for g in todo],
            opts=opts,
            log_dir=folder / "submitit",
            progress=progress,
            poll_s=poll_s,
        )
    return _load_all(folder, config, keydata, impl)


class GridJobs:
    """``simulate_grid_jobs`` bound to an executor and a root folder, that can also run many
    grids' missing cells as ONE job array before they are asked for (:meth:`prefetch`), so a
    caller with a list of grids (validate's moments experiment) keeps the cluster busy with
    all of them rather than one grid at a time. Calls return simulate_grid's EpsBAGrid."""

    def __init__(
        self,
        *,
        root,
        executor: str = "submitit",
        cluster: str | None = None,
        options: dict | ClusterOptions | None = None,
        n_jobs: int | None = None,
        progress: bool = False,
        poll_s: float | None = None,
    ):
        self.root, self.executor, self.n_jobs = Path(root), executor, n_jobs
        self.opts = _cluster_options(cluster, options)
        self.progress, self.poll_s = progress, poll_s

    def __call__(self, key, config: GridConfig | None = None, **grid_kwargs):
        return simulate_grid_jobs(
            key,
            config,
            executor=self.executor,
            root=self.root,
            n_jobs=self.n_jobs,
            options=self.opts,
            progress=self.progress,
            poll_s=self.poll_s,
            **grid_kwargs,
        )

    def prefetch(self, requests) -> None:
        """requests: [(key, grid_kwargs)] (grid_kwargs: GridConfig fields); their missing
        cells run now, as one job array."""
        batches = []
        for key, kw in requests:
            config, kd, impl, folder, groups = _prepare(
                key,
                None,
                executor="submitit",
                folder=None,
                root=self.root,
                n_jobs=self.n_jobs,
                grid_kwargs=kw,
            )
            _check_folder(folder, grid_fingerprint(kd, impl, config), config)
            batches += [
                (folder, config, kd, impl, g)
                for g in groups
                if not all(_have(folder, c, config.mode) for c in g)
            ]
        if not batches:
            return
        if self.executor == "local":
            for f, config, kd, impl, g in batches:
                GridJob(kd, impl, config, g, str(f))()
            return
        _submit_all(
            batches,
            opts=self.opts,
            log_dir=self.root / "submitit",
            progress=self.progress,
            poll_s=self.poll_s,
        )
