"""Covariance-weighted per-token KL (docs/design.md §1, eq. 5–6): the σ²-weighted penalty of
variance-aware PPO and its per-sequence sums, in one pass.

Conventions: logp, ref_logp, mask [B, T]; weights [B] (w = f(σ²), see varpo.ppo.core.variance_weights).
r = logp − ref_logp; k1 = r, k2 = ½ r², k3 = e^{−r} − 1 + r (Schulman 2020). mask: 1 = real token,
0 = padding (any numeric or bool dtype; nonzero counts as 1). Outputs are float32 (float64 when
logp is float64); masked positions are exactly 0 even where the inputs are NaN/inf there.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .dispatch import resolve_backend, triton_module

KL_ESTIMATORS = ("k1", "k2", "k3")


class WeightedKL(NamedTuple):
    kl: torch.Tensor  # [B, T] per-token KL estimate, 0 where masked
    weighted: torch.Tensor  # [B, T] w_b · kl, 0 where masked (the reward penalty is −β · weighted)
    kl_sum: torch.Tensor  # [B] Σ_t mask · kl
    weighted_sum: torch.Tensor  # [B] Σ_t mask · w · kl


def _cdt(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check(logp, ref_logp, mask, weights, estimator) -> None:
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r} (expected one of {', '.join(KL_ESTIMATORS)})")
    if logp.dim() != 2:
        raise ValueError(f"logp must be [B, T], got shape {tuple(logp.shape)}")
    for name, t in (("ref_logp", ref_logp), ("mask", mask)):
        if tuple(t.shape) != tuple(logp.shape):
            raise ValueError(f"{name} shape {tuple(t.shape)} must equal logp shape {tuple(logp.shape)} ([B, T])")
    if tuple(weights.shape) != (logp.shape[0],):
        raise ValueError(f"weights must be [B] = [{logp.shape[0]}], got shape {tuple(weights.shape)}")
    for name, t in (("logp", logp), ("ref_logp", ref_logp), ("weights", weights)):
        if not t.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating tensor, got {t.dtype}")


def k3_small_threshold(dtype: torch.dtype) -> float:
    """|r| below which k3 uses its Taylor series: expm1(−r) + r still cancels to a relative error
    ≈ 2·eps/|r| (1e-3 at r = 1e-4 in float32); the series through r⁶ errs by |r|⁵/2520. The
    crossover is where both are about equal."""
    return 1e-2 if dtype == torch.float64 else 1e-1


def k3_taylor(r):
    """e^{−r} − 1 + r = r²/2 − r³/6 + r⁴/24 − r⁵/120 + r⁶/720 − …"""
    return r * r * (0.5 + r * (-1.0 / 6.0 + r * (1.0 / 24.0 + r * (-1.0 / 120.0 + r * (1.0 / 720.0)))))


def kl_from_log_ratio(r: torch.Tensor, estimator: str) -> torch.Tensor:
    if estimator == "k1":
        return r
    if estimator == "k2":
        return 0.5 * r * r
    return torch.where(r.abs() < k3_small_threshold(r.dtype), k3_taylor(r), torch.expm1(-r) + r)


def weighted_kl_torch(logp, ref_logp, mask, weights, estimator: str = "k1") -> WeightedKL:
    """The PyTorch path (differentiable): elementwise ops on [B, T], nothing larger."""
    cdt = _cdt(logp)
    m = mask != 0
    kl = kl_from_log_ratio(logp.to(cdt) - ref_logp.to(cdt), estimator)
    zero = torch.zeros((), dtype=cdt, device=logp.device)
    kl = torch.where(m, kl, zero)
    weighted = torch.where(m, weights.to(cdt)[:, None] * kl, zero)
    return WeightedKL(kl, weighted, kl.sum(1), weighted.sum(1))


def weighted_kl(
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    weights: torch.Tensor,
    estimator: str = "k1",
    backend: str = "auto",
) -> WeightedKL:
    """Per-token KL, σ²-weighted penalty and their per-sequence masked sums, in one kernel.
    Returns WeightedKL(kl [B, T], weighted [B, T], kl_sum [B], weighted_sum [B]); differentiable
    w.r.t. logp, ref_logp and weights on both backends."""
    _check(logp, ref_logp, mask, weights, estimator)
    if resolve_backend(backend, logp.device) == "triton":
        return WeightedKL(*triton_module("weighted_kl").TritonWeightedKL.apply(logp, ref_logp, mask, weights, estimator))
    return weighted_kl_torch(logp, ref_logp, mask, weights, estimator)
