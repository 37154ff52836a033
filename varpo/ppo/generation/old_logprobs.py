"""Who computes a rollout's old log-probs: the rollout engine, when its numbers are the trainer's own
definition, or an actor forward (one rule for the vLLM engine and the phases' FLOP count)."""
from __future__ import annotations


def old_logprobs_from_rollout(cfg) -> tuple[bool, str]:
    """Whether the rollout engine gives the old log-probs (log π_θold of each sampled token at the
    sampling temperature, before min-tokens/top-k/top-p: the trainer's own definition, see
    varpo.ppo.forward.response_logits), and why (not). False: the trainer runs an actor forward.

    hf: read off generate's logits (varpo.ppo.generation.logprobs). vllm: the engine's raw log-probs,
    which vLLM computes before its temperature, so only at temperature 1; and not with
    importance_correction=tis, whose weights compare the trainer's own log-probs with the engine's."""
    gen = cfg.generation
    if not gen.logprobs_from_generate:
        return False, "generation.logprobs_from_generate=false"
    if gen.backend != "vllm":
        return True, "read off HF generate's logits"
    if gen.vllm.importance_correction != "none":
        return False, (f"generation.vllm.importance_correction={gen.vllm.importance_correction} weighs by the "
                       "trainer's own log-probs against the engine's")
    if gen.temperature != 1.0:
        return False, (f"generation.temperature={gen.temperature}: vLLM's raw log-probs are at temperature 1 "
                       "and its processed ones include min-tokens/top-k/top-p masking")
    return True, "vLLM's raw log-probs of the sampled tokens"
