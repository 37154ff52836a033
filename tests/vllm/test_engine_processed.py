"""The vLLM engine when the trainer recomputes the old log-probs (here: temperature 0.7, whose
raw log-probs vLLM computes before its temperature): the engine hands back the log-probs of the
distribution it sampled from (processed: temperature, EOS masked for the first min_new_tokens
positions) as `rollout_logp`, and no old log-probs. Its own file: an engine of its own (~40 s),
inline in this pytest process (scripts/test_vllm.sh runs a process per file)."""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.vllm

TOL = 5e-3  # as tests/vllm/test_engine.py


def test_processed_logprobs_when_the_trainer_recomputes(tiny_llama, prompts):
    from transformers import AutoModelForCausalLM

    from varpo.config import load_config
    from varpo.models.loading import load_tokenizer
    from varpo.ppo.forward import response_logits
    from varpo.ppo.generation import build_rollout_engine
    from varpo.ppo.tokens import tokenize_prompts

    cfg = load_config(None, [
        f"model.policy_path={tiny_llama}", "generation.backend=vllm", "generation.max_new_tokens=8",
        "generation.min_new_tokens=2", "generation.max_prompt_len=8", "generation.temperature=0.7"])
    tok = load_tokenizer(tiny_llama)
    actor = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    ids, mask, _ = tokenize_prompts(tok, prompts, cfg.generation.max_prompt_len, "cpu")
    engine = build_rollout_engine(cfg, actor, tok, tiny_llama, rank=0, world=1)
    assert not engine.inverse_cdf, "at temperature 0.7 vLLM's own sampler draws (varpo.ppo.generation.vllm_sampler)"
    try:
        ro = engine.generate(ids, mask, step=2)
    finally:
        engine.close()
    assert ro.logp is None and ro.rollout_logp is not None

    with torch.no_grad():
        logits = response_logits(actor, ro, cfg.generation.temperature).float()
    n_min = cfg.generation.min_new_tokens
    masked = logits.clone()
    masked[:, :n_min, tok.eos_token_id] = float("-inf")

    def of_sampled(x):
        return x.log_softmax(-1).gather(-1, ro.response_ids[..., None]).squeeze(-1)

    m = ro.response_mask.float()
    diff = (ro.rollout_logp - of_sampled(masked)).abs() * m
    assert float(diff.max()) < TOL
    # the masking is really in them: at the first positions the unmasked distribution differs
    plain_gap = ((ro.rollout_logp - of_sampled(logits)).abs() * m)[:, :n_min]
    assert float(plain_gap.max()) > 10 * TOL
