"""The teacher–student grid (quantbounds.theory.ts_grid) against references that could disagree:
a Python loop over one configuration at a time (the padded, masked training path against the
grid's unpadded static-rank one), direct re-computation of the data statistics and of the
additive model's prediction, and the grid's own layout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quantbounds.theory.teacher_student import (
    TeacherStudentConfig,
    additive_prediction,
    make_problem,
    make_problems,
    problem_at,
    sample_data,
)
from quantbounds.theory.ts_grid import arm_axes, run_grid, run_loop, stats_table

SMALL = dict(
    m=4,
    n=6,
    r_star=1,
    ranks=(1, 3),
    bits=(2, 4),
    Ns=(20, 40),
    seeds=2,
    steps=30,
    lr=0.05,
    label_noise=0.3,
    cond=5.0,
    teacher_norm=1.0,
)


def test_vmapped_grid_equals_python_loop():
    cfg = TeacherStudentConfig(
        **{
            **SMALL,
            "conventions": ("one", "alpha_r"),
            "steps": 15,
            "arms": ("fp", "ste_rtn", "additive"),
        }
    )
    p = make_problem(cfg)
    grid = run_grid(cfg, problem=p)
    loop = run_loop(cfg, problem=p)
    assert set(loop) == {"fp_one", "fp_alpha_r", "ste_rtn", "additive"}
    for label, rows in loop.items():
        axes = grid[label]["axes"]
        shape = tuple(len(v) for _, v in axes)
        assert len(rows) == int(np.prod(shape))
        for flat, row in enumerate(rows):
            idx = np.unravel_index(flat, shape)
            for key in (
                "excess_latent",
                "excess_deployed",
                "train_loss",
                "ptq_qexcess",
                "ptq_nf4_excess",
            ):
                np.testing.assert_allclose(
                    grid[label][key][idx],
                    row[key],
                    rtol=1e-7,
                    atol=1e-12,
                    err_msg=f"{label} {key} {idx}",
                )
    # the arms differ from each other (a vmap that mixed configurations up would not show this)
    assert not np.allclose(
        grid["ste_rtn"]["excess_deployed"][:, 0], grid["ste_rtn"]["excess_deployed"][:, 1]
    )
    assert not np.allclose(grid["fp_one"]["excess_latent"], grid["fp_alpha_r"]["excess_latent"])


def test_stats_table_nested_data():
    cfg = TeacherStudentConfig(**SMALL)
    p = make_problem(cfg)
    Sxx, Cyx, yy = stats_table(p, cfg)
    assert Sxx.shape == (2, 2, cfg.n, cfg.n)
    # N = 40 statistics = average of the first-20 statistics and the rows 20…39
    from quantbounds.theory.ts_grid import _keys

    X, Y = sample_data(jax.random.fold_in(_keys(cfg)[0], 1), p, 40)
    np.testing.assert_allclose(np.asarray(Sxx[1, 1]), np.asarray(X.T @ X / 40), rtol=1e-12)
    np.testing.assert_allclose(
        np.asarray(Sxx[0, 1]), np.asarray(X[:20].T @ X[:20] / 20), rtol=1e-12
    )


def test_stochastic_nf4_additive_per_channel_equal_the_loop_and_the_layout():
    """SR, NF4 and additive training, per-channel ranges: the grid (unpadded, static rank and
    quantizer) against the loop (padded to r_max, masked, quantizer a traced index); the
    grid's layout; ptq_pred recomputed from the returned factors."""
    cfg = TeacherStudentConfig(
        **{
            **SMALL,
            "steps": 10,
            "Ns": (20,),
            "seeds": 1,
            "bits": (3,),
            "granularity": "channel",
            "arms": ("ste_sr", "ste_nf4", "additive"),
        }
    )
    p = make_problem(cfg)
    grid = run_grid(cfg, problem=p)
    loop = run_loop(cfg, problem=p)
    assert set(grid) == set(loop) == {"ste_sr", "ste_nf4", "additive"}
    for label, rows in loop.items():
        g = grid[label]
        assert g["axes"] == arm_axes(cfg, label)
        shape = tuple(len(v) for _, v in g["axes"])
        assert g["ptq_pred"].shape == shape + (len(cfg.bits),) and g["B"].shape == shape + (
            cfg.m,
            cfg.r_max,
        )
        for flat, row in enumerate(rows):
            idx = np.unravel_index(flat, shape)
            for key in ("excess_latent", "excess_deployed", "ptq_excess", "ptq_pred", "B", "A"):
                np.testing.assert_allclose(
                    g[key][idx], row[key], rtol=1e-7, atol=1e-12, err_msg=f"{label} {key} {idx}"
                )
    g = grid["additive"]
    for idx in np.ndindex(*g["excess_latent"].shape):
        r = cfg.ranks[idx[0]]
        np.testing.assert_array_equal(g["B"][idx][:, r:], 0.0)  # the rank mask is honoured
        params = {"B": jnp.asarray(g["B"][idx]), "A": jnp.asarray(g["A"][idx])}
        want = [
            float(additive_prediction(p, params, r, float(g["scale"][idx]), b)) for b in cfg.bits
        ]
        np.testing.assert_allclose(g["ptq_pred"][idx], want, rtol=1e-10)


