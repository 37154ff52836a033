"""Selective log-softmax, both backends (Triton through its interpreter), against an independent
float64 numpy reference (conftest.ref_log_softmax_np) on fresh random inputs."""
import pytest
import torch
from varpo_kernels import selective_log_softmax, selective_log_softmax_naive

from .conftest import BACKENDS, ref_log_softmax_np

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _inputs(gen, shape, V, dtype, scale=3.0):
    x = (torch.randn(*shape, V, generator=gen) * scale).to(dtype)
    ids = torch.randint(0, V, shape, generator=gen)
    return x, ids


def _close(got, ref, rtol=2e-6, atol=2e-6):
    assert got.dtype == torch.float32
    assert not got.isnan().any()
    torch.testing.assert_close(got.double(), ref, rtol=rtol, atol=atol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("V", [1, 7, 333, 1000, 5000])
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_matches_float64(backend, V, dtype, poisoned):
    gen = torch.Generator().manual_seed(V * 7 + DTYPES.index(dtype))
    x, ids = _inputs(gen, (5,), V, dtype)
    logp, ent = selective_log_softmax(x, ids, backend=backend, return_entropy=True, chunk_size=2)
    ref_lp, ref_ent = ref_log_softmax_np(x, ids)  # from the same (rounded) low-precision values
    _close(logp, ref_lp, atol=1e-5)
    _close(ent, ref_ent, atol=1e-5)
    # without entropy: the same log-probs
    lp2 = selective_log_softmax(x, ids, backend=backend, chunk_size=3)
    _close(lp2, ref_lp, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_three_d_logits(backend):
    gen = torch.Generator().manual_seed(1)
    x, ids = _inputs(gen, (2, 3), 37, torch.bfloat16)
    logp, ent = selective_log_softmax(x, ids, backend=backend, return_entropy=True, chunk_size=4)
    assert logp.shape == ent.shape == (2, 3)
    ref_lp, ref_ent = ref_log_softmax_np(x, ids)
    _close(logp, ref_lp, atol=1e-5)
    _close(ent, ref_ent, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_huge_logits_and_minus_inf(backend, poisoned):
    """Logits of ±1e4 (a float32 log-sum-exp without the max shift overflows) and −inf entries
    (masked vocabulary) away from the target ids; one row is −inf everywhere but its target."""
    gen = torch.Generator().manual_seed(2)
    V = 333
    x = torch.randn(6, V, generator=gen, dtype=torch.float64) * 1e4
    x = x.float()
    ids = torch.randint(0, V, (6,), generator=gen)
    ninf = torch.rand(6, V, generator=gen) < 0.3
    ninf[torch.arange(6), ids] = False
    ninf[5] = True
    ninf[5, ids[5]] = False
    x = x.masked_fill(ninf, float("-inf"))
    logp, ent = selective_log_softmax(x, ids, backend=backend, return_entropy=True)
    ref_lp, ref_ent = ref_log_softmax_np(x, ids)
    _close(logp, ref_lp, rtol=1e-6, atol=1e-4)
    _close(ent, ref_ent, atol=1e-4)
    assert logp[5].item() == 0.0 and ent[5].item() == 0.0

    xg = x.clone().requires_grad_()
    lp, h = selective_log_softmax(xg, ids, backend=backend, return_entropy=True)
    (lp.sum() + h.sum()).backward()
    assert torch.isfinite(xg.grad).all()
    assert (xg.grad[ninf] == 0).all()


def _ref_grads(x, ids, g_lp, g_ent):
    xr = x.detach().double().requires_grad_()
    lp, h = selective_log_softmax_naive(xr, ids, return_entropy=True)
    ((lp * g_lp).sum() + (h * g_ent).sum()).backward()
    return xr.grad


@pytest.mark.parametrize("V", [7, 1000])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_matches_float64_autograd(backend, dtype, V, poisoned):
    gen = torch.Generator().manual_seed(3 + V)
    x, ids = _inputs(gen, (5,), V, dtype)
    g_lp, g_ent = torch.randn(5, generator=gen), torch.randn(5, generator=gen)
    xg = x.clone().requires_grad_()
    lp, h = selective_log_softmax(xg, ids, backend=backend, return_entropy=True, chunk_size=2)
    ((lp * g_lp).sum() + (h * g_ent).sum()).backward()
    assert xg.grad.dtype == dtype and not xg.grad.isnan().any()
    ref = _ref_grads(x, ids, g_lp, g_ent)
    tol = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}[dtype]  # rounding of the output
    torch.testing.assert_close(xg.grad.double(), ref, rtol=tol, atol=tol)
    # log-prob only
    xg2 = x.clone().requires_grad_()
    (selective_log_softmax(xg2, ids, backend=backend, chunk_size=4) * g_lp).sum().backward()
    xr = x.detach().double().requires_grad_()
    (selective_log_softmax_naive(xr, ids) * g_lp).sum().backward()
    torch.testing.assert_close(xg2.grad.double(), xr.grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("used", ["logp", "entropy"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_one_output_unused(backend, used, poisoned):
    """Both outputs returned, the loss uses one (PPO logs entropy without a bonus): the backward
    gets None for the other and must equal the float64 gradient of the used output alone."""
    gen = torch.Generator().manual_seed(17)
    x, ids = _inputs(gen, (6,), 13, torch.float32)
    g = torch.randn(6, generator=gen)
    xg = x.clone().requires_grad_()
    lp, h = selective_log_softmax(xg, ids, backend=backend, return_entropy=True, chunk_size=4)
    ((lp if used == "logp" else h) * g).sum().backward()
    zero = torch.zeros(6)
    ref = _ref_grads(x, ids, g, zero) if used == "logp" else _ref_grads(x, ids, zero, g)
    torch.testing.assert_close(xg.grad.double(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(backend):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(5, 9, generator=gen, dtype=torch.float64).requires_grad_()
    ids = torch.randint(0, 9, (5,), generator=gen)
    fn = lambda t: selective_log_softmax(t, ids, backend=backend, return_entropy=True, chunk_size=2)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inplace_backward(backend, dtype):
    """logits = h @ W (matmul does not save its output): the in-place backward writes d/dlogits into
    the logits buffer and h, W get the same gradients as without it."""
    gen = torch.Generator().manual_seed(5)
    V, D = 333, 8
    h0 = torch.randn(2, 3, D, generator=gen).to(dtype)
    W0 = torch.randn(D, V, generator=gen).to(dtype)
    ids = torch.randint(0, V, (2, 3), generator=gen)
    g = torch.randn(2, 3, generator=gen)
    grads, logit_grads = [], []
    for inplace in (False, True):
        h, W = h0.clone().requires_grad_(), W0.clone().requires_grad_()
        logits = h @ W
        logits.retain_grad()
        lp = selective_log_softmax(logits, ids, backend=backend, inplace_backward=inplace, chunk_size=4)
        (lp * g).sum().backward()
        grads.append((h.grad, W.grad))
        logit_grads.append(logits.grad)
        if inplace:
            # the logits buffer itself now holds d/dlogits (retain_grad keeps a copy of it)
            torch.testing.assert_close(logits.detach(), logit_grads[0], rtol=0, atol=0)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    ref = _ref_grads((h0.double() @ W0.double()).to(dtype), ids, g, torch.zeros(2, 3))
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(logit_grads[0].double(), ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inplace_backward_refuses_when_logits_are_needed(backend):
    """tanh saves its output for its own backward: overwriting it must raise, not corrupt."""
    z = torch.randn(4, 9, requires_grad=True)
    x = torch.tanh(z)
    lp = selective_log_softmax(x, torch.tensor([0, 3, 8, 1]), backend=backend, inplace_backward=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        lp.sum().backward()


@pytest.mark.parametrize("chunk", [1, 2, 5, 6, 100, None])
def test_chunk_boundaries_agree(chunk):
    gen = torch.Generator().manual_seed(6)
    x, ids = _inputs(gen, (11,), 50, torch.float32)
    base = selective_log_softmax(x, ids, backend="torch", chunk_size=1000, return_entropy=True)
    got = selective_log_softmax(x, ids, backend="torch", chunk_size=chunk, return_entropy=True)
    for a, b in zip(base, got):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("with_entropy", [False, True])
def test_default_chunks_against_float64(with_entropy):
    """The default chunking (chunk_size=None, cache-sized chunks): at V = 50001 a chunk is 10 rows,
    so 37 rows span four, forward and backward. Log-probs, entropy and the gradient against float64."""
    gen = torch.Generator().manual_seed(37)
    x, ids = _inputs(gen, (37,), 50001, torch.float32)
    xg = x.clone().requires_grad_()
    out = selective_log_softmax(xg, ids, backend="torch", return_entropy=with_entropy)
    lp, h = out if with_entropy else (out, None)
    ref_lp, ref_h = ref_log_softmax_np(x, ids)
    _close(lp, ref_lp)
    if with_entropy:
        _close(h, ref_h, rtol=1e-5, atol=1e-5)
    g = torch.randn(37, generator=gen)
    (lp * g).sum().backward()
    x64 = x.double().requires_grad_()
    (torch.log_softmax(x64, -1).gather(-1, ids[:, None]).squeeze(-1) * g.double()).sum().backward()
    torch.testing.assert_close(xg.grad.double(), x64.grad, rtol=1e-5, atol=1e-7)


def test_bad_inputs_are_named():
    x = torch.randn(3, 10)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 10\).*\[0, 10\]"):
        selective_log_softmax(x, torch.tensor([0, 10, 2]))
    with pytest.raises(ValueError, match="ids shape"):
        selective_log_softmax(x, torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="integer"):
        selective_log_softmax(x, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="chunk_size"):
        selective_log_softmax(x, torch.tensor([0, 1, 2]), chunk_size=0)
    with pytest.raises(ValueError, match="unknown backend"):
        selective_log_softmax(x, torch.tensor([0, 1, 2]), backend="cuda")


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    lp, h = selective_log_softmax(torch.randn(0, 5), torch.zeros(0, dtype=torch.long), backend=backend,
                                  return_entropy=True)
    assert lp.shape == h.shape == (0,)
