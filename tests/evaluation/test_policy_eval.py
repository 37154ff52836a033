"""Per-policy evaluation: several samples per prompt and the evaluation noise they measure."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from varpo.config import GenerationConfig
from varpo.evaluation.policy_eval import aggregate_rewards, evaluate_policy


def _loop_reference(r: np.ndarray) -> dict:
    """Plain float64 loops: per-prompt means of the finite samples, their mean and std over the
    prompts that have one, and se² = mean over prompts with ≥ 2 samples of s²_p/k_p, / n_kept."""
    means, ratios = [], []
    for row in r:
        x = [v for v in row if not np.isnan(v)]
        if not x:
            continue
        m = sum(x) / len(x)
        means.append(m)
        if len(x) >= 2:
            ratios.append(sum((v - m) ** 2 for v in x) / (len(x) - 1) / len(x))
    n = len(means)
    mu = sum(means) / n
    sd = (sum((m - mu) ** 2 for m in means) / (n - 1)) ** 0.5 if n > 1 else 0.0
    se = (sum(ratios) / len(ratios) / n) ** 0.5 if ratios else None
    return {"reward": mu, "reward_std_over_prompts": sd, "reward_se": se,
            "n_scored": int(np.sum(~np.isnan(r)))}


@pytest.mark.parametrize("seed", range(6))
def test_aggregate_matches_loops(seed):
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(2, 40)), int(rng.integers(1, 6))
    r = rng.normal(rng.normal(size=(n, 1)), 0.3, size=(n, k))
    r[rng.random((n, k)) < 0.15] = np.nan  # dropped by the reward source
    r[0] = rng.normal(size=k)  # at least one prompt fully scored
    got = aggregate_rewards(torch.tensor(r))
    want = _loop_reference(r)
    assert got["n_scored"] == want["n_scored"]
    for key in ("reward", "reward_std_over_prompts"):
        assert got[key] == pytest.approx(want[key], rel=1e-12, abs=1e-15)
    if want["reward_se"] is None:
        assert got["reward_se"] is None
    else:
        assert got["reward_se"] == pytest.approx(want["reward_se"], rel=1e-12)


def test_one_sample_per_prompt_has_no_noise_estimate():
    r = torch.tensor([[0.5], [0.25], [float("nan")], [1.0]], dtype=torch.float64)
    got = aggregate_rewards(r)
    assert got["reward"] == pytest.approx(0.5833333333333334) and got["reward_se"] is None and got["n_scored"] == 3


def test_noise_estimate_is_unbiased_for_a_known_sampling_noise():
    """Rewards = prompt effect + N(0, τ²) sampling noise: reward_se² must estimate τ²/(k·n)."""
    rng = np.random.default_rng(0)
    n, k, tau = 200, 4, 0.3
    est = [aggregate_rewards(torch.tensor(rng.normal(rng.normal(size=(n, 1)), tau, size=(n, k))))["reward_se"] ** 2
           for _ in range(200)]
    assert np.mean(est) == pytest.approx(tau**2 / (k * n), rel=0.03)


def test_evaluate_policy_samples_each_prompt_k_times(testbed):
    tiny_policy = str(testbed.model_path)
    prompts = ["the cat sat", "a dog ran on", "the log"]
    seen: list[str] = []

    def reward(ps, rs):
        seen.extend(ps)
        return [float(len(r.split())) for r in rs]

    gen = GenerationConfig(max_new_tokens=6)
    one = evaluate_policy(tiny_policy, prompts, reward, gen, seed=5)
    assert seen == prompts and one["samples_per_prompt"] == 1 and one["reward_se"] is None
    seen.clear()
    three = evaluate_policy(tiny_policy, prompts, reward, gen, seed=5, samples_per_prompt=3)
    assert seen == [p for p in prompts for _ in range(3)]
    assert three["n_scored"] == 9 and three["reward_se"] is not None and three["reward_se"] >= 0
    with pytest.raises(ValueError, match="samples_per_prompt"):
        evaluate_policy(tiny_policy, prompts, reward, gen, seed=5, samples_per_prompt=0)
