"""Rollout: generate responses with the actor into a new `Experience`, then compute the per-token
quantities PPO needs (old log-probs, reference log-probs, values) on prompt+response sequences.

Layout (varpo.ppo.experience): prompts left-padded to P tokens, responses right-padded to T, so
response token t sits at absolute position P + t. Its log-prob and its value are read at position
P + t − 1 (the state before emitting it)."""
from __future__ import annotations

from contextlib import nullcontext

import torch

from ..config import GenerationConfig, KernelsConfig
from ..engines import generation_gather
from ..masks import position_ids_from_mask
from .experience import Experience
from .gen_logprobs import GenerationLogprobs
from .models import causal_lm, shares_trunk


def response_mask_from_ids(response_ids: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask of real response tokens: everything up to and including the first EOS (all tokens
    when there is none). Tokens after the first EOS are padding, whatever their id."""
    is_eos = response_ids == eos_id
    has_eos = is_eos.any(-1)
    T = response_ids.shape[1]
    first = torch.where(has_eos, is_eos.int().argmax(-1), torch.full_like(has_eos, T - 1, dtype=torch.long))
    mask = torch.arange(T, device=response_ids.device)[None, :] <= first[:, None]
    return mask.long(), has_eos


def apply_chat_template(tokenizer, prompts: list[str]) -> list[str]:
    """Each plain-text prompt as one user turn of the tokenizer's chat template, ending with the
    assistant's generation prompt; prompts a template already rendered (conversational rows,
    varpo.data.chat.ChatText) stay as they are. A tokenizer without a template is an error, not
    a silent fallback to raw text."""
    from ..data.chat import NoChatTemplate, is_chat_text, render_prompt

    try:
        return [p if is_chat_text(p) else render_prompt(tokenizer, [{"role": "user", "content": p}]) for p in prompts]
    except NoChatTemplate:
        raise NoChatTemplate("data.chat_template=true, and the policy's tokenizer has no chat template "
                             "(set model.tokenizer_path to one that has, or data.chat_template=false)") from None


def tokenize_prompts(tokenizer, prompts: list[str], max_len: int, device,
                     chat_template: bool = False) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Left-pad and left-truncate; returns ids, mask and how many prompts were truncated. With
    `chat_template` (data.chat_template), plain-text prompts go through the tokenizer's chat
    template; a rendered prompt (conversational data) carries the template's special tokens, so
    none are added again."""
    from ..data.chat import is_chat_text

    if chat_template:
        prompts = apply_chat_template(tokenizer, prompts)
    templated = [is_chat_text(p) for p in prompts]
    if any(templated) and not all(templated):
        raise ValueError("tokenize_prompts: a batch mixes prompts rendered by a chat template with plain text")
    special = not any(templated)
    full = tokenizer(prompts, add_special_tokens=special)["input_ids"]
    n_truncated = sum(len(ids) > max_len for ids in full)
    enc = tokenizer(prompts, padding=True, truncation=True, max_length=max_len, return_tensors="pt",
                    add_special_tokens=special)
    return enc["input_ids"].to(device), enc["attention_mask"].to(device), n_truncated


