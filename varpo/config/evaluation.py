"""Policy populations (paper Algorithms 2–4): which methods, how many seeds, the true reward."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from .core import Section

DEFAULT_METHODS = {
    # vanilla PPO: every sample's KL penalty has weight 1
    "vanilla": ["ppo.variance.weighting=none"],
    # variance-aware PPO: weight σ²/mean(σ²) over the batch, so β keeps its meaning on average
    "variance_aware": ["ppo.variance.weighting=batch_mean"],
}


# the tests `varpo stats` can make primary (varpo/evaluation/stats.py computes every one of them; all
# one-sided in the paper's direction: the baseline, vanilla, is the more variable / riskier one)
PRIMARY_TESTS = ("brown_forsythe", "f_test", "runaway_fisher", "risk_fisher", "mcnemar_runaway", "mcnemar_risk",
                 "wilcoxon", "welch")


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
    primary_test: list[Literal[PRIMARY_TESTS]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["brown_forsythe"],
        description="the test(s) a population is judged by, declared before it runs; `varpo stats` reports them first "
        "(with several, also Holm-adjusted p). brown_forsythe: Levene's test centred on the median, H1 var(vanilla) > "
        "var(other); f_test: the same by the F ratio (exact only for normal rewards); runaway_fisher / risk_fisher: "
        "Fisher's exact test, H1 the baseline has the larger run-away rate / risk; mcnemar_runaway / mcnemar_risk: "
        "the exact McNemar test on seed-paired policies; wilcoxon: signed rank on seed-paired gold, H1 the other "
        "method's gold is higher; welch: Welch's t-test of means, two-sided",
    )
    runaway_margin: float = Field(
        0.15, ge=0.0, description="a policy has run away when its true reward is below the reference runs' mean by more "
        "than this (in reward units); `varpo stats` reports the run-away rate per method and Fisher's exact test",
    )

    @field_validator("primary_test")
    @classmethod
    def _some_primary(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("declare at least one primary test")
        if len(set(v)) != len(v):
            raise ValueError(f"a primary test is listed twice: {v}")
        return v