def test_teacher_per_seed_grid_is_the_single_teacher_grid_seed_by_seed():
    """A stacked problem (one teacher per seed): the grid equals the Python loop, and seed j's
    cells equal those of a grid run with teacher j for every seed (the keys of data, init and
    noise depend on the seed index only)."""
    cfg = TeacherStudentConfig(
        **{**SMALL, "steps": 10, "arms": ("fp", "ste_rtn"), "teacher_per_seed": True}
    )
    ps = make_problems(cfg)
    grid = run_grid(cfg)  # problems_for(cfg): the stacked teachers
    loop = run_loop(cfg, problem=ps)
    for label, rows in loop.items():
        shape = tuple(len(v) for _, v in grid[label]["axes"])
        for flat, row in enumerate(rows):
            idx = np.unravel_index(flat, shape)
            np.testing.assert_allclose(grid[label]["excess_deployed"][idx], row["excess_deployed"],
                                       rtol=1e-7, atol=1e-12)
    for j in range(cfg.seeds):
        single = run_grid(cfg, problem=problem_at(ps, j))
        for label in grid:
            for key in ("excess_latent", "excess_deployed", "ptq_qexcess"):
                np.testing.assert_allclose(grid[label][key][..., j, :] if key == "ptq_qexcess"
                                           else grid[label][key][..., j],
                                           single[label][key][..., j, :] if key == "ptq_qexcess"
                                           else single[label][key][..., j],
                                           rtol=1e-9, atol=1e-14, err_msg=f"{label} {key} {j}")
    assert not np.allclose(grid["fp_one"]["excess_latent"][..., 0],
                           grid["fp_one"]["excess_latent"][..., 1])


_ISA_SCRIPT = """
import json, sys
import jax
jax.config.update("jax_enable_x64", sys.argv[3] == "float64")
import numpy as np
import pytest
from quantbounds.theory.teacher_student import TeacherStudentConfig
from quantbounds.theory.ts_grid import run_grid
cfg = TeacherStudentConfig(**{k: tuple(v) if isinstance(v, list) else v
                              for k, v in json.loads(sys.argv[1]).items()})
out = run_grid(cfg)
json.dump({a: {k: np.asarray(d[k]).tolist() for k in ("excess_deployed", "excess_latent")}
           for a, d in out.items()}, open(sys.argv[2], "w"))
"""


@pytest.mark.slow
def test_float64_straight_through_arms_do_not_move_with_the_vector_isa(tmp_path):
    """The audit's verdicts run in float64 because the straight-through arms are chaotic in
    float32 (a rounding-level difference flips round-to-nearest decisions; AVX-512 against AVX2
    moved a committed verdict). Two processes whose XLA code generation is capped at different
    ISAs (SSE4.2: no FMA, 2-wide float64 vectors; against this machine's best), as two CPUs
    differ: in float64 every arm agrees to 1e−9 relative (seen ≤ 1e−13)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    cfg = dict(m=8, n=12, r_star=2, ranks=(2, 4), bits=(2, 3, 4), Ns=(32, 128), seeds=3,
               steps=200, arms=("ste_rtn", "ste_sr"), conventions=("one",),
               teacher_per_seed=True)
    root = Path(__file__).resolve().parents[2]

    def run(isa):
        env = {**os.environ, "JAX_PLATFORMS": "cpu"}
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "")
                            + (f" --xla_cpu_max_isa={isa}" if isa else "")).strip()
        env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
        path = tmp_path / f"{isa}.json"
        subprocess.run([sys.executable, "-c", _ISA_SCRIPT, json.dumps(cfg), str(path), "float64"],
                       env=env, check=True, timeout=600, cwd=tmp_path)
        return json.loads(path.read_text())

    native, sse = run(None), run("SSE4_2")
    for arm in native:
        for key in ("excess_deployed", "excess_latent"):
            a, b = np.asarray(native[arm][key]), np.asarray(sse[arm][key])
            assert np.max(np.abs(a - b) / a) <= 1e-9, (arm, key)
