"""Rollout engines behind one small interface (docs/design.md §2, "Hybrid engine").

    engine = build_rollout_engine(cfg, actor, tokenizer, policy_path, rank, world)
    ro = engine.generate(prompt_ids, prompt_mask, step)   # an Experience; every rank calls it together
    engine.sync_weights(actor)                            # after every actor update (collective)

`hf` samples with the trained actor itself (HF generate, ZeRO-3 parameters gathered as
generation.zero3_gather says): there is nothing to sync. `vllm` samples with a colocated vLLM
engine per rank whose weights are replaced in memory after each update. Both hand the rollout's
old log-probs to the trainer when they can (`old_logprobs_from_rollout`), which saves an actor
forward over every sequence."""
from __future__ import annotations

from typing import Protocol

import torch

from ...seeds import derive_seed
from ..experience import Experience
from .old_logprobs import old_logprobs_from_rollout


def sampling_seed(seed: int, step: int, rank: int) -> int:
    """The sampling seed of one rank's rollout at `step` (varpo.seeds' "sampling" stream): a
    resumed run draws what the uninterrupted one would have drawn, whatever the backend."""
    return derive_seed("sampling", seed, step, rank)


class RolloutEngine(Protocol):
    name: str

    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, step: int) -> Experience: ...

    def sync_weights(self, actor) -> None: ...

    def close(self) -> None: ...


def build_rollout_engine(cfg, actor, tokenizer, policy_path: str, rank: int, world: int) -> RolloutEngine:
    if cfg.generation.backend == "hf":
        from .hf import HFRolloutEngine

        return HFRolloutEngine(cfg, actor, tokenizer, rank)
    if cfg.generation.backend == "vllm":
        from .vllm import VLLMRolloutEngine

        return VLLMRolloutEngine(cfg, tokenizer, policy_path, rank, world)
    raise ValueError(f"generation.backend: expected hf or vllm, got {cfg.generation.backend!r}")


__all__ = ["RolloutEngine", "build_rollout_engine", "old_logprobs_from_rollout", "sampling_seed"]
