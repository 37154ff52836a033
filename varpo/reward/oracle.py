"""The oracle reward source (`reward.type=oracle`): Assumption 2.1 of the paper made true, so that
variance-aware PPO can be tested apart from any reward model.

    r̂(x, y) = gold(x, y) + σ(y) · z(y),   σ(y) = σ_min · (σ_max / σ_min) ** min(1, |c(y)| / (τ + 1))

c(y) = P − N is the response's net count of positive adjectives (the over-optimization task's
feature, varpo/testbed/overopt.py) and τ = testbed.overopt_threshold: σ grows geometrically from
σ_min at neutral responses to σ_max at and past the region the reference LM hardly reaches (on the
reference's samples σ² spans more than an order of magnitude). z ~ N(0, 1) is drawn once per cell
(P, N) of the response's evaluative counts and per noise seed, so the noise is a deterministic
function of (x, y), independent across cells, and learnable by a policy: like a reward model's
error it can be exploited, and a policy that moves into a cell whose z happens to be high is
over-optimizing. The scorer reports σ²(y) exactly.
"""
from __future__ import annotations

import numpy as np
import torch

from ..reward_source import Scores


def oracle_sigma(c: int, sigma_min: float, sigma_max: float, threshold: int) -> float:
    """σ as a function of the net positive count c (formula above)."""
    return sigma_min * (sigma_max / sigma_min) ** min(1.0, abs(c) / (threshold + 1))


def cell_noise(seed: int, p: int, n: int) -> float:
    """z of the cell (P, N) under a noise seed: a standard normal, the same on every call."""
    return float(np.random.default_rng([abs(seed), int(seed < 0), p, n]).standard_normal())


class OracleScorer:
    """score = gold + σ·z, variance = σ² (exact), eval_reward = score; extras: gold, z, c."""

    def __init__(self, gold, *, sigma_min: float, sigma_max: float, threshold: int, noise_seed: int):
        self.gold, self.sigma_min, self.sigma_max = gold, sigma_min, sigma_max
        self.threshold, self.noise_seed = threshold, noise_seed

    @classmethod
    def from_config(cls, cfg) -> OracleScorer:
        from ..testbed import task_gold

        o = cfg.reward.oracle
        if cfg.data.prompts_path is not None or cfg.model.policy_path is not None:
            from ..config import ConfigError

            raise ConfigError("reward.type=oracle: needs the testbed's gold reward (unset data.prompts_path and "
                              "model.policy_path, or choose another reward.type)")
        return cls(task_gold(cfg.testbed), sigma_min=o.sigma_min, sigma_max=o.sigma_max,
                   threshold=cfg.testbed.overopt_threshold, noise_seed=cfg.seed if o.noise_seed is None else o.noise_seed)

    def parts(self, responses: list[str]) -> tuple[list[int], list[float], list[float]]:
        """Per response: c, σ and z."""
        from ..testbed.gold import evaluative_counts, words_of

        cs, sig, z = [], [], []
        for y in responses:
            p, n = evaluative_counts(words_of(y))
            cs.append(p - n)
            sig.append(oracle_sigma(p - n, self.sigma_min, self.sigma_max, self.threshold))
            z.append(cell_noise(self.noise_seed, p, n))
        return cs, sig, z

    def score(self, prompts: list[str], responses: list[str]) -> Scores:
        g = torch.tensor(self.gold(prompts, responses), dtype=torch.float64)
        cs, sig, z = self.parts(responses)
        s = torch.tensor(sig, dtype=torch.float64)
        score = (g + s * torch.tensor(z, dtype=torch.float64)).float()
        return Scores(score=score, variance=(s * s).float(), eval_reward=score.clone(),
                      extras={"gold": g.float(), "z": torch.tensor(z), "c": torch.tensor(cs)})


__all__ = ["OracleScorer", "cell_noise", "oracle_sigma"]
