"""The teacher–student grid: every arm × (rank, bits, N, seed) in one `jax.jit` with `jax.vmap`.

Each configuration is :func:`train_config` then :func:`evaluate_config` (the exact excess risk
‖(W − W*)·Σ^{1/2}‖_F² of the latent and the deployed weights, post-training quantization at
every bit-width). :func:`run_grid` does the whole grid in one jit: one vmapped training loop
per (arm, rank) (quantizer and rank static: no configuration pays for the others' quantizers
or for padding to r_max), then one vmapped evaluation of all configurations. :func:`run_loop`
calls :func:`config_outputs` (the
same two steps) configuration by configuration from Python: the reference for the vmap in
the tests. benchmarks/bench_teacher_student.py times :func:`grid_program` (= run_grid) against
a Python loop over :func:`_config_fn` (the same per-configuration code).

Teachers: one for every seed (``make_problem``), or one per seed (``cfg.teacher_per_seed``,
``make_problems``: a stacked Problem; configuration rows of seed j see teacher j).

Keys (all derived from cfg.key, so results are reproducible):
data of seed j: fold_in(k_data, j), shared by every N (the first N rows: nested data sets),
rank and arm; initialisation of seed j: fold_in(k_init, j); quantization noise of a
configuration: fold_in(fold_in(k_noise, j), flat configuration index).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from quantbounds.conventions import KIND_INDEX, SCALES
from quantbounds.theory.teacher_student import (
    Problem,
    TeacherStudentConfig,
    _ARM_KIND,
    _DEPLOY_KIND,
    additive_prediction,
    empirical_risk,
    excess_risk,
    is_stacked,
    problem_at,
    problems_for,
    sample_data,
    student_weight,
    sufficient_stats,
    train_core,
    train_setup,
)

STE_ARMS = ("ste_rtn", "ste_sr", "additive")  # trained once per bit-width
NF4_BITS = 4


def _keys(cfg: TeacherStudentConfig):
    base = jax.random.PRNGKey(cfg.key + 1)
    return jax.random.split(base, 3)  # data, init, noise


def _check_problem(problem: Problem, cfg: TeacherStudentConfig) -> None:
    if is_stacked(problem) and problem.W0.shape[0] != cfg.seeds:
        raise ValueError(
            f"a stacked problem needs one teacher per seed ({cfg.seeds}), got {problem.W0.shape[0]}"
        )


def stats_table(problem: Problem, cfg: TeacherStudentConfig):
    """Sufficient statistics for every (N, seed): arrays with leading axes (len(Ns), seeds).
    A stacked problem (one teacher per seed) gives seed j the data of teacher j."""
    _check_problem(problem, cfg)
    kdata = _keys(cfg)[0]
    Nmax = max(cfg.Ns)

    @jax.jit  # one compilation instead of one per eager operation
    def table(problem):
        X, Y = jax.vmap(
            lambda j: sample_data(jax.random.fold_in(kdata, j), problem_at(problem, j), Nmax)
        )(jnp.arange(cfg.seeds))
        per_N = [jax.vmap(lambda x, y, N=N: sufficient_stats(x, y, N))(X, Y) for N in cfg.Ns]
        return tuple(jnp.stack([s[i] for s in per_N]) for i in range(3))

    return table(problem)


def _noise_key(cfg, seed, idx):
    return jax.random.fold_in(jax.random.fold_in(_keys(cfg)[2], seed), idx)


def setup_config(problem: Problem, stats, r, seed, idx, conv, *, cfg: TeacherStudentConfig):
    """train_setup of one configuration (its initialisation and noise keys, see the module
    docstring); independent of the arm. Every argument but cfg may be traced."""
    init_key = jax.random.fold_in(_keys(cfg)[1], seed)
    return train_setup(
        problem, stats, r, init_key, _noise_key(cfg, seed, idx), cfg=cfg, convention=conv
    )


def train_config(
    problem: Problem, stats, r, bits, seed, idx, arm, conv, *, cfg: TeacherStudentConfig
):
    """Train one configuration: (params, s). arm: a name in ARMS (static) or an index into
    KIND_INDEX (traced); conv: index into quantbounds.conventions.SCALES (may be traced)."""
    setup = setup_config(problem, stats, r, seed, idx, conv, cfg=cfg)
    return train_core(setup, r, bits, arm=arm, cfg=cfg), setup.s


def evaluate_config(
    problem: Problem, stats, params, r, bits, s, seed, idx, deploy, *, cfg: TeacherStudentConfig
):
    """Measure a trained configuration. deploy: the quantizer at deployment (a name, None, or a
    traced index into KIND_INDEX). Returns a dict: excess_latent, excess_deployed, train_loss;
    ptq_excess[b], ptq_qexcess[b] (= ‖s·(Q(B)Q(A) − BA)·Σ^{1/2}‖², the part due to ε_BA alone),
    ptq_pred[b] (additive model) for b in cfg.bits (RTN after training); ptq_nf4_excess;
    R_A, R_B; the trained B, A and the scale s.
    """
    W = student_weight(problem, params, r, s)
    Wd = student_weight(
        problem,
        params,
        r,
        s,
        kind=deploy,
        bits=bits,
        key=jax.random.fold_in(_noise_key(cfg, seed, idx), 2**31 - 1),
        granularity=cfg.granularity,
    )
    out = {
        "excess_latent": excess_risk(W, problem.Wstar, problem.Sigma),
        "excess_deployed": excess_risk(Wd, problem.Wstar, problem.Sigma),
        "train_loss": empirical_risk(W, stats),
    }

    def ptq(b):
        Wq = student_weight(problem, params, r, s, kind="rtn", bits=b, granularity=cfg.granularity)
        E = Wq - W
        return (
            excess_risk(Wq, problem.Wstar, problem.Sigma),
            jnp.sum(E * (E @ problem.Sigma)),
            additive_prediction(problem, params, r, s, b),
        )

    out["ptq_excess"], out["ptq_qexcess"], out["ptq_pred"] = jax.vmap(ptq)(
        jnp.asarray(cfg.bits, W.dtype)
    )
    Wn = student_weight(problem, params, r, s, kind="nf4", granularity=cfg.granularity)
    out["ptq_nf4_excess"] = excess_risk(Wn, problem.Wstar, problem.Sigma)
    mask = (jnp.arange(cfg.r_max) < r).astype(W.dtype)
    out["R_B"] = jnp.max(jnp.abs(params["B"] * mask[None, :]))
    out["R_A"] = jnp.max(jnp.abs(params["A"] * mask[:, None]))
    out["B"], out["A"], out["scale"] = params["B"], params["A"], s
    return out


def config_outputs(
    problem: Problem, stats, r, bits, seed, idx, arm, deploy, conv, *, cfg: TeacherStudentConfig
):
    """train_config then evaluate_config (one configuration; what the Python loop calls)."""
    params, s = train_config(problem, stats, r, bits, seed, idx, arm, conv, cfg=cfg)
    return evaluate_config(problem, stats, params, r, bits, s, seed, idx, deploy, cfg=cfg)


def arm_axes(cfg: TeacherStudentConfig, arm: str):
    """Grid axes of an arm: names and values (fp and ste_nf4 have no bits axis)."""
    ax = [("rank", cfg.ranks)]
    if arm in STE_ARMS:
        ax.append(("bits", cfg.bits))
    ax += [("N", cfg.Ns), ("seed", tuple(range(cfg.seeds)))]
    return ax


def _flat(cfg, label, arm, conv):
    """Flattened configurations of one arm: (axes, dict of equal-length int/float columns)."""
    axes = arm_axes(cfg, arm)
    combos = list(itertools.product(*[range(len(v)) for _, v in axes]))
    names = [a for a, _ in axes]
    cols = {a: np.array([c[i] for c in combos], dtype=int) for i, a in enumerate(names)}
    n = len(combos)
    kind = KIND_INDEX[_ARM_KIND.get(arm)]
    deploy = KIND_INDEX[_DEPLOY_KIND.get(arm)]
    return axes, {
        "r": np.array(cfg.ranks)[cols["rank"]],
        "b": (
            np.array(cfg.bits, float)[cols["bits"]]
            if "bits" in cols
            else np.full(n, float(NF4_BITS))
        ),
        "Ni": cols["N"],
        "seed": cols["seed"],
        "kind": np.full(n, kind),
        "deploy": np.full(n, deploy),
        "conv": np.full(n, SCALES.index(conv)),
    }


def _arm_runs(cfg):
    """(label, arm, convention) for every trained arm: fp once per convention."""
    runs = []
    for arm in cfg.arms:
        if arm == "fp":
            runs += [(f"fp_{c}", "fp", c) for c in cfg.conventions]
        else:
            runs.append((arm, arm, cfg.scale))
    return runs


def _all_flat(cfg, runs):
    parts = [_flat(cfg, *run) for run in runs]
    cols = {k: np.concatenate([p[1][k] for p in parts]) for k in parts[0][1]}
    sizes = [len(p[1]["r"]) for p in parts]
    return [p[0] for p in parts], cols, np.cumsum([0] + sizes)


def _groups(runs, offs, cols):
    """Rows of the flattened grid grouped by (arm, rank): {(arm, r): row indices}. Each group
    is one vmapped training loop with the quantizer and the rank static (unpadded factors)."""
    groups = {}
    for j, (_, arm, _) in enumerate(runs):
        for i in range(offs[j], offs[j + 1]):
            groups.setdefault((arm, int(cols["r"][i])), []).append(i)
    return {g: np.asarray(rows) for g, rows in groups.items()}


def _train_fn(cfg, arm, r):
    """train_core for one (arm, rank), both static: f(setup, bits) → {"B", "A"}."""

    def one(setup, b):
        return train_core(setup, r, b, arm=arm, cfg=cfg)

    return one


def _config_fn(problem, cfg, arm, r=None):
    """config_outputs for one arm (static quantizer): f(stats, rank, bits, seed, idx, conv).
    r: a static rank (the ``rank`` argument is then ignored: unpadded training, what the grid
    runs and the benchmark's loop jits once per (arm, rank)) or None (``rank`` traced: the
    r_max-padded masked path, one compilation per arm)."""

    def one(st, rank, b, sd, i, conv):
        return config_outputs(
            problem_at(problem, sd),
            st,
            rank if r is None else r,
            b,
            sd,
            i,
            arm,
            _DEPLOY_KIND.get(arm),
            conv,
            cfg=cfg,
        )

    return one


def _inputs(table, cols, rows, dt):
    """Per-configuration arguments (stats, bits, seed, idx, conv) of ``rows``, stacked."""
    return (
        tuple(t[cols["Ni"][rows], cols["seed"][rows]] for t in table),
        jnp.asarray(cols["b"][rows], dt),
        jnp.asarray(cols["seed"][rows]),
        jnp.asarray(rows),
        jnp.asarray(cols["conv"][rows]),
    )


def grid_program(cfg: TeacherStudentConfig, problem: Problem):
    """The jitted grid: (fn, args, groups, cols) with fn(*args) → {(arm, r): outputs of the rows
    groups[(arm, r)]}; args = (the data statistics, the problem) (what run_grid runs; exposed
    for benchmarks/bench_teacher_student.py)."""
    _check_problem(problem, cfg)
    runs = _arm_runs(cfg)
    _, cols, offs = _all_flat(cfg, runs)
    groups = _groups(runs, offs, cols)
    dt = problem.W0.dtype
    order = np.concatenate(list(groups.values()))  # rows in the order they are trained
    deploy = np.array(
        [KIND_INDEX[_DEPLOY_KIND.get(arm)] for (arm, _), rows in groups.items() for _ in rows]
    )

    @jax.jit
    def grid(table, problem):
        # the teachers are an argument, not a closure constant: XLA would constant-fold the
        # per-row gather of a stacked problem (seconds of compile time, a copy per row)
        # initialisations, step keys and Pᵀ of every configuration: one vmapped call (arm-free)
        st = tuple(t[cols["Ni"][order], cols["seed"][order]] for t in table)
        setup = jax.vmap(
            lambda st_, r_, sd_, i_, c_: setup_config(
                problem_at(problem, sd_), st_, r_, sd_, i_, c_, cfg=cfg
            )
        )(
            st,
            jnp.asarray(cols["r"][order]),
            jnp.asarray(cols["seed"][order]),
            jnp.asarray(order),
            jnp.asarray(cols["conv"][order]),
        )
        start = np.cumsum([0] + [len(r) for r in groups.values()])
        part = lambda x, k: x[start[k] : start[k + 1]]  # noqa: E731  (group k's rows of `order`)
        params = [
            jax.vmap(_train_fn(cfg, arm, r))(
                jax.tree_util.tree_map(lambda x, k=k: part(x, k), setup),
                jnp.asarray(cols["b"][rows], dt),
            )
            for k, ((arm, r), rows) in enumerate(groups.items())
        ]
        params = jax.tree_util.tree_map(lambda *x: jnp.concatenate(x), *params)
        s = setup.s
        # one vmapped evaluation for every configuration (rank and deployment quantizer traced:
        # one compilation; it runs once per configuration, not once per step)
        res = jax.vmap(
            lambda st_, p_, r_, b_, s_, sd_, i_, d_: evaluate_config(
                problem_at(problem, sd_), st_, p_, r_, b_, s_, sd_, i_, d_, cfg=cfg
            )
        )(
            st,
            params,
            jnp.asarray(cols["r"][order]),
            jnp.asarray(cols["b"][order], dt),
            s,
            jnp.asarray(cols["seed"][order]),
            jnp.asarray(order),
            jnp.asarray(deploy),
        )
        return {
            g: jax.tree_util.tree_map(lambda x, k=k: part(x, k), res) for k, g in enumerate(groups)
        }

    return grid, (stats_table(problem, cfg), problem), groups, cols


def run_grid(cfg: TeacherStudentConfig, *, problem: Problem | None = None) -> dict:
    """The whole grid in one jit: one vmapped training loop per (arm, rank) (fp under every
    convention is one arm), then one vmapped evaluation.

    Returns {label: {"axes": [(name, values)], "arm", "convention", key: ndarray}} with labels
    "fp_<convention>" (one per cfg.conventions) and the other arms by name. Array shapes follow
    the axes (rank, [bits,] N, seed); ptq_* keys have a trailing bits axis. ``problem``: one
    teacher, or one per seed (stacked); None: :func:`problems_for` (cfg.teacher_per_seed).
    """
    problem = problems_for(cfg) if problem is None else problem
    runs = _arm_runs(cfg)
    axes, _, offs = _all_flat(cfg, runs)
    grid, args, groups, _ = grid_program(cfg, problem)
    raw = jax.device_get(grid(*args))
    rows = np.concatenate(list(groups.values()))
    pos_of = np.empty(len(rows), dtype=int)
    pos_of[rows] = np.arange(len(rows))  # flat row → position in the concatenated output
    flat = {
        k: np.concatenate([np.asarray(raw[g][k]) for g in groups]) for k in next(iter(raw.values()))
    }
    out = {}
    for j, (label, arm, conv) in enumerate(runs):
        shape = tuple(len(v) for _, v in axes[j])
        pos = pos_of[offs[j] : offs[j + 1]]
        out[label] = {"axes": axes[j], "arm": arm, "convention": conv}
        for k, v in flat.items():
            out[label][k] = v[pos].reshape(shape + v.shape[1:])
    return out


def run_loop(
    cfg: TeacherStudentConfig, *, problem: Problem | None = None, limit: int | None = None
) -> dict:
    """The same configurations, one call each of a function jitted for ONE configuration (once
    per arm, rank traced: the padded masked training path), from a Python loop: the reference
    for run_grid (whose unpadded static-rank path must agree with it) in the tests.
    (benchmarks/bench_teacher_student.py times the loop over the grid's own static-rank path.)

    Returns {label: list of per-configuration output dicts} in the flattened grid order;
    ``limit`` keeps the first ``limit`` configurations of each arm.
    """
    problem = problems_for(cfg) if problem is None else problem
    table = stats_table(problem, cfg)
    runs = _arm_runs(cfg)
    _, cols, offs = _all_flat(cfg, runs)
    fns = {arm: jax.jit(_config_fn(problem, cfg, arm)) for arm in {a for _, a, _ in runs}}
    dt = problem.W0.dtype
    out = {}
    for j, (label, arm, _) in enumerate(runs):
        stop = offs[j + 1] if limit is None else min(offs[j] + limit, offs[j + 1])
        rows = []
        for i in range(offs[j], stop):
            st = tuple(t[cols["Ni"][i], cols["seed"][i]] for t in table)
            rows.append(
                jax.device_get(
                    fns[arm](
                        st,
                        jnp.asarray(cols["r"][i]),
                        jnp.asarray(cols["b"][i], dt),
                        jnp.asarray(cols["seed"][i]),
                        jnp.asarray(i),
                        jnp.asarray(cols["conv"][i]),
                    )
                )
            )
        out[label] = rows
    return out
