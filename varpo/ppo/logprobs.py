"""Per-token log-probs (and entropy) of the sampled tokens, and the fused reward-shaping pass,
through varpo_kernels: fused Triton kernels on CUDA, chunked PyTorch on CPU; none of them
materialises a float32 log-softmax of size tokens × vocabulary (docs/design.md §2, "Kernels")."""
from __future__ import annotations

import torch

from ..config import KernelsConfig


def token_logprobs(logits: torch.Tensor, ids: torch.Tensor, kcfg: KernelsConfig, with_entropy: bool = False,
                   inplace_backward: bool = False):
    """logits [B, T, V], ids [B, T] -> log p(ids) [B, T] float32 (and entropy [B, T]).
    inplace_backward: the backward writes d/dlogits into the logits' storage (the caller promises
    nothing reads them after the loss; autograd's version check enforces it). Ignored for a
    strided view (a model without `logits_to_keep`), whose storage is not the logits alone."""
    from varpo_kernels import selective_log_softmax

    return selective_log_softmax(logits, ids, backend=kcfg.backend, return_entropy=with_entropy,
                                 chunk_size=kcfg.chunk_size,
                                 inplace_backward=inplace_backward and logits.is_contiguous())


def shaping_pass(logits: torch.Tensor, ids: torch.Tensor, other_logp: torch.Tensor, mask: torch.Tensor,
                 weights: torch.Tensor, estimator: str, logits_of: str, kcfg: KernelsConfig):
    """The reward-shaping quantities of one forward's logits in one sweep (varpo_kernels.
    weighted_kl_from_logits): log p(ids) of that model, the per-token KL of π against π_ref, w·KL,
    masked, and their per-sequence sums. logits_of: "reference" (other_logp = the actor's old
    log-probs) or "policy" (other_logp = the reference's)."""
    from varpo_kernels import weighted_kl_from_logits

    return weighted_kl_from_logits(logits, ids, other_logp, mask, weights, estimator, logits_of=logits_of,
                                   backend=kcfg.backend, chunk_size=kcfg.chunk_size)
