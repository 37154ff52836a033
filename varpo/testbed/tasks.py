"""The gold reward of each testbed task (`testbed.task`): the default sentiment task's (gold.py)
or the over-optimization task's (overopt.py), as a function and as a reward source."""
from __future__ import annotations

from functools import partial

import torch

from ..reward_source import Scores
from .gold import gold_reward
from .overopt import overopt_gold_reward

TASKS = ("sentiment", "overopt")


def gold_fn(task: str = "sentiment", threshold: int = 3):
    """The gold reward function (prompts, responses) → list of floats of a testbed task
    (`testbed.task`, `testbed.overopt_threshold`)."""
    if task == "sentiment":
        return gold_reward
    if task == "overopt":
        return partial(overopt_gold_reward, threshold=threshold)
    raise ValueError(f"testbed.task must be 'sentiment' or 'overopt', got {task!r}")


def task_gold(cfg):
    """The gold reward function of a TestbedConfig's task."""
    return gold_fn(cfg.task, cfg.overopt_threshold)


class GoldScorer:
    """The gold reward as a `varpo.reward_source.Scorer`: exact, so σ² = 0 and eval_reward = score."""

    def __init__(self, task: str = "sentiment", threshold: int = 3):
        self.reward = gold_fn(task, threshold)

    def score(self, prompts: list[str], responses: list[str]) -> Scores:
        s = torch.tensor(self.reward(prompts, responses), dtype=torch.float32)
        return Scores(score=s, variance=torch.zeros_like(s), eval_reward=s.clone())
