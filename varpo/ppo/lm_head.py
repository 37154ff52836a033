"""The LM head on a CPU computed as (W · hᵀ)ᵀ instead of h · Wᵀ, in every forward PPO runs through
a causal LM: decoding, the reference and rollout forwards, the update's forward and backward.

The head multiplies hidden states h [N, d] by its weight W [V, d]. As h · Wᵀ (nn.Linear) the CPU
GEMM repacks the transposed 50k × d weight on every call; as W · hᵀ it streams W as stored and packs
only the small hᵀ, then one copy makes the [N, V] logits contiguous (the kernels read rows, and the
update's in-place backward writes into them). Measured on one core of this machine: a 64-step
rollout 1.55 -> 1.46 s (benchmarks/results/decode_sampling, 8 × 256 × 50k, quiet); the update's
head over 256 rows, forward and backward, 273 -> 252 ms (forward alone 122 -> 99 ms). The result is
the same product (every float the same sum, in another order); its gradient is autograd's.

Decoding (`decode_head`, no gradient, the weight fixed for the whole rollout) goes one step further
where this torch has oneDNN: the weight is reordered once per rollout into oneDNN's blocked layout
(12 ms at 50k × 256) and every step's head is oneDNN's linear on it: 4.8 ms against 7.4 ms as W · hᵀ
for 8 rows on one core of this machine (micro-benchmark, quiet), the same product to float rounding.
Not under ZeRO-3 (a sharded weight is gathered per forward, after the rollout has begun).

Only for a plain `nn.Linear` head on a CPU tensor (a LoRA-wrapped or quantized head keeps its own
forward) and only inside `with transposed_head(model):` / `with decode_head(model):`."""
from __future__ import annotations

from contextlib import contextmanager

import torch

from ..models.value_head import causal_lm


def _transposed_forward(head: torch.nn.Linear):
    def forward(x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        out = (head.weight @ rows.t()).t().contiguous()
        if head.bias is not None:
            out = out + head.bias
        return out.reshape(*x.shape[:-1], head.weight.shape[0])

    return forward


def output_head(model: torch.nn.Module) -> torch.nn.Module | None:
    """The output embedding of a causal LM, of an actor with a value head, or of their DeepSpeed engine."""
    module = causal_lm(getattr(model, "module", model))
    get = getattr(module, "get_output_embeddings", None)
    return get() if get is not None else None


def _plain_cpu_head(model: torch.nn.Module) -> torch.nn.Linear | None:
    """The output embedding where its forward may be replaced: a plain nn.Linear on a CPU tensor whose
    forward is not replaced already (inside another of these blocks, a nested one changes nothing)."""
    head = output_head(model)
    if type(head) is not torch.nn.Linear or head.weight.device.type != "cpu" or "forward" in vars(head):
        return None
    return head


@contextmanager
def transposed_head(model: torch.nn.Module):
    """Inside: the model's output embedding (`get_output_embeddings()`) runs as (W · hᵀ)ᵀ."""
    head = _plain_cpu_head(model)
    if head is None:
        yield
        return
    head.forward = _transposed_forward(head)
    try:
        yield
    finally:
        del head.forward  # back to the class's forward


def _onednn_forward(head: torch.nn.Linear, packed: torch.Tensor):
    transposed = _transposed_forward(head)

    def forward(x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or head.weight.requires_grad):
            return transposed(x)  # the packed copy has no gradient: a differentiated forward keeps W · hᵀ
        rows = x.reshape(-1, x.shape[-1])
        out = torch.ops.mkldnn._linear_pointwise(rows, packed, head.bias, "none", [], "")
        return out.reshape(*x.shape[:-1], head.weight.shape[0])

    return forward


def onednn_pack(weight: torch.Tensor) -> torch.Tensor | None:
    """The weight reordered for oneDNN's linear (a copy), or None where this torch cannot: no oneDNN,
    not float32, a ZeRO-3 shard."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")) \
            or weight.dtype != torch.float32 or weight.device.type != "cpu" or hasattr(weight, "ds_id"):
        return None
    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 8)
    except RuntimeError:
        return None


@contextmanager
def decode_head(model: torch.nn.Module):
    """Inside (a rollout): the output embedding runs as oneDNN's linear on a copy of the weight packed
    once on entry, or as (W · hᵀ)ᵀ where that copy cannot be made (module docstring)."""
    head = _plain_cpu_head(model)
    if head is None:
        yield
        return
    packed = onednn_pack(head.weight)
    if packed is None:
        with transposed_head(model):
            yield
        return
    head.forward = _onednn_forward(head, packed)
    try:
        yield
    finally:
        del head.forward
