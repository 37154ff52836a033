"""HF generate with the trained actor itself (varpo.ppo.rollout.generate): no second copy of the
weights, so nothing to sync."""
from __future__ import annotations

import torch

from ..experience import Experience
from ..rollout import generate
from . import sampling_seed


class HFRolloutEngine:
    name = "hf"

    def __init__(self, cfg, actor, tokenizer, rank: int):
        self.cfg, self.actor, self.tokenizer, self.rank = cfg, actor, tokenizer, rank

    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, step: int) -> Experience:
        # HF samples from the global torch generator
        torch.manual_seed(sampling_seed(self.cfg.seed, step, self.rank))
        # with generation.logprobs_from_generate the old log-probs are read off generate's own logits
        record = self.cfg.kernels if self.cfg.generation.logprobs_from_generate else None
        return generate(self.actor, self.tokenizer, prompt_ids, prompt_mask, self.cfg.generation, record_logprobs=record)

    def sync_weights(self, actor) -> None:
        pass

    def close(self) -> None:
        pass
