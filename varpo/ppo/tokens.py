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


def apply_chat_template(tokenizer, prompts: list[str]) -> tuple[list[str], bool]:
    """Each prompt as one user turn of the tokenizer's chat template, ending with the assistant's
    generation prompt; (prompts unchanged, False) when the tokenizer has no template."""
    if not getattr(tokenizer, "chat_template", None):
        return prompts, False
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in prompts], True


def tokenize_prompts(tokenizer, prompts: list[str], max_len: int, device,
                     chat_template: bool = False) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Left-pad and left-truncate; returns ids, mask and how many prompts were truncated. With
    `chat_template` (data.chat_template), prompts go through the tokenizer's chat template when it
    has one; the template writes its own special tokens, so none are added again."""
    templated = False
    if chat_template:
        prompts, templated = apply_chat_template(tokenizer, prompts)
    special = not templated
    full = tokenizer(prompts, add_special_tokens=special)["input_ids"]
    n_truncated = sum(len(ids) > max_len for ids in full)
    enc = tokenizer(prompts, padding=True, truncation=True, max_length=max_len, return_tensors="pt",
                    add_special_tokens=special)
    return enc["input_ids"].to(device), enc["attention_mask"].to(device), n_truncated


def decode_responses(tokenizer, exp) -> list[str]:
    """The real tokens of each response as text (special tokens removed)."""
    return tokenizer.batch_decode([r[m.bool()] for r, m in zip(exp.response_ids, exp.response_mask)],
                                  skip_special_tokens=True)
