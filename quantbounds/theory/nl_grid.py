"""The nonlinear teacher–student grid: every arm × (rank, [bits,] N, seed) in one jit.

The model, its exact excess risk and one configuration's training/evaluation are in
``quantbounds.theory.nonlinear_student``; this module lays out the grid (keys, nested data sets,
one vmapped training per N, the fp rows' L-BFGS finish, one vmapped evaluation) and its
Python-loop reference. Both run in cfg.dtype (float64 by default: x64 is switched on for the
call and back off after it, whatever the caller's setting).

Per fit, besides the excess risks of :func:`nonlinear_student.evaluate_nonlinear`, the grid
returns the convergence record (arrays over the arm's axes, like the excesses):

- ``train_loss``, ``train_loss_adam``: the training objective at the returned fit and at the end
  of the Adam phase (equal for arms without the L-BFGS finish);
- ``grad_norm``: ‖∇‖₂ of the training objective at the returned fit (quantized arms: the
  straight-through gradient of the noise-free forward);
- ``converged``: 1.0 where the fit is stationary, grad_norm ≤ cfg.grad_tol (only arms in
  FINISHED_ARMS, i.e. fp, can be; the quantized arms are 0.0: fixed budget);
- ``lbfgs_iterations``: L-BFGS iterations run (0 without the finish);
- ``weight_norm``: ‖B·A‖_F (large with converged = 0: the loss's infimum is not attained);
- ``excess_latent_adam``: the latent excess of the Adam-phase fit (the early-stopped reading),
  so that excess_latent / excess_latent_adam − 1 is the effect of training to convergence;

and ``training`` (a string, :func:`nonlinear_student.training_description`) per arm.
"""

from __future__ import annotations

import contextlib
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from quantbounds.theory.nonlinear_student import (
    _DEPLOY_KIND,
    _TRAIN_KIND,
    FINISHED_ARMS,
    NonlinearConfig,
    NonlinearProblem,
    draw_uniforms,
    evaluate_nonlinear,
    finish_nonlinear,
    fit_diagnostics,
    latent_excess,
    make_nonlinear_problem,
    pad_rows,
    sample_nonlinear,
    teacher_of,
    train_nonlinear,
    training_description,
)

_ARRAYS = ("W1_0", "W1_star", "W2", "Sigma", "Sigma_half")
ADAM = "_adam"  # suffix of the early-stopped reading of the arms in FINISHED_ARMS


def precision(cfg: NonlinearConfig):
    """Context: cfg.dtype's precision (float64: x64 on for the block, restored after it)."""
    return jax.enable_x64(True) if cfg.dtype == "float64" else contextlib.nullcontext()


def _problems(cfg: NonlinearConfig, problems: NonlinearProblem | None) -> NonlinearProblem:
    """The teacher stack in cfg.dtype (drawn from cfg when None; call inside precision(cfg))."""
    dt = jnp.dtype(cfg.dtype)
    if problems is None:
        return make_nonlinear_problem(cfg, seeds=cfg.seeds, dtype=dt)
    return problems._replace(**{f: jnp.asarray(getattr(problems, f), dt) for f in _ARRAYS})


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


def train_output(problem, X, Y, r, kind, b, seed, Ni, row, *, cfg: NonlinearConfig):
    """train_config and the training objective at its end: (Adam's params, train_loss_adam)."""
    adam = train_config(problem, X, Y, r, kind, b, seed, Ni, row, cfg=cfg)
    return adam, fit_diagnostics(problem, adam, X, Y, r, kind, b, cfg=cfg)["train_loss"]


def fit_output(
    problem,
    params,
    adam,
    train_loss_adam,
    iterations,
    finished,
    Xp,
    Yp,
    weights,
    X_test,
    r,
    kind,
    deploy,
    b,
    Ni,
    row,
    *,
    cfg: NonlinearConfig,
):
    """Everything the grid returns for one fit: evaluate_config's excesses of ``params``, the
    latent excess of the Adam phase's ``adam`` and the convergence record (module docstring).
    Xp, Yp, weights: the training set padded by nonlinear_student.pad_rows (one shape for all N);
    finished: whether the arm is in FINISHED_ARMS (may be traced)."""
    out = evaluate_config(problem, params, X_test, r, deploy, b, Ni, row, cfg=cfg)
    out["excess_latent_adam"] = latent_excess(problem, adam, r, X_test, cfg=cfg)
    out.update(fit_diagnostics(problem, params, Xp, Yp, r, kind, b, weights=weights, cfg=cfg))
    out["train_loss_adam"] = train_loss_adam
    out["lbfgs_iterations"] = jnp.asarray(iterations, jnp.int32)
    out["converged"] = (finished & (out["grad_norm"] <= cfg.grad_tol)).astype(Xp.dtype)
    return out


_train_jit = jax.jit(train_output, static_argnames=("cfg",))
_fit_output_jit = jax.jit(fit_output, static_argnames=("cfg",))


