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