@torch.no_grad()
def generate(actor, tokenizer, prompt_ids, prompt_mask, gen: GenerationConfig,
             record_logprobs: KernelsConfig | None = None) -> Experience:
    """Sample responses: the one place an `Experience` is created (its rollout fields). `actor` is a DeepSpeed engine or a bare HF model; under ZeRO-3 its
    parameters are gathered as `gen.zero3_gather` says (varpo.engines.generation_gather), and
    every rank must then call generate together. With `record_logprobs` (the kernels config) the
    rollout's old log-probs `logp` are read off generate's own logits (varpo.ppo.gen_logprobs)
    instead of needing a second actor forward."""
    from transformers import GenerationConfig as HFGen

    hf = HFGen(
        do_sample=True, max_new_tokens=gen.max_new_tokens, min_new_tokens=gen.min_new_tokens,
        temperature=gen.temperature, top_k=gen.top_k, top_p=gen.top_p,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    # the causal LM generates (an actor with a shared-trunk value head: its policy, without the head)
    actor_module = causal_lm(getattr(actor, "module", actor))
    was_training = actor_module.training
    actor_module.eval()
    rec = GenerationLogprobs(actor_module, gen.temperature, record_logprobs) if record_logprobs else nullcontext()
    with generation_gather(actor, gen.zero3_gather, gen.zero3_gather_budget_mb, module=actor_module) as synced_gpus, rec:
        out = actor_module.generate(
            input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=hf, synced_gpus=synced_gpus
        )
    actor_module.train(was_training)
    response = out[:, prompt_ids.shape[1]:]
    logp = rec.result(response) if record_logprobs and response.shape[1] else None
    if response.shape[1] == 0:  # every sequence stopped at once; keep one (pad) position
        response = torch.full_like(prompt_ids[:, :1], tokenizer.pad_token_id)
    mask, has_eos = response_mask_from_ids(response, tokenizer.eos_token_id)
    response = torch.where(mask.bool(), response, torch.full_like(response, tokenizer.pad_token_id))
    return Experience(prompt_ids, prompt_mask, response, mask, has_eos, logp=logp)


def decode_responses(tokenizer, exp: Experience) -> list[str]:
    """The real tokens of each response as text (special tokens removed)."""
    return tokenizer.batch_decode([r[m.bool()] for r, m in zip(exp.response_ids, exp.response_mask)],
                                  skip_special_tokens=True)


def response_logits(model, rollout: Experience, temperature: float, with_values: bool = False):
    """Logits [B, T, V] that predicted each response token, divided by the sampling temperature
    so that log-probs are those of the distribution the tokens were drawn from. Only the T
    positions that predict response tokens go through the LM head (`logits_to_keep`): prompt
    positions predict nothing PPO uses, and the head over the vocabulary is a large share of a
    forward. with_values (an actor that shares its trunk with the value head,
    model.critic=shared_trunk): (logits, values [B, T]) from the same forward, the values read at
    the same T positions (the state before each response token)."""
    seq, att = rollout.sequences, rollout.attention_mask
    T, L = rollout.response_ids.shape[1], seq.shape[1]
    values = None
    if _takes_logits_to_keep(model):
        # position P − 1 + t predicts response token t: keeping exactly those T positions (an index
        # tensor, not the last T + 1 then a slice) makes the LM head's output the contiguous
        # [B, T, V] the kernels read, with no B·T·V copy forward or backward
        keep = torch.arange(L - T - 1, L - 1, device=seq.device)
        extra = {"value_positions": keep} if with_values else {}
        out = model(input_ids=seq, attention_mask=att, position_ids=position_ids_from_mask(att),
                    logits_to_keep=keep, **extra)
        logits, values = out.logits, (out.values if with_values else None)
    else:
        if with_values:
            raise ValueError("response_logits(with_values=True) needs an actor with a value head (model.critic=shared_trunk)")
        logits = model(input_ids=seq, attention_mask=att, position_ids=position_ids_from_mask(att)).logits[:, -(T + 1) : -1]
    logits = logits / temperature if temperature != 1.0 else logits
    return (logits, values) if with_values else logits


def _takes_logits_to_keep(model) -> bool:
    """HF causal LMs (transformers ≥ 4.50) accept `logits_to_keep`; a custom module may not."""
    import inspect

    module = getattr(model, "module", model)  # a DeepSpeed engine forwards kwargs to its module
    return "logits_to_keep" in inspect.signature(module.forward).parameters


def response_values(critic, rollout: Experience) -> torch.Tensor:
    """Values [B, T] of the states before each response token. `critic`: the critic's engine, or
    with model.critic=shared_trunk the actor's, whose trunk forward then feeds the value head and
    the LM head only at the last position (the logits are not wanted here)."""
    seq, att = rollout.sequences, rollout.attention_mask
    P = rollout.prompt_ids.shape[1]
    if shares_trunk(critic):
        keep = torch.arange(P - 1, seq.shape[1] - 1, device=seq.device)
        return critic(input_ids=seq, attention_mask=att, position_ids=position_ids_from_mask(att),
                      logits_to_keep=1, value_positions=keep).values
    v = critic(seq, attention_mask=att, position_ids=position_ids_from_mask(att))
    return v[:, P - 1 : -1]
