"""Per-head rewards [B, K] → the ensemble's statistics and its score aggregations (docs/design.md §1
"Uncertainty sources"). Pure tensor functions; the head axis is the last one.

Conventions
- variance over heads uses `ddof` delta degrees of freedom: Σ_k (r_k − mean)² / (K − ddof). The
  default ddof = 1 is the unbiased sample variance. When K ≤ ddof (e.g. one head with ddof = 1) the
  spread is not measurable and σ² is defined as 0, so a single-head model acts as a certain one.
- "min" is the worst case over heads; "mean_minus_var" is mean − λ·σ² and "mean_minus_std" is the
  lower confidence bound mean − k·σ (σ = sqrt of the same ddof variance).
"""
from __future__ import annotations

import torch

AGGREGATIONS = ("mean", "median", "min", "mean_minus_var", "mean_minus_std")


def head_mean(rewards: torch.Tensor) -> torch.Tensor:
    """[..., K] → [...]: the ensemble reward."""
    return rewards.mean(-1)


def head_variance(rewards: torch.Tensor, ddof: int = 1) -> torch.Tensor:
    """[..., K] → [...]: variance over heads with `ddof` (0 where K ≤ ddof; see module doc)."""
    if ddof < 0:
        raise ValueError(f"ddof must be ≥ 0, got {ddof}")
    k = rewards.shape[-1]
    if k <= ddof:
        return torch.zeros(rewards.shape[:-1], dtype=rewards.dtype, device=rewards.device)
    centred = rewards - rewards.mean(-1, keepdim=True)
    return centred.square().sum(-1) / (k - ddof)


def head_median(rewards: torch.Tensor) -> torch.Tensor:
    """[..., K] → [...]: the median over heads; for even K the mean of the two middle values
    (numpy's convention, not torch.median's lower one)."""
    s = rewards.sort(-1).values
    k = s.shape[-1]
    if k % 2:
        return s[..., k // 2]
    return 0.5 * (s[..., k // 2 - 1] + s[..., k // 2])


def aggregate(rewards: torch.Tensor, how: str = "mean", *, ddof: int = 1, lam: float = 1.0, k: float = 1.0) -> torch.Tensor:
    """[..., K] → [...]: the score s of each sample under the aggregation `how` (AGGREGATIONS)."""
    if how == "mean":
        return head_mean(rewards)
    if how == "median":
        return head_median(rewards)
    if how == "min":
        return rewards.min(-1).values
    if how == "mean_minus_var":
        return head_mean(rewards) - lam * head_variance(rewards, ddof)
    if how == "mean_minus_std":
        return head_mean(rewards) - k * head_variance(rewards, ddof).sqrt()
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {how!r}")


def ensemble_stats(rewards: torch.Tensor, how: str = "mean", *, ddof: int = 1, lam: float = 1.0,
                   k: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[B, K] → (score [B], variance [B], mean [B])."""
    return aggregate(rewards, how, ddof=ddof, lam=lam, k=k), head_variance(rewards, ddof), head_mean(rewards)


def head_mean_var(rewards: torch.Tensor, ddof: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """[..., K] → (mean [...], variance [...] with `ddof`)."""
    return head_mean(rewards), head_variance(rewards, ddof)
