"""Selective log-softmax: log p(ids) (and the entropy) from logits, without a [N, V] log-softmax.

Conventions: logits [N, V] or [B, T, V] in float32/bfloat16/float16 (float64 accepted, for
gradcheck); ids of the same leading shape, integers in [0, V). Results are float32 (float64 when
the logits are float64): logp = logits[id] − logsumexp(logits), entropy = −Σ_v p_v log p_v.

Three implementations of one function:
- `selective_log_softmax_naive`: `log_softmax + gather`, the plain reference (materialises [N, V]).
- the chunked PyTorch path (`_ChunkedSelectiveLogSoftmax`): rows in chunks of `chunk_size`, so
  the extra memory is O(chunk_size × V) instead of O(N × V), forward and backward.
- the Triton path (`triton_kernels.selective_log_softmax`): one pass per row with an online
  log-sum-exp over vocabulary blocks.
Both fused paths are autograd Functions; their backward writes d/dlogits chunk by chunk, into a new
buffer or, with `inplace_backward=True`, into the logits buffer itself (no second N × V tensor; the
logits are destroyed, so only use it when nothing else needs them afterwards — autograd's version
counter is bumped so a node that saved them raises instead of reading garbage).
"""
from __future__ import annotations

import torch

from .dispatch import resolve_backend, triton_module

_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
# default chunk of the PyTorch path: rows × V ≈ 0.5 Mi elements (2 MiB per float32 temporary, one
# core's L2 here), so a chunk's passes (max, exp, sums) reread it from the cache, not from memory.
# One core of this project's machine (2 MiB L2, 32 MiB L3), [256, 50257] float32, quiet, median of 9:
# forward with entropy 29 ms at 8 Mi elements per chunk with a log-softmax then its exp, 23 ms with
# that formula at 0.5 Mi, 20 ms with one set of exponentials (`_with_entropy`) at 0.5 Mi; without
# entropy 10 → 9 ms; the backward 17 ms either way. Two threads: 20.6 → 14.1 ms. Below ~0.25 Mi
# elements per chunk Python's per-chunk calls begin to cost.
CHUNK_ELEMENTS = 2**19


def _out_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_inputs(logits: torch.Tensor, ids: torch.Tensor) -> None:
    if logits.dim() not in (2, 3):
        raise ValueError(f"logits must be [N, V] or [B, T, V], got shape {tuple(logits.shape)}")
    if logits.dtype not in _DTYPES:
        raise TypeError(f"logits dtype {logits.dtype} not supported (expected float32, bfloat16, float16 or float64)")
    if tuple(ids.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"ids shape {tuple(ids.shape)} must equal logits.shape[:-1] = {tuple(logits.shape[:-1])}")
    if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.dtype.is_complex:
        raise TypeError(f"ids must be an integer tensor, got {ids.dtype}")
    if ids.device != logits.device:
        raise ValueError(f"ids on {ids.device} but logits on {logits.device}")
    V = logits.shape[-1]
    if V == 0:
        raise ValueError("logits have an empty vocabulary dimension (V = 0)")
    if ids.numel() and (bool((ids < 0).any()) or bool((ids >= V).any())):
        lo, hi = int(ids.min()), int(ids.max())
        raise ValueError(f"ids must lie in [0, {V}) (the vocabulary), got values in [{lo}, {hi}]")


def selective_log_softmax_naive(logits: torch.Tensor, ids: torch.Tensor, return_entropy: bool = False):
    """The plain reference: float32 log_softmax over the whole vocabulary, then gather."""
    logp_all = torch.log_softmax(logits.to(_out_dtype(logits)), dim=-1)
    logp = logp_all.gather(-1, ids.long().unsqueeze(-1)).squeeze(-1)
    if not return_entropy:
        return logp
    p = logp_all.exp()
    entropy = -(p * logp_all.masked_fill(p == 0, 0.0)).sum(-1)  # 0·(−inf) := 0, NaN-free gradient
    return logp, entropy


