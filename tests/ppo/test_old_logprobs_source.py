"""Who computes the rollout's old log-probs (varpo.ppo.generation.old_logprobs_from_rollout): the
rollout engine where its numbers are the trainer's definition, an actor forward otherwise; and the
reference phase's FLOP count follows the same rule (the actor forward is counted exactly when it
runs). The engines themselves: tests/vllm/test_engine.py (vLLM), tests/ppo/test_generation.py (HF)."""
from __future__ import annotations

import pytest


@pytest.mark.parametrize("overrides, gives, why", [
    (["generation.backend=vllm"], True, "raw log-probs"),
    (["generation.backend=vllm", "generation.temperature=0.7"], False, "temperature=0.7"),
    (["generation.backend=vllm", "generation.vllm.importance_correction=tis"], False, "importance_correction=tis"),
    (["generation.backend=vllm", "generation.logprobs_from_generate=false"], False, "logprobs_from_generate=false"),
    (["generation.backend=hf"], True, "HF generate"),
    (["generation.backend=hf", "generation.temperature=0.7"], True, "HF generate"),
    (["generation.backend=hf", "generation.logprobs_from_generate=false"], False, "logprobs_from_generate=false"),
], ids=["vllm", "vllm-temperature", "vllm-tis", "vllm-off", "hf", "hf-temperature", "hf-off"])
def test_who_gives_the_old_logprobs(overrides, gives, why):
    from varpo.config import load_config
    from varpo.ppo.generation import old_logprobs_from_rollout
    from varpo.ppo.phase_flops import actor_forward_at_rollout

    cfg = load_config(None, overrides)
    got, reason = old_logprobs_from_rollout(cfg)
    assert got is gives and why in reason
    assert actor_forward_at_rollout(cfg) is (not gives)


@pytest.mark.parametrize("overrides, inverse", [
    ([], True),
    (["generation.sampler=multinomial"], False),
    (["generation.temperature=0.7"], False),
    (["generation.top_k=5"], False),
    (["generation.top_p=0.9"], False),
    (["generation.vllm.importance_correction=tis"], False),
    (["generation.logprobs_from_generate=false"], False),
], ids=["default", "multinomial", "temperature", "top-k", "top-p", "tis", "forward"])
def test_when_vllm_draws_by_inverse_transform(overrides, inverse):
    """vLLM rollouts draw by inverse transform only where the draw is from softmax(logits) and the
    engine's raw log-probs are the old log-probs (varpo.ppo.generation.vllm_sampler)."""
    from varpo.config import load_config
    from varpo.ppo.generation import old_logprobs_from_rollout
    from varpo.ppo.generation.vllm_sampler import uses_inverse_cdf

    cfg = load_config(None, ["generation.backend=vllm", *overrides])
    raw = old_logprobs_from_rollout(cfg)[0]
    assert uses_inverse_cdf(cfg.generation, raw) is inverse
    assert uses_inverse_cdf(cfg.generation, raw, cuda=True) is False  # a GPU engine keeps vLLM's sampler
