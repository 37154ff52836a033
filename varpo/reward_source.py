"""The one interface every reward source implements for the trainer and the evaluation:
texts in, a score s and its uncertainty σ² out (docs/design.md §1 "Uncertainty sources").

A leaf module: the sources (varpo.reward, varpo.judge, varpo.testbed) import it, and it imports
none of them; `varpo.scoring.build_scorer` is the factory that picks one from the config."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch


@dataclass
class Scores:
    score: torch.Tensor  # [B] float32: the reward s used by PPO (ensemble mean, or a draw from U[a, b])
    variance: torch.Tensor  # [B] float32: σ²(x, y), the uncertainty of s
    eval_reward: torch.Tensor | None = None  # [B]: the point estimate used for evaluation (mean / midpoint)
    valid: torch.Tensor | None = None  # [B] bool: False where a source dropped the sample by policy
    extras: dict = field(default_factory=dict)  # per-head rewards, interval bounds, ...

    def __post_init__(self):
        if self.score.shape != self.variance.shape or self.score.dim() != 1:
            raise ValueError(f"score {tuple(self.score.shape)} and variance {tuple(self.variance.shape)} must be equal 1-D")


@runtime_checkable
class Scorer(Protocol):
    """A reward source. Implementations: the multi-head ensemble (varpo.reward), interval judges
    (varpo.judge), the testbed's gold reward (σ² = 0), the oracle (gold + noise of known σ², varpo.reward.oracle)
    and a Hugging Face sequence-classification reward model (σ² = 0, varpo.reward.sequence_classifier)."""

    def score(self, prompts: list[str], responses: list[str]) -> Scores: ...
