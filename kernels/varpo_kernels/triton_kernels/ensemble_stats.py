"""Triton ensemble statistics: one program per sample reads its K head rewards once; within a
block a shifted two-pass (in registers), across blocks Chan et al.'s parallel merge of
(count, mean, M2). Everything is shifted by the row's first reward, so large offsets cancel exactly."""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _stats_kernel(x_ptr, mean_ptr, var_ptr, std_ptr, min_ptr, K, stride_x, ddof,
                  BLOCK_K: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    cdt = mean_ptr.dtype.element_ty
    row = x_ptr + b * stride_x
    offs = tl.arange(0, BLOCK_K)
    shift = tl.load(row).to(cdt)
    n = tl.zeros((), cdt)
    mean = tl.zeros((), cdt)  # of the shifted values
    m2 = tl.zeros((), cdt)
    lo = tl.full((), float("inf"), cdt)
    for start in range(0, K, BLOCK_K):
        cols = start + offs
        inb = cols < K
        x = tl.load(row + cols, mask=inb, other=0.0).to(cdt)
        lo = tl.minimum(lo, tl.min(tl.where(inb, x, float("inf")), axis=0))
        d = tl.where(inb, x - shift, 0.0)
        nb = tl.sum(inb.to(cdt), axis=0)
        mb = tl.sum(d, axis=0) / nb
        m2b = tl.sum(tl.where(inb, (d - mb) * (d - mb), 0.0), axis=0)
        tot = n + nb
        delta = mb - mean
        mean = mean + delta * (nb / tot)
        m2 = m2 + m2b + delta * delta * (n * nb / tot)
        n = tot
    var = m2 / (n - ddof)
    tl.store(mean_ptr + b, shift + mean)
    tl.store(var_ptr + b, var)
    tl.store(std_ptr + b, tl.sqrt(var))
    tl.store(min_ptr + b, lo)


def ensemble_stats(rewards: torch.Tensor, ddof: int):
    B, K = rewards.shape
    x = rewards if rewards.stride(-1) == 1 else rewards.contiguous()
    cdt = torch.float64 if rewards.dtype == torch.float64 else torch.float32
    out = [torch.empty(B, dtype=cdt, device=rewards.device) for _ in range(4)]
    if B:
        _stats_kernel[(B,)](x, *out, K, x.stride(0), ddof, BLOCK_K=min(1024, triton.next_power_of_2(K)))
    return tuple(out)


@triton.jit
def _head_stats_kernel(h_ptr, w_ptr, bias_ptr, r_ptr, mean_ptr, var_ptr, std_ptr, min_ptr, H, K,
                       stride_h, stride_w, stride_r, ddof, HAS_BIAS: tl.constexpr,
                       BLOCK_K: tl.constexpr, BLOCK_H: tl.constexpr):
    """One program per sample: rewards of BLOCK_K heads at a time (a [BLOCK_K, BLOCK_H] tile of the
    head matrix against the sample's features), each block folded into (n, mean, M2, min) with
    Chan's merge; values shifted by head 0's reward so that large offsets cancel exactly."""
    b = tl.program_id(0).to(tl.int64)
    cdt = r_ptr.dtype.element_ty
    offs_k = tl.arange(0, BLOCK_K)
    offs_h = tl.arange(0, BLOCK_H)
    n = tl.zeros((), cdt)
    mean = tl.zeros((), cdt)
    m2 = tl.zeros((), cdt)
    lo = tl.full((), float("inf"), cdt)
    shift = tl.zeros((), cdt)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + offs_k
        kin = ks < K
        acc = tl.zeros((BLOCK_K,), cdt)
        for h0 in range(0, H, BLOCK_H):
            hs = h0 + offs_h
            hin = hs < H
            hv = tl.load(h_ptr + b * stride_h + hs, mask=hin, other=0.0).to(cdt)
            wv = tl.load(w_ptr + ks[:, None] * stride_w + hs[None, :], mask=kin[:, None] & hin[None, :],
                         other=0.0).to(cdt)
            acc += tl.sum(wv * hv[None, :], axis=1)
        if HAS_BIAS:
            acc += tl.load(bias_ptr + ks, mask=kin, other=0.0).to(cdt)
        tl.store(r_ptr + b * stride_r + ks, acc, mask=kin)
        first = tl.sum(tl.where(ks == 0, acc, 0.0), axis=0)
        shift = tl.where(k0 == 0, first, shift)
        lo = tl.minimum(lo, tl.min(tl.where(kin, acc, float("inf")), axis=0))
        d = tl.where(kin, acc - shift, 0.0)
        nb = tl.sum(kin.to(cdt), axis=0)
        mb = tl.sum(d, axis=0) / nb
        m2b = tl.sum(tl.where(kin, (d - mb) * (d - mb), 0.0), axis=0)
        tot = n + nb
        delta = mb - mean
        mean = mean + delta * (nb / tot)
        m2 = m2 + m2b + delta * delta * (n * nb / tot)
        n = tot
    var = m2 / (n - ddof)
    tl.store(mean_ptr + b, shift + mean)
    tl.store(var_ptr + b, var)
    tl.store(std_ptr + b, tl.sqrt(var))
    tl.store(min_ptr + b, lo)


def ensemble_head_stats(hidden: torch.Tensor, weight: torch.Tensor, bias, ddof: int):
    B, H = hidden.shape
    K = weight.shape[0]
    cdt = torch.float64 if torch.float64 in (hidden.dtype, weight.dtype) else torch.float32
    h = hidden if hidden.stride(-1) == 1 else hidden.contiguous()
    w = weight if weight.stride(-1) == 1 else weight.contiguous()
    r = torch.empty(B, K, dtype=cdt, device=hidden.device)
    out = [torch.empty(B, dtype=cdt, device=hidden.device) for _ in range(4)]
    if B:
        _head_stats_kernel[(B,)](h, w, bias.contiguous() if bias is not None else w, r, *out, H, K,
                                 h.stride(0), w.stride(0), r.stride(0), ddof, HAS_BIAS=bias is not None,
                                 BLOCK_K=min(32, triton.next_power_of_2(K)),
                                 BLOCK_H=min(128, triton.next_power_of_2(max(H, 1))))
    return (r, *out)
