"""A Monte Carlo grid's cells as independent jobs, merged into ``simulate_grid``'s result.

    grid = simulate_grid_jobs(key, m=4096, n=4096, ranks=[16, 64, 256], bits=[2, 4, 8],
                              n_samples=256, executor="submitit", cluster="slurm",
                              folder="/shared/qb-grid", n_jobs=9,
                              options={"gpus_per_node": 1, "partition": "gpu"})

Why it is exact. ``simulate_grid`` keys sample t of cell c (c = rank index · n_bits + bit
index) by fold_in(fold_in(k_noise, c), t) (``sharding.sample_keys``), pads a rank to a width
that depends on that rank alone ("pow2") or on the grid's largest rank ("max"), and draws
the factors once at the grid's largest rank. A job here recomputes the same factors, pads
its ranks the same way and runs its cells through the same engine call
(``sharding.run_additive`` with the cells' global ids; ``run_real`` per rank, whose cells are
its bit-widths), so each cell's per-sample terms are the ones the single process computes.
Jobs write those per-sample terms (the finest partial sums: an (n_samples, 4) array per
cell, float64 or float32 as the engine made them); the merge stacks them in the grid's
order and reduces them with ``montecarlo.summarize``, the single process's own reduction,
in the same order. So the merged grid equals ``simulate_grid``'s bit for bit whenever the
jobs run on the same kind of device as the single process (tests/test_grid_jobs.py checks
it, float32 and float64, both paddings, additive and real mode). On another platform the
per-sample GEMMs round differently (as ``sharding`` says of devices) and the chunk size
differs; then the means agree to the GEMMs' rounding, not bit for bit.

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

The ``jax.distributed`` path (``sharding``) stays for one computation that must span hosts;
this one is for many cells that need not, where a failed job costs its own cells only.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np

from quantbounds._checks import check_bits, check_choice, check_finite, check_int_range
from quantbounds.jobs import (Checkpointable, ClusterOptions, ExecutorError, JobProgress,
                              atomic_write_bytes, job_failure, job_phase, make_executor, run_jobs)

SCHEMA = "quantbounds.grid-jobs/1"
GRID_KEYS = ("m", "n", "ranks", "bits", "n_samples", "factors", "mode", "scheme", "rounding",
             "block_size", "axis", "step", "scale", "lora_alpha", "dtype", "chunk_size", "pad")


class GridJobError(RuntimeError):
    """A split grid that could not be completed (a job died, a folder of another grid)."""


# ------------------------------------------------------------------ options, cells, split
def normalise(kw: dict) -> dict:
    """simulate_grid's options validated as simulate_grid validates them, with its defaults;
    ranks and bits as lists, dtype as a name. Unknown options are an error naming them."""
    from quantbounds.epsba.montecarlo import SCALES, _dtype, check_options

    bad = sorted(set(kw) - set(GRID_KEYS))
    if bad:
        raise TypeError(f"unknown simulate_grid option(s) {bad}; known: {list(GRID_KEYS)}")
    d = dict(factors="gaussian", mode="additive", scheme="uniform", rounding="nearest",
             block_size=None, axis=None, step="paper", scale=1.0, lora_alpha=1.0,
             dtype="float32", chunk_size=None, pad="pow2")
    d.update(kw)
    for k in ("m", "n", "ranks", "bits", "n_samples"):
        if k not in d:
            raise TypeError(f"simulate_grid_jobs needs {k}=")
    check_options(mode=d["mode"], scheme=d["scheme"], rounding=d["rounding"],
                  block_size=d["block_size"], axis=d["axis"], step=d["step"])
    m, n = check_int_range(d["m"], "m", 1), check_int_range(d["n"], "n", 1)
    d["m"], d["n"] = m, n
    d["ranks"] = [int(check_int_range(r, "ranks", 1, min(m, n))) for r in np.ravel(d["ranks"])]
    d["bits"] = [int(check_bits(b, "bits")) for b in np.ravel(d["bits"])]
    if not d["ranks"] or not d["bits"]:
        raise ValueError("ranks and bits must be non-empty")
    if d["step"] == "midtread" and min(d["bits"]) < 2:
        raise ValueError("step='midtread' needs bits in 2…16 (R/(2^{b−1}−1) is undefined at b = 1)")
    random = d["mode"] == "additive" or d["rounding"] == "stochastic"
    d["n_samples"] = int(check_int_range(d["n_samples"], "n_samples", 2 if random else 1))
    check_choice(d["pad"], "pad", ("max", "pow2"))
    if isinstance(d["scale"], str):
        check_choice(d["scale"], "scale", SCALES)
    else:
        check_finite(d["scale"], "scale")
        d["scale"] = float(d["scale"])
    d["dtype"] = _dtype(d["dtype"])
    if not (callable(d["factors"]) or isinstance(d["factors"], str)):
        raise TypeError(f"factors must be 'gaussian', 'peft' or a callable, got {d['factors']!r}")
    return d


def cells_of(norm: dict) -> list[tuple[int, tuple[int, ...]]]:
    """The grid's independent cells: (rank index, bit indices). Additive: one bit each;
    real: all bit-widths of a rank (they share the rank's key stream)."""
    K = len(norm["bits"])
    if norm["mode"] == "additive":
        return [(i, (j,)) for i in range(len(norm["ranks"])) for j in range(K)]
    return [(i, tuple(range(K))) for i in range(len(norm["ranks"]))]


def _rpad(norm: dict, r: int) -> int:
    return max(norm["ranks"]) if norm["pad"] == "max" else 1 << (r - 1).bit_length()


def split_cells(norm: dict, n_jobs: int) -> list[list[tuple[int, tuple[int, ...]]]]:
    """Cells into ≤ n_jobs non-empty groups of similar cost (longest processing time first);
    within a group, cells in grid order."""
    cells = cells_of(norm)
    n_jobs = max(1, min(int(n_jobs), len(cells)))
    m, n = norm["m"], norm["n"]

    def cost(c):
        rp = _rpad(norm, norm["ranks"][c[0]]) if norm["mode"] == "additive" else norm["ranks"][c[0]]
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


def _factors_for(norm: dict, k_fac, rank_idx: Sequence[int]) -> dict:
    """Factors of the given rank indices, exactly as simulate_grid draws them."""
    from quantbounds.epsba.montecarlo import grid_factors

    m, n, ranks, f = norm["m"], norm["n"], norm["ranks"], norm["factors"]
    if callable(f):   # simulate_grid calls it per rank with fold_in(k_fac, r)
        sub = [ranks[i] for i in rank_idx]
        fac = grid_factors(k_fac, m=m, n=n, ranks=sub, factors=f, dtype=norm["dtype"])
        return dict(zip(rank_idx, fac))
    fac = grid_factors(k_fac, m=m, n=n, ranks=ranks, factors=f, dtype=norm["dtype"])
    return {i: fac[i] for i in rank_idx}


def compute_cells(keydata, impl: str, norm: dict, cells, *, mesh=None) -> dict:
    """Per-sample terms of ``cells``: {cell: array (n_cell_bits, n_samples, 4)} — the same
    numbers simulate_grid computes for those cells (module docstring)."""
    from quantbounds.epsba.montecarlo import _padded
    from quantbounds.epsba.units import run_additive, run_real

    k_fac, k_noise = _key_split(keydata, impl)
    fac = _factors_for(norm, k_fac, sorted({c[0] for c in cells}))
    K = len(norm["bits"])
    out = {}
    for cell in cells:
        i, js = cell
        r = norm["ranks"][i]
        if norm["mode"] == "additive":
            Bs, As, RBt, RA = _padded([fac[i]], _rpad(norm, r), block_size=norm["block_size"],
                                      axis=norm["axis"], dtype=norm["dtype"])
            x = run_additive(np.asarray(jax.random.key_data(k_noise)), impl,
                             [norm["bits"][j] for j in js], Bs, As, RBt, RA,
                             n_samples=norm["n_samples"], step=norm["step"],
                             dtype=norm["dtype"], chunk_size=norm["chunk_size"], mesh=mesh,
                             cell_ids=[i * K + j for j in js])[0]
        else:
            B, A = fac[i]
            kd = np.asarray(jax.random.key_data(jax.random.fold_in(k_noise, r)))
            x = run_real(kd, impl, norm["bits"], B, A, n_samples=norm["n_samples"],
                         scheme=norm["scheme"], rounding=norm["rounding"],
                         block_size=norm["block_size"], axis=norm["axis"], step=norm["step"],
                         dtype=norm["dtype"], chunk_size=norm["chunk_size"], mesh=mesh)
        out[cell] = np.asarray(x)
    return out


def assemble(keydata, impl: str, norm: dict, arrays: dict):
    """The EpsBAGrid of per-cell samples ``arrays`` (every cell of the grid), reduced as
    simulate_grid reduces its own: ``montecarlo.summarize`` over the stacked samples."""
    from quantbounds.epsba.montecarlo import EpsBAGrid, EpsBAMoments, _predicted, lora_scale, summarize

    ranks, bits = norm["ranks"], norm["bits"]
    missing = [c for c in cells_of(norm) if c not in arrays]
    if missing:
        raise GridJobError(f"cells {[cell_name(c, norm['mode']) for c in missing]} have no results")
    if isinstance(norm["scale"], str):
        s = np.array([lora_scale(norm["scale"], norm["lora_alpha"], r) for r in ranks])
    else:
        s = np.full(len(ranks), float(norm["scale"]))
    rows = []
    for i in range(len(ranks)):
        if norm["mode"] == "additive":
            rows.append(np.stack([arrays[(i, (j,))][0] for j in range(len(bits))]))
        else:
            rows.append(arrays[(i, tuple(range(len(bits))))])
    x = np.stack(rows)                                       # (R, K, n_samples, 4)
    mean, se = summarize(x, (s ** 2)[:, None])
    k_fac, _ = _key_split(keydata, impl)
    fac = _factors_for(norm, k_fac, range(len(ranks)))
    pred = np.array([[_predicted(*fac[i], b, scheme=norm["scheme"], step=norm["step"],
                                 block_size=norm["block_size"], axis=norm["axis"], s=s[i])
                      for b in bits] for i in range(len(ranks))])
    return EpsBAGrid(np.array(ranks), np.array(bits), mean, se,
                     EpsBAMoments(*np.moveaxis(pred, -1, 0)), s,
                     np.array([np.abs(fac[i][1]).max() for i in range(len(ranks))]),
                     np.array([np.abs(fac[i][0]).max() for i in range(len(ranks))]),
                     int(x.shape[2]))


# ------------------------------------------------------------------ files and the job
def grid_fingerprint(keydata, impl: str, norm: dict) -> str:
    """sha1 over every option, the key and the factors (a callable by its pickle)."""
    f = norm["factors"]
    if callable(f):
        try:
            fb = pickle.dumps(f)
        except Exception:  # noqa: BLE001 - lambdas, closures
            try:
                import cloudpickle
                fb = cloudpickle.dumps(f)
            except Exception as err:  # noqa: BLE001
                raise TypeError("factors must be picklable to run a grid as jobs "
                                f"(a module-level function or class instance): {err}") from err
        fdesc = hashlib.sha1(fb).hexdigest()
    else:
        fdesc = f
    blob = json.dumps({**{k: v for k, v in norm.items() if k != "factors"}, "factors": fdesc,
                       "key": np.asarray(keydata).tolist(), "impl": impl}, sort_keys=True,
                      default=str)
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

    def __init__(self, keydata, impl: str, norm: dict, cells, folder: str):
        self.keydata, self.impl, self.norm = np.asarray(keydata), impl, norm
        self.cells, self.folder = [tuple((c[0], tuple(c[1]))) for c in cells], str(folder)
        # the submitting process's x64 mode (validate turns it on in main(), not in the
        # environment a job inherits), so a job computes with the same JAX settings
        self.x64 = bool(jax.config.jax_enable_x64)

    def __call__(self) -> list[str]:
        if bool(jax.config.jax_enable_x64) != self.x64:
            jax.config.update("jax_enable_x64", self.x64)
        folder, mode = Path(self.folder), self.norm["mode"]
        todo = [c for c in self.cells if load_cell(folder, c, mode) is None]
        for c in todo:   # one at a time, so a preempted job keeps what it finished
            x = compute_cells(self.keydata, self.impl, self.norm, [c])[c]
            _save(folder / "cells" / f"{cell_name(c, mode)}.npy", x if mode == "real" else x[0])
        return [cell_name(c, mode) for c in self.cells]


def _check_folder(folder: Path, fp: str, norm: dict) -> None:
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
                f"m={norm['m']}, n={norm['n']}, ranks={norm['ranks']}, bits={norm['bits']}): "
                "use another folder")
        return
    atomic_write_bytes(meta, json.dumps({"schema": SCHEMA, "fingerprint": fp, "m": norm["m"],
                                         "n": norm["n"], "ranks": norm["ranks"],
                                         "bits": norm["bits"], "mode": norm["mode"],
                                         "n_samples": norm["n_samples"]}, indent=1).encode())


