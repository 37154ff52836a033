"""Triton covariance-weighted KL: one program per sequence streams T in blocks, writes kl and w·kl
and accumulates both masked sums (see varpo_kernels.weighted_kl for the conventions)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..weighted_kl import k3_small_threshold, kl_derivative

_EST = {"k1": 1, "k2": 2, "k3": 3}


@triton.jit
def _kl_estimate(r, EST: tl.constexpr, SMALL: tl.constexpr):
    """varpo_kernels.weighted_kl.kl_from_log_ratio in Triton: k1 = r, k2 = r²/2, k3 = e^{−r} − 1 + r
    (its Taylor series k3_taylor where |r| < SMALL = k3_small_threshold, where the closed form cancels)."""
    if EST == 1:
        k = r
    elif EST == 2:
        k = 0.5 * r * r
    else:
        taylor = r * r * (0.5 + r * (-1.0 / 6.0 + r * (1.0 / 24.0 + r * (-1.0 / 120.0 + r * (1.0 / 720.0)))))
        k = tl.where(tl.abs(r) < SMALL, taylor, tl.exp(-r) - 1.0 + r)
    return k


@triton.jit
def _kl_kernel(logp_ptr, ref_ptr, mask_ptr, w_ptr, kl_ptr, wkl_ptr, klsum_ptr, wsum_ptr, T,
               s_lp, s_ref, s_mask, BLOCK_T: tl.constexpr, EST: tl.constexpr, SMALL: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    cdt = kl_ptr.dtype.element_ty
    w = tl.load(w_ptr + b).to(cdt)
    offs = tl.arange(0, BLOCK_T)
    acc = tl.zeros((BLOCK_T,), cdt)
    wacc = tl.zeros((BLOCK_T,), cdt)
    for start in range(0, T, BLOCK_T):
        cols = start + offs
        inb = cols < T
        m = tl.load(mask_ptr + b * s_mask + cols, mask=inb, other=0) != 0
        lp = tl.load(logp_ptr + b * s_lp + cols, mask=inb, other=0.0).to(cdt)
        rl = tl.load(ref_ptr + b * s_ref + cols, mask=inb, other=0.0).to(cdt)
        k = _kl_estimate(lp - rl, EST, SMALL).to(cdt)
        k = tl.where(m, k, 0.0).to(cdt)  # padding is exactly 0, even where the inputs are NaN
        wk = tl.where(m, w * k, 0.0).to(cdt)
        tl.store(kl_ptr + b * T + cols, k, mask=inb)
        tl.store(wkl_ptr + b * T + cols, wk, mask=inb)
        acc += k
        wacc += wk
    tl.store(klsum_ptr + b, tl.sum(acc, axis=0))
    tl.store(wsum_ptr + b, tl.sum(wacc, axis=0))


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def forward(logp, ref_logp, mask, weights, estimator: str):
    B, T = logp.shape
    cdt = torch.float64 if logp.dtype == torch.float64 else torch.float32
    logp, ref_logp = _rows(logp), _rows(ref_logp)
    mask = _rows(mask.to(torch.uint8) if mask.dtype == torch.bool else mask)
    weights = weights.contiguous()
    kl = torch.empty(B, T, dtype=cdt, device=logp.device)
    wkl = torch.empty_like(kl)
    klsum = torch.empty(B, dtype=cdt, device=logp.device)
    wsum = torch.empty_like(klsum)
    if B:
        _kl_kernel[(B,)](logp, ref_logp, mask, weights, kl, wkl, klsum, wsum, T,
                         logp.stride(0), ref_logp.stride(0), mask.stride(0),
                         BLOCK_T=min(1024, triton.next_power_of_2(max(T, 1))), EST=_EST[estimator], SMALL=k3_small_threshold(cdt))
    return kl, wkl, klsum, wsum


class TritonWeightedKL(torch.autograd.Function):
    """Forward in Triton; the backward is elementwise on [B, T] (cheap), in PyTorch."""

    @staticmethod
    def forward(ctx, logp, ref_logp, mask, weights, estimator):
        kl, wkl, klsum, wsum = forward(logp, ref_logp, mask, weights, estimator)
        ctx.save_for_backward(logp, ref_logp, mask, weights, kl)
        ctx.estimator = estimator
        return kl, wkl, klsum, wsum

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_kl, g_wkl, g_klsum, g_wsum):
        logp, ref_logp, mask, weights, kl = ctx.saved_tensors
        cdt = kl.dtype
        w = weights.to(cdt)[:, None]
        m = mask != 0
        r = logp.to(cdt) - ref_logp.to(cdt)
        dk = kl_derivative(r, ctx.estimator)
        g_k = g_kl + w * g_wkl + g_klsum[:, None] + w * g_wsum[:, None]  # d loss / d kl_bt
        g_r = torch.where(m, g_k * dk, torch.zeros((), dtype=cdt, device=r.device))
        g_w = (kl * (g_wkl + g_wsum[:, None])).sum(1)
        return (g_r.to(logp.dtype), (-g_r).to(ref_logp.dtype), None, g_w.to(weights.dtype), None)



# ---------------------------------------------------------------------------- from logits, fused


@triton.jit
def _fused_kernel(x_ptr, ids_ptr, other_ptr, mask_ptr, w_ptr, logp_ptr, lse_ptr, kl_ptr, wkl_ptr, T, V,
                  stride_x, BLOCK_V: tl.constexpr, EST: tl.constexpr, SMALL: tl.constexpr,
                  POLICY: tl.constexpr):
    """One program per token (row of the flattened [B·T, V] logits): an online log-sum-exp over
    vocabulary blocks (the logits are read once), then log p(id), r, the KL estimator, w·kl and the
    mask, all in registers. POLICY: the logits are the policy's (r = logp − other), else the
    reference's (r = other − logp)."""
    row = tl.program_id(0).to(tl.int64)
    cdt = logp_ptr.dtype.element_ty
    x_row = x_ptr + row * stride_x
    offs = tl.arange(0, BLOCK_V)
    m = tl.full((), float("-inf"), cdt)
    s = tl.zeros((), cdt)
    for start in range(0, V, BLOCK_V):
        cols = start + offs
        x = tl.load(x_row + cols, mask=cols < V, other=float("-inf")).to(cdt)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        shift = tl.where(m_new == float("-inf"), 0.0, m_new).to(cdt)
        s = s * tl.exp(m - shift) + tl.sum(tl.exp(x - shift), axis=0)
        m = m_new
    shift = tl.where(m == float("-inf"), 0.0, m).to(cdt)
    log_s = tl.log(s)
    x_id = tl.load(x_row + tl.load(ids_ptr + row)).to(cdt)
    lp = (x_id - shift) - log_s
    tl.store(logp_ptr + row, lp)
    tl.store(lse_ptr + row, shift + log_s)
    other = tl.load(other_ptr + row).to(cdt)
    if POLICY:
        r = lp - other
    else:
        r = other - lp
    k = _kl_estimate(r, EST, SMALL).to(cdt)
    keep = tl.load(mask_ptr + row) != 0
    w = tl.load(w_ptr + row // T).to(cdt)
    tl.store(kl_ptr + row, tl.where(keep, k, 0.0).to(cdt))
    tl.store(wkl_ptr + row, tl.where(keep, w * k, 0.0).to(cdt))


class TritonWeightedKLFromLogits(torch.autograd.Function):
    """Forward: the fused kernel. Backward: d/dlogits through the selective log-softmax backward
    kernel (grad_v = g_logp (1[v = id] − p_v), from the saved log-sum-exp), the rest on [B, T]."""

    @staticmethod
    def forward(ctx, x, ids, other, mask, weights, estimator, logits_of):
        from . import selective_log_softmax as sls

        B, T, V = x.shape
        cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
        x2 = x.view(B * T, V) if x.is_contiguous() else x.reshape(B * T, V)
        ids_f = ids.reshape(-1).contiguous()
        other_f = other.to(cdt).reshape(-1).contiguous()
        mask_f = (mask.to(torch.uint8) if mask.dtype == torch.bool else mask).reshape(-1).contiguous()
        w = weights.contiguous()
        logp = torch.empty(B * T, dtype=cdt, device=x.device)
        lse, kl, wkl = torch.empty_like(logp), torch.empty_like(logp), torch.empty_like(logp)
        if B * T:
            _fused_kernel[(B * T,)](x2, ids_f, other_f, mask_f, w, logp, lse, kl, wkl, T, V, x2.stride(0),
                                    BLOCK_V=sls._block_v(V), EST=_EST[estimator], SMALL=k3_small_threshold(cdt),
                                    POLICY=logits_of == "policy", num_warps=8)
        kl, wkl = kl.view(B, T), wkl.view(B, T)
        ctx.save_for_backward(x2, ids_f, lse, other, logp.view(B, T), mask, weights, kl)
        ctx.estimator, ctx.sign, ctx.shape = estimator, (1.0 if logits_of == "policy" else -1.0), (B, T, V)
        ctx.set_materialize_grads(False)
        return logp.view(B, T), kl, wkl, kl.sum(1), wkl.sum(1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_logp, g_kl, g_wkl, g_klsum, g_wsum):
        from . import selective_log_softmax as sls

        x2, ids, lse, other, logp, mask, weights, kl = ctx.saved_tensors
        B, T, V = ctx.shape
        cdt = kl.dtype
        z = torch.zeros((B, T), dtype=cdt, device=kl.device)
        zb = torch.zeros(B, dtype=cdt, device=kl.device)
        g_kl, g_wkl = (z if g is None else g.to(cdt) for g in (g_kl, g_wkl))
        g_klsum, g_wsum = (zb if g is None else g.to(cdt) for g in (g_klsum, g_wsum))
        w = weights.to(cdt)[:, None]
        r = ctx.sign * (logp - other.to(cdt))
        dk = kl_derivative(r, ctx.estimator)
        g_k = g_kl + w * g_wkl + g_klsum[:, None] + w * g_wsum[:, None]
        g_r = torch.where(mask != 0, g_k * dk, torch.zeros((), dtype=cdt, device=r.device))
        g_lp = ctx.sign * g_r + (0.0 if g_logp is None else g_logp.to(cdt))
        g_x = None
        if ctx.needs_input_grad[0]:
            g_x = torch.empty_like(x2)
            sls.backward(x2, ids, lse, None, g_lp.reshape(-1).contiguous(), None, g_x)
            g_x = g_x.view(B, T, V)
        g_other = (-ctx.sign * g_r).to(other.dtype)
        g_w = (kl * (g_wkl + g_wsum[:, None])).sum(1).to(weights.dtype)
        return g_x, None, g_other, None, g_w, None, None
