"""Measurements of a LoRA fine-tune: gradient variance, ‖x‖², ranges R, ‖ε_BA‖², eval metrics.

Gradient variance, measured properly. For a parameter vector θ (here: the LoRA factors of one
layer, or of all layers) and mini-batch gradients g_k = ∇_θ L(θ; batch_k), k = 1…K, drawn
i.i.d. at FIXED θ, the quantity in Theorem 3.3 is the trace of the covariance of g:

    tr Cov[g] = E‖g − E g‖²,    estimated without bias by   (1/(K−1))·Σ_k ‖g_k − ḡ‖².

It is a property of the gradient's distribution across mini-batches (or, on one fixed batch,
across noise / stochastic-rounding draws), NOT the variance of the entries of one gradient
(the seed's mistake), which mixes parameters of different scales and is not a variance of
anything random. The total over layers is the sum of the per-layer traces.
"""

from __future__ import annotations

import math
import resource
from contextlib import contextmanager
from typing import Callable, Iterable

import torch
from torch.nn.utils import parametrize

from real_runs.data import exact_match, token_f1


def trace_cov(samples: list[dict[str, torch.Tensor]]) -> tuple[float, dict[str, float]]:
    """(total, per key) unbiased tr Ĉov = (1/(K−1))·Σ_k ‖g_k − ḡ‖² over K ≥ 2 samples.

    samples: K dicts {key: flat gradient}; computed in float64.
    """
    K = len(samples)
    if K < 2:
        raise ValueError(f"need at least 2 gradient samples to estimate a covariance, got {K}")
    per = {}
    for key in samples[0]:
        G = torch.stack([s[key].double().reshape(-1) for s in samples])  # K × d
        per[key] = float(((G - G.mean(0)) ** 2).sum() / (K - 1))
    return sum(per.values()), per


def gradient_samples(
    loss_fn: Callable[[object], torch.Tensor],
    inputs: Iterable,
    groups: dict[str, list[torch.nn.Parameter]],
) -> list[dict[str, torch.Tensor]]:
    """[{group: flat ∇_θ L(θ; input)}] for each input, at the current (fixed) parameters.

    loss_fn(input) → scalar loss; groups: {name: parameters}. Uses torch.autograd.grad, so
    no .grad is touched and no optimizer step happens between samples.
    """
    names = list(groups)
    flat = [p for n in names for p in groups[n]]
    out = []
    for inp in inputs:
        grads = torch.autograd.grad(loss_fn(inp), flat, allow_unused=True)
        it = iter(grads)
        sample = {}
        for n in names:
            parts = []
            for p in groups[n]:
                g = next(it)
                parts.append((torch.zeros_like(p) if g is None else g).detach().reshape(-1))
            sample[n] = torch.cat(parts)
        out.append(sample)
    return out


def grad_variance(loss_fn, inputs, groups) -> tuple[float, dict[str, float]]:
    """tr Ĉov of the gradient across ``inputs`` (mini-batches, or one batch repeated for noise draws)."""
    return trace_cov(gradient_samples(loss_fn, inputs, groups))


def lora_groups(layers: dict, adapter: str = "default") -> dict[str, list[torch.nn.Parameter]]:
    """{layer: [B, A] trainable (master) parameters} of PEFT LoRA layers."""
    out = {}
    for name, layer in layers.items():
        ps = []
        for fac in (layer.lora_B[adapter], layer.lora_A[adapter]):
            if parametrize.is_parametrized(fac):
                ps.append(fac.parametrizations.weight.original)
            else:
                ps.append(fac.weight)
        out[name] = ps
    return out


@contextmanager
def capture_input_norms(layers: dict, mask_holder: dict):
    """Accumulate Σ‖x_t‖² and token counts of each adapted layer's input x (…, n).

    ``mask_holder["mask"]`` (B×T, 1 = real token) selects tokens; set it before each forward.
    Yields {layer: [Σ‖x‖², count]}; mean ‖x‖² = sum / count.
    """
    acc = {n: [0.0, 0] for n in layers}
    handles = []

    def make(name):
        def hook(mod, args):
            x = args[0].detach().double()
            sq = (x**2).sum(-1)
            m = mask_holder.get("mask")
            if m is not None and m.shape == sq.shape:
                acc[name][0] += float((sq * m).sum())
                acc[name][1] += int(m.sum())
            else:
                acc[name][0] += float(sq.sum())
                acc[name][1] += sq.numel()

        return hook

    for n, layer in layers.items():
        handles.append(layer.register_forward_pre_hook(make(n)))
    try:
        yield acc
    finally:
        for h in handles:
            h.remove()


def factor_ranges(layers: dict, adapter: str = "default") -> tuple[dict, dict]:
    """({layer: R_B}, {layer: R_A}): absmax of the full-precision B and A."""
    from real_runs.arms import factor_weights

    rb, ra = {}, {}
    for n, layer in layers.items():
        B, A = factor_weights(layer, adapter, quantized=False)
        rb[n], ra[n] = float(B.abs().max()), float(A.abs().max())
    return rb, ra


