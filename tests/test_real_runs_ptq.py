"""real_runs.ptq: the PTQ schemes' noise, the curvature and gradient measurements, and PTQ in sweeps."""

import dataclasses
import json
import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from quantbounds.calib.records import read_ptq_records, read_records  # noqa: E402
from real_runs import ptq as P  # noqa: E402
from real_runs.finetune import FinetuneConfig, ptq_record_ids, run_finetune  # noqa: E402
from real_runs.sweep import (  # noqa: E402
    expand,
    load_config,
    pending,
    ptq_path,
    run_sweep,
    superseded_path,
)

FAST = dict(
    model="embedded",
    embedded="tiny",
    steps=4,
    batch_size=4,
    seq_len=32,
    n_train=16,
    grad_var_batches=2,
    noise_draws=2,
    eval_pairs=2,
    max_new_tokens=2,
    eval_tokens=300,
    device="cpu",
    progress=False,
    curvature_windows=8,
)


def test_plan_counts_and_bad_bits():
    items = P.plan(P.SCHEMES, (1, 2, 8), 3)
    # RTN ×3 schemes × 3 b, SR at b ≥ 2 only × 3 draws, nf4/fp4/int8 once
    assert len(items) == 9 + 2 * 3 + 3
    assert ("sr_tensor", 1, 0) not in items and ("int8", 8, 0) in items
    for bad in ([0], [17], [], [2.5], [True]):
        with pytest.raises(ValueError, match="ptq_bits"):
            P.check_ptq_bits(bad)


def test_rtn_tensor_hand_case_and_model_variance():
    W = torch.tensor([[1.0, -0.3], [0.26, 0.0]])
    Q, var = P.quantize_factor(W, "rtn_tensor", 2)
    # paper grid at b = 2: Δ = R/2 = 0.5, q ∈ {−2, −1, 0, 1}: 1.0 clips to 0.5
    assert Q.tolist() == [[0.5, -0.5], [0.5, 0.0]]
    assert torch.allclose(var, torch.full((2, 2), 0.25 / 12, dtype=torch.float64))


def test_sr_midtread_is_unbiased_with_the_stated_variance():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(4, 16, generator=g)
    W[0, 0] = W.abs().max() * 1.0  # the absmax entry (top cell: biased on the paper grid)
    K = 4000
    draws = torch.stack(
        [P.quantize_factor(W, "sr_tensor", 3, generator=g)[0] for _ in range(K)]
    ).double()
    _, var = P.quantize_factor(W, "sr_tensor", 3, generator=g)
    mean, emp_var = draws.mean(0), draws.var(0)
    se = torch.sqrt(var / K).clamp_min(1e-12)
    assert ((mean - W.double()).abs() <= 5 * se + 1e-7).all()
    # variance: relative s.e. of a Bernoulli-scaled sample variance ≤ √(2/K)·(kurtosis factor);
    # for a two-point variable the sample variance's s.d. ≤ var·√((1/(p(1−p)) )/K); check the total
    ok = var > 0
    ratio = float(emp_var[ok].sum() / var[ok].sum())
    assert abs(ratio - 1) < 0.05


def test_int8_and_codes_have_no_moment_model():
    W = torch.randn(8, 64)
    for s in ("nf4", "fp4", "int8"):
        Q, var = P.quantize_factor(W, s, 4)
        assert (
            var is None and Q.shape == W.shape and float((Q - W).abs().max()) < float(W.abs().max())
        )


class _Toy(torch.nn.Module):
    """Embedding → one Linear producing the logits: the layer's output gradient is p − e_y."""

    def __init__(self, V=7, d=5):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.emb = torch.nn.Embedding(V, d)
        self.out = torch.nn.Linear(d, V, bias=False)
        with torch.no_grad():
            self.emb.weight.copy_(torch.randn(V, d, generator=g))
            self.out.weight.copy_(torch.randn(V, d, generator=g) * 0.7)

    def forward(self, input_ids, attention_mask=None):
        class Output:
            pass

        o = Output()
        o.logits = self.out(self.emb(input_ids))
        return o


def test_curvature_sigma_x_exact_and_fisher_trace():
    m = _Toy()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 7, (40, 50), generator=g)
    mask = torch.ones_like(ids)
    mask[:, 45:] = 0
    batches = [
        {"input_ids": ids[i : i + 10], "attention_mask": mask[i : i + 10]} for i in range(0, 40, 10)
    ]
    c = P.measure_curvature(m, {"out": m.out}, batches, seed=0)["out"]
    # Σ_x over the real tokens (the hook sees every real position, including the last one)
    x = m.emb(ids)[mask.bool()].double()
    assert c["tokens"] == x.shape[0]
    assert torch.allclose(c["Sigma_x"], x.T @ x / x.shape[0], rtol=1e-10, atol=1e-12)
    # G: gradient at positions that predict a real next token: E_y‖p − e_y‖² = 1 − ‖p‖²
    with torch.no_grad():
        p = torch.softmax(m.out(m.emb(ids)).double(), -1)[:, :-1]
    valid = mask[:, 1:].bool()
    want = float((1 - (p**2).sum(-1))[valid].sum()) / c["tokens"]
    n_valid = int(valid.sum())
    # per-token ‖p − e_y‖² ∈ [0, 2]: s.d. ≤ 1, so 5 s.e. ≤ 5·√n_valid / tokens
    assert abs(float(torch.trace(c["G"])) - want) <= 5 * math.sqrt(n_valid) / c["tokens"]


