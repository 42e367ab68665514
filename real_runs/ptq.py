"""Post-training quantization of trained LoRA adapters, and its loss cost predicted with no fitted constant.

One full-precision fine-tune yields the whole b-curve: the trained B, A of every adapted layer
are quantized after training at every bit-width and scheme (``SCHEMES``), the quantized
adapter is merged into the frozen base (W = W0 + s·Q(B)·Q(A), in GPT-2's Conv1D orientation
(n_in, n_out), i.e. the transpose of B·A), and the held-out loss is measured on exactly the
tokens of the full-precision evaluation, so every increase ΔL = L(Q) − L(fp) is a paired
difference (its interval is clustered by dialogue).

The prediction (DESIGN.md §2). To second order in the weight perturbation ΔW = s·ε_BA of
each adapted layer, with a K-FAC approximation of the Gauss–Newton/Fisher matrix of the mean
token loss, H ≈ Σ_x ⊗ G, where

    Σ_x = (1/T)·Σ_t x_t·x_tᵀ           (n × n, the layer's input second moment), and
    G   = (1/T)·Σ_t g_t·g_tᵀ           (m × m), g_t = ∂(Σ_t' ℓ_t')/∂y_t, labels drawn from
                                        the model's own predictive distribution (the true Fisher,
                                        equal to the Gauss–Newton matrix for softmax cross-entropy),

both measured on the full-precision model over training windows (never on quantized runs,
never on evaluation labels), the predicted increase is

    ΔL̂ = ½·Σ_layers tr(ΔW·Σ_x·ΔWᵀ·G) = ½·s²·Σ_layers tr(ε_BA·Σ_x·ε_BAᵀ·G).

The first-order term ⟨∇_W L, ΔW⟩ is recorded apart (``pred_first_order``, with ∇_W L the
gradient of the held-out loss at the full-precision weights — the one measurement that uses
the evaluation tokens' labels; it is zero in expectation for SR, not necessarily for RTN).
Two second-order versions are recorded: ``pred_plugin`` puts the realised ε_BA of this quantization in
(tests curvature + second order), ``pred_moment`` its expectation under the noise model
(``quantbounds.moments.eps_ba_curvature_moment``: σ² = Δ²/12 per group for RTN, the exact
Bernoulli variance Δ²·p(1−p) of each entry for SR; none for the non-uniform codes), which also
tests the additive model. First-order terms are dropped: E[ε] = 0 for SR (unbiased grid) and
≈ 0 for RTN; at a fine-tuned (not converged-on-eval) point g·ΔW is not zero, which is one of
the places the prediction can break. Layers are treated as independent (K-FAC's block
diagonal), another.

Schemes (each factor quantized on its own; B is m×r, A is r×n, "channel" = axis 0, i.e. per
output row of each factor):

    rtn_tensor / rtn_channel / rtn_block   uniform, paper grid Δ = 2^{1−b}·R, round to nearest,
                                           R per tensor / row / block of 64
    sr_tensor                              uniform, mid-tread grid Δ = R/(2^{b−1}−1) (±R on the
                                           grid, so SR is exactly unbiased), stochastic rounding,
                                           ``sr_draws`` independent draws
    nf4 / fp4                              bitsandbytes codes, block 64 (4 bits only)
    int8                                   mid-tread 8-bit per row (LLM.int8's vector-wise absmax)
"""

from __future__ import annotations

import contextlib
import math
import time

import torch

from quantbounds._checks import check_bits, check_choice, check_int_range
from real_runs.fakequant import quantize_code, quantize_uniform

SCHEMES = ("rtn_tensor", "rtn_channel", "rtn_block", "sr_tensor", "nf4", "fp4", "int8")
FIXED_BITS = {"nf4": 4, "fp4": 4, "int8": 8}
DEFAULT_BITS = (2, 3, 4, 5, 6, 7, 8, 16)
BLOCK = 64
GROUP_GRAD_BYTES = 1 << 30  # memory for the per-group eval gradients (float64, K·Σ m·n)


def check_ptq_bits(bits) -> tuple[int, ...]:
    """PTQ bit-widths: a non-empty list of integers in 1…16 (ValueError naming ``ptq_bits``)."""
    if isinstance(bits, int):
        bits = (bits,)
    bits = tuple(bits)
    if not bits:
        raise ValueError("ptq_bits must be a non-empty list of bit-widths in 1…16")
    for b in bits:
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 16:
            raise ValueError(f"ptq_bits must hold integers in 1…16, got {b!r}")
    return tuple(sorted(set(bits)))


def check_schemes(schemes) -> tuple[str, ...]:
    schemes = (schemes,) if isinstance(schemes, str) else tuple(schemes)
    if not schemes:
        raise ValueError(f"ptq_schemes must be a non-empty list of {SCHEMES}")
    for s in schemes:
        check_choice(s, "ptq_schemes", SCHEMES)
    return schemes


def plan(schemes, bits, sr_draws: int) -> list[tuple[str, int, int]]:
    """[(scheme, bits, draw)]: every uniform scheme at every b (SR at b ≥ 2, ``sr_draws`` draws), codes once."""
    out = []
    for s in schemes:
        if s in FIXED_BITS:
            out.append((s, FIXED_BITS[s], 0))
            continue
        for b in bits:
            if s == "sr_tensor":
                if b < 2:  # the mid-tread grid needs b ≥ 2
                    continue
                out.extend((s, b, d) for d in range(sr_draws))
            else:
                out.append((s, b, 0))
    return out


