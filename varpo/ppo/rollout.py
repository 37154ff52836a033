"""Rollout: generate responses with the actor into a new `Experience`, then compute the per-token
quantities PPO needs (old log-probs, reference log-probs, values) on prompt+response sequences.

Layout (varpo.ppo.experience): prompts left-padded to P tokens, responses right-padded to T, so
response token t sits at absolute position P + t. Its log-prob and its value are read at position
P + t − 1 (the state before emitting it)."""
from __future__ import annotations

import torch

from ..config import GenerationConfig
from ..engines import generation_gather
from .experience import Experience


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Positions count real tokens only, so a left-padded prompt starts at position 0 — the same
    positions HF `generate` used when it sampled the response."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def response_mask_from_ids(response_ids: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask of real response tokens: everything up to and including the first EOS (all tokens
    when there is none). Tokens after the first EOS are padding, whatever their id."""
    is_eos = response_ids == eos_id
    has_eos = is_eos.any(-1)
    T = response_ids.shape[1]
    first = torch.where(has_eos, is_eos.int().argmax(-1), torch.full_like(has_eos, T - 1, dtype=torch.long))
    mask = torch.arange(T, device=response_ids.device)[None, :] <= first[:, None]
    return mask.long(), has_eos


def tokenize_prompts(tokenizer, prompts: list[str], max_len: int, device) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Left-pad and left-truncate; returns ids, mask and how many prompts were truncated."""
    full = tokenizer(prompts, add_special_tokens=True)["input_ids"]
    n_truncated = sum(len(ids) > max_len for ids in full)
    enc = tokenizer(prompts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    return enc["input_ids"].to(device), enc["attention_mask"].to(device), n_truncated


@torch.no_grad()
def generate(actor, tokenizer, prompt_ids, prompt_mask, gen: GenerationConfig) -> Experience:
    """Sample responses: the one place an `Experience` is created (its rollout fields). `actor` is a DeepSpeed engine or a bare HF model; under ZeRO-3 its
    parameters are gathered as `gen.zero3_gather` says (varpo.engines.generation_gather), and
    every rank must then call generate together."""
    from transformers import GenerationConfig as HFGen

    hf = HFGen(
        do_sample=True, max_new_tokens=gen.max_new_tokens, min_new_tokens=gen.min_new_tokens,
        temperature=gen.temperature, top_k=gen.top_k, top_p=gen.top_p,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    actor_module = getattr(actor, "module", actor)
    was_training = actor_module.training
    actor_module.eval()
    with generation_gather(actor, gen.zero3_gather, gen.zero3_gather_budget_mb) as synced_gpus:
        out = actor_module.generate(
            input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=hf, synced_gpus=synced_gpus
        )
    actor_module.train(was_training)
    response = out[:, prompt_ids.shape[1]:]
    if response.shape[1] == 0:  # every sequence stopped at once; keep one (pad) position
        response = torch.full_like(prompt_ids[:, :1], tokenizer.pad_token_id)
    mask, has_eos = response_mask_from_ids(response, tokenizer.eos_token_id)
    response = torch.where(mask.bool(), response, torch.full_like(response, tokenizer.pad_token_id))
    return Experience(prompt_ids, prompt_mask, response, mask, has_eos)


def decode_responses(tokenizer, exp: Experience) -> list[str]:
    """The real tokens of each response as text (special tokens removed)."""
    return tokenizer.batch_decode([r[m.bool()] for r, m in zip(exp.response_ids, exp.response_mask)],
                                  skip_special_tokens=True)


def response_logits(model, rollout: Experience, temperature: float) -> torch.Tensor:
    """Logits [B, T, V] that predicted each response token, divided by the sampling temperature
    so that log-probs are those of the distribution the tokens were drawn from. Only the T + 1
    last positions go through the LM head (`logits_to_keep`): prompt positions predict nothing
    PPO uses, and the head over the vocabulary is a large share of a forward."""
    seq, att = rollout.sequences, rollout.attention_mask
    T = rollout.response_ids.shape[1]
    keep = {"logits_to_keep": T + 1} if _takes_logits_to_keep(model) else {}
    out = model(input_ids=seq, attention_mask=att, position_ids=position_ids_from_mask(att), **keep)
    logits = out.logits[:, -(T + 1) : -1]  # position P − 1 + t predicts response token t
    return logits / temperature if temperature != 1.0 else logits


def _takes_logits_to_keep(model) -> bool:
    """HF causal LMs (transformers ≥ 4.50) accept `logits_to_keep`; a custom module may not."""
    import inspect

    module = getattr(model, "module", model)  # a DeepSpeed engine forwards kwargs to its module
    return "logits_to_keep" in inspect.signature(module.forward).parameters


def response_values(critic, rollout: Experience) -> torch.Tensor:
    seq, att = rollout.sequences, rollout.attention_mask
    v = critic(seq, attention_mask=att, position_ids=position_ids_from_mask(att))
    P = rollout.prompt_ids.shape[1]
    return v[:, P - 1 : -1]
