"""Per-layer (rank, bits) allocation under a memory budget, minimising the calibrated bound.

In the spirit of QR-Adaptor (seed 000 §2: per-layer rank and bit-width as a discrete
optimisation), but the objective is Theorem 3.1 with calibrated constants rather than
downstream accuracy. For layers l with weight shapes m_l×n_l, adapter (r_l, b_l):

    F = Σ_l [ C1·N^(−c)·v_l·r_l^a  +  C2·w_l·r_l^β·ρ^(−b_l) ]    (b_l = 16: no quantization term)
    memory_l = r_l·(m_l + n_l)·b_l bits
               (+ one 32-bit absmax per block of ``block_size`` when b_l < 16)

with v_l = (m_l + n_l)/Σ(m + n) (parameter share) and w_l = S_l/ΣS (sensitivity share), so
that a uniform (r, b) gives back the model-level calibrated terms C1·r^a·N^(−c) and
C2·r^β·ρ^(−b). S_l defaults to the variance bound's layer factor (DESIGN.md §2):
S_l = s²·m_l·n_l·R_A²·R_B²·(‖x‖²/n_l when given), R the factors' absmax ranges.
Assumption: the terms are additive over layers (the bound is stated for one layer).

The problem is a multiple-choice knapsack; :func:`allocate` solves it EXACTLY by dynamic
programming over the Pareto frontier (memory, objective) — every state dominated in both is
dropped, which never removes an optimum — and is tested against brute force.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from quantbounds._checks import check_bits, check_int_range, check_positive, check_rank

BLOCK_SIZE = 64        # bitsandbytes' default quantization block (DESIGN.md §2)
ABSMAX_BITS = 32       # one float32 absmax per block (bitsandbytes without double quantization)
THEORY = {"C1": 1.0, "C2": 1.0, "per_bit_factor": 4.0, "exponent_r": 1.0, "exponent_r_gen": 0.5,
          "exponent_N": 0.5}   # Thm 3.1's exponents, unit constants


@dataclass(frozen=True, kw_only=True)
class LayerSpec:
    """One adapted weight W0 (m×n) and its statistics. sensitivity: S_l (None: from ranges)."""

    name: str
    m: int
    n: int
    range_A: float = 1.0
    range_B: float = 1.0
    x_norm2: float | None = None
    lora_scale: float = 1.0
    sensitivity: float | None = None

    def __post_init__(self):
        check_int_range(self.m, "m", 1)
        check_int_range(self.n, "n", 1)
        check_positive(self.range_A, "range_A")
        check_positive(self.range_B, "range_B")
        if self.x_norm2 is not None:
            check_positive(self.x_norm2, "x_norm2")
        if self.sensitivity is not None:
            check_positive(self.sensitivity, "sensitivity")

    def sens(self) -> float:
        """S_l = s²·m·n·R_A²·R_B²·(‖x‖²/n if known), or the given sensitivity."""
        if self.sensitivity is not None:
            return float(self.sensitivity)
        s = self.lora_scale ** 2 * self.m * self.n * self.range_A ** 2 * self.range_B ** 2
        return s * (self.x_norm2 / self.n if self.x_norm2 is not None else 1.0)


def memory_bits(layer: LayerSpec, r: int, b: int, *, block_size: int = BLOCK_SIZE) -> int:
    """Adapter storage: r·(m+n)·b bits, plus a 32-bit absmax per block when b < 16."""
    n_el = r * (layer.m + layer.n)
    return n_el * b + (ABSMAX_BITS * math.ceil(n_el / block_size) if b < 16 else 0)


@dataclass
class Allocation:
    """The chosen (rank, bits) per layer, its objective and memory, and the best uniform choice."""

    choice: dict[str, tuple[int, int]]
    objective: float
    memory_bytes: float
    budget_bytes: float
    uniform: dict | None = None
    params: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"choice": {k: {"rank": r, "bits": b} for k, (r, b) in self.choice.items()},
                "objective": self.objective, "memory_bytes": self.memory_bytes,
                "budget_bytes": self.budget_bytes, "uniform": self.uniform, "params": self.params}


def _terms(layers, params: dict, N: float):
    for k in THEORY:
        if k not in params:
            raise ValueError(f"params must hold {sorted(THEORY)}; missing {k!r}")
    check_positive(N, "N")
    if params["per_bit_factor"] <= 1:
        raise ValueError(f"per_bit_factor must be > 1, got {params['per_bit_factor']}")
    mn = np.array([layer.m + layer.n for layer in layers], float)
    S = np.array([layer.sens() for layer in layers], float)
    v, w = mn / mn.sum(), S / S.sum()
    gen0 = params["C1"] * N ** (-params["exponent_N"])

    def cost(i: int, r: int, b: int) -> float:
        g = gen0 * v[i] * r ** params["exponent_r_gen"]
        q = 0.0 if b >= 16 else (params["C2"] * w[i] * r ** params["exponent_r"]
                                 * params["per_bit_factor"] ** (-b))
        return g + q

    return cost


def _options(layers, ranks, bits, cost, block_size):
    out = []
    for i, layer in enumerate(layers):
        opts = [(memory_bits(layer, r, b, block_size=block_size), cost(i, r, b), (r, b))
                for r in ranks if r <= min(layer.m, layer.n) for b in bits]
        if not opts:
            raise ValueError(f"layer {layer.name!r} ({layer.m}×{layer.n}) admits none of ranks "
                             f"{list(ranks)}")
        out.append(opts)
    return out


def objective(layers, choice: dict, *, params: dict, N: float) -> float:
    """F for a given {name: (rank, bits)}."""
    cost = _terms(layers, params, N)
    return float(sum(cost(i, *choice[layer.name]) for i, layer in enumerate(layers)))


def _check_inputs(layers, ranks, bits, budget_bytes):
    if not layers:
        raise ValueError("layers must be a non-empty list of LayerSpec")
    names = [layer.name for layer in layers]
    if len(set(names)) != len(names):
        raise ValueError(f"layer names must be unique, got {names}")
    for r in ranks:
        check_rank(r, "ranks[i]")
    for b in bits:
        check_bits(b, "bits[i]")
    check_positive(budget_bytes, "budget_bytes")


def allocate(layers: list[LayerSpec], *, budget_bytes: float, params: dict | None = None,
             N: float = 1000, ranks=(1, 2, 4, 8, 16, 32, 64), bits=(2, 3, 4, 8, 16),
             block_size: int = BLOCK_SIZE) -> Allocation:
    """Exact minimiser of F subject to Σ memory_l ≤ budget (Pareto-frontier DP).

    params: the calibrated constants {C1, C2, per_bit_factor, exponent_r, exponent_r_gen,
    exponent_N} (default THEORY). Raises ValueError if even the cheapest choice exceeds the
    budget, naming the minimum memory needed.
    """
    _check_inputs(layers, ranks, bits, budget_bytes)
    params = dict(THEORY if params is None else params)
    cost = _terms(layers, params, N)
    opts = _options(layers, ranks, bits, cost, block_size)
    budget_bits = budget_bytes * 8
    need = sum(min(o[0] for o in op) for op in opts)
    if need > budget_bits:
        raise ValueError(f"budget_bytes={budget_bytes} is below the smallest possible adapter "
                         f"memory {need / 8:.0f} bytes (every layer at its cheapest (rank, bits))")
    # frontier: arrays (memory ↑, objective strictly ↓); parents[l][j] = (state before, option)
    f_mem, f_obj = np.zeros(1, np.int64), np.zeros(1)
    parents = []
    for op in opts:
        o_mem = np.array([o[0] for o in op], np.int64)
        o_obj = np.array([o[1] for o in op])
        mem = (f_mem[:, None] + o_mem[None, :]).ravel()
        obj = (f_obj[:, None] + o_obj[None, :]).ravel()
        src = np.arange(mem.size)
        ok = mem <= budget_bits
        mem, obj, src = mem[ok], obj[ok], src[ok]
        order = np.lexsort((obj, mem))            # by memory, then objective
        mem, obj, src = mem[order], obj[order], src[order]
        prev_best = np.concatenate([[np.inf], np.minimum.accumulate(obj)[:-1]])
        keep = obj < prev_best                    # not dominated by a cheaper-or-equal-memory state
        f_mem, f_obj, src = mem[keep], obj[keep], src[keep]
        parents.append(np.stack([src // len(op), src % len(op)], 1))
    j = int(np.argmin(f_obj))
    mem, obj = int(f_mem[j]), float(f_obj[j])
    ks = []
    for op, par in zip(reversed(opts), reversed(parents)):
        j, k = par[j]
        ks.append(op[k][2])
    ch = tuple(reversed(ks))
    choice = {layer.name: k for layer, k in zip(layers, ch)}
    uni = best_uniform(layers, budget_bytes=budget_bytes, params=params, N=N, ranks=ranks,
                       bits=bits, block_size=block_size)
    return Allocation(choice=choice, objective=float(obj), memory_bytes=mem / 8,
                      budget_bytes=budget_bytes, uniform=uni, params=params)


def best_uniform(layers, *, budget_bytes: float, params: dict | None = None, N: float = 1000,
                 ranks=(1, 2, 4, 8, 16, 32, 64), bits=(2, 3, 4, 8, 16),
                 block_size: int = BLOCK_SIZE):
    """The best single (r, b) for every layer within the budget, or None if none fits."""
    params = dict(THEORY if params is None else params)
    best = None
    for r, b in itertools.product(ranks, bits):
        if any(r > min(layer.m, layer.n) for layer in layers):
            continue
        mem = sum(memory_bits(layer, r, b, block_size=block_size) for layer in layers)
        if mem > budget_bytes * 8:
            continue
        f = objective(layers, {layer.name: (r, b) for layer in layers}, params=params, N=N)
        if best is None or f < best["objective"]:
            best = {"rank": r, "bits": b, "objective": f, "memory_bytes": mem / 8}
    return best


def brute_force(layers, *, budget_bytes: float, params: dict | None = None, N: float = 1000,
                ranks=(1, 2, 4), bits=(2, 4, 16), block_size: int = BLOCK_SIZE):
    """Reference for tests: enumerate every assignment (small cases only)."""
    params = dict(THEORY if params is None else params)
    cost = _terms(layers, params, N)
    opts = _options(layers, ranks, bits, cost, block_size)
    best = None
    for combo in itertools.product(*opts):
        m = sum(o[0] for o in combo)
        if m > budget_bytes * 8:
            continue
        f = sum(o[1] for o in combo)
        if best is None or f < best[0]:
            best = (f, m, tuple(o[2] for o in combo))
    return best


def params_from_calibration(path_or_dict) -> tuple[dict, list[str]]:
    """The allocator's constants from results/calibration.json ``fits``; theory values (and a
    note saying so) for any that were not fitted.

    A fit that is weakly identified or whose held-out R² is below 0 never drives the
    allocator: when ``fits["usable"]`` (written by ``quantbounds calibrate`` from
    ``quantbounds.verdicts.standard.usable_fit``) marks either term not usable — or is absent,
    so nobody checked — every constant is the theory's, and the notes say why (the two terms
    are balanced against each other, so one fitted term with the other's theory constant would
    be an arbitrary mixture)."""
    if isinstance(path_or_dict, dict):
        data = path_or_dict
    else:
        data = json.loads(Path(path_or_dict).read_text())
    fits = data.get("fits", data)
    usable = fits.get("usable")
    if not isinstance(usable, dict):
        return dict(THEORY), ["the calibration carries no usability check of its fits; theory "
                              "constants (C1 = C2 = 1, 4 per bit, r¹, √(r/N))"]
    bad = [f"{term}: {u.get('why')}" for term, u in usable.items()
           if isinstance(u, dict) and not u.get("usable")]
    if bad:
        return dict(THEORY), ["calibration fit not usable for decisions (" + "; ".join(bad)
                              + "); theory constants (C1 = C2 = 1, 4 per bit, r¹, √(r/N))"]
    out, notes = {}, []
    for k, v in THEORY.items():
        e = fits.get(k)
        if isinstance(e, dict) and isinstance(e.get("value"), (int, float)):
            out[k] = float(e["value"])
        else:
            out[k] = v
            notes.append(f"{k} not in the calibration; using the theory value {v}")
    return out, notes
