"""Ensemble statistics, both backends, against exact rational arithmetic (fractions via the
statistics module) on the very float values given."""
import statistics
from fractions import Fraction

import pytest
import torch
from varpo_kernels import ensemble_stats

from .conftest import BACKENDS


def _exact(rows, ddof):
    mean, var, lo = [], [], []
    for row in rows:
        fr = [Fraction(v) for v in row]
        m = sum(fr) / len(fr)
        mean.append(float(m))
        var.append(float(sum((v - m) ** 2 for v in fr) / (len(fr) - ddof)))
        lo.append(min(row))
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return t(mean), t(var), t(lo)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("K", [2, 3, 10, 1500])
@pytest.mark.parametrize("ddof", [0, 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_exact(backend, K, ddof, dtype, poisoned):
    gen = torch.Generator().manual_seed(K * 3 + ddof)
    r = (torch.randn(5, K, generator=gen, dtype=torch.float64) * 2 + 1).to(dtype)
    s = ensemble_stats(r, ddof=ddof, backend=backend)
    mean, var, lo = _exact(r.tolist(), ddof)
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    for g in s:
        assert g.dtype == dtype and not g.isnan().any()
    torch.testing.assert_close(s.mean.double(), mean, rtol=tol, atol=tol)
    torch.testing.assert_close(s.var.double(), var, rtol=tol, atol=0)
    torch.testing.assert_close(s.std.double(), var.sqrt(), rtol=tol, atol=0)
    torch.testing.assert_close(s.min.double(), lo, rtol=0, atol=0)
    if ddof == 1 and K < 100:
        assert abs(float(s.var[0]) - statistics.variance(r[0].tolist())) <= tol * float(s.var[0]) * 4


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("K", [10, 1500])
def test_large_offset_is_stable(backend, K):
    """Rewards 1e4 ± 1e-2 in float32: E[x²] − E[x]² would lose every digit (x² ≈ 1e8, ulp 8); the
    variance must still be right to float32 precision (not just to the ulp of 1e4)."""
    gen = torch.Generator().manual_seed(11)
    r = (1e4 + (torch.rand(6, K, generator=gen, dtype=torch.float64) * 2 - 1) * 1e-2).float()
    s = ensemble_stats(r, backend=backend)
    mean, var, lo = _exact(r.tolist(), 1)
    torch.testing.assert_close(s.var.double(), var, rtol=1e-5, atol=0)
    torch.testing.assert_close(s.std.double(), var.sqrt(), rtol=1e-5, atol=0)
    torch.testing.assert_close(s.mean.double(), mean, rtol=0, atol=4.9e-4 * 1.01)  # ½ ulp(1e4) in float32
    naive = (r.square().mean(1) - r.mean(1).square()) * K / (K - 1)
    assert not torch.allclose(naive.double(), var, rtol=0.5)  # the case really is ill-conditioned


def test_gradient_paths():
    r = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    fn = lambda x: tuple(ensemble_stats(x, backend="auto"))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (r,), eps=1e-6, atol=1e-7)
    with pytest.raises(RuntimeError, match="no backward"):
        ensemble_stats(r, backend="triton")
    with torch.no_grad():
        s = ensemble_stats(r, backend="triton")
    torch.testing.assert_close(s.var, r.detach().var(1))


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="K > ddof"):
        ensemble_stats(torch.randn(3, 1), ddof=1)
    with pytest.raises(ValueError, match=r"\[B, K\]"):
        ensemble_stats(torch.randn(3))
    with pytest.raises(TypeError, match="floating"):
        ensemble_stats(torch.ones(3, 2, dtype=torch.long))
