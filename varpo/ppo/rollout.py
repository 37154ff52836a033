"""Rollout: generate responses with the actor, then compute the per-token quantities PPO needs
(old log-probs, reference log-probs, values) on prompt+response sequences.

Layout: prompts are left-padded to P tokens, responses right-padded to T tokens, so a sequence
is [pad.. prompt | response ..pad] and response token t sits at absolute position P + t. Its
log-prob and its value are read at position P + t − 1 (the state before emitting it)."""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from ..config import GenerationConfig
from ..engines import generation_gather


@dataclass
class Rollout:
    prompt_ids: torch.Tensor  # [B, P] left-padded
    prompt_mask: torch.Tensor  # [B, P]
    response_ids: torch.Tensor  # [B, T] right-padded
    response_mask: torch.Tensor  # [B, T] 1 on real response tokens (EOS included)
    has_eos: torch.Tensor  # [B] bool
    logp: torch.Tensor | None = None  # [B, T] actor log-probs at rollout time ("old")
    ref_logp: torch.Tensor | None = None  # [B, T]
    values: torch.Tensor | None = None  # [B, T]
    rollout_logp: torch.Tensor | None = None  # [B, T] the sampling engine's own log-probs (vLLM), if any

    def select(self, idx: torch.Tensor) -> Rollout:
        return Rollout(**{f.name: (None if getattr(self, f.name) is None else getattr(self, f.name)[idx]) for f in fields(self)})

    @property
    def sequences(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.response_ids], 1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.response_mask], 1)


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
def generate(actor, tokenizer, prompt_ids, prompt_mask, gen: GenerationConfig) -> Rollout:
    """Sample responses. `actor` is a DeepSpeed engine or a bare HF model; under ZeRO-3 its
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
    return Rollout(prompt_ids, prompt_mask, response, mask, has_eos)


def response_logits(model, rollout: Rollout, temperature: float) -> torch.Tensor:
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


def response_values(critic, rollout: Rollout) -> torch.Tensor:
    seq, att = rollout.sequences, rollout.attention_mask
    v = critic(seq, attention_mask=att, position_ids=position_ids_from_mask(att))
    P = rollout.prompt_ids.shape[1]
    return v[:, P - 1 : -1]