def _cluster_options(cluster, options) -> ClusterOptions:
    if isinstance(options, ClusterOptions):
        return options if cluster is None else options.merged(cluster=cluster)
    return ClusterOptions().merged(**{"cluster": cluster, **(options or {})})


def _prepare(key, *, executor, folder, root, n_jobs, grid_kwargs):
    """(norm, keydata, impl, folder or None (in-process without files), groups of cells)."""
    from quantbounds.epsba.montecarlo import _key_parts

    if executor not in ("local", "submitit"):
        raise ExecutorError(f"executor must be 'local' or 'submitit', got {executor!r}")
    norm = normalise(grid_kwargs)
    keydata, impl = _key_parts(key)
    groups = split_cells(norm, n_jobs or len(cells_of(norm)))
    if folder is not None and root is not None:
        raise ExecutorError("give folder= or root=, not both")
    if root is not None:
        folder = Path(root) / f"grid-{grid_fingerprint(keydata, impl, norm)[:16]}"
    if executor == "submitit" and folder is None:
        raise ExecutorError("executor='submitit' needs folder= or root= (a directory every job "
                            "can reach)")
    if folder is None:
        return norm, keydata, impl, None, groups
    return norm, keydata, impl, Path(folder).absolute(), groups


def _have(folder: Path, c, mode: str) -> bool:
    return (folder / "cells" / f"{cell_name(c, mode)}.npy").exists()