def config_output(
    problem,
    X,
    Y,
    X_test,
    r,
    kind,
    deploy,
    b,
    seed,
    Ni,
    row,
    *,
    cfg: NonlinearConfig,
    finish=False,
    with_adam=False,
):
    """One configuration, as the Python loop runs it: train_output (jit), the L-BFGS finish
    (nonlinear_student.finish_nonlinear) when ``finish`` (the arm is in FINISHED_ARMS), then
    fit_output (jit); with_adam: (output, the Adam-phase fit's output)."""
    adam, loss_adam = _train_jit(problem, X, Y, r, kind, b, seed, Ni, row, cfg=cfg)
    params, k = finish_nonlinear(problem, adam, X, Y, r, cfg=cfg) if finish else (adam, 0)
    Xp, Yp, w = pad_rows(X, Y, max(cfg.Ns))

    def output(q, iterations):
        return _fit_output_jit(
            problem, q, adam, loss_adam, iterations, finish, Xp, Yp, w, X_test, r, kind, deploy,
            b, Ni, row, cfg=cfg,
        )  # fmt: skip

    return (output(params, k), output(adam, 0)) if with_adam else output(params, k)


def run_nonlinear_grid(cfg: NonlinearConfig, *, problems: NonlinearProblem | None = None) -> dict:
    """The whole grid in one jit: per N (a static shape, so no configuration pays for the largest
    N) one vmapped Adam training of every (arm, rank, bits, seed), one vmapped L-BFGS finish of
    the fp rows, then one vmapped evaluation of all. Seed j learns teacher j of ``problems``
    (default make_nonlinear_problem(cfg, seeds=cfg.seeds); cast to cfg.dtype). Runs in cfg.dtype.

    Returns {arm: {"axes": [(name, values)], "arm": arm, "training": text, key: ndarray}}; arrays
    follow the axes (rank, [bits,] N, seed) of :func:`arm_axes`; ptq_* keys have a trailing axis
    over cfg.bits; the convergence record's keys are listed in the module docstring. Each arm in
    FINISHED_ARMS also comes as arm + "_adam" ("fp_adam"): the same keys for its Adam-phase fits,
    the early-stopped reading (lbfgs_iterations 0; converged where Adam's end is stationary).
    """
    with precision(cfg):
        raw, labels = _run_grid(cfg, _problems(cfg, problems))
    out = {}
    for arm in list(cfg.arms) + [a + ADAM for a in cfg.arms if a in FINISHED_ARMS]:
        base = arm.removesuffix(ADAM)
        axes = arm_axes(cfg, base)
        sel = np.flatnonzero(labels == arm)
        shape = tuple(len(v) for a, v in axes if a != "N")  # rows are ordered (rank, [bits,] seed)
        text = training_description(cfg, base, early_stopped=arm != base)
        out[arm] = {"axes": axes, "arm": arm, "training": text}
        for k, v in raw.items():
            v = np.asarray(v)[sel].reshape(shape + v.shape[1:])  # (rank, [bits,] seed, N, ...)
            out[arm][k] = np.moveaxis(v, len(shape), len(shape) - 1)  # (rank, [bits,] N, seed, ...)
    return out


