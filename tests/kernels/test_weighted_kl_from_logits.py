"""The fused reward-shaping pass (logits -> log p(ids), KL against the other model, σ²-weighting,
mask), both backends, against an independent float64 numpy reference on odd shapes."""
import math

import numpy as np
import pytest
import torch
from varpo_kernels import KL_ESTIMATORS, weighted_kl_from_logits

from .conftest import BACKENDS, ref_log_softmax_np


def _numpy_reference(logits, ids, other, mask, w, est, logits_of):
    logp, _ = ref_log_softmax_np(logits, ids)
    logp = logp.numpy()
    o = other.double().numpy()
    m = mask.numpy() != 0
    B, T = logp.shape
    kl, wkl = np.zeros((B, T)), np.zeros((B, T))
    for b in range(B):
        for t in range(T):
            if not m[b, t]:
                continue
            r = (o[b, t] - logp[b, t]) if logits_of == "reference" else (logp[b, t] - o[b, t])
            k = {"k1": r, "k2": 0.5 * r * r, "k3": math.expm1(-r) + r}[est]
            kl[b, t], wkl[b, t] = k, float(w[b]) * k
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return t(logp), t(kl), t(wkl), t(kl.sum(1)), t(wkl.sum(1))


def _inputs(gen, B, T, V, dtype=torch.float32, spread=0.3):
    logits = (torch.randn(B, T, V, generator=gen, dtype=torch.float64) * 3).to(dtype)
    ids = torch.randint(0, V, (B, T), generator=gen)
    lengths = torch.randint(0, T + 1, (B,), generator=gen)
    lengths[0] = T
    mask = torch.arange(T)[None, :] < lengths[:, None]
    base, _ = ref_log_softmax_np(logits, ids)
    other = (base + torch.randn(B, T, generator=gen, dtype=torch.float64) * spread)
    other = other.masked_fill(~mask, float("nan")).to(dtype)  # padding garbage must not leak
    w = (torch.rand(B, generator=gen, dtype=torch.float64) * 3).to(dtype)
    return logits, ids, other, mask, w


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("est", KL_ESTIMATORS)
@pytest.mark.parametrize("logits_of", ["reference", "policy"])
@pytest.mark.parametrize("shape", [(1, 1, 7), (3, 5, 257), (2, 9, 5000)])
def test_matches_float64_reference(backend, est, logits_of, shape, poisoned):
    gen = torch.Generator().manual_seed(sum(shape) + len(est))
    logits, ids, other, mask, w = _inputs(gen, *shape)
    got = weighted_kl_from_logits(logits, ids, other, mask, w, est, logits_of=logits_of, backend=backend, chunk_size=4)
    exp = _numpy_reference(logits, ids, other, mask, w, est, logits_of)
    for name, g, e in zip(got._fields, got, exp):
        assert g.dtype == torch.float32, name
        assert not g.isnan().any(), name
        torch.testing.assert_close(g.double(), e, rtol=2e-5, atol=2e-5, msg=f"{name} ({est}, {logits_of}, {shape})")
    assert (got.kl[~mask] == 0).all() and (got.weighted[~mask] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_and_float_mask(backend):
    gen = torch.Generator().manual_seed(3)
    logits, ids, other, mask, w = _inputs(gen, 3, 7, 33, torch.float64)
    got = weighted_kl_from_logits(logits, ids, other, mask.double(), w, "k3", backend=backend)
    exp = _numpy_reference(logits, ids, other, mask, w, "k3", "reference")
    for g, e in zip(got, exp):
        assert g.dtype == torch.float64
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bfloat16_logits(backend):
    gen = torch.Generator().manual_seed(4)
    logits, ids, other, mask, w = _inputs(gen, 2, 6, 300)
    lb = logits.bfloat16()
    got = weighted_kl_from_logits(lb, ids, other, mask, w, "k1", backend=backend)
    exp = _numpy_reference(lb.float(), ids, other, mask, w, "k1", "reference")
    assert got.logp.dtype == torch.float32
    torch.testing.assert_close(got.weighted.double(), exp[2], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("est", KL_ESTIMATORS)
@pytest.mark.parametrize("logits_of", ["reference", "policy"])
def test_gradients(backend, est, logits_of):
    """d/d(logits, other_logp, weights) of every output, against float64 autograd through an
    explicit log_softmax (the reference the fused pass must never build)."""
    gen = torch.Generator().manual_seed(11)
    logits, ids, other, mask, w = _inputs(gen, 3, 4, 13, torch.float64)
    other = other.nan_to_num(0.0)
    g_out = [torch.randn(3, 4, generator=gen, dtype=torch.float64) for _ in range(3)] + \
            [torch.randn(3, generator=gen, dtype=torch.float64) for _ in range(2)]

    def loss(fn, *xs):
        return sum((o * g).sum() for o, g in zip(fn(*xs), g_out))

    def fused(x, o, ww):
        return weighted_kl_from_logits(x, ids, o, mask, ww, est, logits_of=logits_of, backend=backend)

    def naive(x, o, ww):
        lp = torch.log_softmax(x, -1).gather(-1, ids[..., None]).squeeze(-1)
        r = (o - lp) if logits_of == "reference" else (lp - o)
        k = {"k1": r, "k2": 0.5 * r * r, "k3": torch.exp(-r) - 1 + r}[est]
        k = torch.where(mask, k, torch.zeros(()).double())
        wk = ww[:, None] * k
        return lp, k, wk, k.sum(1), wk.sum(1)

    a = [t.clone().requires_grad_() for t in (logits, other, w)]
    b = [t.clone().requires_grad_() for t in (logits, other, w)]
    loss(fused, *a).backward()
    loss(naive, *b).backward()
    for name, x, y in zip(("logits", "other_logp", "weights"), a, b):
        torch.testing.assert_close(x.grad, y.grad, rtol=1e-9, atol=1e-11, msg=name)
    # a single output's gradient alone (the others None inside autograd)
    c = logits.clone().requires_grad_()
    weighted_kl_from_logits(c, ids, other, mask, w, est, logits_of=logits_of, backend=backend).weighted_sum.sum().backward()
    d = logits.clone().requires_grad_()
    naive(d, other, w)[4].sum().backward()
    torch.testing.assert_close(c.grad, d.grad, rtol=1e-9, atol=1e-11)


def test_bad_inputs_are_named():
    x, ids, lp, m, w = torch.zeros(2, 3, 5), torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3), torch.ones(2, 3), torch.ones(2)
    with pytest.raises(ValueError, match="logits_of must be one of"):
        weighted_kl_from_logits(x, ids, lp, m, w, logits_of="actor")
    with pytest.raises(ValueError, match=r"other_logp shape \(2, 4\) must equal"):
        weighted_kl_from_logits(x, ids, torch.zeros(2, 4), m, w)
    with pytest.raises(ValueError, match=r"logits must be \[B, T, V\]"):
        weighted_kl_from_logits(x[0], ids[0], lp, m, w)
    with pytest.raises(ValueError, match=r"weights must be \[B\] = \[2\]"):
        weighted_kl_from_logits(x, ids, lp, m, torch.ones(3))
    with pytest.raises(ValueError, match="ids must lie in"):
        weighted_kl_from_logits(x, ids + 5, lp, m, w)