def _submit_all(batches, *, opts: ClusterOptions, log_dir: Path, progress: bool,
                poll_s: float | None) -> None:
    """Run every (folder, norm, keydata, impl, group) as ONE job array (submitit's files and
    logs in log_dir); GridJobError if any job ends without its cells."""
    ex = make_executor(opts, log_dir)
    tasks = [GridJob(kd, impl, norm, g, str(f)) for f, norm, kd, impl, g in batches]

    def complete(i):
        f, norm, _, _, g = batches[i]
        return all(_have(f, c, norm["mode"]) for c in g)

    poll = poll_s if poll_s is not None else (0.5 if opts.cluster == "local" else 20.0)
    with JobProgress("ε_BA grid jobs", len(tasks), enabled=progress) as bar:
        def refresh(slots):
            ph = [("unsubmitted" if s.job is None else job_phase(s.job)) for s in slots]
            pend = [p for s, p in zip(slots, ph) if not complete(s.index)]
            bar.update(queued=sum(p in ("queued", "unsubmitted") for p in pend),
                       running=sum(p == "running" for p in pend),
                       done=len(slots) - len(pend), failed=sum(p == "ended" for p in pend))
        slots = run_jobs(ex, tasks, cluster=opts.cluster, array_parallelism=opts.array_parallelism,
                         poll_s=poll, on_poll=refresh)
    failed = [s for s in slots if not complete(s.index)]
    if failed:
        msgs = []
        for s in failed:
            f, norm, _, _, g = batches[s.index]
            miss = [cell_name(c, norm["mode"]) for c in g if not _have(f, c, norm["mode"])]
            msgs.append(f"cells {miss} of {f} have no results: {job_failure(s.job)}")
        raise GridJobError("; ".join(msgs) + " (the cells written are kept; rerun to finish)")


