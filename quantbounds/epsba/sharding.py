"""Device sharding of the Monte Carlo engine's work units (``quantbounds.epsba.units``).

:func:`map_units` lays the unit ids along a 1-D device mesh (``jax.sharding.Mesh`` with the
axis ``"units"``), replicates the shared inputs (key data, factors, Grams, ranges) to every
device with a ``NamedSharding``, and runs ``jax.lax.map`` over each device's local ids inside
``jax.shard_map``. Ids are padded to a multiple of the device count; padded units are computed
and dropped. Results come back to the host as numpy arrays (gathered across processes in
multi-host runs).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

UNIT_AXIS = "units"  # the mesh axis the work units are laid along


def device_mesh(devices: Sequence[Any] | None = None) -> Mesh:
    """A 1-D mesh with axis ``"units"`` over ``devices`` (default: all global devices)."""
    devs = list(jax.devices() if devices is None else devices)
    if not devs:
        raise ValueError("devices must be a non-empty sequence of JAX devices")
    return Mesh(np.asarray(devs), (UNIT_AXIS,))


def check_mesh(mesh: Any) -> Mesh:
    """``mesh`` if it is a 1-D mesh with axis ``"units"``; None gives :func:`device_mesh`."""
    if mesh is None:
        return device_mesh()
    if not isinstance(mesh, Mesh) or mesh.axis_names != (UNIT_AXIS,):
        raise TypeError(
            f"mesh must be a 1-D jax.sharding.Mesh with axis names ({UNIT_AXIS!r},) "
            f"(see quantbounds.epsba.sharding.device_mesh), got {mesh!r}"
        )
    return mesh


def build_unit_runner(unit_fn: Callable[..., Any], mesh: Mesh) -> Callable[..., Any]:
    """jit(shard_map(lax.map(unit_fn))) over the ``"units"`` axis of ``mesh``.

    unit_fn(unit_id, *shared) -> pytree of arrays, one unit's outputs. The returned
    function takes (unit_ids (U,), *shared) with U a multiple of the mesh size and returns
    the same pytree with a leading axis U. Build it once per configuration and keep it (the
    Monte Carlo engine caches it), so repeated calls do not re-trace.
    """

    def local(ids, *shared):
        return jax.lax.map(lambda u: unit_fn(u, *shared), ids)

    def run(ids, *shared):
        in_specs = (P(UNIT_AXIS),) + tuple(P() for _ in shared)
        return jax.shard_map(
            local, mesh=mesh, in_specs=in_specs, out_specs=P(UNIT_AXIS), check_vma=False
        )(ids, *shared)

    return jax.jit(run)


def _to_host(x: jax.Array) -> np.ndarray:
    if jax.process_count() > 1 and not x.is_fully_addressable:  # multi-host: gather every shard
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def map_units(
    runner: Callable[..., Any], n_units: int, shared: Sequence[Any], *, mesh: Mesh
) -> Any:
    """Run units 0…n_units−1 with a runner from :func:`build_unit_runner`; host numpy results.

    shared: host arrays every unit reads (raw key data, factors, ranges), replicated to each
    device (in multi-host runs every process must pass the same values). Returns the runner's
    pytree, each leaf a numpy array with leading axis n_units (padding units dropped).
    """
    n_dev = mesh.size
    n_pad = int(math.ceil(n_units / n_dev) * n_dev)
    ids = jax.device_put(np.arange(n_pad, dtype=np.int32), NamedSharding(mesh, P(UNIT_AXIS)))
    rep = NamedSharding(mesh, P())
    shared = [jax.device_put(np.asarray(s), rep) for s in shared]
    out = runner(ids, *shared)
    return jax.tree_util.tree_map(lambda x: _to_host(x)[:n_units], out)