def quantize_factor(W: torch.Tensor, scheme: str, bits: int, *, generator=None):
    """(Q(W), per-entry noise variance under the scheme's model or None) of one factor (float32)."""
    check_choice(scheme, "scheme", SCHEMES)
    bits = check_bits(bits)
    if scheme in ("rtn_tensor", "rtn_channel", "rtn_block"):
        kw = {"rtn_tensor": {}, "rtn_channel": {"axis": 0}, "rtn_block": {"block_size": BLOCK}}[
            scheme
        ]
        Q = quantize_uniform(W, bits=bits, step="paper", **kw)
        # additive model: Δ²/12 with Δ = 2^{1−b}·R of the entry's group
        if scheme == "rtn_tensor":
            R = W.abs().amax().expand_as(W)
        elif scheme == "rtn_channel":
            R = W.abs().amax(dim=1, keepdim=True).expand_as(W)
        else:
            R = (
                W.reshape(-1, BLOCK)
                .abs()
                .amax(dim=1, keepdim=True)
                .expand(-1, BLOCK)
                .reshape(W.shape)
            )
        var = (R.double() * 2.0 ** (1 - bits)) ** 2 / 12.0
        return Q, var
    if scheme == "sr_tensor":
        u = torch.rand(W.shape, generator=generator, dtype=W.dtype)
        Q = quantize_uniform(W, bits=bits, step="midtread", u=u)
        R = W.abs().amax()
        if float(R) == 0.0:
            return Q, torch.zeros_like(W, dtype=torch.float64)
        delta = R.double() / (2.0 ** (bits - 1) - 1)
        t = W.double() / delta
        p = t - torch.floor(t)
        return Q, delta**2 * p * (1 - p)  # exact: Var = Δ²·p(1−p) given W
    if scheme in ("nf4", "fp4"):
        return quantize_code(W, code=scheme, block_size=BLOCK), None
    # int8: mid-tread, 8 bits, per row
    return quantize_uniform(W, bits=8, axis=0, step="midtread"), None


# --- curvature on the full-precision model --------------------------------------------------


def measure_curvature(model, layers: dict, batches, *, seed: int = 0,
                      keep_tokens: bool = False) -> dict[str, dict]:
    """{layer: {"Sigma_x": n×n, "G": m×m, "tokens": T}} (float64) over the real tokens of ``batches``.

    x_t: the adapted layer's input; g_t: the gradient of the summed token loss (labels sampled
    from the model's softmax, seeded) with respect to the layer's output y_t (base + LoRA).
    The model is put in eval mode (no dropout) for the measurement.

    keep_tokens: also keep every token's x_t ("X", T × n) and g_t ("Gt", T × m) in float64
    (exact copies of the float32 activations, converted once rather than in every cell of
    :func:`fisher_along`) and the window it belongs to ("seq", T) (memory: 8·T·(n + m) bytes a
    layer).
    """
    was = model.training
    model.eval()
    acc = {n: {"Sigma_x": None, "G": None, "tokens": 0, "X": [], "Gt": [], "seq": []}
           for n in layers}
    cur = {"row0": 0}
    handles = []

    def fwd_hook(name):
        def hook(mod, args, out):
            x = args[0].detach()
            cur[name] = x
            if out.requires_grad:

                def ghook(g, name=name):
                    m = cur["mask"].bool()
                    gg = g.detach()[m].double()
                    a = acc[name]
                    a["G"] = gg.T @ gg if a["G"] is None else a["G"] + gg.T @ gg
                    if keep_tokens:
                        a["Gt"].append(gg)

                out.register_hook(ghook)
            m = cur["mask"].bool()
            xx = x[m].double()
            a = acc[name]
            a["Sigma_x"] = xx.T @ xx if a["Sigma_x"] is None else a["Sigma_x"] + xx.T @ xx
            a["tokens"] += int(m.sum())
            if keep_tokens:
                a["X"].append(xx)
                rows = torch.arange(m.shape[0]).unsqueeze(1).expand(m.shape)[m] + cur["row0"]
                a["seq"].append(rows)

        return hook

    for n, layer in layers.items():
        handles.append(layer.register_forward_hook(fwd_hook(n)))
    gen = torch.Generator().manual_seed(99_991 + seed)
    try:
        for b in batches:
            # positions whose NEXT token exists and is real carry a loss
            mask = b["attention_mask"].clone()
            cur["mask"] = mask
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            probs = torch.softmax(logits.detach().float()[:, :-1], dim=-1)
            sampled = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=gen)
            sampled = sampled.reshape(probs.shape[:2])
            valid = b["attention_mask"][:, 1:] == 1
            ce = torch.nn.functional.cross_entropy(
                logits[:, :-1].transpose(1, 2), sampled, reduction="none"
            )
            (ce * valid).sum().backward()
            model.zero_grad(set_to_none=True)
            cur["row0"] += int(b["input_ids"].shape[0])
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    out = {}
    for n, a in acc.items():
        T = max(a["tokens"], 1)
        out[n] = {"Sigma_x": a["Sigma_x"] / T, "G": a["G"] / T, "tokens": a["tokens"]}
        if keep_tokens:
            out[n].update(X=torch.cat(a["X"]), Gt=torch.cat(a["Gt"]), seq=torch.cat(a["seq"]))
    return out


