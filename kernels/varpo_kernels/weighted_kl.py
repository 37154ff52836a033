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
    """The per-token KL estimators of KL(π‖π_ref) from r = log π − log π_ref (Schulman 2020):
    k1 = r (unbiased, can be negative), k2 = ½r² (biased, low variance, ≥ 0), k3 = e^{−r} − 1 + r
    (unbiased, ≥ 0; its Taylor series below k3_small_threshold, where the closed form cancels).
    The one definition every path uses: this function on PyTorch tensors (varpo.ppo.core.kl_per_token,
    the chunked twins), `_kl_estimate` in triton_kernels/weighted_kl.py inside the Triton kernels."""
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r} (expected one of {', '.join(KL_ESTIMATORS)})")
    if estimator == "k1":
        return r
    if estimator == "k2":
        return 0.5 * r * r
    return torch.where(r.abs() < k3_small_threshold(r.dtype), k3_taylor(r), torch.expm1(-r) + r)


def kl_derivative(r: torch.Tensor, estimator: str) -> torch.Tensor:
    """d kl / d r of `kl_from_log_ratio` (the Triton paths' backward): 1, r, 1 − e^{−r}."""
    if estimator == "k1":
        return torch.ones_like(r)
    if estimator == "k2":
        return r
    return -torch.expm1(-r)


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


# ---------------------------------------------------------------------------- from logits, fused

LOGITS_OF = ("reference", "policy")


class FusedKL(NamedTuple):
    logp: torch.Tensor  # [B, T] log p(ids) under the given logits (every position, masked or not)
    kl: torch.Tensor  # [B, T] per-token KL estimate of log π − log π_ref, 0 where masked
    weighted: torch.Tensor  # [B, T] w_b · kl, 0 where masked
    kl_sum: torch.Tensor  # [B]
    weighted_sum: torch.Tensor  # [B]


def _check_fused(logits, ids, other_logp, mask, weights, estimator, logits_of) -> None:
    if logits_of not in LOGITS_OF:
        raise ValueError(f"logits_of must be one of {LOGITS_OF} (whose logits these are), got {logits_of!r}")
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, T, V], got shape {tuple(logits.shape)}")
    if tuple(other_logp.shape) != tuple(logits.shape[:2]):
        raise ValueError(f"other_logp shape {tuple(other_logp.shape)} must equal logits.shape[:2] = "
                         f"{tuple(logits.shape[:2])} ([B, T])")
    _check(other_logp, other_logp, mask, weights, estimator)


def weighted_kl_from_logits(
    logits: torch.Tensor,
    ids: torch.Tensor,
    other_logp: torch.Tensor,
    mask: torch.Tensor,
    weights: torch.Tensor,
    estimator: str = "k1",
    *,
    logits_of: str = "reference",
    backend: str = "auto",
    chunk_size: int | None = None,
) -> FusedKL:
    """The reward-shaping pass of (variance-aware) PPO in one sweep over the logits: log p(ids)
    of the model whose logits [B, T, V] these are, the per-token KL estimator of
    r = log π − log π_ref against the other model's log-probs `other_logp` [B, T], its σ²-weighting
    by `weights` [B] and the masking, without ever materialising a [B, T, V] log-softmax.

    logits_of="reference": the logits are π_ref's, other_logp are the policy's (r = other − logp);
    logits_of="policy": the logits are π's, other_logp are the reference's (r = logp − other).
    Returns FusedKL(logp, kl, weighted, kl_sum, weighted_sum); differentiable w.r.t. logits,
    other_logp and weights on both backends. Triton on CUDA: one program per token streams the
    vocabulary once (online log-sum-exp) and writes logp, kl and w·kl; chunked PyTorch elsewhere:
    rows of logits in chunks (`chunk_size` as in selective_log_softmax), then the [B, T] KL."""
    from .selective_log_softmax import _check_inputs, selective_log_softmax

    _check_inputs(logits, ids)
    _check_fused(logits, ids, other_logp, mask, weights, estimator, logits_of)
    if resolve_backend(backend, logits.device) == "triton":
        fn = triton_module("weighted_kl").TritonWeightedKLFromLogits.apply
        x = logits if logits.stride(-1) == 1 else logits.contiguous()
        return FusedKL(*fn(x, ids.long(), other_logp, mask, weights, estimator, logits_of))
    logp = selective_log_softmax(logits, ids, backend="torch", chunk_size=chunk_size)
    pol, ref = (other_logp, logp) if logits_of == "reference" else (logp, other_logp)
    return FusedKL(logp, *weighted_kl_torch(pol, ref, mask, weights, estimator))
