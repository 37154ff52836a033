"""Ensemble statistics of K reward heads: mean, variance (ddof), std and min per sample, in one pass.

Conventions: rewards [B, K] (one column per head); var = Σ_k (r_k − mean)² / (K − ddof), ddof = 1
(the sample variance) by default; std = sqrt(var); min over heads (the worst-case aggregation).
Outputs float32 (float64 for float64 rewards). Stable for large offsets (rewards ≈ 1e4 ± 1e-2): the
row is shifted by its first element before summing, which is exact in floating point for values
within a factor of two of each other, so no E[x²] − E[x]² cancellation can occur.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .dispatch import resolve_backend, triton_module


class EnsembleStats(NamedTuple):
    mean: torch.Tensor  # [B]
    var: torch.Tensor  # [B], ddof as given
    std: torch.Tensor  # [B]
    min: torch.Tensor  # [B]


def _check(rewards: torch.Tensor, ddof: int) -> None:
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [B, K] (one column per head), got shape {tuple(rewards.shape)}")
    if not rewards.dtype.is_floating_point:
        raise TypeError(f"rewards must be a floating tensor, got {rewards.dtype}")
    K = rewards.shape[1]
    if ddof < 0 or K - ddof <= 0:
        raise ValueError(f"ensemble variance needs K > ddof ≥ 0 heads; got K = {K}, ddof = {ddof}")


def ensemble_stats_torch(rewards: torch.Tensor, ddof: int = 1) -> EnsembleStats:
    """The PyTorch path (differentiable): shifted two-pass on [B, K]."""
    x = rewards if rewards.dtype == torch.float64 else rewards.float()
    K = x.shape[1]
    d = x - x[:, :1]
    mean_d = d.mean(1)
    var = (d - mean_d[:, None]).square().sum(1) / (K - ddof)
    return EnsembleStats(x[:, 0] + mean_d, var, var.sqrt(), x.amin(1))


def ensemble_stats(rewards: torch.Tensor, ddof: int = 1, backend: str = "auto") -> EnsembleStats:
    """rewards [B, K] -> EnsembleStats(mean, var, std, min), each [B].
    The Triton kernel is forward-only: under autograd with rewards.requires_grad, "auto" takes the
    (differentiable) PyTorch path and "triton" raises."""
    _check(rewards, ddof)
    if resolve_backend(backend, rewards.device) == "triton":
        if torch.is_grad_enabled() and rewards.requires_grad:
            if backend == "triton":
                raise RuntimeError("ensemble_stats: the Triton kernel has no backward; use backend='torch' "
                                   "or call it under torch.no_grad()")
            return ensemble_stats_torch(rewards, ddof)
        return EnsembleStats(*triton_module("ensemble_stats").ensemble_stats(rewards, ddof))
    return ensemble_stats_torch(rewards, ddof)


# ---------------------------------------------------------------------------- fused into the head


def _check_head(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, ddof: int) -> None:
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden must be [B, H] and weight [K, H] with the same H; got {tuple(hidden.shape)} "
                         f"and {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must be [K] = [{weight.shape[0]}], got shape {tuple(bias.shape)}")
    for name, t in (("hidden", hidden), ("weight", weight)):
        if not t.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating tensor, got {t.dtype}")
    K = weight.shape[0]
    if ddof < 0 or K - ddof <= 0:
        raise ValueError(f"ensemble variance needs K > ddof ≥ 0 heads; got K = {K}, ddof = {ddof}")


def ensemble_head_stats_torch(hidden, weight, bias=None, ddof: int = 1) -> tuple[torch.Tensor, EnsembleStats]:
    """The PyTorch path (differentiable): the [B, K] head GEMM, then the shifted two-pass stats."""
    cdt = torch.float64 if torch.float64 in (hidden.dtype, weight.dtype) else torch.float32
    r = torch.nn.functional.linear(hidden.to(cdt), weight.to(cdt), None if bias is None else bias.to(cdt))
    return r, ensemble_stats_torch(r, ddof)


def ensemble_head_stats(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                        ddof: int = 1, backend: str = "auto") -> tuple[torch.Tensor, EnsembleStats]:
    """The K linear reward heads and their statistics in one pass: hidden [B, H] (pooled features),
    weight [K, H], bias [K] -> (rewards [B, K], EnsembleStats(mean, var, std, min) each [B]).
    rewards[b, k] = hidden[b] · weight[k] + bias[k] in float32 (float64 if an input is float64).
    Triton: one program per sample computes its K rewards block by block and folds each block
    into a running (count, mean, M2, min) with Chan et al.'s merge (Welford over K), so the
    rewards are written once and never re-read. Forward-only: under autograd the (differentiable)
    PyTorch path is taken for "auto" and "triton" raises."""
    _check_head(hidden, weight, bias, ddof)
    if resolve_backend(backend, hidden.device) == "triton":
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias)):
            if backend == "triton":
                raise RuntimeError("ensemble_head_stats: the Triton kernel has no backward; use backend='torch' "
                                   "or call it under torch.no_grad()")
            return ensemble_head_stats_torch(hidden, weight, bias, ddof)
        r, *stats = triton_module("ensemble_stats").ensemble_head_stats(hidden, weight, bias, ddof)
        return r, EnsembleStats(*stats)
    return ensemble_head_stats_torch(hidden, weight, bias, ddof)
