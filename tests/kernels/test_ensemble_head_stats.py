"""The reward heads fused with their ensemble statistics, both backends, against float64 numpy."""
import pytest
import torch
from varpo_kernels import ensemble_head_stats

from .conftest import BACKENDS


def _reference(h, W, b, ddof):
    r = h.double().numpy() @ W.double().numpy().T + (0.0 if b is None else b.double().numpy())
    t = torch.from_numpy
    return t(r), t(r.mean(1)), t(r.var(1, ddof=ddof)), t(r.std(1, ddof=ddof)), t(r.min(1))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B,H,K", [(1, 1, 2), (3, 33, 10), (5, 200, 37), (2, 7, 70)])
@pytest.mark.parametrize("ddof", [0, 1])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_float64(backend, B, H, K, ddof, bias, poisoned):
    gen = torch.Generator().manual_seed(B * 1000 + H * 10 + K)
    h = torch.randn(B, H, generator=gen)
    W = torch.randn(K, H, generator=gen) / H**0.5
    b = torch.randn(K, generator=gen) if bias else None
    r, s = ensemble_head_stats(h, W, b, ddof=ddof, backend=backend)
    er, mean, var, std, lo = _reference(h, W, b, ddof)
    assert r.dtype == torch.float32 and r.shape == (B, K)
    torch.testing.assert_close(r.double(), er, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s.mean.double(), mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s.var.double(), var, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(s.std.double(), std, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(s.min.double(), lo, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_exact_and_large_offset(backend):
    gen = torch.Generator().manual_seed(5)
    h = torch.randn(4, 19, generator=gen, dtype=torch.float64)
    W = torch.randn(10, 19, generator=gen, dtype=torch.float64) * 1e-3
    r, s = ensemble_head_stats(h, W, torch.full((10,), 1e4, dtype=torch.float64), ddof=1, backend=backend)
    er, mean, var, std, lo = _reference(h, W, torch.full((10,), 1e4, dtype=torch.float64), 1)
    assert s.var.dtype == torch.float64
    torch.testing.assert_close(s.var, var, rtol=1e-9, atol=0)  # 1e4 offset, 1e-3 spread: no cancellation
    torch.testing.assert_close(s.mean, mean, rtol=1e-14, atol=0)


def test_gradients_flow_through_the_torch_path():
    gen = torch.Generator().manual_seed(6)
    args = (torch.randn(3, 5, generator=gen, dtype=torch.float64, requires_grad=True),
            torch.randn(4, 5, generator=gen, dtype=torch.float64, requires_grad=True),
            torch.randn(4, generator=gen, dtype=torch.float64, requires_grad=True))

    def fn(h, W, b):
        r, s = ensemble_head_stats(h, W, b, ddof=1)
        return r, s.mean, s.var

    assert torch.autograd.gradcheck(fn, args)


def test_triton_refuses_autograd_and_auto_falls_back():
    import os
    h = torch.randn(2, 3, requires_grad=True)
    W = torch.randn(4, 3)
    if os.environ.get("TRITON_INTERPRET") == "1":
        with pytest.raises(RuntimeError, match="no backward"):
            ensemble_head_stats(h, W, backend="triton")
    r, s = ensemble_head_stats(h, W)  # auto on CPU: the differentiable torch path
    s.var.sum().backward()
    assert h.grad is not None and h.grad.abs().sum() > 0


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="K > ddof"):
        ensemble_head_stats(torch.zeros(2, 3), torch.zeros(1, 3), ddof=1)
    with pytest.raises(ValueError, match="same H"):
        ensemble_head_stats(torch.zeros(2, 3), torch.zeros(4, 5))
    with pytest.raises(ValueError, match=r"bias must be \[K\] = \[4\]"):
        ensemble_head_stats(torch.zeros(2, 3), torch.zeros(4, 3), torch.zeros(3))
