"""Token-mask conventions shared by the policy side (varpo.ppo) and the reward model (varpo.reward):
a leaf module, so neither has to import the other. Masks are [B, T], 1 on real tokens."""
from __future__ import annotations

import torch


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """[B, T] 0/1 mask → [B] long: the index of the last 1 in each row, whatever the padding
    (left, right or both); 0 for a row without any. On a left-aligned response mask this is
    length − 1, where PPO puts the score; on a left-padded reward-model input it is the last
    token, whose hidden state the reward model pools."""
    positions = torch.arange(mask.shape[-1], device=mask.device)
    return (positions * (mask != 0).long()).argmax(-1)  # argmax returns the first maximum: 0 for an empty row


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Positions that count real tokens only, so a left-padded text starts at position 0 — the
    positions HF `generate` used, and the same positions as the text right-padded (pads get 0;
    they are masked anyway)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)