# ---------------------------------------------------------------------------- chunked PyTorch


def _torch_forward(x: torch.Tensor, ids: torch.Tensor, chunk: int, with_entropy: bool):
    """x [N, V], ids [N] (int64) -> logp [N], lse [N], entropy [N] or None."""
    N = x.shape[0]
    cdt = _out_dtype(x)
    logp = torch.empty(N, dtype=cdt, device=x.device)
    lse = torch.empty(N, dtype=cdt, device=x.device)
    ent = torch.empty(N, dtype=cdt, device=x.device) if with_entropy else None
    for s in range(0, N, chunk):
        e = min(s + chunk, N)
        if with_entropy:
            logp[s:e], lse[s:e], ent[s:e] = _with_entropy(x[s:e].to(cdt), ids[s:e])
            continue
        # log_softmax shifts by the row max internally, so logp keeps full precision even for
        # logits of ±1e4 (x_id − logsumexp would round at ulp(1e4) ≈ 1e-3); one chunk-sized temp.
        lsm = torch.log_softmax(x[s:e].to(cdt), dim=-1)
        logp_c = lsm.gather(1, ids[s:e, None]).squeeze(1)
        logp[s:e] = logp_c
        lse[s:e] = x[s:e].gather(1, ids[s:e, None]).squeeze(1).to(cdt) - logp_c
        del lsm
    return logp, lse, ent


def _with_entropy(x: torch.Tensor, ids: torch.Tensor):
    """logp, lse and entropy of a chunk [n, V] from one set of exponentials: with m the row max,
    z = x − m, e = exp z and S = Σ e: logp = z_id − log S, lse = m + log S and
    H = −Σ p log p = log S − Σ e·z / S (a log-softmax, then exp of it, takes two exp passes).
    logp is as precise as log_softmax's (the same shift by the max). A −inf logit (masked) gives
    e·z = 0·(−inf) = NaN in its row's sum: only those rows are recomputed with 0·(−inf) := 0."""
    m = x.amax(1, keepdim=True)
    z = torch.sub(x, m)
    ex = torch.exp(z)
    S = ex.sum(1)
    log_s = S.log()
    ez = torch.linalg.vecdot(ex, z)
    ent = log_s - ez / S
    bad = torch.isnan(ent) & ~torch.isnan(m.squeeze(1))  # a NaN logit (m NaN) stays NaN
    if bool(bad.any()):
        zb, eb = z[bad], ex[bad]
        ent[bad] = log_s[bad] - (eb * zb).masked_fill_(eb == 0, 0.0).sum(-1) / S[bad]
    return z.gather(1, ids[:, None]).squeeze(1) - log_s, m.squeeze(1) + log_s, ent


def _torch_backward(x, ids, lse, ent, g_logp, g_ent, chunk: int, out: torch.Tensor) -> None:
    """Writes d/dx of Σ g_logp·logp + Σ g_ent·entropy into `out` ([N, V], may alias x), chunk by chunk.
    d logp/dx_v = 1[v = id] − p_v;  d H/dx_v = p_v (μ − x_v) with μ = Σ p x = lse − H."""
    N = x.shape[0]
    cdt = lse.dtype
    rows = torch.arange(chunk, device=x.device)
    for s in range(0, N, chunk):
        e = min(s + chunk, N)
        xc = x[s:e].to(cdt)
        if g_ent is None and out.dtype == cdt:
            # −p·g written straight into out (the logits' own rows when out is x: each element is
            # read once, before it is overwritten): no chunk temporary, no copy
            o = torch.sub(xc, lse[s:e, None], out=out[s:e]).exp_().mul_(-g_logp[s:e, None])
            o[rows[: e - s], ids[s:e]] += g_logp[s:e]
            continue
        p = (xc - lse[s:e, None]).exp_()
        if g_ent is not None:
            mu = (lse[s:e] - ent[s:e])[:, None]
            t = torch.sub(mu, xc).mul_(g_ent[s:e, None])
            if g_logp is not None:
                t.sub_(g_logp[s:e, None])
            t.mul_(p).masked_fill_(p == 0, 0.0)  # −inf logits: p = 0, gradient 0 (not 0·inf)
        else:
            t = p.mul_(-g_logp[s:e, None])
        del xc, p
        if g_logp is not None:
            t[rows[: e - s], ids[s:e]] += g_logp[s:e]
        out[s:e].copy_(t)  # x[s:e] is no longer read after this point: safe when out is x
        del t


class _ChunkedSelectiveLogSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, ids, chunk, with_entropy, inplace):
        logp, lse, ent = _torch_forward(x, ids, chunk, with_entropy)
        ctx.save_for_backward(x, ids, lse, ent if with_entropy else None)
        ctx.chunk, ctx.inplace = chunk, inplace
        # an output the loss does not use (entropy logged only) gets None, not zeros: the
        # backward then skips its term instead of multiplying it by 0
        ctx.set_materialize_grads(False)
        if with_entropy:
            return logp, ent
        return logp

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_logp, *rest):
        x, ids, lse, ent = ctx.saved_tensors
        g_ent = rest[0] if rest else None
        if g_logp is None and g_ent is None:
            return None, None, None, None, None
        out = x if ctx.inplace else torch.empty_like(x)
        _torch_backward(x, ids, lse, ent, _as(g_logp, lse), _as(g_ent, lse), ctx.chunk, out)
        if ctx.inplace:
            torch.autograd.graph.increment_version(x)
        return out, None, None, None, None


def _as(g, ref):
    return None if g is None else g.to(ref.dtype).contiguous()


# ---------------------------------------------------------------------------- public API


def selective_log_softmax(
    logits: torch.Tensor,
    ids: torch.Tensor,
    *,
    backend: str = "auto",
    return_entropy: bool = False,
    inplace_backward: bool = False,
    chunk_size: int | None = None,
):
    """log p(ids | logits) for logits [N, V] or [B, T, V] and integer ids [N] / [B, T].

    Returns logp with the shape of ids (float32; float64 for float64 logits), or (logp, entropy)
    when `return_entropy`. Differentiable w.r.t. the logits (both outputs). backend: "auto"
    (Triton on CUDA, chunked PyTorch otherwise), "triton" (CUDA, or CPU under TRITON_INTERPRET=1)
    or "torch". chunk_size: rows per chunk of the PyTorch path (its extra memory is about
    3 × chunk_size × V × 4 bytes); None = CHUNK_ELEMENTS // V rows (≈ 2 MiB per temporary);
    ignored by Triton. inplace_backward: the backward writes the
    gradient into the logits' own storage (saves an N × V buffer; the logits are overwritten).
    """
    _check_inputs(logits, ids)
    lead = ids.shape
    V = logits.shape[-1]
    if chunk_size is None:
        chunk_size = max(1, CHUNK_ELEMENTS // V)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be ≥ 1 (rows per chunk) or None, got {chunk_size}")
    if inplace_backward and not logits.is_contiguous():
        raise ValueError("inplace_backward=True needs contiguous logits (the gradient is written into their storage)")
    x = logits.reshape(-1, V)
    if x.stride(-1) != 1:
        x = x.contiguous()
    flat_ids = ids.reshape(-1).long()
    if resolve_backend(backend, logits.device) == "triton":
        fn = triton_module("selective_log_softmax").TritonSelectiveLogSoftmax.apply
        out = fn(x, flat_ids, return_entropy, inplace_backward)
    else:
        out = _ChunkedSelectiveLogSoftmax.apply(x, flat_ids, int(chunk_size), return_entropy, inplace_backward)
    if return_entropy:
        return out[0].reshape(lead), out[1].reshape(lead)
    return out.reshape(lead)
