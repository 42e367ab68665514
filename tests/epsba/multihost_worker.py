"""One process of a local multi-process JAX run of the Monte Carlo engine (tests/test_multihost.py).

Usage: python tests/epsba/multihost_worker.py SPEC_JSON, SPEC a dict with
  process_id, num_processes, port: for jax.distributed.initialize (coordinator on
      127.0.0.1:port, served by process 0); num_processes = 1: no distributed client at all,
      the plain one-process run the multi-process results are compared with;
  local_devices: CPU devices of this process (jax_num_cpu_devices);
  cases: names of :func:`cases` to run, in order; every process must run the same list
      (each case is a sequence of collectives over all processes);
  skip_cases (optional): names this process leaves out (the only-some-processes-call
      experiment of .notes/multihost.md);
  seed (optional, default 0): added to every key; a per-process seed breaks the contract that
      every process passes the same inputs;
  out: .npz path for this process's results.

The .npz holds "devices" and "local" (global and local device counts) and, per case, the
engine's raw per-sample terms in their compute dtype ("<case>/samples<i>", captured from the
arrays ``montecarlo.summarize`` receives) and the returned means and standard errors.
"""

from __future__ import annotations

import json
import os
import sys
import time

# before jax is imported: CPU only, float64 available
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_ENABLE_X64", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402


def cases(seed: int = 0) -> dict:
    """name -> thunk returning {result name: numpy array}. Tiny shapes, few samples.

    Unit counts (1, 3, 5, 6) are not multiples of the 4 devices of the two-process run, so
    the last devices (of the second process) hold padding units. Compile time dominates.
    """
    from quantbounds.epsba import montecarlo
    from quantbounds.epsba.montecarlo import simulate_eps_ba, simulate_grid
    from quantbounds.epsba.sharding import build_unit_runner, device_mesh, map_units

    captured: list[np.ndarray] = []
    summarize = montecarlo.summarize

    def capture(samples, *args, **kw):  # the raw (…, n_samples, 4) terms, compute dtype
        captured.append(np.array(samples, copy=True))
        return summarize(samples, *args, **kw)

    def collect(res):
        out = {"mean": np.stack(res.mean), "stderr": np.stack(res.stderr)}
        out.update({f"samples{i}": s for i, s in enumerate(captured)})
        captured.clear()
        return out

    def factors(key, m, r, n):  # host Gaussian factors: no factor program to compile
        g = np.random.default_rng(r)
        return g.normal(size=(m, r)), g.normal(size=(r, n))

    def grid(**kw):  # 3 samples, one per unit: 3 units per (rank, bit-width) cell
        return collect(
            simulate_grid(
                jax.random.key(11 + seed),
                m=10,
                n=6,
                n_samples=3,
                chunk_size=1,
                factors=factors,
                **kw,
            )
        )

    def eps(n_samples=3, chunk_size=1, **kw):
        rng = np.random.default_rng(5)
        B, A = rng.normal(size=(9, 2)), rng.normal(size=(2, 7))
        return collect(
            simulate_eps_ba(
                jax.random.key(4 + seed),
                B,
                A,
                bits=4,
                n_samples=n_samples,
                chunk_size=chunk_size,
                **kw,
            )
        )

    def toy(n_units):  # map_units alone: unit u returns (10·u + 3, [u, u], its device)
        mesh = device_mesh()

        def unit(u, base):
            return u * 10 + base, jax.numpy.full(2, u), jax.lax.axis_index("units")

        a, b, dev = map_units(build_unit_runner(unit, mesh), n_units, (np.int32(3),), mesh=mesh)
        return {"ids": a, "rows": b, "device": dev}

    def wrap(fn):
        def run():
            montecarlo.summarize = capture
            try:
                return fn()
            finally:
                montecarlo.summarize = summarize

        return run

    sr = dict(mode="real", rounding="stochastic")
    return {
        # ranks 1 and 3 padded to 3 (pad="max"): one program, 6 units
        "grid_additive_f32": wrap(lambda: grid(ranks=[1, 3], bits=[3], pad="max", dtype="float32")),
        # real mode: one program per rank; 2 bit-widths: 6 units
        "grid_sr_f64": wrap(lambda: grid(ranks=[2], bits=[2, 6], dtype="float64", **sr)),
        # 7 samples in chunks of 3 (the one case with several samples per unit): 3 units
        "eps_additive_f64": wrap(lambda: eps(n_samples=7, chunk_size=3, dtype="float64")),
        "eps_sr_f32": wrap(lambda: eps(dtype="float32", **sr)),  # 3 units
        # round to nearest: one exact draw, a single unit; every other device holds padding
        "eps_rtn_f32": wrap(lambda: eps(dtype="float32", mode="real")),
        "toy_1": lambda: toy(1),
        "toy_5": lambda: toy(5),
    }


def main(spec: dict) -> None:
    jax.config.update("jax_num_cpu_devices", int(spec["local_devices"]))
    if spec["num_processes"] > 1:
        # gloo is already jax 0.10's default CPU collective implementation
        # (jax/_src/config.py: DEFAULT_CPU_COLLECTIVES_IMPL = "gloo"); set so it is explicit.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{spec['port']}",
            coordinator_bind_address=f"127.0.0.1:{spec['port']}",
            num_processes=spec["num_processes"],
            process_id=spec["process_id"],
            initialization_timeout=spec.get("init_timeout", 60),
        )
    assert jax.process_count() == spec["num_processes"], jax.process_count()
    table = cases(spec.get("seed", 0))
    out = {"devices": np.int64(jax.device_count()), "local": np.int64(jax.local_device_count())}
    for name in spec["cases"]:
        if name in spec.get("skip_cases", ()):
            continue
        t0, c0 = time.perf_counter(), time.process_time()
        for k, v in table[name]().items():
            out[f"{name}/{k}"] = np.asarray(v)
        print(
            f"case {name}: wall {time.perf_counter() - t0:.2f} s, "
            f"cpu {time.process_time() - c0:.2f} s",
            flush=True,
        )
    np.savez(spec["out"], **out)
    print("DONE", flush=True)
    if spec["num_processes"] > 1:
        jax.distributed.shutdown()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