def _load_all(folder: Path, norm, keydata, impl):
    arrays = {}
    for c in cells_of(norm):
        x = load_cell(folder, c, norm["mode"])
        if x is None:
            raise GridJobError(f"cell {cell_name(c, norm['mode'])} in {folder} is missing or unreadable")
        arrays[c] = x
    return assemble(keydata, impl, norm, arrays)


def simulate_grid_jobs(key: Any, *, executor: str = "local", cluster: str | None = None,
                       folder: str | os.PathLike | None = None,
                       root: str | os.PathLike | None = None, n_jobs: int | None = None,
                       options: dict | ClusterOptions | None = None, progress: bool = False,
                       poll_s: float | None = None, mesh: Any = None, **grid_kwargs):
    """``montecarlo.simulate_grid(key, **grid_kwargs)`` with its cells run as independent jobs.

    executor: "local" (in this process, job by job; with ``folder``, cells already there are
    reused and new ones written) or "submitit" (``folder`` or ``root`` required, on a
    filesystem the jobs see; ``root``: a directory under which each grid gets its own folder,
    named by the grid's fingerprint, so one root serves many grids; ``cluster`` "slurm" or
    "local"; ``options``: ``jobs.ClusterOptions`` fields, e.g. partition, gpus_per_node,
    timeout_min, array_parallelism). n_jobs: how many jobs (default: one per cell). Returns
    the ``EpsBAGrid`` simulate_grid returns (equal to it bit for bit on the same platform:
    module docstring). GridJobError names the cells a dead job left without results and its
    log; the cells that were written stay for the rerun. ``progress``: the queued / running
    / done / failed display. ``mesh`` (local only): the devices each job's engine call
    spreads over. :class:`GridJobs` runs several grids' jobs as one array.
    """
    norm, keydata, impl, folder, groups = _prepare(key, executor=executor, folder=folder,
                                                   root=root, n_jobs=n_jobs,
                                                   grid_kwargs=grid_kwargs)
    if folder is None:
        arrays = {}
        for g in groups:
            arrays.update(compute_cells(keydata, impl, norm, g, mesh=mesh))
        return assemble(keydata, impl, norm, arrays)
    opts = _cluster_options(cluster, options) if executor == "submitit" else None
    if opts is not None:
        make_executor(opts, folder / "submitit")   # a rejected option fails before any write
    _check_folder(folder, grid_fingerprint(keydata, impl, norm), norm)
    todo = [g for g in groups if not all(_have(folder, c, norm["mode"]) for c in g)]
    if todo and executor == "local":
        for g in todo:
            GridJob(keydata, impl, norm, g, str(folder))()
    elif todo:
        _submit_all([(folder, norm, keydata, impl, g) for g in todo], opts=opts,
                    log_dir=folder / "submitit", progress=progress, poll_s=poll_s)
    return _load_all(folder, norm, keydata, impl)