def _run_grid(cfg: NonlinearConfig, problems: NonlinearProblem):
    labels, cols = _rows(cfg)
    labels = np.array(labels)
    dt = problems.W1_0.dtype
    c = {k: jnp.asarray(v, dt if k == "b" else None) for k, v in cols.items()}
    rows = jnp.arange(len(labels))
    finished = np.isin(labels, FINISHED_ARMS)
    Xall, Yall, X_test = _data(problems, cfg)
    Nmax = max(cfg.Ns)

    @jax.jit
    def train(Xall, Yall):  # Adam: per N one vmap over all rows; then (N·rows, ...)
        per_N = [
            jax.vmap(
                lambda r, k, b, sd, row, Ni=Ni, N=N: train_output(
                    teacher_of(problems, sd),
                    Xall[sd, :N],
                    Yall[sd, :N],
                    r,
                    k,
                    b,
                    sd,
                    Ni,
                    row,
                    cfg=cfg,
                )
            )(c["r"], c["kind"], c["b"], c["seed"], rows)
            for Ni, N in enumerate(cfg.Ns)
        ]
        return jax.tree_util.tree_map(lambda *x: jnp.concatenate(x), *per_N)

    adam, loss_adam = jax.device_get(train(Xall, Yall))
    params = jax.tree_util.tree_map(np.array, adam)  # writable copies
    iters = np.zeros(len(cfg.Ns) * len(labels), np.int32)
    for Ni, N in enumerate(cfg.Ns):  # the L-BFGS finish of the fp rows, one fit at a time
        for i in np.flatnonzero(finished) if cfg.lbfgs_steps else ():
            j, sd = Ni * len(labels) + i, int(cols["seed"][i])
            p, iters[j] = finish_nonlinear(
                teacher_of(problems, sd),
                {k: v[j] for k, v in adam.items()},
                Xall[sd, :N],
                Yall[sd, :N],
                int(cols["r"][i]),
                cfg=cfg,
            )
            for k in p:
                params[k][j] = np.asarray(p[k])

    # the rows evaluated: every row's returned fit, then the FINISHED_ARMS rows' Adam-phase fits
    # (arm + ADAM: the early-stopped reading), per N
    nN, R = len(cfg.Ns), len(labels)
    fin = np.flatnonzero(finished)
    orig = np.concatenate([np.arange(R), fin])
    early = np.arange(orig.size) >= R

    def pick(fit, alt):  # (N·rows, ...) → (N·len(orig), ...): fit's rows, then alt's early ones
        fit, alt = (x.reshape((nN, R) + x.shape[1:])[:, orig] for x in (fit, alt))
        sel = early.reshape((1, -1) + (1,) * (fit.ndim - 2))
        return np.where(sel, alt, fit).reshape((-1,) + fit.shape[2:])

    params = {k: pick(params[k], adam[k]) for k in params}
    adam = {k: pick(adam[k], adam[k]) for k in adam}
    loss_adam = pick(loss_adam, loss_adam)
    iters = pick(iters, np.zeros_like(iters))
    labels = np.concatenate([labels, np.char.add(labels[fin], ADAM)])
    finished, rows = finished[orig], jnp.asarray(orig)
    c = {k: v[orig] for k, v in c.items()}
    tile = lambda v: jnp.tile(jnp.asarray(v), len(cfg.Ns))  # noqa: E731
    Nidx = jnp.repeat(jnp.arange(len(cfg.Ns)), len(labels))
    Ns = jnp.asarray(cfg.Ns)

    @jax.jit
    def evaluate(params, adam, loss_adam, iters, Xall, Yall, X_test):  # one vmap over N·rows
        def one(q, a, la, it, f, r, k, d, b, sd, Ni, row):
            # the nested training set at N, padded to Nmax: the first N rows weigh 1/N, the rest 0
            # (as nonlinear_student.pad_rows, whose zero rows contribute the same exact zeros)
            N = Ns[Ni]
            w = jnp.where(jnp.arange(Nmax) < N, 1.0 / N, 0.0).astype(dt)
            return fit_output(
                teacher_of(problems, sd),
                q,
                a,
                la,
                it,
                f,
                Xall[sd],
                Yall[sd],
                w,
                X_test[sd],
                r,
                k,
                d,
                b,
                Ni,
                row,
                cfg=cfg,
            )

        out = jax.vmap(one)(
            params,
            adam,
            loss_adam,
            iters,
            tile(finished),
            tile(c["r"]),
            tile(c["kind"]),
            tile(c["deploy"]),
            tile(c["b"]),
            tile(c["seed"]),
            Nidx,
            tile(rows),
        )
        return jax.tree_util.tree_map(
            lambda x: jnp.moveaxis(x.reshape((len(cfg.Ns), len(labels)) + x.shape[1:]), 0, 1), out
        )

    raw = evaluate(params, adam, loss_adam, iters, Xall[:, :Nmax], Yall[:, :Nmax], X_test)
    return jax.device_get(raw), labels


def run_nonlinear_loop(
    cfg: NonlinearConfig,
    *,
    problems: NonlinearProblem | None = None,
    limit: int | None = None,
    N_indices=None,
) -> dict:
    """The same configurations one at a time from Python (the reference for the vmap): returns
    {(arm, N): list of output dicts} in row order (arms as run_nonlinear_grid's, "fp_adam" too);
    ``limit`` keeps the first rows of each arm,
    ``N_indices`` (indices into cfg.Ns) the listed N only. Runs in cfg.dtype."""
    with precision(cfg):
        return _run_loop(cfg, _problems(cfg, problems), limit, N_indices)


def _run_loop(cfg, problems, limit, N_indices):
    labels, cols = _rows(cfg)
    Xall, Yall, X_test = _data(problems, cfg)
    dt = problems.W1_0.dtype
    out = {}
    for Ni, N in enumerate(cfg.Ns):
        if N_indices is not None and Ni not in N_indices:
            continue
        for arm in cfg.arms:
            rows = [i for i, lab in enumerate(labels) if lab == arm][:limit]
            fin = arm in FINISHED_ARMS
            out[(arm, N)] = []
            if fin:
                out[(arm + ADAM, N)] = []
            for i in rows:
                sd = int(cols["seed"][i])
                res = config_output(
                    teacher_of(problems, sd),
                    Xall[sd, :N],
                    Yall[sd, :N],
                    X_test[sd],
                    int(cols["r"][i]),
                    int(cols["kind"][i]),
                    int(cols["deploy"][i]),
                    jnp.asarray(cols["b"][i], dt),
                    sd,
                    Ni,
                    i,
                    cfg=cfg,
                    finish=fin,
                    with_adam=fin,
                )
                if fin:
                    out[(arm + ADAM, N)].append(jax.device_get(res[1]))
                    res = res[0]
                out[(arm, N)].append(jax.device_get(res))
    return out