def eps_ba(layers: dict, adapter: str = "default") -> tuple[float, dict[str, float]]:
    """Σ_layers ‖Q(B)Q(A) − BA‖_F² (float64), Q as the forward pass applies it (one draw for SR/noise).

    Unscaled by the LoRA scale s. 0 for layers whose factors are not quantized.
    """
    from real_runs.arms import factor_weights

    per = {}
    for n, layer in layers.items():
        B, A = factor_weights(layer, adapter, quantized=False)
        Bq, Aq = factor_weights(layer, adapter, quantized=True)
        d = Bq.double() @ Aq.double() - B.double() @ A.double()
        per[n] = float((d**2).sum())
    return sum(per.values()), per


@torch.no_grad()
def eval_loss(model, batches: Iterable[dict]) -> tuple[float, int]:
    """(mean token cross-entropy in nats, number of predicted tokens) over batches.

    Token-weighted: Σ CE / Σ tokens, each position t predicting token t+1 where both are real.
    """
    total, count = 0.0, 0
    for b in batches:
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        tgt = b["labels"][:, 1:]
        ce = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]),
            tgt.reshape(-1),
            ignore_index=-100,
            reduction="sum",
        )
        total += float(ce)
        count += int((tgt != -100).sum())
    if count == 0:
        raise ValueError("no tokens to evaluate")
    return total / count, count


@torch.no_grad()
def eval_loss_rows(model, batches: Iterable[dict]) -> tuple[list[float], list[int]]:
    """Per row (sequence) of every batch: (Σ token cross-entropy in nats, predicted tokens).

    The same token-weighted loss as :func:`eval_loss` (which is Σ sums / Σ counts), kept per
    sequence so that intervals can be clustered by dialogue.
    """
    sums, counts = [], []
    for b in batches:
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        tgt = b["labels"][:, 1:]
        ce = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), tgt, ignore_index=-100, reduction="none"
        )
        sums.extend(ce.double().sum(1).tolist())
        counts.extend((tgt != -100).sum(1).tolist())
    return sums, counts


@torch.no_grad()
def greedy_scores(
    model,
    tok,
    pairs,
    *,
    max_new_tokens: int,
    max_prompt: int,
    device: str = "cpu",
    batch_size: int = 32,
    return_lists: bool = False,
):
    """(mean token F1, exact-match rate, responses[, per-pair F1, per-pair EM]) of greedy continuations.

    Prompt = t₁⟨eos⟩…t_j⟨eos⟩ (last ``max_prompt`` tokens), generation stops at ⟨eos⟩.
    Prompts are LEFT-padded into batches of ``batch_size`` with an attention mask (generate
    derives GPT-2's position ids from the mask, so padding moves no position; tested against
    one-at-a-time generation).
    """
    from real_runs.data import encode_dialogue

    eos = tok.eos_token_id
    f1s, ems, outs = [], [], []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i : i + batch_size]
        prompts = [encode_dialogue(tok, c, seq_len=10**9)[-max_prompt:] for c, _ in chunk]
        L = max(len(p) for p in prompts)
        x = torch.full((len(prompts), L), eos, dtype=torch.long)
        m = torch.zeros((len(prompts), L), dtype=torch.long)
        for k, p in enumerate(prompts):
            x[k, L - len(p) :] = torch.tensor(p, dtype=torch.long)
            m[k, L - len(p) :] = 1
        y = model.generate(
            input_ids=x.to(device),
            attention_mask=m.to(device),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos,
            pad_token_id=eos,
        )
        for k, (_, reference) in enumerate(chunk):
            new = y[k, L:].tolist()
            if eos in new:
                new = new[: new.index(eos)]
            resp = tok.decode(new).strip()
            outs.append(resp)
            f1s.append(token_f1(resp, reference))
            ems.append(exact_match(resp, reference))
    n = max(1, len(pairs))
    if return_lists:
        return sum(f1s) / n, sum(ems) / n, outs, f1s, ems
    return sum(f1s) / n, sum(ems) / n, outs


