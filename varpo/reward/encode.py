"""Texts → token ids for the reward model, one convention for training and scoring.

A scored text is `prompt + separator + response` (the testbed's convention: separator " "; a
prompt rendered by a chat template is followed by the response directly),
tokenized with the reward model's tokenizer, followed by EOS (the token whose hidden state the
heads read), right-padded. A text longer than `max_length` is cut from the left after the leading
special token (BOS): the prompt's start goes first, the response's end is always kept (it is what
the reward judges). Every cut is counted and returned, never silent."""
from __future__ import annotations

import torch


def scored_texts(prompts: list[str], responses: list[str], separator: str = " ") -> list[tuple[str, bool]]:
    """(text, whether the tokenizer should add its special tokens) per pair. A prompt rendered by a
    chat template (varpo.data.chat.ChatText) already holds its special tokens and ends where the
    assistant's reply starts: no separator, no special tokens added."""
    from ..data.chat import is_chat_text

    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    out = []
    for p, r in zip(prompts, responses):
        if is_chat_text(p):
            out.append((f"{p}{r}", False))
        else:
            out.append((f"{p}{separator}{r}" if p else r, True))
    return out


def token_ids(tokenizer, prompts: list[str], responses: list[str], separator: str = " ",
              append_eos: bool = True) -> list[list[int]]:
    """Untruncated ids of each text, EOS-terminated (unless `append_eos` is False: the tokenizer's
    own special tokens only)."""
    texts = scored_texts(prompts, responses, separator)
    ids: list[list[int] | None] = [None] * len(texts)
    for special in (True, False):  # one tokenizer call per kind of text
        idx = [i for i, (_, s) in enumerate(texts) if s is special]
        if idx:
            for i, x in zip(idx, tokenizer([texts[i][0] for i in idx], add_special_tokens=special)["input_ids"]):
                ids[i] = x
    eos = tokenizer.eos_token_id if append_eos else None
    return [list(x) + [eos] if eos is not None and (not x or x[-1] != eos) else list(x) for x in ids]


def truncate_left(ids: list[int], max_length: int, keep_first: int | None) -> tuple[list[int], bool]:
    """Keep the last tokens (and the leading `keep_first` special token, if the text starts with it)."""
    if len(ids) <= max_length:
        return ids, False
    head = ids[:1] if keep_first is not None and ids and ids[0] == keep_first else []
    return head + ids[len(ids) - (max_length - len(head)):], True


def collate(ids: list[list[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded [B, T] input_ids and attention_mask."""
    T = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), T), dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
        mask[i, : len(x)] = 1
    return input_ids.to(device), mask.to(device)


def pad_id(tokenizer) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def encode(tokenizer, prompts: list[str], responses: list[str], max_length: int, device=None,
           separator: str = " ", append_eos: bool = True) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(input_ids [B, T], attention_mask [B, T], number of texts truncated)."""
    if max_length < 2:
        raise ValueError(f"max_length must be ≥ 2, got {max_length}")
    cut = [truncate_left(x, max_length, tokenizer.bos_token_id)
           for x in token_ids(tokenizer, prompts, responses, separator, append_eos)]
    input_ids, mask = collate([x for x, _ in cut], pad_id(tokenizer), device)
    return input_ids, mask, sum(c for _, c in cut)


def model_max_length(config, requested: int) -> int:
    """`requested`, capped at the backbone's position limit where it has one (a longer text
    would index past learned position embeddings, e.g. GPT-2's)."""
    for name in ("max_position_embeddings", "n_positions"):
        limit = getattr(config, name, None)
        if isinstance(limit, int) and limit > 0:
            return min(requested, limit)
    return requested
