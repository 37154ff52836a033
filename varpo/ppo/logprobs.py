"""Per-token log-probs (and entropy) of the sampled tokens, through varpo_kernels: a fused
Triton kernel on CUDA, a chunked PyTorch path on CPU; neither materialises a float32
log-softmax of size tokens × vocabulary (docs/design.md §2 "Kernels")."""
from __future__ import annotations

import torch

from ..config import KernelsConfig


def token_logprobs(logits: torch.Tensor, ids: torch.Tensor, kcfg: KernelsConfig, with_entropy: bool = False):
    """logits [B, T, V], ids [B, T] -> log p(ids) [B, T] float32 (and entropy [B, T])."""
    from varpo_kernels import selective_log_softmax

    return selective_log_softmax(
        logits, ids, backend=kcfg.backend, return_entropy=with_entropy, chunk_size=kcfg.chunk_size
    )