def peak_memory_bytes(device: str) -> int:
    """Peak memory: CUDA max allocated on GPU; else the process' peak RSS since the last reset
    (Linux VmHWM, which ``finetune._reset_peak_rss`` resets at the start of each run), falling
    back to ru_maxrss (KiB, process lifetime) where /proc is not available."""
    if device == "cuda":
        return int(torch.cuda.max_memory_allocated())
    hwm = _proc_status_bytes("VmHWM")
    return hwm if hwm is not None else int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _proc_status_bytes(key: str) -> int | None:
    """A ``kB`` field of Linux /proc/self/status ("VmHWM", "VmRSS") in bytes; None without /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def current_memory_bytes(device: str) -> int | None:
    """Memory held now: CUDA allocated on GPU; else the process' resident set (Linux VmRSS;
    None where /proc is not available). Read at the start of a run, it separates the run's own
    peak from what earlier runs of the same process left resident (caches, allocator pools):
    the run's increment is ``peak_memory_bytes − current_memory_bytes(at start)``."""
    if device == "cuda":
        return int(torch.cuda.memory_allocated())
    return _proc_status_bytes("VmRSS")


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _quant_state_bytes(qs) -> int:
    """Bytes of a bitsandbytes 4-bit QuantState (``Params4bit.quant_state``), for a weight of
    numel N quantized in blocks of ``qs.blocksize`` (64 by default):

        absmax   ⌈N/blocksize⌉ × 4 B (float32), or under double quantization × 1 B (uint8 codes)
        code     16 × 4 B (the float32 NF4 / FP4 table, one per tensor)
        offset   4 B (double quantization only: the float32 mean subtracted from absmax)
        state2   double quantization only, the QuantState of the absmax: its own absmax
                 ⌈⌈N/blocksize⌉/256⌉ × 4 B (float32) and code 256 × 4 B (the dynamic map)

    Every tensor is counted at its own numel × element size, so a non-default block or storage
    dtype is counted as stored.
    """
    n = 0
    for name in ("absmax", "code", "offset"):
        t = getattr(qs, name, None)
        if isinstance(t, torch.Tensor):
            n += _nbytes(t)
    if getattr(qs, "state2", None) is not None:
        n += _quant_state_bytes(qs.state2)
    return n


def param_counts(model) -> dict:
    """{"params": logical parameter count, "bytes": stored bytes, "quantized": logical count of
    the weights stored in 4 or 8 bits} of all parameters and buffers.

    Each parameter is counted once (``model.parameters()`` skips tied duplicates such as GPT-2's
    lm_head = wte). Per kind of parameter:

        plain tensor                 params numel           bytes numel × element size
        bnb Params4bit (4-bit)       params ∏ quant_state.shape (the original weight's numel; the
                                     stored tensor is packed, two 4-bit codes per uint8, numel
                                     ⌈N/2⌉)
                                     bytes ⌈N/2⌉ + the QuantState (:func:`_quant_state_bytes`)
        bnb Int8Params (8-bit)       params numel (int8, one per weight)
                                     bytes numel × 1 + SCB: one float32 absmax per output row
                                     (``CB``, where set, is the same int8 storage, not a copy)

    Buffers add their bytes (not counted as parameters).

    Against the state_dict bitsandbytes serializes (tested on a tiny GPT-2): the bytes equal
    the sum of its tensors' nbytes, each storage once, except for what is metadata there and
    not stored data here: per 4-bit weight a ``quant_state.bitsandbytes__nf4`` uint8 tensor (the
    JSON text of quant_type, blocksize, shape, dtype and, under double quantization, the nested
    blocksize, dtype and offset — so the offset is JSON text there and a 4-byte float32 here),
    and per 8-bit layer a 1-byte ``weight_format`` marker.
    """
    params = nbytes = quantized = 0
    for p in model.parameters():
        qs = getattr(p, "quant_state", None)
        if qs is not None and getattr(qs, "shape", None) is not None:
            # 4-bit: p is the packed storage; the logical weight is qs.shape
            params += math.prod(qs.shape)
            quantized += math.prod(qs.shape)
            nbytes += _nbytes(p) + _quant_state_bytes(qs)
            continue
        params += p.numel()
        nbytes += _nbytes(p)
        scb = getattr(p, "SCB", None)
        if isinstance(scb, torch.Tensor):
            # 8-bit: per-row float32 scales
            nbytes += _nbytes(scb)
            quantized += p.numel()
    for b in model.buffers():
        nbytes += _nbytes(b)
    return {"params": int(params), "bytes": int(nbytes), "quantized": int(quantized)}


def model_bytes(model) -> int:
    """Stored bytes of all parameters and buffers, 4-/8-bit weights with their scales and
    quantization state (:func:`param_counts`)."""
    return param_counts(model)["bytes"]


def layer_scales(layers: dict, adapter: str = "default") -> dict[str, float]:
    """{layer: the LoRA scale s PEFT applies there} (differs by layer under rank_pattern / alpha_pattern)."""
    return {n: float(layer.scaling[adapter]) for n, layer in layers.items()}


def quant_ranges(layers: dict, block_size: int | None, adapter: str = "default") -> dict[str, dict]:
    """Per layer, the quantization ranges R the adapter quantizer uses for B and A.

    Per tensor: the absmax. Per block (``block_size``): count, min, max and mean of R² over
    the blocks (the noise variance is proportional to R²).
    """
    from real_runs.arms import factor_weights

    out = {}
    for n, layer in layers.items():
        B, A = factor_weights(layer, adapter, quantized=False)
        entry = {}
        for name, W in (("B", B), ("A", A)):
            if block_size is None:
                entry[name] = float(W.abs().max())
            else:
                R = W.reshape(-1, block_size).abs().amax(dim=1).double()
                entry[name] = {
                    "blocks": int(R.numel()),
                    "min": float(R.min()),
                    "max": float(R.max()),
                    "mean_R2": float((R**2).mean()),
                }
        out[n] = entry
    return out


def perplexity(loss: float) -> float:
    return float(math.exp(min(loss, 700.0)))  # exp overflows float64 past ≈ 709
