"""real_runs.measure: the gradient-variance estimator against cases with a known covariance."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from real_runs import measure as M  # noqa: E402


def test_trace_cov_equals_numpy_sample_covariance():
    rng = np.random.default_rng(0)
    K = 7
    a, b = rng.standard_normal((K, 5)), rng.standard_normal((K, 3)) * 10
    samples = [{"a": torch.from_numpy(a[k]), "b": torch.from_numpy(b[k])} for k in range(K)]
    total, per = M.trace_cov(samples)
    assert per["a"] == pytest.approx(np.trace(np.cov(a.T, ddof=1)), rel=1e-12)
    assert per["b"] == pytest.approx(np.trace(np.cov(b.T, ddof=1)), rel=1e-12)
    assert total == pytest.approx(per["a"] + per["b"], rel=1e-15)
    # NOT the variance across entries of one gradient (the seed's quantity)
    assert per["a"] != pytest.approx(float(np.var(a[0])), rel=1e-3)


def test_trace_cov_zero_for_identical_samples_and_needs_two():
    g = {"x": torch.arange(4.0)}
    assert M.trace_cov([g, g, g]) == (0.0, {"x": 0.0})
    with pytest.raises(ValueError, match="at least 2"):
        M.trace_cov([g])


def test_gradient_samples_match_analytic_least_squares_gradient():
    # L(w; X, y) = ½·mean_i (w·x_i − y_i)²  ⇒  ∇L = (1/m)·Xᵀ(Xw − y)
    rng = np.random.default_rng(1)
    d, m = 4, 6
    w = torch.nn.Parameter(torch.from_numpy(rng.standard_normal(d)))
    v = torch.nn.Parameter(torch.from_numpy(rng.standard_normal(2)))  # unused: gradient 0
    batches = [
        (torch.from_numpy(rng.standard_normal((m, d))), torch.from_numpy(rng.standard_normal(m)))
        for _ in range(3)
    ]

    def loss(batch):
        X, y = batch
        return 0.5 * ((X @ w - y) ** 2).mean()

    got = M.gradient_samples(loss, batches, {"w": [w], "v": [v]})
    for (X, y), s in zip(batches, got):
        expect = X.numpy().T @ (X.numpy() @ w.detach().numpy() - y.numpy()) / m
        np.testing.assert_allclose(s["w"].numpy(), expect, rtol=1e-12, atol=1e-14)
        assert torch.equal(s["v"], torch.zeros(2, dtype=torch.float64))
    assert w.grad is None  # autograd.grad: no .grad side effects


def test_grad_variance_recovers_known_covariance_of_a_linear_model():
    # L(w; batch) = mean_i w·x_i with x_i ~ N(0, Σ): ∇L = x̄, Cov[x̄] = Σ/m, tr = tr Σ / m.
    # For Gaussian gradients the unbiased estimator has Var = 2·tr(C²)/(K−1), C = Σ/m:
    # the tolerance is 5 of its standard deviations.
    g = torch.Generator().manual_seed(0)
    d, m, K = 6, 4, 4000
    sig = torch.tensor([0.5, 1.0, 2.0, 3.0, 0.1, 1.5], dtype=torch.float64)  # Σ = diag(sig²)
    w = torch.nn.Parameter(torch.zeros(d, dtype=torch.float64))
    batches = [torch.randn(m, d, generator=g, dtype=torch.float64) * sig for _ in range(K)]
    total, per = M.grad_variance(lambda X: (X @ w).mean(), batches, {"w": [w]})
    C = torch.diag(sig**2) / m
    expect = float(torch.trace(C))
    sd = float(torch.sqrt(2 * torch.trace(C @ C) / (K - 1)))
    assert abs(total - expect) <= 5 * sd, (total, expect, sd)
    assert per["w"] == total


def test_capture_input_norms_counts_only_masked_tokens():
    lin = torch.nn.Linear(3, 2)
    holder = {}
    x = torch.tensor([[[1.0, 2.0, 2.0], [9.0, 9.0, 9.0]]])  # second token is padding
    holder["mask"] = torch.tensor([[1, 0]])
    with M.capture_input_norms({"lin": lin}, holder) as acc:
        lin(x)
    assert acc["lin"] == [9.0, 1]  # ‖(1,2,2)‖² = 9, one token
    lin(x)  # hooks removed after the context
    assert acc["lin"] == [9.0, 1]


def test_eval_loss_is_token_weighted_cross_entropy():
    # a "model" whose logits are fixed: CE per position is computable by hand
    V = 5

    class Fixed(torch.nn.Module):
        def forward(self, input_ids, attention_mask):
            logits = torch.zeros(*input_ids.shape, V, dtype=torch.float64)
            logits[..., 0] = 1.0
            return type("O", (), {"logits": logits})()

    from real_runs.data import collate

    b = collate([[1, 0, 2], [3]], pad_id=4)
    loss, n = M.eval_loss(Fixed(), [b])
    # predicted targets (positions 1…): first sequence 0 and 2; second none
    lse = np.log(np.e + 4)
    assert n == 2
    assert loss == pytest.approx(((lse - 1.0) + lse) / 2, rel=1e-12)


def test_current_memory_is_the_resident_set_and_sees_an_allocation():
    import os

    psutil = pytest.importorskip("psutil")
    if not os.path.exists("/proc/self/status"):
        pytest.skip("needs Linux /proc")
    from real_runs.measure import current_memory_bytes, peak_memory_bytes

    before = current_memory_bytes("cpu")
    rss = psutil.Process().memory_info().rss
    assert abs(before - rss) < 8 * 2**20  # two readings of one counter, a few pages apart
    x = torch.ones(50 * 2**20)  # 200 MiB, touched
    after = current_memory_bytes("cpu")
    assert after - before >= 0.95 * 200 * 2**20
    assert peak_memory_bytes("cpu") >= after
    del x
