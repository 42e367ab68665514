"""The teacher–student grid: every arm × (rank, bits, N, seed) in one `jax.jit` with `jax.vmap`.

Each configuration is one call of :func:`config_outputs` (train, then evaluate the exact
excess risk ‖(W − W*)·Σ^{1/2}‖_F² of the latent and the deployed weights). :func:`run_grid`
vmaps it over the flattened grid, one jit for all arms; :func:`run_loop` calls the same
function config by config from Python (the reference for the vmap and the benchmark).

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

from quantbounds.teacher_student import (Problem, TeacherStudentConfig, additive_prediction,
                                         excess_risk, make_problem, sample_data, student_weight,
                                         sufficient_stats, train_student, _DEPLOY_KIND)

STE_ARMS = ("ste_rtn", "ste_sr", "additive")  # trained once per bit-width
NF4_BITS = 4


def _keys(cfg: TeacherStudentConfig):
    base = jax.random.PRNGKey(cfg.key + 1)
    return jax.random.split(base, 3)  # data, init, noise


def stats_table(problem: Problem, cfg: TeacherStudentConfig):
    """Sufficient statistics for every (N, seed): arrays with leading axes (len(Ns), seeds)."""
    kdata = _keys(cfg)[0]
    Nmax = max(cfg.Ns)
    X, Y = jax.vmap(lambda j: sample_data(jax.random.fold_in(kdata, j), problem, Nmax))(
        jnp.arange(cfg.seeds))
    per_N = [jax.vmap(lambda x, y, N=N: sufficient_stats(x, y, N))(X, Y) for N in cfg.Ns]
    return tuple(jnp.stack([s[i] for s in per_N]) for i in range(3))


def config_outputs(problem: Problem, stats, r, bits, seed, idx, *, arm: str,
                   cfg: TeacherStudentConfig, convention: str | None = None):
    """Train one configuration and measure it. Scalars in, dict of scalars/arrays out.

    fp arm: excess_latent, train_loss, ptq_excess[b], ptq_qexcess[b] (= ‖s·(Q(B)Q(A) − BA)·Σ^{1/2}‖²,
    the part due to ε_BA alone), ptq_pred[b] (additive model), ptq_nf4_excess, R_A, R_B, params.
    other arms: excess_latent, excess_deployed, train_loss.
    """
    _, kinit, knoise = _keys(cfg)
    init_key = jax.random.fold_in(kinit, seed)
    noise_key = jax.random.fold_in(jax.random.fold_in(knoise, seed), idx)
    params, s = train_student(problem, stats, r, bits, init_key, noise_key, arm=arm, cfg=cfg,
                              convention=convention)
    from quantbounds.teacher_student import empirical_risk  # local: keeps the import list short
    W = student_weight(problem, params, r, s)
    out = {"excess_latent": excess_risk(W, problem.Wstar, problem.Sigma),
           "train_loss": empirical_risk(W, stats)}
    if arm == "fp":
        bvec = jnp.asarray(cfg.bits, W.dtype)

        def ptq(b):
            Wq = student_weight(problem, params, r, s, kind="rtn", bits=b, granularity=cfg.granularity)
            E = Wq - W
            return (excess_risk(Wq, problem.Wstar, problem.Sigma), jnp.sum(E * (E @ problem.Sigma)),
                    additive_prediction(problem, params, r, s, b))

        out["ptq_excess"], out["ptq_qexcess"], out["ptq_pred"] = jax.vmap(ptq)(bvec)
        Wn = student_weight(problem, params, r, s, kind="nf4", granularity=cfg.granularity)
        out["ptq_nf4_excess"] = excess_risk(Wn, problem.Wstar, problem.Sigma)
        mask = (jnp.arange(cfg.r_max) < r).astype(W.dtype)
        out["R_B"] = jnp.max(jnp.abs(params["B"] * mask[None, :]))
        out["R_A"] = jnp.max(jnp.abs(params["A"] * mask[:, None]))
        out["B"], out["A"], out["scale"] = params["B"], params["A"], s
    else:
        Wd = student_weight(problem, params, r, s, kind=_DEPLOY_KIND[arm], bits=bits,
                            key=jax.random.fold_in(noise_key, 2**31 - 1), granularity=cfg.granularity)
        out["excess_deployed"] = excess_risk(Wd, problem.Wstar, problem.Sigma)
    return out


def arm_axes(cfg: TeacherStudentConfig, arm: str):
    """Grid axes of an arm: names and values (fp and ste_nf4 have no bits axis)."""
    ax = [("rank", cfg.ranks)]
    if arm in STE_ARMS:
        ax.append(("bits", cfg.bits))
    ax += [("N", cfg.Ns), ("seed", tuple(range(cfg.seeds)))]
    return ax


def _flat(cfg, arm):
    axes = arm_axes(cfg, arm)
    combos = list(itertools.product(*[range(len(v)) for _, v in axes]))
    names = [a for a, _ in axes]
    cols = {a: np.array([c[i] for c in combos]) for i, a in enumerate(names)}
    r = np.array(cfg.ranks)[cols["rank"]]
    b = np.array(cfg.bits)[cols["bits"]] if "bits" in cols else np.full(len(combos), NF4_BITS)
    return axes, r, b, cols["N"], cols["seed"]


def _arm_runs(cfg):
    """(label, arm, convention) for every trained arm: fp once per convention."""
    runs = []
    for arm in cfg.arms:
        if arm == "fp":
            runs += [(f"fp_{c}", "fp", c) for c in cfg.conventions]
        else:
            runs.append((arm, arm, cfg.scale))
    return runs


def run_grid(cfg: TeacherStudentConfig, *, problem: Problem | None = None) -> dict:
    """The whole grid in one jit. Returns {label: {"axes": [(name, values)], key: ndarray}}.

    Labels: "fp_<convention>" for each convention, and the STE/additive arms by name. Array
    shapes follow the axes (rank, [bits,] N, seed), with a trailing bits axis for ptq_* keys.
    """
    problem = problem or make_problem(cfg)
    runs = _arm_runs(cfg)
    flats = {label: _flat(cfg, arm) for label, arm, _ in runs}

    @jax.jit
    def all_arms(problem, table):
        res = {}
        for label, arm, conv in runs:
            _, r, b, Ni, sd = flats[label]
            st = tuple(t[Ni, sd] for t in table)
            f = lambda st_, r_, b_, s_, i_, arm=arm, conv=conv: config_outputs(  # noqa: E731
                problem, st_, r_, b_, s_, i_, arm=arm, cfg=cfg, convention=conv)
            res[label] = jax.vmap(f)(st, jnp.asarray(r), jnp.asarray(b, problem.W0.dtype),
                                     jnp.asarray(sd), jnp.arange(len(r)))
        return res

    raw = jax.device_get(all_arms(problem, stats_table(problem, cfg)))
    out = {}
    for label, arm, conv in runs:
        axes = flats[label][0]
        shape = tuple(len(v) for _, v in axes)
        out[label] = {"axes": axes, "arm": arm, "convention": conv}
        for k, v in raw[label].items():
            out[label][k] = np.asarray(v).reshape(shape + np.shape(v)[1:])
    return out


def run_loop(cfg: TeacherStudentConfig, *, problem: Problem | None = None, labels=None,
             limit: int | None = None) -> dict:
    """The same configurations, one jitted call each from a Python loop (reference/benchmark).

    Returns {label: list of per-configuration output dicts} in the flattened grid order;
    ``limit`` keeps the first ``limit`` configurations of each arm.
    """
    problem = problem or make_problem(cfg)
    table = stats_table(problem, cfg)
    out = {}
    for label, arm, conv in _arm_runs(cfg):
        if labels is not None and label not in labels:
            continue
        _, r, b, Ni, sd = _flat(cfg, arm)
        f = jax.jit(lambda st_, r_, b_, s_, i_, arm=arm, conv=conv: config_outputs(
            problem, st_, r_, b_, s_, i_, arm=arm, cfg=cfg, convention=conv))
        n = len(r) if limit is None else min(limit, len(r))
        rows = []
        for i in range(n):
            st = tuple(t[Ni[i], sd[i]] for t in table)
            rows.append(jax.device_get(f(st, jnp.asarray(r[i]), jnp.asarray(b[i], problem.W0.dtype),
                                         jnp.asarray(sd[i]), jnp.asarray(i))))
        out[label] = rows
    return out
