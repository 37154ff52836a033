"""Triton covariance-weighted KL: one program per sequence streams T in blocks, writes kl and w·kl
and accumulates both masked sums (see varpo_kernels.weighted_kl for the conventions)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..weighted_kl import k3_small_threshold

_EST = {"k1": 1, "k2": 2, "k3": 3}


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
        r = lp - rl
        if EST == 1:
            k = r
        elif EST == 2:
            k = 0.5 * r * r
        else:
            # e^{−r} − 1 + r cancels for small r: its Taylor series there (see k3_small_threshold)
            taylor = r * r * (0.5 + r * (-1.0 / 6.0 + r * (1.0 / 24.0 + r * (-1.0 / 120.0 + r * (1.0 / 720.0)))))
            k = tl.where(tl.abs(r) < SMALL, taylor, tl.exp(-r) - 1.0 + r).to(cdt)
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
        dk = {"k1": torch.ones_like(r), "k2": r, "k3": -torch.expm1(-r)}[ctx.estimator]
        g_k = g_kl + w * g_wkl + g_klsum[:, None] + w * g_wsum[:, None]  # d loss / d kl_bt
        g_r = torch.where(m, g_k * dk, torch.zeros((), dtype=cdt, device=r.device))
        g_w = (kl * (g_wkl + g_wsum[:, None])).sum(1)
        return (g_r.to(logp.dtype), (-g_r).to(ref_logp.dtype), None, g_w.to(weights.dtype), None)

