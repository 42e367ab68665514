"""Per-layer (rank, bits) allocation under a memory budget, minimising the calibrated bound.

In the spirit of QR-Adaptor (seed 000 §2: per-layer rank and bit-width as a discrete
optimisation), but the objective is Theorem 3.1 with calibrated constants rather than
downstream accuracy. For layers l with weight shapes m_l×n_l, adapter (r_l, b_l):

    F = Σ_l [ C1·N^(−c)·v_l·r_l^a  +  C2·w_l·r_l^β·ρ^(−b_l) ]    (b_l = 16: no quantization term)
    memory_l = r_l·(m_l + n_l)·b_l + 32·k_g(l, r_l) bits      (b_l = 16: no scales)

with k_g the number of float32 scales (absmax ranges R) the adapter quantizer keeps at
granularity g (:func:`scale_count`: 2 per tensor, m + r per channel, ⌈m·r/bs⌉ + ⌈r·n/bs⌉ per
block), so that the charge is the storage of the scales the runs actually keep (per tensor by
default, DEFAULT_GRANULARITY). v_l = (m_l + n_l)/Σ(m + n) (parameter share) and
w_l = S_l/ΣS (sensitivity share), so that a uniform (r, b) gives back the model-level
calibrated terms C1·r^a·N^(−c) and C2·r^β·ρ^(−b). S_l defaults to the variance bound's
layer factor (DESIGN.md §2): S_l = s²·m_l·n_l·R_A²·R_B²·(‖x‖²/n_l when given), R the
factors' absmax ranges. Assumption: the terms are additive over layers (the bound is stated
for one layer).

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

from quantbounds._checks import (
    check_bits,
    check_choice,
    check_int_range,
    check_positive,
    check_rank,
)

BLOCK_SIZE = 64        # bitsandbytes' default quantization block (DESIGN.md §2)
ABSMAX_BITS = 32       # one float32 scale (absmax R) per group, as the quantizers keep it
GRANULARITIES = ("tensor", "channel", "block")
# The granularity the real runs quantize the adapters at: real_runs.finetune.FinetuneConfig
# has block_size=None, which resolved_block_size() keeps for rtn / sr / noise (adapter_nf4
# alone resolves to 64), and real_runs.arms.attach_adapter_quant → fakequant.make_quantizer
# with block_size None is one absmax per factor. No run quantizes per channel.
DEFAULT_GRANULARITY = "tensor"
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


def check_granularity(granularity: str, block_size) -> tuple[str, int | None]:
    """(granularity, block_size) validated: granularity one of GRANULARITIES; block_size an
    integer ≥ 1 when granularity is "block" (ignored, returned as None, otherwise)."""
    check_choice(granularity, "granularity", GRANULARITIES)
    if granularity != "block":
        return granularity, None
    return granularity, check_int_range(block_size, "block_size", 1)


def scale_count(layer: LayerSpec, r: int, *, granularity: str = DEFAULT_GRANULARITY,
                block_size: int | None = BLOCK_SIZE) -> int:
    """Number of scales (absmax ranges) kept for the factors B (m×r) and A (r×n) of a layer:

        "tensor"   2                         one per factor
        "channel"  m + r                     one per output row of each factor (B: m, A: r)
        "block"    ⌈m·r/bs⌉ + ⌈r·n/bs⌉       per factor separately: blocks do not straddle B
                                             and A (a short last block keeps its own scale;
                                             the runs require bs to divide m·r and r·n)
    """
    granularity, bs = check_granularity(granularity, block_size)
    m, n = layer.m, layer.n
    if granularity == "tensor":
        return 2
    if granularity == "channel":
        return m + r
    return math.ceil(m * r / bs) + math.ceil(r * n / bs)


def memory_bits(layer: LayerSpec, r: int, b: int, *, granularity: str = DEFAULT_GRANULARITY,
                block_size: int | None = BLOCK_SIZE) -> int:
    """Adapter storage of one layer in bits:

        r·(m+n)·b + 32·scale_count(layer, r)     b < 16
        r·(m+n)·16                               b = 16 (16-bit floats, no scales)

    granularity: "tensor" (default: what the runs use, see DEFAULT_GRANULARITY), "channel" or
    "block" with ``block_size`` entries per block (:func:`scale_count`).
    """
    n_el = r * (layer.m + layer.n)
    scales = scale_count(layer, r, granularity=granularity, block_size=block_size)
    return n_el * b + (ABSMAX_BITS * scales if b < 16 else 0)


@dataclass
class Allocation:
    """The chosen (rank, bits) per layer, its objective and memory, and the best uniform choice."""

    choice: dict[str, tuple[int, int]]
    objective: float
    memory_bytes: float
    budget_bytes: float
    uniform: dict | None = None
    params: dict = field(default_factory=dict)
    storage: dict = field(default_factory=dict)   # {"granularity", "block_size", "scale_bits"}

    def to_dict(self) -> dict:
        return {"choice": {k: {"rank": r, "bits": b} for k, (r, b) in self.choice.items()},
                "objective": self.objective, "memory_bytes": self.memory_bytes,
                "budget_bytes": self.budget_bytes, "uniform": self.uniform, "params": self.params,
                "storage": self.storage}


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


def _options(layers, ranks, bits, cost, granularity, block_size):
    out = []
    for i, layer in enumerate(layers):
        opts = [(memory_bits(layer, r, b, granularity=granularity, block_size=block_size),
                 cost(i, r, b), (r, b))
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


def _check_inputs(layers, ranks, bits, budget_bytes, granularity, block_size):
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
    return check_granularity(granularity, block_size)


def allocate(layers: list[LayerSpec], *, budget_bytes: float, params: dict | None = None,
             N: float = 1000, ranks=(1, 2, 4, 8, 16, 32, 64), bits=(2, 3, 4, 8, 16),
             granularity: str = DEFAULT_GRANULARITY,
             block_size: int | None = BLOCK_SIZE) -> Allocation:
    """Exact minimiser of F subject to Σ memory_l ≤ budget (Pareto-frontier DP).

    params: the calibrated constants {C1, C2, per_bit_factor, exponent_r, exponent_r_gen,
    exponent_N} (default THEORY). granularity / block_size: the adapters' scale storage
    charged by :func:`memory_bits` (default per tensor, as the runs quantize). Raises
    ValueError if even the cheapest choice exceeds the budget, naming the minimum memory needed.
    """
    granularity, block_size = _check_inputs(layers, ranks, bits, budget_bytes, granularity,
                                            block_size)
    params = dict(THEORY if params is None else params)
    cost = _terms(layers, params, N)
    opts = _options(layers, ranks, bits, cost, granularity, block_size)
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
                       bits=bits, granularity=granularity, block_size=block_size)
    storage = {"granularity": granularity, "block_size": block_size, "scale_bits": ABSMAX_BITS}
    return Allocation(choice=choice, objective=float(obj), memory_bytes=mem / 8,
                      budget_bytes=budget_bytes, uniform=uni, params=params, storage=storage)


def best_uniform(layers, *, budget_bytes: float, params: dict | None = None, N: float = 1000,
                 ranks=(1, 2, 4, 8, 16, 32, 64), bits=(2, 3, 4, 8, 16),
                 granularity: str = DEFAULT_GRANULARITY, block_size: int | None = BLOCK_SIZE):
    """The best single (r, b) for every layer within the budget, or None if none fits
    (memory charged at ``granularity`` as in :func:`memory_bits`)."""
    granularity, block_size = check_granularity(granularity, block_size)
    params = dict(THEORY if params is None else params)
    best = None
    for r, b in itertools.product(ranks, bits):
        if any(r > min(layer.m, layer.n) for layer in layers):
            continue
        mem = sum(memory_bits(layer, r, b, granularity=granularity, block_size=block_size)
                  for layer in layers)
        if mem > budget_bytes * 8:
            continue
        f = objective(layers, {layer.name: (r, b) for layer in layers}, params=params, N=N)
        if best is None or f < best["objective"]:
            best = {"rank": r, "bits": b, "objective": f, "memory_bytes": mem / 8}
    return best


def brute_force(layers, *, budget_bytes: float, params: dict | None = None, N: float = 1000,
                ranks=(1, 2, 4), bits=(2, 4, 16), granularity: str = DEFAULT_GRANULARITY,
                block_size: int | None = BLOCK_SIZE):
    """Reference for tests: enumerate every assignment (small cases only)."""
    granularity, block_size = check_granularity(granularity, block_size)
    params = dict(THEORY if params is None else params)
    cost = _terms(layers, params, N)
    opts = _options(layers, ranks, bits, cost, granularity, block_size)
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
