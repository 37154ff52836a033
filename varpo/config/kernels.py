"""Which implementation of the fused per-token math the trainer uses (varpo_kernels)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from .core import Section


class KernelsConfig(Section):
    backend: Literal["auto", "triton", "torch"] = Field(
        "auto", description="auto: Triton on CUDA, chunked PyTorch on CPU; triton forces Triton (CUDA or TRITON_INTERPRET=1)"
    )
    chunk_size: int | None = Field(
        None, ge=1,
        description="rows (tokens) per chunk of the PyTorch path: its extra memory is about 3 × chunk_size × "
                    "vocab × 4 bytes instead of the naive tokens × vocab × 4; null = 0.5 Mi elements / vocab rows "
                    "(≈ 2 MiB per float32 temporary, a core's L2 cache). Triton ignores it",
    )
    inplace_backward: bool = Field(
        True, description="the PPO update's backward writes d/dlogits into the logits buffer instead of a new "
                          "tokens × vocab tensor (the logits are dead after the loss; autograd's version check "
                          "raises if anything still needed them); false allocates a separate gradient",
    )
    fused_shaping: bool = Field(
        True, description="reward shaping in one pass over a forward's logits (log-probs, KL against the other "
                          "model's log-probs, σ²-weighting, mask: varpo_kernels.weighted_kl_from_logits); false: "
                          "log-probs first, then the KL and weights as separate [B, T] steps (kept for comparison)",
    )
