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


def test_sequence_kl_matches_a_float64_token_loop(testbed):
    """sequence_kl on sampled responses against a per-sample loop: full forwards of both models on
    each unpadded prompt+response, log-softmax in float64, summed over the real response tokens."""
    from transformers import AutoModelForCausalLM

    from varpo.evaluation.policy_eval import sequence_kl
    from varpo.models.loading import load_tokenizer
    from varpo.ppo.generation.hf import generate
    from varpo.ppo.tokens import tokenize_prompts

    path = str(testbed.model_path)
    tok = load_tokenizer(path)
    ref = AutoModelForCausalLM.from_pretrained(path).eval()
    pol = AutoModelForCausalLM.from_pretrained(path).eval()
    torch.manual_seed(3)
    with torch.no_grad():
        for prm in pol.parameters():
            prm.add_(0.05 * torch.randn_like(prm))
        ids, mask, _ = tokenize_prompts(tok, ["the cat sat", "a dog ran on the", "the log"], 16, "cpu")
        exp = generate(pol, tok, ids, mask, GenerationConfig(max_new_tokens=7, temperature=0.8))
        got = sequence_kl(pol, ref, exp, 0.8)
        for b in range(ids.shape[0]):
            p_ids = ids[b][mask[b].bool()]
            r_ids = exp.response_ids[b][exp.response_mask[b].bool()]
            full = torch.cat([p_ids, r_ids])[None]
            want = 0.0
            for model, sign in ((pol, 1.0), (ref, -1.0)):
                logp = torch.log_softmax(model(input_ids=full).logits[0].double() / 0.8, -1)
                want += sign * sum(float(logp[len(p_ids) + t - 1, r_ids[t]]) for t in range(len(r_ids)))
            # float32 log-probs summed over the response: rounding grows with the KL's size (24.8 here)
            assert float(got[b]) == pytest.approx(want, rel=2e-6, abs=1e-5)
        assert torch.all(sequence_kl(ref, ref, exp, 0.8) == 0)


def test_evaluate_policy_reports_kl_against_the_reference(testbed):
    path = str(testbed.model_path)
    gen = GenerationConfig(max_new_tokens=5)
    same = evaluate_policy(path, ["the cat", "a dog"], lambda p, r: [0.0] * len(r), gen, seed=1,
                           samples_per_prompt=2, reference_path=path)
    assert same["kl"] == 0.0 and same["kl_se"] == 0.0
    plain = evaluate_policy(path, ["the cat", "a dog"], lambda p, r: [0.0] * len(r), gen, seed=1, samples_per_prompt=2)
    assert "kl" not in plain and plain["mean_response_chars"] == same["mean_response_chars"]
