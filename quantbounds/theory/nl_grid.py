"""The nonlinear teacher–student grid: every arm × (rank, [bits,] N, seed) in one jit.

The model, its exact excess risk and one configuration's training/evaluation are in
``quantbounds.theory.nonlinear_student``; this module lays out the grid (keys, nested data sets,
one vmapped training per N and one vmapped evaluation) and its Python-loop reference.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from quantbounds.theory.nonlinear_student import (
    _DEPLOY_KIND,
    _TRAIN_KIND,
    NonlinearConfig,
    NonlinearProblem,
    draw_uniforms,
    evaluate_nonlinear,
    make_nonlinear_problem,
    sample_nonlinear,
    teacher_of,
    train_nonlinear,
)


def _keys(cfg: NonlinearConfig):
    return jax.random.split(jax.random.PRNGKey(cfg.key + 1), 3)  # data, init, noise


def arm_axes(cfg: NonlinearConfig, arm: str):
    """Grid axes of an arm, in array order: fp has no bits axis."""
    ax = [("rank", cfg.ranks)]
    if arm != "fp":
        ax.append(("bits", cfg.trained_bits))
    return ax + [("N", cfg.Ns), ("seed", tuple(range(cfg.seeds)))]


def _rows(cfg: NonlinearConfig):
    """Configurations of one N, flattened: (labels, columns). Same rows for every N."""
    rows = []
    for arm in cfg.arms:
        axes = [a for a in arm_axes(cfg, arm) if a[0] != "N"]
        for combo in itertools.product(*[range(len(v)) for _, v in axes]):
            c = dict(zip([a for a, _ in axes], combo))
            rows.append(
                (
                    arm,
                    cfg.ranks[c["rank"]],
                    float(cfg.trained_bits[c["bits"]]) if "bits" in c else 16.0,
                    c["seed"],
                )
            )
    cols = {
        "r": np.array([x[1] for x in rows]),
        "b": np.array([x[2] for x in rows]),
        "seed": np.array([x[3] for x in rows]),
        "kind": np.array([_TRAIN_KIND[x[0]] for x in rows]),
        "deploy": np.array([_DEPLOY_KIND[x[0]] for x in rows]),
    }
    return [x[0] for x in rows], cols


def _data(problems: NonlinearProblem, cfg: NonlinearConfig):
    """For every seed j (teacher j of the stack ``problems``): X, Y of shape (seeds, max N, ·),
    whose first N rows are seed j's data set at N (nested), and a fresh test set X_test
    (seeds, n_test, n); one draw of max N + n_test samples from fold_in(k_data, j)."""
    kdata = _keys(cfg)[0]
    Nmax = max(cfg.Ns)

    @jax.jit
    def build():
        X, Y = jax.vmap(
            lambda j: sample_nonlinear(
                jax.random.fold_in(kdata, j),
                teacher_of(problems, j),
                Nmax + cfg.n_test,
                activation=cfg.activation,
            )
        )(jnp.arange(cfg.seeds))
        return X[:, :Nmax], Y[:, :Nmax], X[:, Nmax:]

    return build()


def _noise_key(cfg, Ni, row):
    return jax.random.fold_in(jax.random.fold_in(_keys(cfg)[2], Ni), row)


def train_config(problem, X, Y, r, kind, b, seed, Ni, row, *, cfg: NonlinearConfig):
    """Train one configuration. Keys: init = fold_in(k_init, seed) (shared by every arm, rank and
    N of a seed: common random numbers); training noise = fold_in(fold_in(k_noise, Ni), row)."""
    init_key = jax.random.fold_in(_keys(cfg)[1], seed)
    return train_nonlinear(problem, X, Y, r, kind, b, init_key, _noise_key(cfg, Ni, row), cfg=cfg)


def evaluate_config(problem, params, X_test, r, deploy, b, Ni, row, *, cfg: NonlinearConfig):
    """Evaluate one trained configuration; deployment noise from fold_in(training key, 2³¹ − 1)."""
    u = draw_uniforms(
        jax.random.fold_in(_noise_key(cfg, Ni, row), 2**31 - 1),
        cfg.h,
        cfg.r_max,
        cfg.n,
        dtype=problem.W1_0.dtype,
    )
    return evaluate_nonlinear(problem, params, r, deploy, b, u, X_test, cfg=cfg)


def config_output(
    problem, X, Y, X_test, r, kind, deploy, b, seed, Ni, row, *, cfg: NonlinearConfig
):
    """train_config then evaluate_config: one configuration (what the Python loop calls)."""
    params = train_config(problem, X, Y, r, kind, b, seed, Ni, row, cfg=cfg)
    return evaluate_config(problem, params, X_test, r, deploy, b, Ni, row, cfg=cfg)


def run_nonlinear_grid(cfg: NonlinearConfig, *, problems: NonlinearProblem | None = None) -> dict:
    """The whole grid in one jit: per N (a static shape, so no configuration pays for the largest
    N) one vmapped training of every (arm, rank, bits, seed), then one vmapped evaluation of all.
    Seed j learns teacher j of ``problems`` (default make_nonlinear_problem(cfg, seeds=cfg.seeds)).

    Returns {arm: {"axes": [(name, values)], "arm": arm, key: ndarray}}; arrays follow the axes
    (rank, [bits,] N, seed) of :func:`arm_axes`; ptq_* keys have a trailing axis over cfg.bits.
    """
    problems = problems or make_nonlinear_problem(cfg, seeds=cfg.seeds)
    labels, cols = _rows(cfg)
    dt = problems.W1_0.dtype
    c = {k: jnp.asarray(v, dt if k == "b" else None) for k, v in cols.items()}
    rows = jnp.arange(len(labels))

    @jax.jit
    def grid(Xall, Yall, X_test):
        params = []
        for Ni, N in enumerate(cfg.Ns):
            X, Y = Xall[:, :N], Yall[:, :N]
            params.append(
                jax.vmap(
                    lambda r, k, b, sd, row, Ni=Ni, X=X, Y=Y: train_config(
                        teacher_of(problems, sd), X[sd], Y[sd], r, k, b, sd, Ni, row, cfg=cfg
                    )
                )(c["r"], c["kind"], c["b"], c["seed"], rows)
            )
        params = jax.tree_util.tree_map(lambda *x: jnp.concatenate(x), *params)  # (N·rows, ...)
        tile = lambda v: jnp.tile(v, len(cfg.Ns))  # noqa: E731
        Nidx = jnp.repeat(jnp.arange(len(cfg.Ns)), len(labels))
        out = jax.vmap(
            lambda p, r, d, b, sd, Ni, row: evaluate_config(
                teacher_of(problems, sd), p, X_test[sd], r, d, b, Ni, row, cfg=cfg
            )
        )(params, tile(c["r"]), tile(c["deploy"]), tile(c["b"]), tile(c["seed"]), Nidx, tile(rows))
        return jax.tree_util.tree_map(
            lambda x: jnp.moveaxis(x.reshape((len(cfg.Ns), len(labels)) + x.shape[1:]), 0, 1), out
        )

    raw = jax.device_get(grid(*_data(problems, cfg)))
    labels = np.array(labels)
    out = {}
    for arm in cfg.arms:
        axes = arm_axes(cfg, arm)
        sel = np.flatnonzero(labels == arm)
        shape = tuple(len(v) for a, v in axes if a != "N")  # rows are ordered (rank, [bits,] seed)
        out[arm] = {"axes": axes, "arm": arm}
        for k, v in raw.items():
            v = np.asarray(v)[sel].reshape(shape + v.shape[1:])  # (rank, [bits,] seed, N, ...)
            out[arm][k] = np.moveaxis(v, len(shape), len(shape) - 1)  # (rank, [bits,] N, seed, ...)
    return out


def run_nonlinear_loop(
    cfg: NonlinearConfig,
    *,
    problems: NonlinearProblem | None = None,
    limit: int | None = None,
    N_indices=None,
) -> dict:
    """The same configurations one at a time from Python (the reference for the vmap): returns
    {(arm, N): list of output dicts} in row order; ``limit`` keeps the first rows of each arm,
    ``N_indices`` (indices into cfg.Ns) the listed N only."""
    problems = problems or make_nonlinear_problem(cfg, seeds=cfg.seeds)
    labels, cols = _rows(cfg)
    Xall, Yall, X_test = _data(problems, cfg)
    dt = problems.W1_0.dtype
    out = {}
    for Ni, N in enumerate(cfg.Ns):
        if N_indices is not None and Ni not in N_indices:
            continue
        f = jax.jit(
            lambda p, X, Y, Xt, r, k, d, b, sd, row, Ni=Ni: config_output(
                p, X, Y, Xt, r, k, d, b, sd, Ni, row, cfg=cfg
            )
        )
        for arm in cfg.arms:
            rows = [i for i, lab in enumerate(labels) if lab == arm][:limit]
            out[(arm, N)] = []
            for i in rows:
                sd = int(cols["seed"][i])
                out[(arm, N)].append(
                    jax.device_get(
                        f(
                            teacher_of(problems, sd),
                            Xall[sd, :N],
                            Yall[sd, :N],
                            X_test[sd],
                            cols["r"][i],
                            cols["kind"][i],
                            cols["deploy"][i],
                            jnp.asarray(cols["b"][i], dt),
                            sd,
                            i,
                        )
                    )
                )
    return out
