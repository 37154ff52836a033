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
