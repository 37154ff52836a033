"""Policy populations (paper Algorithms 2–4): which methods, how many seeds, the true reward."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from .core import Section

DEFAULT_METHODS = {
    # vanilla PPO: every sample's KL penalty has weight 1
    "vanilla": ["ppo.variance.weighting=none"],
    # variance-aware PPO: weight σ²/mean(σ²) over the batch, so β keeps its meaning on average
    "variance_aware": ["ppo.variance.weighting=batch_mean"],
}


class EvaluationConfig(Section):
    num_eval_prompts: int = Field(64, ge=1, description="evaluation prompts per policy")
    methods: dict[str, list[str]] = Field(
        default_factory=lambda: {k: list(v) for k, v in DEFAULT_METHODS.items()},
        description="method name -> config overrides that define it (e.g. a baseline aggregation)",
    )
    true_reward: Literal["gold", "reward_model", "judge"] = Field(
        "gold", description="what a policy is evaluated with: the testbed's gold reward, a reward-model "
        "folder's ensemble mean (true_reward_path), or the judges' interval midpoint",
    )
    true_reward_path: str | None = Field(None, description="reward-model folder when true_reward=reward_model")
    workers: int | None = Field(None, ge=1, description="parallel worker processes; None: one per core (at most seeds)")
    eval_batch_size: int = Field(64, ge=1, description="prompts per generation batch during evaluation")
    samples_per_prompt: int = Field(
        1, ge=1, description="responses sampled per evaluation prompt (1: the paper). The variance of a method's "
        "per-policy rewards includes this sampling noise, which is the same for every method and dilutes the "
        "F-test; with ≥ 2 each policy's noise is estimated (reward_se) and `varpo stats` reports it",
    )