class GridJobs:
    """``simulate_grid_jobs`` bound to an executor and a root folder, that can also run many
    grids' missing cells as ONE job array before they are asked for (:meth:`prefetch`), so a
    caller with a list of grids (validate's moments experiment) keeps the cluster busy with
    all of them rather than one grid at a time. Calls return simulate_grid's EpsBAGrid."""

    def __init__(self, *, root, executor: str = "submitit", cluster: str | None = None,
                 options: dict | ClusterOptions | None = None, n_jobs: int | None = None,
                 progress: bool = False, poll_s: float | None = None):
        self.root, self.executor, self.n_jobs = Path(root), executor, n_jobs
        self.opts = _cluster_options(cluster, options)
        self.progress, self.poll_s = progress, poll_s

    def __call__(self, key, **grid_kwargs):
        return simulate_grid_jobs(key, executor=self.executor, root=self.root, n_jobs=self.n_jobs,
                                  options=self.opts, progress=self.progress, poll_s=self.poll_s,
                                  **grid_kwargs)

    def prefetch(self, requests) -> None:
        """requests: [(key, grid_kwargs)]; their missing cells run now, as one job array."""
        batches = []
        for key, kw in requests:
            norm, kd, impl, folder, groups = _prepare(key, executor="submitit", folder=None,
                                                      root=self.root, n_jobs=self.n_jobs,
                                                      grid_kwargs=kw)
            _check_folder(folder, grid_fingerprint(kd, impl, norm), norm)
            batches += [(folder, norm, kd, impl, g) for g in groups
                        if not all(_have(folder, c, norm["mode"]) for c in g)]
        if not batches:
            return
        if self.executor == "local":
            for f, norm, kd, impl, g in batches:
                GridJob(kd, impl, norm, g, str(f))()
            return
        _submit_all(batches, opts=self.opts, log_dir=self.root / "submitit",
                    progress=self.progress, poll_s=self.poll_s)
