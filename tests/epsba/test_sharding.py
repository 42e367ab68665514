"""Padding and sharding of the Monte Carlo grid (quantbounds.epsba.sharding).

Claims checked: ranks padded to a common size give exactly the unpadded samples; the result
does not depend on how ranks are bucketed; a run over two (forced) host devices, in a
subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=2, returns the same numbers
as the single-device run in this process, and its work really is split over both devices.
"""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from quantbounds.epsba.montecarlo import ranges, simulate_grid
from quantbounds.epsba.sharding import build_unit_runner, check_mesh, device_mesh, map_units
from quantbounds.epsba.units import run_additive


def _stack(fac, rpad):
    m, n = fac[0][0].shape[0], fac[0][1].shape[1]
    Bs, As = np.zeros((len(fac), m, rpad)), np.zeros((len(fac), rpad, n))
    RBt, RA = np.zeros((len(fac), rpad, 1)), np.zeros((len(fac), rpad, 1))
    for i, (B, A) in enumerate(fac):
        r = B.shape[1]
        Bs[i, :, :r], As[i, :r] = B, A
        RBt[i, :r], RA[i, :r] = ranges(B), ranges(A)
    return Bs, As, RBt, RA


def test_padded_ranks_equal_unpadded_runs():
    rng = np.random.default_rng(0)
    m, n, rs, bits = 14, 9, [5, 2], [2, 7]
    fac = [(rng.normal(size=(m, r)), rng.normal(size=(r, n))) for r in rs]
    kd = np.asarray(jax.random.key_data(jax.random.key(3)))
    opts = dict(n_samples=7, step="paper", dtype="float64", chunk_size=3)
    padded = run_additive(kd, "threefry2x32", bits, *_stack(fac, 5), **opts)
    assert padded.shape == (2, 2, 7, 4)
    # rank 2, run alone without padding, with its cell ids (2, 3) from the padded grid
    alone = run_additive(kd, "threefry2x32", bits, *_stack(fac[1:], 2), cell_ids=[2, 3], **opts)[0]
    np.testing.assert_allclose(padded[1], alone, rtol=1e-12, atol=0)
    # different cells draw different noise
    assert not np.allclose(padded[1, 0], padded[1, 1])


def test_grid_does_not_depend_on_rank_bucketing():
    kw = dict(m=16, n=10, ranks=[1, 3], bits=[3, 5], n_samples=6, dtype="float64")
    a = simulate_grid(jax.random.key(9), pad="max", **kw)
    b = simulate_grid(jax.random.key(9), pad="pow2", **kw)
    np.testing.assert_allclose(np.asarray(a.mean), np.asarray(b.mean), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(a.stderr), np.asarray(b.stderr), rtol=1e-9)


def test_map_units_keeps_order_and_drops_padding():
    mesh = device_mesh()
    runner = build_unit_runner(lambda u, base: (u * 10 + base, jax.numpy.full(2, u)), mesh)
    out = map_units(runner, 5, (np.int32(3),), mesh=mesh)
    np.testing.assert_array_equal(out[0], np.arange(5) * 10 + 3)
    np.testing.assert_array_equal(out[1], np.repeat(np.arange(5), 2).reshape(5, 2))
    with pytest.raises(TypeError, match="mesh"):
        check_mesh(jax.sharding.Mesh(np.asarray(jax.devices()), ("x",)))
    with pytest.raises(ValueError, match="devices"):
        device_mesh([])


_CHILD = textwrap.dedent("""
    import json, jax, numpy as np
    jax.config.update("jax_enable_x64", True)
    assert len(jax.devices()) == 2, jax.devices()
    from quantbounds.epsba.montecarlo import simulate_grid
    from quantbounds.epsba.sharding import build_unit_runner, device_mesh
    g = simulate_grid(jax.random.key(7), **KW)
    mesh = device_mesh()
    ids = jax.device_put(np.arange(4, dtype=np.int32),
                         jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("units")))
    out = build_unit_runner(lambda u: u * 2, mesh)(ids)
    print(json.dumps({"mean": np.asarray(g.mean).tolist(), "stderr": np.asarray(g.stderr).tolist(),
                      "devices_used": len(out.sharding.device_set)}))
""")


def test_two_device_run_equals_single_device_run():
    kw = dict(
        m=12, n=8, ranks=[1, 4], bits=[2, 5], n_samples=9, dtype="float64", chunk_size=2, pad="max"
    )
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        JAX_PLATFORMS="cpu",
        JAX_ENABLE_X64="1",
    )
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD.replace("KW", repr(kw))],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    assert child["devices_used"] == 2
    assert len(jax.devices()) == 1
    g = simulate_grid(jax.random.key(7), **kw)
    np.testing.assert_allclose(np.asarray(child["mean"]), np.asarray(g.mean), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(child["stderr"]), np.asarray(g.stderr), rtol=1e-9)