def test_kept_tokens_rebuild_the_curvature_and_fisher_along_by_hand():
    """keep_tokens: the kept x_t, g_t give back Σ_x and G exactly, and the windows are the
    batch rows; fisher_along's three forms by explicit loops, and their nesting: with
    independent (x, g) the token form is K-FAC; one layer → seq_cross = seq."""
    m = _Toy()
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 7, (12, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[3:, 7:] = 0
    batches = [{"input_ids": ids[i : i + 4], "attention_mask": mask[i : i + 4]} for i in (0, 4, 8)]
    c = P.measure_curvature(m, {"out": m.out}, batches, seed=0, keep_tokens=True)["out"]
    T = c["tokens"]
    X, Gt = c["X"].double(), c["Gt"].double()
    assert X.shape[0] == Gt.shape[0] == c["seq"].shape[0] == T == int(mask.sum())
    torch.testing.assert_close(X.T @ X / T, c["Sigma_x"], rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(Gt.T @ Gt / T, c["G"], rtol=1e-6, atol=1e-9)
    assert c["seq"].tolist() == [i for i in range(12) for _ in range(int(mask[i].sum()))]
    # fisher_along by loops, two "layers" sharing these tokens
    curv = {"a": c, "b": c}
    E = {k: torch.randn(Gt.shape[1], X.shape[1], generator=g, dtype=torch.float64) for k in "ab"}
    s = {"a": 0.7, "b": 1.3}
    f = P.fisher_along(E, s, curv)
    a = {k: [s[k] * float(Gt[t] @ E[k] @ X[t]) for t in range(T)] for k in "ab"}
    seq = c["seq"].tolist()
    want_token = sum(v * v for k in "ab" for v in a[k]) / (2 * T)
    wins = sorted(set(seq))
    want_seq = sum(sum(a[k][t] for t in range(T) if seq[t] == w) ** 2 for k in "ab" for w in wins) / (2 * T)
    want_cross = sum(sum(a[k][t] for k in "ab" for t in range(T) if seq[t] == w) ** 2
                     for w in wins) / (2 * T)
    assert f["token"] == pytest.approx(want_token, rel=1e-9)
    assert f["seq"] == pytest.approx(want_seq, rel=1e-9)
    assert f["seq_cross"] == pytest.approx(want_cross, rel=1e-9)
    one = P.fisher_along({"a": E["a"]}, s, curv)
    assert one["seq_cross"] == pytest.approx(one["seq"], rel=1e-12)
    # independent x and g: the token form converges to K-FAC's ½·s²·tr(E·Σ_x·Eᵀ·G)
    n_tok, d_in, d_out = 200_000, 3, 2
    xs = torch.randn(n_tok, d_in, generator=g, dtype=torch.float64)
    gs = torch.randn(n_tok, d_out, generator=g, dtype=torch.float64) * torch.tensor([1.0, 2.0])
    ind = {"X": xs, "Gt": gs, "seq": torch.arange(n_tok)}
    E1 = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    kfac = 0.5 * float(torch.trace(E1 @ (xs.T @ xs / n_tok) @ E1.T @ (gs.T @ gs / n_tok)))
    tok = P.fisher_along({"l": E1}, {"l": 1.0}, {"l": ind})["token"]
    # a_t² has relative s.d. ≤ √(E a⁴)/E a² = √(3·3) = 3 for Gaussian x, g (product of two
    # independent Gaussian forms: kurtosis 3 each): 5 s.e. = 5·3/√n
    assert tok == pytest.approx(kfac, rel=5 * 3 / math.sqrt(n_tok))


def test_eval_weight_gradient_matches_central_differences(embedded_tiny_cache):
    from real_runs.arms import load_base
    from real_runs.data import collate
    from real_runs.embedded import EmbeddedConfig

    lm, tok = load_base(
        "embedded",
        base_quant="none",
        embedded=EmbeddedConfig.tiny(),
        cache_dir=embedded_tiny_cache,
        progress=False,
    )
    lm = lm.double().eval()
    seqs = [
        tok(t)["input_ids"][:20]
        for t in [
            "hello there, how are you",
            "the cat sat on the mat today",
            "what would happen if computers talked",
        ]
    ]
    batches = [collate(seqs, pad_id=tok.eos_token_id)]
    name = "transformer.h.1.mlp.c_fc"
    mod = lm.get_submodule(name)
    grads = P.eval_weight_gradients(lm, {name: mod}, {name: True}, batches)
    gen = torch.Generator().manual_seed(0)
    D = torch.randn(grads[name].shape, generator=gen, dtype=torch.float64)  # (out, in)
    W0 = mod.weight.detach().clone()
    from real_runs.measure import eval_loss

    def L(t):
        with torch.no_grad():
            mod.weight.copy_(W0 + t * D.T)
        return eval_loss(lm, batches)[0]

    h = 1e-4
    fd = (L(h) - L(-h)) / (2 * h)
    L(0.0)
    assert fd == pytest.approx(float((grads[name] * D).sum()), rel=1e-6, abs=1e-10)


def test_group_gradients_split_the_gradient_and_each_is_its_groups_derivative(embedded_tiny_cache):
    # float64 model: Σ_k g_k equals the one-group gradient to float64 rounding, and group k's
    # gradient is the derivative of (Σ_{t ∈ k} ℓ_t)/T, checked by central differences on
    # that group's rows alone (T all predicted tokens).
    from real_runs.arms import load_base
    from real_runs.data import collate
    from real_runs.embedded import EmbeddedConfig
    from real_runs.measure import eval_loss_rows

    lm, tok = load_base("embedded", base_quant="none", embedded=EmbeddedConfig.tiny(),
                        cache_dir=embedded_tiny_cache, progress=False)
    lm = lm.double().eval()
    texts = ["hello there, how are you", "the cat sat on the mat today",
             "what would happen if computers talked", "a short one", "dogs like long walks too"]
    seqs = [tok(t)["input_ids"][:20] for t in texts]
    batches = [collate(seqs[:3], pad_id=tok.eos_token_id), collate(seqs[3:], pad_id=tok.eos_token_id)]
    clusters = ["d1", "d0", "d1", "d2", "d0"]
    groups = P.eval_groups(clusters, 2)
    assert groups == [1, 0, 1, 0, 0]  # sorted dialogues d0, d1, d2 dealt round robin into 2
    assert P.eval_groups(clusters, 9) == [1, 0, 1, 2, 0]  # never more groups than dialogues
    names = ["transformer.h.1.mlp.c_fc", "transformer.h.0.attn.c_attn"]
    mods = {n: lm.get_submodule(n) for n in names}
    conv = {n: True for n in names}
    gk = P.eval_group_gradients(lm, mods, conv, batches, groups, 2, rows_per_batch=2)
    full = P.eval_weight_gradients(lm, mods, conv, batches)
    for n in names:
        assert gk[n].shape == (2, *full[n].shape)
        torch.testing.assert_close(gk[n].sum(0), full[n], rtol=1e-10, atol=1e-14)
    T = sum(c for _, cs in [eval_loss_rows(lm, batches)] for c in cs)
    rows_k0 = [s for s, g in zip(seqs, groups) if g == 0]
    b0 = [collate(rows_k0, pad_id=tok.eos_token_id)]
    mod = mods[names[0]]
    D = torch.randn(full[names[0]].shape, generator=torch.Generator().manual_seed(1),
                    dtype=torch.float64)
    W0 = mod.weight.detach().clone()

    def L0(t):
        with torch.no_grad():
            mod.weight.copy_(W0 + t * D.T)
        return sum(eval_loss_rows(lm, b0)[0]) / T

    h = 1e-4
    fd = (L0(h) - L0(-h)) / (2 * h)
    L0(0.0)
    assert fd == pytest.approx(float((gk[names[0]][0] * D).sum()), rel=1e-6, abs=1e-10)
    with pytest.raises(ValueError, match="groups"):
        P.eval_group_gradients(lm, mods, conv, batches, groups[:-1], 2)
    with pytest.raises(ValueError, match="groups"):
        P.eval_group_gradients(lm, mods, conv, batches, [0, 1, 2, 0, 0], 2)
    with pytest.raises(ValueError, match="n_groups"):
        P.eval_groups(clusters, 0)


def test_ptq_end_to_end_on_the_tiny_model(embedded_tiny_cache):
    cfg = FinetuneConfig(
        **FAST,
        cache_dir=str(embedded_tiny_cache),
        ptq=True,
        ptq_bits=(2, 16),
        ptq_eval_tokens=150,
        ptq_schemes=("rtn_tensor", "sr_tensor", "nf4"),
        ptq_sr_draws=2,
    )
    rec, ptq = run_finetune(cfg, return_ptq=True)
    assert len(ptq) == len(P.plan(cfg.ptq_schemes, cfg.ptq_bits, 2)) == 2 + 4 + 1
    by = {(p["ptq_scheme"], p["bits"], p["ptq_draw"]): p for p in ptq}
    for p in ptq:
        assert p["ptq_of"] == rec["run_id"] and p["eval_tokens"] <= rec["eval_tokens"]
        # the merged full-precision path is the PEFT forward up to float32 rounding
        assert p["eval_loss_ref"] == pytest.approx(p["eval_loss_unmerged"], rel=1e-5)
        assert p["delta_loss_ci"][0] <= p["delta_loss"] <= p["delta_loss_ci"][1]
        assert p["pred_plugin"] >= 0 and set(p["layers"]) == set(rec["eps_ba_layers"])
    assert abs(by[("rtn_tensor", 16, 0)]["delta_loss"]) < 1e-5
    assert by[("rtn_tensor", 2, 0)]["eps_ba_fro2"] > 1e3 * by[("rtn_tensor", 16, 0)]["eps_ba_fro2"]
    assert by[("nf4", 4, 0)]["pred_moment"] is None and by[("sr_tensor", 2, 1)]["pred_moment"] > 0
    # SR draws differ, their moment prediction (an expectation) does not
    a, b = by[("sr_tensor", 2, 0)], by[("sr_tensor", 2, 1)]
    assert a["eps_ba_fro2"] != b["eps_ba_fro2"] and a["pred_moment"] == b["pred_moment"]
    # paired groups: the per-group values add up to ΔL and the first-order term, and the
    # residual's interval is grouped_total's on them
    from quantbounds.verdicts.intervals import grouped_total

    for p in ptq:
        K = p["eval_groups"]
        assert 2 <= K <= cfg.ptq_groups and len(p["delta_loss_groups"]) == K
        assert len(p["group_windows"]) == K and min(p["group_windows"]) >= 1
        assert sum(p["delta_loss_groups"]) == pytest.approx(p["delta_loss"], rel=1e-9, abs=1e-12)
        assert sum(p["first_order_groups"]) == pytest.approx(p["pred_first_order"], rel=1e-9,
                                                             abs=1e-15)
        r = p["resid_first_order"]
        assert r == pytest.approx(p["delta_loss"] - p["pred_first_order"], rel=1e-9, abs=1e-12)
        u = [d - f for d, f in zip(p["delta_loss_groups"], p["first_order_groups"])]
        assert p["resid_first_order_ci"] == grouped_total(u, p["group_windows"])["ci"]


def test_mixed_precision_cells_quantize_each_layer_at_its_own_bits(embedded_tiny_cache):
    """A pattern with every layer at b is the uniform cell at b exactly (same generator seed);
    a mixed pattern's layers carry the ε_BA of their own b; ids hash the per-layer bits."""
    cfg = FinetuneConfig(**FAST, cache_dir=str(embedded_tiny_cache), ptq=True, ptq_bits=(2, 4),
                         ptq_eval_tokens=150, ptq_schemes=("rtn_tensor", "sr_tensor", "nf4"),
                         ptq_sr_draws=2)
    # the adapted layers, from a plain run's record
    names = sorted(run_finetune({**FAST, "cache_dir": str(embedded_tiny_cache)})["range_A"])
    mixed = {n: (2 if i % 2 else 4) for i, n in enumerate(names)}
    rec, ptq = run_finetune(cfg, return_ptq=True,
                            ptq_patterns={"all4": {n: 4 for n in names}, "mixed": mixed})
    uni = {(p["ptq_scheme"], p["bits"], p["ptq_draw"]): p for p in ptq if "ptq_pattern" not in p}
    pat = {(p["ptq_pattern"], p["ptq_scheme"], p["ptq_draw"]): p for p in ptq
           if "ptq_pattern" in p}
    # codes (nf4) have fixed bits: no pattern cells; SR: one per draw
    assert set(pat) == {(lab, s, d) for lab in ("all4", "mixed") for s, d in
                        (("rtn_tensor", 0), ("sr_tensor", 0), ("sr_tensor", 1))}
    for s, d in (("rtn_tensor", 0), ("sr_tensor", 0), ("sr_tensor", 1)):
        a, u = pat[("all4", s, d)], uni[(s, 4, d)]
        assert a["delta_loss"] == u["delta_loss"] and a["layers"] == u["layers"]
        assert a["run_id"] != u["run_id"] and a["layer_bits"] == {n: 4 for n in names}
        m = pat[("mixed", s, d)]
        assert m["bits"] == 4 and m["layer_bits"] == mixed
        if s == "rtn_tensor":  # deterministic: each layer's ε_BA is its uniform cell's
            for n in names:
                src = uni[(s, mixed[n], 0)]["layers"][n]
                assert m["layers"][n]["eps_ba_fro2"] == pytest.approx(src["eps_ba_fro2"])
                assert m["layers"][n]["pred_moment"] == pytest.approx(src["pred_moment"])
    assert len({p["run_id"] for p in ptq}) == len(ptq)
    with pytest.raises(ValueError, match="every layer"):
        run_finetune(cfg, return_ptq=True, ptq_patterns={"bad": {names[0]: 2}})


def test_mirror_cells_measure_the_even_and_odd_parts_of_the_loss_change(embedded_tiny_cache, monkeypatch):
    """mirror=True: the + cell is unchanged; the mirror evaluation at B·A − ε_BA is the loss of
    a quantizer whose ε_BA is −ε_BA (checked by running one); the even/odd parts add up."""
    cfg = FinetuneConfig(**FAST, cache_dir=str(embedded_tiny_cache), ptq=True, ptq_bits=(2, 8),
                         ptq_eval_tokens=150, ptq_schemes=("rtn_tensor",), ptq_groups=3)
    _, plain = run_finetune(cfg, return_ptq=True)
    _, mir = run_finetune(cfg, return_ptq=True, ptq_mirror=True)
    rtol32 = _rounding_rtol(__import__("real_runs.embedded", fromlist=["E"]).EmbeddedConfig.tiny(),
                            torch.finfo(torch.float32).eps)
    for a, m in zip(plain, mir):
        assert "delta_loss_mirror" not in a
        for k in ("delta_loss", "delta_loss_groups", "pred_plugin", "pred_first_order", "layers"):
            assert a[k] == m[k], k
        assert m["second_order_measured"] == pytest.approx((m["delta_loss"] + m["delta_loss_mirror"]) / 2,
                                                           abs=1e-15)
        assert m["third_order_measured"] == pytest.approx(
            (m["delta_loss"] - m["delta_loss_mirror"]) / 2 - m["pred_first_order"], abs=1e-15)
        assert sum(m["delta_loss_mirror_groups"]) == pytest.approx(m["delta_loss_mirror"], abs=1e-12)
        assert sum(m["second_order_measured_groups"]) == pytest.approx(m["second_order_measured"],
                                                                       abs=1e-15)
        lo, hi = m["second_order_measured_ci"]
        assert lo <= m["second_order_measured"] <= hi
        # the kept curvature tokens give the Fisher forms (real_runs.ptq.fisher_along)
        assert all(m[k] >= 0 and k not in a for k in ("pred_token_fisher", "pred_seq_fisher",
                                                       "pred_seq_fisher_cross"))
        assert all(k in m and k not in a for k in ("second_order_train", "delta_loss_train",
                                                    "pred_hessian_moment"))
        assert m["pred_hessian_moment_se"] >= 0
    # the held-out-curvature K-FAC: with the training curvature handed in as the held-out one,
    # it is pred_plugin exactly (the wiring), and otherwise a positive number of its own
    assert all(m["pred_plugin_heldout"] > 0 for m in mir)
    assert all(m["pred_plugin_heldout"] != pytest.approx(m["pred_plugin"], rel=1e-6, abs=0)
               for m in mir)
    real_measure = P.measure_curvature
    first = {}

    def same_curvature(model, layers, batches, **kw):
        if "c" not in first:
            first["c"] = real_measure(model, layers, batches, **{**kw, "keep_tokens": True})
        return first["c"]

    monkeypatch.setattr(P, "measure_curvature", same_curvature)
    _, same = run_finetune(cfg, return_ptq=True, ptq_mirror=True)
    for m in same:
        assert m["pred_plugin_heldout"] == pytest.approx(m["pred_plugin"], rel=1e-12)
    monkeypatch.setattr(P, "measure_curvature", real_measure)
    # ε_BA = δ·A (B moved by a fixed δ, A kept): its mirror (B − δ)·A is what a "quantizer"
    # returning B − δ gives as its + cell; δ large enough that ΔL(+) ≠ ΔL(−) far beyond rounding
    calls = {"n": 0}

    def patched(sign):
        def q(W, scheme, bits, *, generator=None):
            calls["n"] += 1
            if calls["n"] % 2 == 0:  # the second call of each layer quantizes A: keep it
                return W.clone(), torch.zeros_like(W, dtype=torch.float64)
            g = torch.Generator().manual_seed(calls["n"] // 2 * 10 + bits)  # same δ for ±
            d = 0.5 * torch.randn(W.shape, generator=g, dtype=W.dtype)
            return W + sign * d, torch.zeros_like(W, dtype=torch.float64)
        return q

    monkeypatch.setattr(P, "quantize_factor", patched(+1))
    _, plus = run_finetune(cfg, return_ptq=True, ptq_mirror=True)
    calls["n"] = 0
    monkeypatch.setattr(P, "quantize_factor", patched(-1))
    _, minus = run_finetune(cfg, return_ptq=True, ptq_mirror=True)
    for p_, q_ in zip(plus, minus):
        assert p_["bits"] == q_["bits"]
        tol = 2 * rtol32 * abs(q_["eval_loss"])
        assert abs(p_["delta_loss"] - p_["delta_loss_mirror"]) > 5 * tol  # the test has power
        assert abs(p_["delta_loss_mirror"] - q_["delta_loss"]) <= tol
        assert p_["pred_first_order"] == pytest.approx(-q_["pred_first_order"], rel=1e-6)
        # the training-window terms: the − quantizer's + cell is the + quantizer's mirror, so
        # its training-loss change is 2·Q_tr − ΔL_tr(+), and Q_tr is the same from either side
        assert p_["train_tokens"] == q_["train_tokens"] > 0
        assert abs(p_["delta_loss_train"] - q_["delta_loss_train"]) > 5 * tol  # power again
        assert q_["delta_loss_train"] == pytest.approx(
            2 * p_["second_order_train"] - p_["delta_loss_train"], abs=tol)
        assert q_["second_order_train"] == pytest.approx(p_["second_order_train"], abs=tol)



def test_sweep_opt_in_hessian_moment_equals_the_probes_and_changes_nothing_else(embedded_tiny_cache):
    """ptq_hessian_bits: the uniform cells at those b get pred_hessian_moment without the mirror,
    equal to the mirror run's (same perturbations); every other number of every cell is the
    plain run's, and only the ids of the cells that carry it change."""
    from real_runs.finetune import ptq_record_id

    base = dict(**FAST, cache_dir=str(embedded_tiny_cache), ptq=True, ptq_bits=(2, 8),
                ptq_eval_tokens=150, ptq_schemes=("rtn_tensor", "sr_tensor", "nf4"),
                ptq_sr_draws=2, ptq_groups=3)
    cfg = FinetuneConfig(**base)
    hcfg = FinetuneConfig(**base, ptq_hessian_bits=(2,))
    assert hcfg.run_id == cfg.run_id  # the trained run is the same run
    _, plain = run_finetune(cfg, return_ptq=True)
    _, hess = run_finetune(hcfg, return_ptq=True)
    _, mir = run_finetune(cfg, return_ptq=True, ptq_mirror=True)
    key = lambda r: (r["ptq_scheme"], r["bits"], r["ptq_draw"])  # noqa: E731
    mir = {key(m): m for m in mir}
    for a, h in zip(plain, hess):
        assert key(a) == key(h)
        for k in ("delta_loss", "delta_loss_groups", "pred_plugin", "pred_moment",
                  "pred_first_order", "eps_ba_fro2", "layers"):
            assert a[k] == h[k], k
        carries = h["bits"] == 2 and h["ptq_scheme"] != "nf4"
        assert ("pred_hessian_moment" in h) == carries and "pred_hessian_moment" not in a
        assert "delta_loss_mirror" not in h and "second_order_train" not in h
        changed = ptq_record_id(hcfg, *key(h)) != ptq_record_id(cfg, *key(h))
        assert changed == carries
        if carries:
            m = mir[key(h)]
            assert h["pred_hessian_moment"] == m["pred_hessian_moment"]
            assert h["pred_hessian_moment_se"] == m["pred_hessian_moment_se"] >= 0
            assert h["hessian_moment_draws"] == 4 and h["train_tokens"] == m["train_tokens"] > 0
    with pytest.raises(ValueError, match="ptq_hessian_bits"):
        FinetuneConfig(**{**base, "ptq_hessian_bits": (3,)})

def _write_config(path, defaults, grids):
    lines = ["[sweep]", 'name = "t"', "", "[defaults]"] + [
        f"{k} = {json.dumps(v)}" for k, v in defaults.items()
    ]
    for g in grids:
        lines += ["", "[[grid]]"] + [f"{k} = {json.dumps(v)}" for k, v in g.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_sweep_writes_ptq_records_and_resumes(tmp_path, embedded_tiny_cache):
    defaults = {
        **FAST,
        "cache_dir": str(embedded_tiny_cache),
        "ptq_bits": [3],
        "ptq_schemes": ["rtn_tensor", "int8"],
    }
    cfg = _write_config(
        tmp_path / "s.toml",
        defaults,
        [
            {"arm": "fp16", "rank": 2, "seed": 0},
            {"arm": "fp16", "rank": 2, "seed": 0, "ptq": True},  # the same run, with PTQ: merged
        ],
    )
    runs = expand(load_config(cfg))
    assert len(runs) == 1 and runs[0].ptq
    out = tmp_path / "runs.jsonl"
    assert run_sweep(cfg, out, progress=False)["done"] == 1
    (rec,) = read_records(out, strict=True).records
    ptq = read_ptq_records(ptq_path(out)).records
    assert len(ptq) == 2 and {p["ptq_of"] for p in ptq} == {rec["run_id"]}
    assert pending(runs, out)[0] == []
    # lose one PTQ line: the run is pending again; redoing it measures it again and the files
    # hold it once (its record and its PTQ records, the replaced ones kept beside them)
    lines = ptq_path(out).read_text().splitlines()
    ptq_path(out).write_text(lines[0] + "\n")
    assert len(pending(runs, out)[0]) == 1
    assert run_sweep(cfg, out, progress=False)["done"] == 1
    assert len(read_records(out).records) == 1
    ptq2 = read_ptq_records(ptq_path(out)).records
    assert len(ptq2) == 2 and len({p["run_id"] for p in ptq2}) == 2
    assert {p["run_id"] for p in ptq2} == ptq_record_ids(runs[0])
    # the same runs with PTQ measured on more held-out tokens: their records are not these
    # (same run id, other PTQ ids), so the run is pending; a setting outside the id is not
    more = [dataclasses.replace(runs[0], ptq_eval_tokens=runs[0].ptq_eval_tokens * 2)]
    assert more[0].run_id == runs[0].run_id
    assert ptq_record_ids(more[0]).isdisjoint(ptq_record_ids(runs[0]))
    assert [r.run_id for r in pending(more, out)[0]] == [runs[0].run_id]
    assert pending([dataclasses.replace(runs[0], ptq_groups=7)], out)[0] == []
    # re-measuring them: the run record is replaced (in place, a torn line kept) and the run's
    # PTQ records of the old settings move out; every replaced line is kept beside the files
    with ptq_path(out).open("a") as f:  # another run's PTQ record stays untouched
        f.write(json.dumps({**ptq2[0], "run_id": "f" * 16, "ptq_of": "e" * 16}) + "\n")
    with out.open("a") as f:
        f.write('{"schema": "quantb')  # a torn last line
    cfg2 = _write_config(tmp_path / "s2.toml",
                         {**defaults, "ptq_eval_tokens": runs[0].ptq_eval_tokens * 2},
                         [{"arm": "fp16", "rank": 2, "seed": 0, "ptq": True}])
    logs = []
    assert run_sweep(cfg2, out, progress=False, log=logs.append)["done"] == 1
    assert any("measured again" in m for m in logs)
    res = read_records(out)
    assert [r["run_id"] for r in res.records] == [rec["run_id"]] and len(res.errors) == 1
    assert res.records[0]["started_at"] != rec["started_at"] or \
        res.records[0]["finished_at"] != rec["finished_at"]
    ptq3 = read_ptq_records(ptq_path(out)).records
    assert {p["run_id"] for p in ptq3} == ptq_record_ids(more[0]) | {"f" * 16}
    assert pending(more, out)[0] == [] and len(pending(runs, out)[0]) == 1
    old_runs = read_records(superseded_path(out), strict=True).records
    old_ptq = read_ptq_records(superseded_path(ptq_path(out))).records
    assert [r["run_id"] for r in old_runs] == [rec["run_id"]] * 2  # the two re-measures
    assert old_runs[0] == rec
    assert {p["run_id"] for p in old_ptq} == ptq_record_ids(runs[0])
    # a second pass over the same state changes nothing
    before = (out.read_bytes(), ptq_path(out).read_bytes())
    assert run_sweep(cfg2, out, progress=False)["done"] == 0
    assert (out.read_bytes(), ptq_path(out).read_bytes()) == before


# --- the packed evaluation: the same per-row losses as eval_loss_rows, less work ------------


def _tiny_lm_and_batches(cache, dtype):
    from real_runs.arms import load_base
    from real_runs.data import collate
    from real_runs.embedded import EmbeddedConfig

    lm, tok = load_base(
        "embedded", base_quant="none", embedded=EmbeddedConfig.tiny(), cache_dir=cache,
        progress=False,
    )
    lm = lm.to(dtype).eval()
    texts = [
        "hello there, how are you doing on this fine day",
        "the cat sat on the mat",
        "what would happen if computers talked to each other all night long",
        "ok",
        "tell me about the weather and the news",
        "a b c d e f g",
    ]
    seqs = [tok(t)["input_ids"][:24] for t in texts]
    # two right-padded batches of different widths, and a label masked inside a real row
    batches = [collate(seqs[:3], pad_id=tok.eos_token_id), collate(seqs[3:], pad_id=tok.eos_token_id)]
    batches[0]["labels"][1, 3] = -100
    return lm, batches


def _rounding_rtol(c, u: float) -> float:
    """A worst-case relative bound on the difference of two evaluations of the same losses that
    differ only in summation order: each of the ≤ 2·n_layer + 2 matrix products / reductions on
    a token's path sums ≤ w = 4·d + vocab + context terms, so |Δ| ≤ (2·n_layer + 2)·w·u per unit
    of |ℓ| (Higham's γ_w, no cancellation assumed). c: a GPT-2 or embedded-model config."""
    return (2 * c.n_layer + 2) * (4 * c.n_embd + c.vocab_size + 64) * u


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_packed_eval_equals_eval_loss_rows(embedded_tiny_cache, dtype):
    from real_runs.measure import eval_loss_rows

    lm, batches = _tiny_lm_and_batches(embedded_tiny_cache, dtype)
    ref_s, ref_c = eval_loss_rows(lm, batches)
    rtol = _rounding_rtol(lm.config, torch.finfo(dtype).eps)
    # regrouped into 1-row batches, several rows, one batch; head in 1-, 5-, many-token chunks
    for bt, ht in ((1, 1), (40, 5), (10**6, 10**6)):
        s, c = P.PackedEval(batches, batch_tokens=bt, head_tokens=ht).rows(lm)
        assert c == ref_c and len(s) == len(ref_s) == 6
        for a, b, n in zip(s, ref_s, c):
            assert abs(a - b) <= rtol * max(abs(b), n), (a, b, rtol)
    assert ref_c[1] == len(batches[0]["input_ids"][1].nonzero()) - 2  # the masked label counts out
    P.PackedEval(batches).check(lm, batches[0])  # the guard passes on GPT-2


def test_fused_gelu_swaps_for_the_block_only_and_computes_the_same_function(embedded_tiny_cache):
    from transformers.activations import GELUTanh, NewGELUActivation

    lm, batches = _tiny_lm_and_batches(embedded_tiny_cache, torch.float64)
    acts = [blk.mlp.act for blk in lm.transformer.h]
    assert all(type(a) is NewGELUActivation for a in acts)  # GPT-2's gelu_new
    x = torch.linspace(-8.0, 8.0, 2001, dtype=torch.float64)
    ref = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))  # by hand
    with torch.no_grad():
        ids = batches[0]["input_ids"]
        before = lm(input_ids=ids).logits
        with P.fused_gelu(lm) as n:
            assert n == len(acts)
            assert all(type(blk.mlp.act) is GELUTanh for blk in lm.transformer.h)
            torch.testing.assert_close(lm.transformer.h[0].mlp.act(x), ref, rtol=1e-13, atol=1e-15)
            during = lm(input_ids=ids).logits
    assert [blk.mlp.act for blk in lm.transformer.h] == acts  # the very modules put back
    torch.testing.assert_close(during, before, rtol=1e-11, atol=1e-11)
    with pytest.raises(RuntimeError, match="inside"):
        with P.fused_gelu(lm):
            raise RuntimeError("inside")
    assert [blk.mlp.act for blk in lm.transformer.h] == acts  # also after an error


def test_quads_from_the_factors_equal_the_traces_of_the_formed_matrix():
    g = torch.Generator().manual_seed(3)
    m, n, r = 37, 23, 4
    B, QB = torch.randn(m, r, generator=g, dtype=torch.float64), torch.randn(m, r, generator=g, dtype=torch.float64)
    A, QA = torch.randn(r, n, generator=g, dtype=torch.float64), torch.randn(r, n, generator=g, dtype=torch.float64)
    X = torch.randn(n, 3 * n, generator=g, dtype=torch.float64)
    Y = torch.randn(m, 3 * m, generator=g, dtype=torch.float64)
    Sx, G = X @ X.T / (3 * n), Y @ Y.T / (3 * m)
    E = QB @ QA - B @ A
    quad, x2 = P._quads(torch.cat([QB, -B], 1), torch.cat([QA, A], 0), Sx, G)
    assert quad == pytest.approx(float(torch.trace(E @ Sx @ E.T @ G)), rel=1e-12)
    assert x2 == pytest.approx(float(torch.trace(E @ Sx @ E.T)), rel=1e-12)
    # E_x‖E·x‖² over samples whose second moment is exactly Sx (x = columns of X/√(3n))
    xs = X / math.sqrt(3 * n)
    assert x2 == pytest.approx(float(((E @ xs) ** 2).sum()), rel=1e-12)


def test_packed_eval_refuses_bad_input_and_a_foreign_head(embedded_tiny_cache):
    lm, batches = _tiny_lm_and_batches(embedded_tiny_cache, torch.float64)
    with pytest.raises(ValueError, match="batch_tokens"):
        P.PackedEval(batches, batch_tokens=0)
    with pytest.raises(ValueError, match="head_tokens"):
        P.PackedEval(batches, head_tokens=0)
    left = {k: v.flip(1) for k, v in batches[0].items()}  # left padding
    with pytest.raises(ValueError, match="right-padded"):
        P.PackedEval([left])
    forward = lm.forward

    def scaled(**kw):  # a model whose logits are not lm_head(last_hidden_state)
        out = forward(**kw)
        out.logits = 2 * out.logits
        return out

    lm.forward = scaled
    with pytest.raises(RuntimeError, match="disagrees"):
        P.PackedEval(batches).check(lm, batches[0])


def test_ptq_records_match_the_unpacked_evaluation(embedded_tiny_cache, monkeypatch):
    """The PTQ records with the packed evaluation and shared quadratic forms equal those of the
    previous code path (eval_loss_rows on the 16-window batches, one einsum per trace, a moment
    per cell): quantities that do not touch the evaluation exactly or to float64 rounding, the
    losses to the float32 rounding bound above."""
    from real_runs.measure import eval_loss_rows

    cfg = FinetuneConfig(
        **FAST,
        cache_dir=str(embedded_tiny_cache),
        ptq=True,
        ptq_bits=(2, 4, 16),
        ptq_eval_tokens=200,
        ptq_schemes=("rtn_tensor", "rtn_block", "sr_tensor", "nf4"),
        ptq_sr_draws=2,
    )
    rec_new, new = run_finetune(cfg, return_ptq=True)

    class Unpacked:
        def __init__(self, batches, **kw):
            self.batches = batches

        def rows(self, model):
            return eval_loss_rows(model, self.batches)

        def check(self, model, batch):
            pass

    def einsum_quads(U, V, Sx, G):
        E = U @ V
        return (
            float(torch.einsum("ij,jk,lk,li->", E, Sx, E, G)),
            float(torch.einsum("ij,jk,ik->", E, Sx, E)),
        )

    monkeypatch.setattr(P, "PackedEval", Unpacked)
    monkeypatch.setattr(P, "_quads", einsum_quads)
    rec_old, old = run_finetune(cfg, return_ptq=True)
    assert rec_new["eval_loss"] == rec_old["eval_loss"]  # the same trained adapter
    assert [p["run_id"] for p in new] == [p["run_id"] for p in old]
    from real_runs.embedded import EmbeddedConfig

    rtol32 = _rounding_rtol(EmbeddedConfig.tiny(), torch.finfo(torch.float32).eps)
    for a, b in zip(new, old):
        assert (a["ptq_scheme"], a["bits"], a["ptq_draw"]) == (b["ptq_scheme"], b["bits"], b["ptq_draw"])
        assert a["eval_tokens"] == b["eval_tokens"]
        for k in ("eps_ba_fro2", "pred_moment", "pred_first_order", "eval_loss_unmerged"):
            assert a[k] == b[k], k
        for k in ("pred_plugin", "eps_ba_x2"):  # float64, another summation order
            assert a[k] == pytest.approx(b[k], rel=1e-12, abs=1e-300), k
        for k in ("eval_loss", "eval_loss_ref"):
            assert abs(a[k] - b[k]) <= rtol32 * abs(b[k]), k
        # ΔL: the difference of two such losses
        assert abs(a["delta_loss"] - b["delta_loss"]) <= 2 * rtol32 * abs(b["eval_loss"])


def test_random_perturbation_moment_is_the_closed_form_on_a_quadratic_loss():
    """_random_even_part on L(W) = ½·c·Σ‖W − B·A‖²: the even part of ±ε is ½·c·‖ε‖² exactly,
    so its mean over δB ~ N(0, v_B), δA ~ N(0, v_A) estimates ½·c·(Σ v_B·‖A row‖² +
    Σ v_A·‖B col‖² + Σ_ij Σ_k v_B[i,k]·v_A[k,j]); the tolerance is 4 of its own Monte Carlo se."""
    g = torch.Generator().manual_seed(3)
    facs = {"l1": (torch.randn(5, 2, generator=g), torch.randn(2, 4, generator=g)),
            "l2": (torch.randn(3, 2, generator=g), torch.randn(2, 6, generator=g))}
    var_of = {n: (torch.rand(B.shape, generator=g, dtype=torch.float64) * 0.1,
                  torch.rand(A.shape, generator=g, dtype=torch.float64) * 0.2)
              for n, (B, A) in facs.items()}
    c, state = 3.0, {}

    def merge(deltas):
        state.update(deltas)

    class Packed:
        def rows(self, model):
            L = sum(0.5 * c * float(((state[n].double() - B.double() @ A.double()) ** 2).sum())
                    for n, (B, A) in facs.items())
            return [L], [1]

    mean, se = P._random_even_part(None, Packed(), merge, facs, var_of, 0.0, 1, draws=400, seed=1)
    want = 0.0
    for n, (B, A) in facs.items():
        vB, vA = var_of[n]
        Bd, Ad = B.double(), A.double()
        want += 0.5 * c * float((vB @ (Ad**2)).sum() + ((Bd**2) @ vA).sum() + (vB @ vA).sum())
    assert se > 0 and abs(mean - want) <= 4 * se, (mean, want, se)
    # float32 merges: the even part of a zero perturbation is rounding only
    zero = {n: (torch.zeros_like(v[0]), torch.zeros_like(v[1])) for n, v in var_of.items()}
    m0, _ = P._random_even_part(None, Packed(), merge, facs, zero, 0.0, 1, draws=2, seed=1)
    assert abs(m0) < 1e-10