def fisher_along(E: dict, scales: dict, curvature: dict) -> dict[str, float]:
    """Three second-order predictions of a weight change s_l·E_l (m × n, every layer l), each
    dropping less than K-FAC, from the tokens :func:`measure_curvature` kept.

    With a_{l,t} = s_l·g_tᵀ·E_l·x_t (layer l's first-order response at token t, labels
    sampled from the model) and T tokens:

    - ``token``: ½·Σ_l Σ_t a_{l,t}² / T — K-FAC without the Kronecker factorization
      (E_t[x·xᵀ ⊗ g·gᵀ] instead of E_t[x·xᵀ] ⊗ E_t[g·gᵀ]); equal to K-FAC's
      ½·s²·tr(E·Σ_x·Eᵀ·G) when x_t and g_t are independent;
    - ``seq``: ½·Σ_l Σ_w (Σ_{t ∈ w} a_{l,t})² / T — the per-window (per-sequence) Fisher of
      each layer: adds the products of positions within a window;
    - ``seq_cross``: ½·Σ_w (Σ_l Σ_{t ∈ w} a_{l,t})² / T — the Fisher of all layers together:
      adds the cross-layer blocks K-FAC drops. With one sampled label per position this is the
      Gauss–Newton quadratic form of the whole change, as an estimate over the kept windows.
    """
    token = seq = 0.0
    per_seq = None
    for n, Et in E.items():
        c = curvature[n]
        a = scales[n] * ((c["Gt"] @ Et) * c["X"]).sum(1)  # (T,)
        T = a.shape[0]
        token += float((a**2).sum()) / (2 * T)
        k = int(c["seq"].max()) + 1
        w = torch.zeros(k, dtype=torch.float64).index_add_(0, c["seq"], a)
        seq += float((w**2).sum()) / (2 * T)
        per_seq = w if per_seq is None else per_seq + w
    cross = 0.0 if per_seq is None else float((per_seq**2).sum()) / (2 * T)
    return {"token": token, "seq": seq, "seq_cross": cross}


def eval_weight_gradients(model, mods: dict, conv: dict, batches) -> dict[str, torch.Tensor]:
    """{layer: ∇_W L} (m × n, float64) of the mean token loss over ``batches`` at the current weights.

    The first-order term of the loss change, ⟨∇_W L, ΔW⟩, which the second-order prediction
    leaves out (it vanishes in expectation for unbiased SR; for RTN it does not have to).
    Conv1D gradients (n_in, n_out) are transposed to the (out, in) orientation of B·A.
    One group of :func:`eval_group_gradients`.
    """
    one = eval_group_gradients(model, mods, conv, batches, [0] * _n_rows(batches), 1)
    return {n: g[0] for n, g in one.items()}


def _n_rows(batches) -> int:
    return sum(int(b["input_ids"].shape[0]) for b in batches)


def eval_groups(clusters, n_groups: int) -> list[int]:
    """Group of each row: the distinct ``clusters`` (dialogues) sorted by their string form
    (so any label type sorts), dealt round robin into min(n_groups, #clusters) groups, so every group holds whole dialogues and the
    groups are independent units (rows of one dialogue are correlated)."""
    check_int_range(n_groups, "n_groups", 1)
    labels = sorted(set(clusters), key=str)
    of = {c: i % min(n_groups, len(labels)) for i, c in enumerate(labels)}
    return [of[c] for c in clusters]


def eval_group_gradients(
    model, mods: dict, conv: dict, batches, groups, n_groups: int, *, rows_per_batch: int = 16
) -> dict[str, torch.Tensor]:
    """{layer: (K, m, n) float64}: g_k = ∇_W (Σ_{t ∈ group k} ℓ_t) / T at the current weights.

    T counts every predicted token of ``batches`` (labels ≠ −100 at positions 1…), so
    Σ_k g_k = ∇_W L, the gradient of the mean token loss, and the first-order term of a weight
    change splits over the groups, ⟨∇_W L, ΔW⟩ = Σ_k ⟨g_k, ΔW⟩: measured on the same groups
    as the paired loss change, its per-group values give ΔL − first order a paired interval
    (:func:`quantbounds.verdicts.intervals.grouped_total`). ``groups``: the group (0…K−1) of
    each row of ``batches`` in order. The rows are regrouped into batches of one group each
    (right padding, so a row's outputs do not depend on its batch): one backward pass over
    the evaluation tokens in all, whatever K. Conv1D gradients are transposed to (out, in).
    """
    check_int_range(n_groups, "n_groups", 1)
    rows = []  # (input_ids, labels) of each row, real tokens only
    for b in batches:
        n = b["attention_mask"].sum(1)
        for i in range(b["input_ids"].shape[0]):
            k = int(n[i])
            rows.append((b["input_ids"][i, :k], b["labels"][i, :k]))
    if len(groups) != len(rows):
        raise ValueError(f"groups must name one group per row ({len(rows)}), got {len(groups)}")
    if any(not 0 <= g < n_groups for g in groups):
        raise ValueError(f"groups must lie in 0…{n_groups - 1} (n_groups={n_groups})")
    total = sum(int((lab[1:] != -100).sum()) for _, lab in rows)
    was = model.training
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    for m in mods.values():
        m.weight.requires_grad_(True)
        m.weight.grad = None
    out = {}
    for n, m in mods.items():
        shape = tuple(m.weight.shape)
        out[n] = torch.zeros((n_groups, *(shape[::-1] if conv[n] else shape)), dtype=torch.float64)
    try:
        with fused_gelu(model):  # the same GELU, fused forward and backward kernels
            for k in range(n_groups):
                mine = [r for r, g in zip(rows, groups) if g == k]
                for a in range(0, len(mine), rows_per_batch):
                    chunk = mine[a : a + rows_per_batch]
                    L = max(len(x) for x, _ in chunk)
                    ids = torch.zeros((len(chunk), L), dtype=torch.long)
                    mask = torch.zeros((len(chunk), L), dtype=torch.long)
                    lab = torch.full((len(chunk), L), -100, dtype=torch.long)
                    for j, (x, y) in enumerate(chunk):
                        ids[j, : len(x)], mask[j, : len(x)], lab[j, : len(x)] = x, 1, y
                    logits = model(input_ids=ids, attention_mask=mask).logits
                    ce = torch.nn.functional.cross_entropy(
                        logits[:, :-1].transpose(1, 2), lab[:, 1:], ignore_index=-100,
                        reduction="sum",
                    )
                    (ce / total).backward()
                for n, m in mods.items():
                    if m.weight.grad is not None:
                        g = m.weight.grad.detach().double()
                        out[n][k] = g.T if conv[n] else g
                        m.weight.grad = None
    finally:
        for m in mods.values():
            m.weight.grad = None
            m.weight.requires_grad_(False)
        model.train(was)
    return out


