"""The LM head of a CPU decoding step computed as (W · hᵀ)ᵀ instead of h · Wᵀ.

While decoding, each step multiplies a few rows of hidden states h [B, d] by the head's weight
W [V, d]. As h · Wᵀ (nn.Linear), the CPU GEMM repacks the transposed 50k × d weight on every call;
as W · hᵀ it streams W as stored and packs only the small hᵀ. Measured on one core of this machine
(benchmarks/results/decode_sampling, 8 × 256 × 50k, 64 steps, quiet): a rollout 1.55 -> 1.46 s with
the inverse-transform sampler, 2.05 -> 1.88 s with torch.multinomial. The result is the same
product (a transposed view; every float the same sum, in another order).

Only for a plain `nn.Linear` head on a CPU tensor (a LoRA-wrapped or quantized head keeps its own
forward) and only inside `with decode_head(model):`, so the training forwards are untouched."""
from __future__ import annotations

from contextlib import contextmanager

import torch


def _transposed_forward(head: torch.nn.Linear):
    def forward(x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        out = (head.weight @ rows.t()).t()
        if head.bias is not None:
            out = out + head.bias
        return out.reshape(*x.shape[:-1], head.weight.shape[0])

    return forward


@contextmanager
def decode_head(model: torch.nn.Module):
    """Inside: the model's output embedding (`get_output_embeddings()`) runs as (W · hᵀ)ᵀ."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if get is not None else None
    if type(head) is not torch.nn.Linear or head.weight.is_cuda:
        yield
        return
    head.forward = _transposed_forward(head)
    try:
        yield
    finally:
        del head.forward  # back to the class's forward
