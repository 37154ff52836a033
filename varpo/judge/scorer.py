"""Interval judges as a reward source: reward ~ U[a, b], variance (b − a)²/12, midpoint for evaluation.

Several judges are combined by `judge.combine`:
  mixture (default): the reward is drawn from the equal-weight mixture of the judges' U[a_j, b_j]
      (pick a judge uniformly, then draw from its interval). Mean = mean of the midpoints m_j;
      variance = mean_j (b_j − a_j)²/12 + mean_j (m_j − m̄)² (law of total variance, ddof=0), so
      judges that disagree make the reward *more* uncertain. Reported low/high: min a_j, max b_j.
  average: U[mean a_j, mean b_j], variance (b̄ − ā)²/12 (ignores disagreement between judges).
With one judge both are exactly U[a, b].

Draws are reproducible per sample whatever the order requests finish in: sample i of the k-th
call draws from a generator seeded by SHA-256(seed, k, i, prompt, response).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from ..config.judge import JudgeConfig
from ..reward_source import Scores
from .panel import JudgePanel, Verdicts


def sample_seed(seed: int, stream: int, index: int, prompt: str, response: str) -> int:
    h = hashlib.sha256()
    for part in (str(seed), str(stream), str(index), prompt, response):
        h.update(part.encode())
        h.update(b"\x00")  # separator: ("ab", "c") and ("a", "bc") hash differently
    return int.from_bytes(h.digest()[:8], "little")


def combine_intervals(low: np.ndarray, high: np.ndarray, rule: str) -> dict[str, np.ndarray]:
    """[B, J] intervals -> per-sample low, high, midpoint (the mean), variance of the combined reward."""
    mid_j, var_j = (low + high) / 2, (high - low) ** 2 / 12
    if rule == "mixture":
        mid = mid_j.mean(axis=1)
        var = var_j.mean(axis=1) + ((mid_j - mid[:, None]) ** 2).mean(axis=1)
        return {"low": low.min(axis=1), "high": high.max(axis=1), "midpoint": mid, "variance": var}
    if rule == "average":
        a, b = low.mean(axis=1), high.mean(axis=1)
        return {"low": a, "high": b, "midpoint": (a + b) / 2, "variance": (b - a) ** 2 / 12}
    raise ValueError(f"unknown combine rule {rule!r} (mixture | average)")


def draw_rewards(low: np.ndarray, high: np.ndarray, seeds: list[int], rule: str) -> np.ndarray:
    """One reward per sample from the combined distribution, with its own generator per sample."""
    out = np.empty(low.shape[0])
    for i, s in enumerate(seeds):
        rng = np.random.default_rng(s)
        if rule == "mixture":
            j = int(rng.integers(low.shape[1]))
            a, b = low[i, j], high[i, j]
        else:
            a, b = low[i].mean(), high[i].mean()
        out[i] = a + (b - a) * rng.random()
    return out


@dataclass
class JudgedBatch:
    """Everything known about a batch: per-judge intervals, the combination and the draws (float64)."""

    verdicts: Verdicts
    low: np.ndarray
    high: np.ndarray
    midpoint: np.ndarray
    variance: np.ndarray
    reward: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        return self.verdicts.valid

    @property
    def errors(self) -> list[str | None]:
        return self.verdicts.errors


class JudgeScorer:
    """`varpo.reward_source.Scorer` over interval judges (reward.type: judge). Dropped samples
    (on_invalid=drop) get valid=False and the know-nothing prior: score = eval_reward = (lo+hi)/2,
    variance = (hi−lo)²/12, so every tensor stays finite; consumers must mask them by `valid`."""

    def __init__(self, cfg: JudgeConfig):
        self.cfg = cfg
        self.panel = JudgePanel(cfg)
        self.calls = 0  # k in the draw seeds: the same text scored at two PPO steps gets two draws

    @classmethod
    def from_config(cls, cfg: JudgeConfig) -> JudgeScorer:
        return cls(cfg)

    @property
    def stats(self):
        return self.panel.stats

    def judge(self, prompts: list[str], responses: list[str], *, stream: int | None = None,
              names: list[str] | None = None, on_sample=None) -> JudgedBatch:
        if stream is None:
            stream, self.calls = self.calls, self.calls + 1
        v = self.panel.judge(prompts, responses, names=names, on_sample=on_sample)
        lo, hi = self.cfg.bounds
        valid = v.valid
        low = np.where(valid[:, None], v.low, lo)  # placeholders only where the sample is dropped
        high = np.where(valid[:, None], v.high, hi)
        comb = combine_intervals(low, high, self.cfg.combine)
        seeds = [sample_seed(self.cfg.seed, stream, i, p, r) for i, (p, r) in enumerate(zip(prompts, responses))]
        reward = draw_rewards(low, high, seeds, self.cfg.combine)
        prior_mid, prior_var = (lo + hi) / 2, (hi - lo) ** 2 / 12
        reward = np.where(valid, reward, prior_mid)
        comb["midpoint"] = np.where(valid, comb["midpoint"], prior_mid)
        comb["variance"] = np.where(valid, comb["variance"], prior_var)
        return JudgedBatch(verdicts=v, reward=reward, **comb)

    def score(self, prompts: list[str], responses: list[str]) -> Scores:
        b = self.judge(prompts, responses)

        def t(x):
            return torch.as_tensor(x, dtype=torch.float32)

        return Scores(
            score=t(b.reward), variance=t(b.variance), eval_reward=t(b.midpoint),
            valid=torch.as_tensor(b.valid, dtype=torch.bool),
            extras={"low": t(b.low), "high": t(b.high), "judge_low": t(b.verdicts.low),
                    "judge_high": t(b.verdicts.high), "errors": b.errors},
        )

    def stats_summary(self) -> list[dict]:
        return [s.summary() for s in self.panel.stats]

    def close(self) -> None:
        self.panel.close()