class PackedEval:
    """Per-row held-out loss of a GPT-2-style LM, computed only where it is recorded.

    The same numbers as ``real_runs.measure.eval_loss_rows(model, batches)`` — per row (window)
    of ``batches``, in their order: (Σ_t ℓ_t in nats, predicted tokens), with
    ℓ_t = −log softmax(z_t)[y_{t+1}] over the positions whose next-token label is not −100 —
    up to float32 rounding (a matrix product's summation order depends on its shape), with the
    work the rows do not keep removed:

    - the windows are batched ONCE (``__init__``) and reused for every evaluation: sorted by
      length, ⌊batch_tokens / L⌋ rows of length ≤ L per batch (L its longest row), so almost
      no padding is computed;
    - the output projection z = h·Eᵀ (d → vocab) and the cross-entropy are applied only to the
      N positions that carry a loss (an (N, d) gather), in contiguous chunks of
      ``head_tokens`` positions, never to padding or to each window's last position;
    - everything runs under ``torch.inference_mode``;
    - GPT-2's ``gelu_new`` (transformers' ``NewGELUActivation``: 0.5·x·(1 + tanh(√(2/π)·(x +
      0.044715·x³))), five elementwise passes in Python) is evaluated by PyTorch's fused kernel
      of the same formula, ``F.gelu(x, approximate="tanh")`` (transformers' ``GELUTanh``),
      swapped in for the call only (:func:`fused_gelu`): the same function up to float32
      rounding (profiled over a PTQ run: the GELU was 12 % of the evaluation time, fused 5 %;
      one evaluation of 24.7k tokens 2.90 → 2.68 s).

    Batch sizes: cache-sized, not the largest that fits. Measured on the default embedded model
    (d = 192, vocab 8192, 1 thread, 8.9k tokens): 16 windows × 128 with full logits (the
    ``eval_loss_rows`` layout) 1.84–1.95 s; this path 1.39 s at (2048, 2048), 1.22 s at
    (4096, 256), 0.98–1.02 s at (1024, 256). On the 24.7k-token held-out set (AVX-512, fused
    GELU, batch_tokens 1024, best of 3, interleaved): head_tokens 256 / 512 / 1024 / 4096 took
    2.87 / 2.72 / 2.78 / 2.74 s with 1 thread and 1.70 / 1.61 / 1.63 / 1.66 s with 2, so 512
    is the default. The output projection and cross-entropy are ~45 % of it: at d = 192 the
    (d → 8192) head costs as many multiply-adds per token as the four blocks.

    Right padding only (``real_runs.data.collate``): each row's attention mask is a prefix of
    ones, so a real token's position id is its index and its output never depends on padding
    (causal attention, padded keys masked). Rows may be regrouped freely for that reason.

    Needs ``model.transformer`` (the decoder, returning ``last_hidden_state``) and
    ``model.lm_head`` (logits = lm_head(h), as GPT2LMHeadModel computes them);
    :meth:`check` compares against the model's own forward on one batch.
    """

    def __init__(self, batches, *, batch_tokens: int = 1024, head_tokens: int = 512):
        check_int_range(batch_tokens, "batch_tokens", 1)
        check_int_range(head_tokens, "head_tokens", 1)
        rows = []  # (input_ids L, labels L) of each row, real tokens only
        for b in batches:
            mask = b["attention_mask"]
            n = mask.sum(1)
            L = mask.shape[1]
            prefix = torch.arange(L, device=mask.device)[None, :] < n[:, None]
            if not torch.equal(mask.bool(), prefix):
                raise ValueError("PackedEval needs right-padded batches (attention mask = 1…1 0…0)")
            for i in range(mask.shape[0]):
                k = int(n[i])
                rows.append((b["input_ids"][i, :k], b["labels"][i, :k]))
        if not rows:
            raise ValueError("PackedEval needs at least one row to evaluate")
        self.n_rows = len(rows)
        # predicted tokens of row i: labels at positions 1…L−1 that are not −100
        self.counts = [int((lab[1:] != -100).sum()) for _, lab in rows]
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
        self.batches = []  # (input_ids, attention_mask, flat loss positions, their targets, row ids)
        i = 0
        while i < len(order):
            L = len(rows[order[i]][0])  # the longest row of this batch (sorted: the first)
            k = max(1, batch_tokens // max(L, 1))
            grp = order[i : i + k]
            i += k
            dev = rows[grp[0]][0].device
            ids = torch.zeros((len(grp), L), dtype=torch.long, device=dev)
            mask = torch.zeros((len(grp), L), dtype=torch.long, device=dev)
            tgt = torch.full((len(grp), L), -100, dtype=torch.long, device=dev)
            for j, r in enumerate(grp):
                x, lab = rows[r]
                ids[j, : len(x)] = x
                mask[j, : len(x)] = 1
                tgt[j, : len(x) - 1] = lab[1:]  # position t predicts the label at t + 1
            valid = tgt != -100
            flat = valid.reshape(-1).nonzero().squeeze(1)  # positions in (row · L + t) order
            owner = torch.tensor(grp, device=dev)[flat // L]
            self.batches.append((ids, mask, flat, tgt.reshape(-1)[flat], owner))
        self.head_tokens = head_tokens

    @torch.inference_mode()
    def rows(self, model) -> tuple[list[float], list[int]]:
        """(Σ CE per row, predicted tokens per row), rows in the order of the batches given."""
        head = model.lm_head
        dev = self.batches[0][0].device
        sums = torch.zeros(self.n_rows, dtype=torch.float64, device=dev)
        with fused_gelu(model):
            for ids, mask, flat, tgt, owner in self.batches:
                h = model.transformer(input_ids=ids, attention_mask=mask).last_hidden_state
                h = h.reshape(-1, h.shape[-1])
                for a in range(0, len(flat), self.head_tokens):
                    sl = slice(a, a + self.head_tokens)
                    z = head(h[flat[sl]])
                    if z.dtype in (torch.float16, torch.bfloat16):
                        z = z.float()
                    ce = torch.nn.functional.cross_entropy(z, tgt[sl], reduction="none")
                    sums.index_add_(0, owner[sl], ce.double())
        return sums.tolist(), list(self.counts)

    def check(self, model, batch, *, rtol: float = 1e-4) -> None:
        """Raise unless this path's per-row loss equals ``eval_loss_rows`` on ``batch``.

        Tolerance: per-token CE differs by float32 rounding only, ≲ 1e-6 relative per
        token (measured on the default embedded model: ≤ 1e-6 per row); 1e-4 relative
        per row catches a model whose logits are not lm_head(last_hidden_state).
        """
        from real_runs.measure import eval_loss_rows

        ref_s, ref_c = eval_loss_rows(model, [batch])
        one = PackedEval([batch], batch_tokens=10**9, head_tokens=self.head_tokens)
        s, c = one.rows(model)
        if c != ref_c or any(abs(a - b) > rtol * max(abs(b), 1.0) for a, b in zip(s, ref_s)):
            raise RuntimeError(
                "PackedEval disagrees with the model's forward (its logits are not "
                "lm_head(transformer(...).last_hidden_state)); use eval_loss_rows"
            )


@contextlib.contextmanager
def fused_gelu(model):
    """Within the block, every ``NewGELUActivation`` of ``model`` is transformers' ``GELUTanh``.

    Both compute GPT-2's GELU, 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))); ``GELUTanh`` calls
    PyTorch's fused ``F.gelu(x, approximate="tanh")`` (one pass) where ``NewGELUActivation``
    runs five elementwise ops, so outputs agree to float32 rounding. The original modules are
    put back on exit, also on error, so training never sees the swap.
    """
    from transformers.activations import GELUTanh, NewGELUActivation

    swapped = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is NewGELUActivation:
                swapped.append((parent, name, child))
    try:
        for parent, name, _ in swapped:
            setattr(parent, name, GELUTanh())
        yield len(swapped)
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


def _quads(U: torch.Tensor, V: torch.Tensor, Sx: torch.Tensor, G: torch.Tensor) -> tuple[float, float]:
    """(tr(E·Σ_x·Eᵀ·G), tr(E·Σ_x·Eᵀ)) of E = U·V (U m × k, V k × n) in float64, without forming E.

    Σ_x n × n, G m × m (both symmetric); tr(E·Σ_x·Eᵀ) = E_x‖E·x‖². Computed as

    tr(E·Σ_x·Eᵀ·G) = tr((V·Σ_x·Vᵀ)·(Uᵀ·G·U)) and tr(E·Σ_x·Eᵀ) = tr((V·Σ_x·Vᵀ)·(Uᵀ·U)):
    k·n² + k·m² multiply-adds instead of m·n² + m²·n; ε_BA = [ε_B, B]·[Q(A); ε_A] has k = 2r ≪ m, n.
    """
    S = V @ Sx @ V.T  # k × k; tr(S·M) = Σ_ij S_ij·M_ji
    return float((S * (U.T @ G @ U).T).sum()), float((S * (U.T @ U).T).sum())


def _random_even_part(model, packed, merge, facs, var_of, base_sum, tokens, *, draws, seed):
    """(mean, Monte Carlo se) over ``draws`` Gaussian perturbations δB ~ N(0, v_B), δA ~ N(0, v_A)
    per layer of the even part (L(+ε) + L(−ε))/2 − L(0) per token of ``packed``'s rows, with
    ε = δB·A + B·δA + δB·δA (float64, merged by ``merge`` at B·A ± ε); the model is left at the
    last merge (the caller merges its next cell)."""
    g = torch.Generator().manual_seed(seed)
    fac64 = {n: (B.double(), A.double()) for n, (B, A) in facs.items()}
    BA = {n: B @ A for n, (B, A) in fac64.items()}
    sd = {n: (vB.double().sqrt(), vA.double().sqrt()) for n, (vB, vA) in var_of.items()}
    vals = []
    for _ in range(draws):
        eps = {}
        for n, (B, A) in fac64.items():
            dB = torch.randn(B.shape, generator=g, dtype=torch.float64) * sd[n][0]
            dA = torch.randn(A.shape, generator=g, dtype=torch.float64) * sd[n][1]
            eps[n] = dB @ A + B @ dA + dB @ dA
        half = 0.0
        for sign in (1.0, -1.0):
            merge({n: (BA[n] + sign * eps[n]).float() for n in facs})
            half += sum(packed.rows(model)[0]) - base_sum
        vals.append(half / (2 * tokens))
    v = torch.tensor(vals, dtype=torch.float64)
    return float(v.mean()), float(v.std(unbiased=True) / math.sqrt(len(vals)))


def run_ptq(
    *,
    plain_model,
    layers: dict,
    scales: dict,
    curvature: dict,
    eval_batches,
    eval_clusters,
    ref_rows,
    schemes,
    bits,
    sr_draws: int,
    seed: int,
    n_groups: int = 20,
    progress: bool = False,
    patterns: dict | None = None,
    mirror: bool = False,
    heldout_curvature: dict | None = None,
    train_batches=None,
    moment_draws: int = 4,
    hessian_bits=(),
) -> list[dict]:
    """Quantize every layer's trained (B, A) per ``plan`` and measure; one result dict per (scheme, b, draw).

    plain_model: the base GPT-2 without adapters, float32, whose adapted modules (by the
    ``layers`` names) get W0 + s·Q(B)Q(A) merged in for each evaluation; ref_rows: the
    (Σ CE, count) rows of the full-precision adapted model on ``eval_batches``, for pairing.

    Paired groups: the held-out dialogues (``eval_clusters``, one per row) are dealt into
    K = min(n_groups, #dialogues, memory cap) groups (:func:`eval_groups`); each result carries
    the per-group loss change D_k (Σ_k D_k = ΔL) and first-order term P₁ₖ = Σ_layers
    s·⟨g_k, ε_BA⟩ (Σ_k P₁ₖ = ``pred_first_order``, g_k from :func:`eval_group_gradients`), and
    the paired interval of ΔL − P₁ (``resid_first_order_ci``): both are measured on the same
    tokens, so their common sampling error cancels there. The memory cap keeps the K stored
    gradients (8·Σ m·n bytes each) under ``GROUP_GRAD_BYTES``; K = 1 gives no interval.

    patterns: {label: {layer: bits}} — mixed-precision cells evaluated after the plan's, each
    layer at its own bit-width (every layer named), for every uniform scheme of ``schemes``
    (SR: ``sr_draws`` draws, the same generator seeds as a uniform cell of the pattern's
    largest b); their results carry ``ptq_pattern`` (the label), ``layer_bits`` and ``bits`` =
    the largest b of the pattern. Used by the mixed-precision allocation check, never by the
    sweep (its consumers read uniform cells).

    mirror: also evaluate every uniform cell's mirror image W0 + s·(B·A − ε_BA) (the same
    ε_BA, sign flipped). With ΔL(±) = ±P₁ + Q ± T + O(ε⁴) (P₁ the first-order term, Q the
    exact second-order term ½·s²·vec(ε_BA)ᵀ·H·vec(ε_BA) with the full Hessian H of the
    held-out loss — every layer, no Kronecker or Fisher approximation — and T the third-order
    term), the even part (ΔL(+) + ΔL(−))/2 = Q + O(ε⁴) measures Q, and the odd part minus P₁,
    (ΔL(+) − ΔL(−))/2 − P₁ = T + O(ε⁵), measures T, each group by group with a paired
    interval. Records then carry ``delta_loss_mirror`` (+ ``_groups``), ``second_order_measured``
    and ``third_order_measured`` (+ ``_groups``, ``_ci``): what tells a wrong curvature model
    (K-FAC ``pred_plugin`` ≠ Q) from a second-order expansion that stops too early (T ≠ 0).
    Used by ``real_runs.second_order_probe``, never by the sweep. heldout_curvature (with
    mirror): :func:`measure_curvature` on the evaluation windows' inputs (labels sampled from
    the model, so no held-out label enters); each mirror record then also carries
    ``pred_plugin_heldout``, the K-FAC prediction with that curvature: whether measuring the
    curvature on training windows is what P₂ misses. train_batches (with mirror): training
    windows with their true labels (the curvature windows); each mirror record then also
    carries ``second_order_train`` = (L_tr(+) + L_tr(−))/2 − L_tr(0) per training token, the
    exact second-order term Q_tr = ½·s²·vec(ε_BA)ᵀ·H_tr·vec(ε_BA) + O(ε⁴) of the TRAINING
    loss along the same ε_BA (full Hessian, every layer, residual term included), and
    ``delta_loss_train`` = L_tr(+) − L_tr(0): a zero-constant prediction of Q from data the
    fine-tune saw, where K-FAC and the Fisher keep only the Gauss–Newton part. With
    train_batches, each (scheme, b) with a noise model (the uniform schemes: the per-entry
    variances v_B, v_A that ``pred_moment`` uses) also gets ``pred_hessian_moment``: the
    expected second-order term E[Q_tr] under that noise model, from ``moment_draws`` random
    perturbations δB ~ N(0, v_B), δA ~ N(0, v_A) (independent entries; E[Q] depends on the
    noise only through these variances), each ε = δB·A + B·δA + δB·δA evaluated at ±ε on the
    training windows (the even part, as for Q_tr) — a finite-difference probe with perturbations
    of known variance, full Hessian, no quantized model evaluated; ``pred_hessian_moment_se``
    is its Monte Carlo standard error over the draws. The same value for every draw of a cell.
    hessian_bits (with train_batches, without mirror: the sweep's opt-in, FinetuneConfig
    ``ptq_hessian_bits``): ``pred_hessian_moment`` for the uniform cells at these b only (each
    (scheme, b) costs 2·moment_draws evaluations of the training windows), the same numbers as
    with mirror for the same adapter (same perturbation seeds).
    """
    from quantbounds.epsba.moments import eps_ba_curvature_moment
    from real_runs.arms import factor_weights
    from quantbounds.verdicts.intervals import grouped_total
    from real_runs.data import clustered_mean_ci

    check_int_range(sr_draws, "ptq_sr_draws", 1)
    facs = {
        n: tuple(t.detach().float().clone() for t in factor_weights(layer, quantized=False))
        for n, layer in layers.items()
    }
    mods = {n: plain_model.get_submodule(n) for n in layers}
    W0 = {n: m.weight.detach().clone() for n, m in mods.items()}
    conv = {n: tuple(W0[n].shape) == (facs[n][1].shape[1], facs[n][0].shape[0]) for n in layers}
    ref_sum, ref_cnt = ref_rows
    ref_loss = sum(ref_sum) / sum(ref_cnt)
    items = [(sc, b, d, None) for sc, b, d in plan(schemes, bits, sr_draws)]
    for label, lb in (patterns or {}).items():
        if set(lb) != set(layers):
            raise ValueError(
                f"patterns[{label!r}] must give bits for every layer {sorted(layers)}, got "
                f"{sorted(lb)}"
            )
        for v in lb.values():
            check_bits(v)
        for sc in schemes:
            if sc in FIXED_BITS:
                continue
            for d in range(sr_draws if sc == "sr_tensor" else 1):
                items.append((sc, max(lb.values()), d, label))

    def merge(deltas):
        with torch.no_grad():
            for n, m in mods.items():
                d = deltas[n] * scales[n]
                m.weight.copy_(W0[n] + (d.T if conv[n] else d).to(W0[n].dtype))

    # the evaluation windows are batched once and every cell reuses them; only the merged
    # weights change between cells
    packed = PackedEval(eval_batches)
    # the full-precision merge on the same path, to separate merge rounding from quantization
    merge({n: (B @ A) for n, (B, A) in facs.items()})
    packed.check(plain_model, eval_batches[0])
    fp_sum, fp_cnt = packed.rows(plain_model)
    fp_loss = sum(fp_sum) / sum(fp_cnt)
    hessian_bits = frozenset(check_bits(b) for b in hessian_bits)
    packed_train = (PackedEval(train_batches) if (mirror or hessian_bits) and train_batches
                    else None)
    if packed_train is not None:
        tr_fp = sum(packed_train.rows(plain_model)[0])
        tr_tot = sum(packed_train.counts)
    per_group = 8 * sum(W0[n].numel() for n in layers)
    n_groups = max(1, min(check_int_range(n_groups, "ptq_groups", 1), GROUP_GRAD_BYTES // per_group))
    groups = eval_groups(eval_clusters, n_groups)
    K = max(groups) + 1
    group_windows = [groups.count(k) for k in range(K)]
    ggrads = eval_group_gradients(plain_model, mods, conv, eval_batches, groups, K)
    gflat = {n: g.reshape(K, -1) for n, g in ggrads.items()}
    group_index = torch.tensor(groups)
    results = []
    moments: dict = {}
    hess_moments: dict = {}  # (scheme, b) → (mean, se) of the random-perturbation E[Q_tr]
    it = items
    if progress:
        from tqdm import tqdm

        it = tqdm(items, desc="PTQ", leave=False)
    for scheme, b, draw, label in it:
        t0 = time.time()
        lbits = patterns[label] if label is not None else None
        gen = torch.Generator().manual_seed(1_000_003 * (seed + 1) + 7919 * b + draw)
        deltas, per, E_of, UV_of, var_of = {}, {}, {}, {}, {}
        P1 = torch.zeros(K, dtype=torch.float64)
        pred_plugin = 0.0
        pred_moment = 0.0 if scheme not in ("nf4", "fp4", "int8") else None
        for n, (B, A) in facs.items():
            bl = lbits[n] if lbits is not None else b
            QB, vB = quantize_factor(B, scheme, bl, generator=gen)
            QA, vA = quantize_factor(A, scheme, bl, generator=gen)
            if mirror or b in hessian_bits:
                var_of[n] = (vB, vA)
            # ε_BA = Q(B)·Q(A) − B·A = ε_B·Q(A) + B·ε_A = U·V, U = [ε_B, B] (m × 2r),
            # V = [Q(A); ε_A] (2r × n), in float64 (ε_B, ε_A of float32 factors are exact there):
            # no difference of two large products, so ε_BA keeps its relative precision at
            # high b, where ‖ε_BA‖ ≪ ‖B·A‖
            Bd, Ad, QAd = B.double(), A.double(), QA.double()
            U = torch.cat([QB.double() - Bd, Bd], 1)
            V = torch.cat([QAd, QAd - Ad], 0)
            E = U @ V  # m × n
            if mirror:
                E_of[n] = E
                UV_of[n] = (U, V)
            deltas[n] = QB @ QA
            c = curvature[n]
            s = scales[n]
            quad, x2 = _quads(U, V, c["Sigma_x"], c["G"])  # x2 = E_x‖ε_BA·x‖²
            p1k = s * (gflat[n] @ E.reshape(-1))  # (K,) first-order term of each group
            P1 += p1k
            layer = {
                "eps_ba_fro2": float((E**2).sum()),
                "eps_ba_x2": x2,
                "pred_plugin": 0.5 * s * s * quad,
                "pred_first_order": float(p1k.sum()),
                "range_B": float(B.abs().max()),
                "range_A": float(A.abs().max()),
            }
            pred_plugin += layer["pred_plugin"]
            if pred_moment is not None:
                # an expectation over the noise: a function of (B, A, scheme, b) only, the same
                # for every SR draw (σ² = Δ²·p(1−p) depends on W, not on the draw)
                key = (scheme, bl, n)
                if key not in moments:
                    mom = eps_ba_curvature_moment(
                        B.double().numpy(),
                        A.double().numpy(),
                        c["Sigma_x"].numpy(),
                        c["G"].numpy(),
                        vA.numpy(),
                        vB.numpy(),
                        scale=s,
                    )
                    moments[key] = 0.5 * float(mom.total)
                layer["pred_moment"] = moments[key]
                pred_moment += layer["pred_moment"]
            per[n] = layer
        merge(deltas)
        q_sum, q_cnt = packed.rows(plain_model)
        if q_cnt != fp_cnt:
            raise RuntimeError("PTQ evaluation saw different tokens than the reference")
        q_loss = sum(q_sum) / sum(q_cnt)
        # paired per-window differences, clustered by dialogue: with d_w = (q_w − f_w)·W/Σn,
        # mean_w d_w = Σ_w (q_w − f_w)/Σ_w n_w = ΔL exactly
        tot = sum(q_cnt)
        diffs = [(qs - fs) * len(q_cnt) / tot for qs, fs in zip(q_sum, fp_sum)]
        d_mean, d_lo, d_hi = clustered_mean_ci(diffs, eval_clusters)
        # per group: D_k = Σ_{rows of k} (q − f)/Σn and P₁ₖ summed over layers
        D = torch.zeros(K, dtype=torch.float64).index_add_(
            0, group_index, torch.tensor(q_sum, dtype=torch.float64) - torch.tensor(fp_sum, dtype=torch.float64)
        ) / tot
        resid = grouped_total((D - P1).tolist(), group_windows)
        extra = {}

        def hessian_moment():
            # after every evaluation of this cell (the perturbations re-merge the weights)
            if (scheme, b) not in hess_moments:
                hess_moments[(scheme, b)] = _random_even_part(
                    plain_model, packed_train, merge, facs, var_of, tr_fp, tr_tot,
                    draws=check_int_range(moment_draws, "moment_draws", 2),
                    seed=7_000_003 * (seed + 1) + 7919 * b + SCHEMES.index(scheme))
            hm, hse = hess_moments[(scheme, b)]
            return {"pred_hessian_moment": hm, "pred_hessian_moment_se": hse,
                    "hessian_moment_draws": moment_draws}

        if (not mirror and label is None and packed_train is not None and pred_moment is not None
                and b in hessian_bits):
            extra.update(hessian_moment(), train_tokens=tr_tot)
        if mirror and label is None:
            tr_plus = sum(packed_train.rows(plain_model)[0]) if packed_train is not None else None
            merge({n: (facs[n][0].double() @ facs[n][1].double() - E_of[n]).float() for n in facs})
            if packed_train is not None:
                tr_minus = sum(packed_train.rows(plain_model)[0])
                extra.update(delta_loss_train=(tr_plus - tr_fp) / tr_tot,
                             second_order_train=((tr_plus - tr_fp) + (tr_minus - tr_fp))
                             / (2 * tr_tot), train_tokens=tr_tot)
            m_sum, m_cnt = packed.rows(plain_model)
            if m_cnt != fp_cnt:
                raise RuntimeError("PTQ evaluation saw different tokens than the reference")
            Dm = torch.zeros(K, dtype=torch.float64).index_add_(
                0, group_index,
                torch.tensor(m_sum, dtype=torch.float64) - torch.tensor(fp_sum, dtype=torch.float64),
            ) / tot
            even, odd = (D + Dm) / 2, (D - Dm) / 2 - P1

            def ci(u):
                return grouped_total(u.tolist(), group_windows)["ci"] if K >= 2 else None

            extra.update({
                "delta_loss_mirror": sum(m_sum) / sum(m_cnt) - fp_loss,
                "delta_loss_mirror_groups": Dm.tolist(),
                "second_order_measured": float(even.sum()),
                "second_order_measured_groups": even.tolist(),
                "second_order_measured_ci": ci(even),
                "third_order_measured": float(odd.sum()),
                "third_order_measured_groups": odd.tolist(),
                "third_order_measured_ci": ci(odd),
            })
            if heldout_curvature is not None:
                extra["pred_plugin_heldout"] = sum(
                    0.5 * scales[n] ** 2 * _quads(*UV_of[n], heldout_curvature[n]["Sigma_x"],
                                                  heldout_curvature[n]["G"])[0] for n in facs)
            if "X" in next(iter(curvature.values())):
                f = fisher_along(E_of, scales, curvature)
                extra.update(pred_token_fisher=f["token"], pred_seq_fisher=f["seq"],
                             pred_seq_fisher_cross=f["seq_cross"])
            if packed_train is not None and pred_moment is not None:
                extra.update(hessian_moment())
        results.append(
            {
                "ptq_scheme": scheme,
                "bits": b,
                "ptq_draw": draw,
                **({} if label is None else {"ptq_pattern": label, "layer_bits": dict(lbits)}),
                "eval_loss": q_loss,
                "eval_loss_ref": fp_loss,
                "eval_loss_unmerged": ref_loss,
                "delta_loss": q_loss - fp_loss,
                "delta_loss_ci": [d_lo, d_hi],
                "pred_plugin": pred_plugin,
                "pred_moment": pred_moment,
                "pred_first_order": sum(v["pred_first_order"] for v in per.values()),
                "eval_groups": K,
                "group_windows": group_windows,
                "delta_loss_groups": D.tolist(),
                "first_order_groups": P1.tolist(),
                "resid_first_order": q_loss - fp_loss - float(P1.sum()),
                "resid_first_order_ci": resid["ci"] if K >= 2 else None,
                "eps_ba_fro2": sum(v["eps_ba_fro2"] for v in per.values()),
                "eps_ba_x2": sum(v["eps_ba_x2"] for v in per.values()),
                "layers": per,
                "eval_tokens": tot,
                **extra,
                "wall_s": time.time() - t0,
                "perplexity": math.exp(min(q_loss, 700.0)),
            }
        )
    # leave the plain model at the full-precision merge
    merge({n: (B @ A) for n, (B, A) in facs.items()})
    return results
