"""The one `last_token_index` (and `position_ids_from_mask`) that PPO's reward shaping and the
reward model's pooling both use, against loops over random masks of every padding kind."""
from __future__ import annotations

import torch

from varpo.masks import last_token_index, position_ids_from_mask


def _masks(seed: int):
    g = torch.Generator().manual_seed(seed)
    B, T = int(torch.randint(1, 8, (1,), generator=g)), int(torch.randint(1, 12, (1,), generator=g))
    lengths = torch.randint(0, T + 1, (B,), generator=g)
    t = torch.arange(T)
    left_aligned = (t[None] < lengths[:, None]).long()  # responses: real tokens then padding (empty rows too)
    left_padded = (t[None] >= T - lengths[:, None]).long()  # prompts / reward-model inputs
    holes = (torch.rand(B, T, generator=g) < 0.5).long()  # any pattern at all
    return left_aligned, left_padded, holes


def test_last_token_index_matches_loop_for_any_padding():
    for seed in range(30):
        for mask in _masks(seed):
            want = [max((t for t, x in enumerate(row) if x), default=0) for row in mask.tolist()]
            assert last_token_index(mask).tolist() == want
            assert last_token_index(mask.bool()).tolist() == want and last_token_index(mask.double()).tolist() == want
        left_aligned = _masks(seed)[0]
        # on a response mask it is length − 1 (0 for an empty row): where PPO puts the score
        assert torch.equal(last_token_index(left_aligned), (left_aligned.sum(-1) - 1).clamp(min=0))


def test_position_ids_count_real_tokens_only():
    for seed in range(10):
        for mask in _masks(seed):
            want = []
            for row in mask.tolist():
                n, out = 0, []
                for x in row:
                    out.append(max(n + x - 1, 0))
                    n += x
                want.append(out)
            assert position_ids_from_mask(mask).tolist() == want
