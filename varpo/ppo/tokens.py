"""Between text and token ids on the rollout's side: prompts tokenized (chat template, left padding
and truncation), the response mask (up to the first EOS), responses decoded back to text.

Layout (varpo.ppo.experience): prompts left-padded to P tokens, responses right-padded to T."""
from __future__ import annotations

import torch


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


def decode_responses(tokenizer, exp) -> list[str]:
    """The real tokens of each response as text (special tokens removed)."""
    return tokenizer.batch_decode([r[m.bool()] for r, m in zip(exp.response_ids, exp.response_mask)],
                                  skip_special_tokens=True)
