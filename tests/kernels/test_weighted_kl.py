"""Covariance-weighted KL, both backends, against explicit float64 Python loops."""
import math

import pytest
import torch
from varpo_kernels import KL_ESTIMATORS, weighted_kl

from .conftest import BACKENDS


def _loop_reference(logp, ref_logp, mask, w, est):
    B, T = len(logp), len(logp[0])
    kl = [[0.0] * T for _ in range(B)]
    wkl = [[0.0] * T for _ in range(B)]
    for b in range(B):
        for t in range(T):
            if not mask[b][t]:
                continue
            r = float(logp[b][t]) - float(ref_logp[b][t])
            k = {"k1": r, "k2": 0.5 * r * r, "k3": math.expm1(-r) + r}[est]
            kl[b][t] = k
            wkl[b][t] = float(w[b]) * k
    kl_t, wkl_t = torch.tensor(kl, dtype=torch.float64), torch.tensor(wkl, dtype=torch.float64)
    sums = [math.fsum(row) for row in kl], [math.fsum(row) for row in wkl]
    return kl_t, wkl_t, torch.tensor(sums[0], dtype=torch.float64), torch.tensor(sums[1], dtype=torch.float64)


def _inputs(gen, B, T, spread, dtype=torch.float32):
    logp = -torch.rand(B, T, generator=gen, dtype=torch.float64) * 5
    ref = logp + torch.randn(B, T, generator=gen, dtype=torch.float64) * spread
    lengths = torch.randint(0, T + 1, (B,), generator=gen)
    lengths[0] = T
    mask = torch.arange(T)[None, :] < lengths[:, None]
    # padding carries garbage (NaN/inf) that must not leak into any output
    logp = logp.masked_fill(~mask, float("nan"))
    ref = ref.masked_fill(~mask, float("inf"))
    w = torch.rand(B, generator=gen, dtype=torch.float64) * 3
    return logp.to(dtype), ref.to(dtype), mask, w.to(dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("est", KL_ESTIMATORS)
@pytest.mark.parametrize("T", [1, 37, 1500])
@pytest.mark.parametrize("spread", [1e-4, 0.3, 2.0])
def test_matches_loops(backend, est, T, spread, poisoned):
    gen = torch.Generator().manual_seed(T + int(spread * 1e4))
    logp, ref, mask, w = _inputs(gen, 3, T, spread)
    got = weighted_kl(logp, ref, mask, w, est, backend=backend)
    exp = _loop_reference(logp.tolist(), ref.tolist(), mask.tolist(), w.tolist(), est)
    for name, g, e in zip(got._fields, got, exp):
        assert g.dtype == torch.float32, name
        assert not g.isnan().any(), name
        # k3 ≈ r²/2 at tiny spreads: relative accuracy matters there, not only absolute
        torch.testing.assert_close(g.double(), e, rtol=2e-5, atol=1e-6 * max(1.0, T / 100) * spread ** 2 + 1e-12,
                                   msg=f"{name} ({est}, T={T}, spread={spread})")
    assert (got.kl[~mask] == 0).all() and (got.weighted[~mask] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.float32, torch.int64])
def test_mask_dtypes_and_float64(backend, mask_dtype):
    gen = torch.Generator().manual_seed(9)
    logp, ref, mask, w = _inputs(gen, 4, 19, 0.5, torch.float64)
    got = weighted_kl(logp, ref, mask.to(mask_dtype), w, "k3", backend=backend)
    exp = _loop_reference(logp.tolist(), ref.tolist(), mask.tolist(), w.tolist(), "k3")
    for g, e in zip(got, exp):
        assert g.dtype == torch.float64
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("est", KL_ESTIMATORS)
def test_gradients(backend, est):
    gen = torch.Generator().manual_seed(10)
    logp, ref, mask, w = _inputs(gen, 3, 7, 0.5, torch.float64)
    logp, ref = logp.nan_to_num(0.0), ref.nan_to_num(0.0, posinf=0.0)
    args = [t.clone().requires_grad_() for t in (logp, ref, w)]

    def fn(lp, rl, ww):
        out = weighted_kl(lp, rl, mask, ww, est, backend=backend)
        return out.kl, out.weighted, out.kl_sum, out.weighted_sum

    assert torch.autograd.gradcheck(fn, tuple(args), eps=1e-6, atol=1e-7)
    # float32 inputs: gradients equal float64 autograd of the loop formula
    a32 = [t.detach().float().requires_grad_() for t in (logp, ref, w)]
    out = weighted_kl(a32[0], a32[1], mask, a32[2], est, backend=backend)
    gk = torch.randn(3, 7, generator=gen)
    ((out.weighted * gk).sum() + out.kl_sum.sum()).backward()
    r = (logp - ref).requires_grad_()
    ww = w.clone().requires_grad_()
    k = {"k1": r, "k2": 0.5 * r * r, "k3": torch.exp(-r) - 1 + r}[est] * mask
    ((ww[:, None] * k * gk.double()).sum() + k.sum()).backward()
    torch.testing.assert_close(a32[0].grad.double(), r.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a32[1].grad.double(), -r.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a32[2].grad.double(), ww.grad, rtol=1e-5, atol=1e-6)


def test_bad_inputs_are_named():
    lp = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'"):
        weighted_kl(lp, lp, lp, torch.ones(2), "k4")
    with pytest.raises(ValueError, match=r"weights must be \[B\] = \[2\]"):
        weighted_kl(lp, lp, lp, torch.ones(3))
    with pytest.raises(ValueError, match="mask shape"):
        weighted_kl(lp, lp, torch.ones(2, 4), torch.ones(2))
