"""Triton selective log-softmax (see varpo_kernels.selective_log_softmax for the conventions).

Forward: one program per row streams the vocabulary in BLOCK_V blocks keeping an online
log-sum-exp (running max m, running Σ e^{x−m}) and, for the entropy, the running Σ e^{x−m}(x−m);
logits are read exactly once and nothing of size V is written. Backward: a 2-D grid (row, vocabulary
block) writes d/dlogits block by block, optionally into the logits buffer itself.
Row offsets are int64: 16384 × 151936 elements overflow int32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _fwd_kernel(x_ptr, ids_ptr, logp_ptr, lse_ptr, ent_ptr, V, stride_x,
                BLOCK_V: tl.constexpr, WITH_ENTROPY: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cdt = logp_ptr.dtype.element_ty  # float32, or float64 for float64 logits
    x_row = x_ptr + row * stride_x
    offs = tl.arange(0, BLOCK_V)
    m = tl.full((), float("-inf"), cdt)  # running max
    s = tl.zeros((), cdt)  # Σ e^{x − m}
    t = tl.zeros((), cdt)  # Σ e^{x − m} (x − m)   (entropy = log s − t / s)
    for start in range(0, V, BLOCK_V):
        cols = start + offs
        x = tl.load(x_row + cols, mask=cols < V, other=float("-inf")).to(cdt)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        # a row that is −inf so far: shift by 0 so that exp(−inf − shift) = 0, not NaN
        shift = tl.where(m_new == float("-inf"), 0.0, m_new).to(cdt)
        p = tl.exp(x - shift)
        alpha = tl.exp(m - shift)
        if WITH_ENTROPY:
            d = tl.where(p > 0, x - shift, 0.0).to(cdt)
            # rescale the old Σ e^{x−m}(x−m) to the new shift: e^{m−m'}(t + (m − m') s)
            dm = tl.where(s > 0, m - shift, 0.0).to(cdt)
            t = alpha * (t + dm * s) + tl.sum(p * d, axis=0)
        s = s * alpha + tl.sum(p, axis=0)
        m = m_new
    shift = tl.where(m == float("-inf"), 0.0, m).to(cdt)
    log_s = tl.log(s)
    tid = tl.load(ids_ptr + row)
    x_id = tl.load(x_row + tid).to(cdt)
    # (x_id − m) − log s rather than x_id − (m + log s): exact for logits of ±1e4
    tl.store(logp_ptr + row, (x_id - shift) - log_s)
    tl.store(lse_ptr + row, shift + log_s)
    if WITH_ENTROPY:
        tl.store(ent_ptr + row, log_s - t / s)


@triton.jit
def _bwd_kernel(x_ptr, grad_ptr, ids_ptr, lse_ptr, mu_ptr, g_logp_ptr, g_ent_ptr, V, stride_x, stride_g,
                BLOCK_V: tl.constexpr, HAS_G_LOGP: tl.constexpr, HAS_G_ENT: tl.constexpr):
    """grad_v = g_logp (1[v = id] − p_v) + g_ent p_v (μ − x_v); grad_ptr may alias x_ptr (each
    element is read and written by the same program, read first)."""
    row = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    cdt = lse_ptr.dtype.element_ty
    cols = blk * BLOCK_V + tl.arange(0, BLOCK_V)
    valid = cols < V
    x = tl.load(x_ptr + row * stride_x + cols, mask=valid, other=float("-inf")).to(cdt)
    lse = tl.load(lse_ptr + row)
    p = tl.exp(x - lse)
    g = tl.zeros((BLOCK_V,), cdt)
    if HAS_G_ENT:
        mu = tl.load(mu_ptr + row)
        ge = tl.load(g_ent_ptr + row)
        g = p * tl.where(p > 0, mu - x, 0.0).to(cdt) * ge  # −inf logits: 0, not 0·inf
    if HAS_G_LOGP:
        gl = tl.load(g_logp_ptr + row)
        tid = tl.load(ids_ptr + row)
        g = g - p * gl + tl.where(cols == tid, gl, 0.0).to(cdt)
    tl.store(grad_ptr + row * stride_g + cols, g.to(grad_ptr.dtype.element_ty), mask=valid)


def _block_v(V: int) -> int:
    # one block covers small vocabularies; 4096 keeps registers in check on GPU (and the
    # interpreter runs fewer Python iterations with larger blocks)
    return min(4096, triton.next_power_of_2(V))


def forward(x: torch.Tensor, ids: torch.Tensor, with_entropy: bool):
    """x [N, V] (last dim contiguous), ids [N] int64 -> logp [N], lse [N], entropy [N] or None."""
    N, V = x.shape
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    logp = torch.empty(N, dtype=cdt, device=x.device)
    lse = torch.empty(N, dtype=cdt, device=x.device)
    ent = torch.empty(N, dtype=cdt, device=x.device) if with_entropy else logp  # dummy pointer
    if N:
        _fwd_kernel[(N,)](x, ids, logp, lse, ent, V, x.stride(0),
                          BLOCK_V=_block_v(V), WITH_ENTROPY=with_entropy, num_warps=8)
    return logp, lse, (ent if with_entropy else None)


def backward(x, ids, lse, ent, g_logp, g_ent, out: torch.Tensor) -> None:
    """Writes the gradient into out [N, V] (may be x itself)."""
    N, V = x.shape
    if N == 0:
        return
    bv = _block_v(V)
    mu = (lse - ent).contiguous() if g_ent is not None else lse
    _bwd_kernel[(N, triton.cdiv(V, bv))](
        x, out, ids, lse, mu,
        g_logp if g_logp is not None else lse, g_ent if g_ent is not None else lse,
        V, x.stride(0), out.stride(0),
        BLOCK_V=bv, HAS_G_LOGP=g_logp is not None, HAS_G_ENT=g_ent is not None, num_warps=8,
    )


class TritonSelectiveLogSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, ids, with_entropy, inplace):
        logp, lse, ent = forward(x, ids, with_entropy)
        ctx.save_for_backward(x, ids, lse, ent)
        ctx.inplace = inplace
        # an output the loss does not use (entropy logged only) gets None, not zeros: the
        # backward then skips its term instead of multiplying it by 0
        ctx.set_materialize_grads(False)
        return (logp, ent) if with_entropy else logp

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_logp, *rest):
        x, ids, lse, ent = ctx.saved_tensors
        g_ent = rest[0] if rest else None
        if g_logp is None and g_ent is None:
            return None, None, None, None
        cast = lambda g: None if g is None else g.to(lse.dtype).contiguous()  # noqa: E731
        out = x if ctx.inplace else torch.empty_like(x)
        backward(x, ids, lse, ent, cast(g_logp), cast(g_ent), out)
        if ctx.inplace:
            torch.autograd.graph.increment_version(x)  # the kernel wrote behind autograd's back
        return out, None, None, None
