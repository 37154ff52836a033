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


def sampling_seed(seed: int, step: int, rank: int) -> int:
    """The sampling seed of one rank's rollout at `step` (varpo.seeds' "sampling" stream): a
    resumed run draws what the uninterrupted one would have drawn, whatever the backend."""
    return derive_seed("sampling", seed, step, rank)


class RolloutEngine(Protocol):
    name: str

    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, step: int) -> Experience: ...

    def sync_weights(self, actor) -> None: ...

    def close(self) -> None: ...


def old_logprobs_from_rollout(cfg) -> tuple[bool, str]:
    """Whether the rollout engine gives the old log-probs (log π_θold of each sampled token at the
    sampling temperature, before min-tokens/top-k/top-p: the trainer's own definition, see
    varpo.ppo.forward.response_logits), and why (not). False: the trainer runs an actor forward.

    hf: read off generate's logits (varpo.ppo.generation.logprobs). vllm: the engine's raw log-probs,
    which vLLM computes before its temperature, so only at temperature 1; and not with
    importance_correction=tis, whose weights compare the trainer's own log-probs with the engine's."""
    gen = cfg.generation
    if not gen.logprobs_from_generate:
        return False, "generation.logprobs_from_generate=false"
    if gen.backend != "vllm":
        return True, "read off HF generate's logits"
    if gen.vllm.importance_correction != "none":
        return False, (f"generation.vllm.importance_correction={gen.vllm.importance_correction} weighs by the "
                       "trainer's own log-probs against the engine's")
    if gen.temperature != 1.0:
        return False, (f"generation.temperature={gen.temperature}: vLLM's raw log-probs are at temperature 1 "
                       "and its processed ones include min-tokens/top-k/top-p masking")
    return True, "vLLM's raw log-probs of the sampled tokens"


def build_rollout_engine(cfg, actor, tokenizer, policy_path: str, rank: int, world: int) -> RolloutEngine:
    if cfg.generation.backend == "hf":
        from .hf import HFRolloutEngine

        return HFRolloutEngine(cfg, actor, tokenizer, rank)
    if cfg.generation.backend == "vllm":
        from .vllm import VLLMRolloutEngine

        return VLLMRolloutEngine(cfg, tokenizer, policy_path, rank, world)
    raise ValueError(f"generation.backend: expected hf or vllm, got {cfg.generation.backend!r}")


__all__ = ["RolloutEngine", "build_rollout_engine", "old_logprobs_from_rollout", "sampling_seed"]
