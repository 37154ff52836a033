"""The LM head on a CPU, in every forward PPO runs through a causal LM: decoding, the reference and
rollout forwards, the update's forward and backward.

The head multiplies hidden states h [N, d] by its weight W [V, d]. As h · Wᵀ (nn.Linear) the CPU
GEMM repacks the transposed 50k × d weight inside every call and runs below its peak. Where this
torch has oneDNN, the weight is reordered into oneDNN's blocked layout and the product is oneDNN's
linear on it, whose [N, V] output is contiguous as the kernels need (they read rows, and the
update's in-place backward writes into them):
- decoding (`decode_head`, no gradient, the weight fixed for the whole rollout) reorders once per
  rollout: 4.8 ms against 7.4 ms as W · hᵀ for 8 rows on one core of this machine;
- every other forward (`cpu_head`: the update's, whose weight changes at every optimizer step, the
  rollout's) reorders once per call (11 ms at 50k × 256), a frozen weight's (the reference's, a LoRA
  actor's base head) once per run (`frozen_pack`), and differentiates by two plain products
  (dh = g · W, dW = gᵀ · h): 256 rows 96 → 74 ms, 512 rows 184 → 138 ms against (W · hᵀ)ᵀ and its
  copy (micro-benchmark at 50k × 256, one core of this machine, quiet).
Without oneDNN (or for a non-float32 weight) `cpu_head` computes (W · hᵀ)ᵀ: W streamed as stored, the
small hᵀ packed, one copy to make the logits contiguous (a 64-step rollout 1.55 → 1.46 s, the
update's head 273 → 252 ms against h · Wᵀ). Each is the same product to float rounding; the
gradients are float64-checked (tests/ppo/test_lm_head.py).
Not under ZeRO-3 (a sharded weight is gathered per forward): (W · hᵀ)ᵀ there.

Only for a plain `nn.Linear` head on a CPU tensor (a LoRA-wrapped or quantized head keeps its own
forward) and only inside `with cpu_head(model):` / `with decode_head(model):`."""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch.utils.weak import WeakTensorKeyDictionary

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


def _register_flops() -> None:
    """torch.utils.flop_counter counts aten's products only: without this, a FlopCounterMode around a
    forward would not see the head (2 · rows · V · d), the largest product of a small model."""
    import math

    from torch.utils.flop_counter import register_flop_formula

    @register_flop_formula(torch.ops.mkldnn._linear_pointwise)
    def _linear_flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
        return 2 * math.prod(x_shape) * out_shape[-1]


if hasattr(torch.ops.mkldnn, "_linear_pointwise"):
    _register_flops()


class _PackedLinear(torch.autograd.Function):
    """h · Wᵀ (+ b) as oneDNN's linear on W reordered for this call (or on `packed`, W reordered
    already); the gradients as plain products (a reordered copy made here is a temporary, freed
    when the forward returns)."""

    @staticmethod
    def forward(ctx, rows, weight, bias, packed=None):
        if packed is None:
            packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), rows.shape[0])
        ctx.save_for_backward(rows, weight)
        return torch.ops.mkldnn._linear_pointwise(rows, packed, bias, "none", [], "")

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        rows, weight = ctx.saved_tensors
        need_rows, need_weight, need_bias, _ = ctx.needs_input_grad
        return (g @ weight if need_rows else None, g.t() @ rows if need_weight else None,
                g.sum(0) if need_bias else None, None)


# frozen weight -> (its signature, its reordered copy); an entry goes with its weight
_FROZEN_PACKS = WeakTensorKeyDictionary()


def _signature(weight: torch.Tensor) -> tuple:
    """What changes when a weight does: its storage, its version counter (every in-place op on it)
    and, for a write through `.data` (which has a counter of its own), a strided sample of it."""
    return weight.data_ptr(), weight._version, float(weight.detach().reshape(-1)[::4099].sum())


def frozen_pack(weight: torch.Tensor, rows: int) -> torch.Tensor | None:
    """The reordered copy of a weight nothing trains (requires_grad False: the reference's head, a LoRA
    actor's base head), made on first use and kept while the weight lives and is unchanged
    (`_signature`): the reorder (11 ms at 50k × 256) is paid once per run, not per forward, for one
    more copy of the head in memory. None for a trained weight."""
    if weight.requires_grad:
        return None
    sig = _signature(weight)
    hit = _FROZEN_PACKS.get(weight)
    if hit is None or hit[0] != sig:
        hit = _FROZEN_PACKS[weight] = (sig, torch.ops.mkldnn._reorder_linear_weight(weight.detach(), rows))
    return hit[1]


def _packed_forward(head: torch.nn.Linear, packed: torch.Tensor | None = None):
    """oneDNN's linear on the weight reordered: once per rollout (`packed`, by decode_head), once per
    run for a frozen weight (`frozen_pack`), else per call; differentiable where a gradient is
    needed; (W · hᵀ)ᵀ for an input oneDNN's linear does not take here (no rows, another dtype than
    the weight's)."""
    transposed = _transposed_forward(head)

    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.dtype != head.weight.dtype or x.numel() == 0:
            return transposed(x)
        rows = x.reshape(-1, x.shape[-1]).contiguous()
        ready = packed if packed is not None else frozen_pack(head.weight, rows.shape[0])
        if ready is not None and not (torch.is_grad_enabled() and (x.requires_grad or head.weight.requires_grad)):
            out = torch.ops.mkldnn._linear_pointwise(rows, ready, head.bias, "none", [], "")
        else:
            out = _PackedLinear.apply(rows, head.weight, head.bias, ready)
        return out.reshape(*x.shape[:-1], head.weight.shape[0])

    return forward


def _can_pack(weight: torch.Tensor) -> bool:
    """oneDNN's linear applies: this torch has it, a float32 CPU weight that is not a ZeRO-3 shard."""
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and weight.dtype == torch.float32 and weight.device.type == "cpu" and not hasattr(weight, "ds_id"))


@contextmanager
def _replaced_forward(head: torch.nn.Linear, forward):
    head.forward = forward
    try:
        yield
    finally:
        del head.forward  # back to the class's forward


@contextmanager
def cpu_head(model: torch.nn.Module):
    """Inside: the model's output embedding (`get_output_embeddings()`) runs as oneDNN's linear on its
    weight reordered per call, or as (W · hᵀ)ᵀ where oneDNN does not apply (module docstring)."""
    head = _plain_cpu_head(model)
    if head is None:
        yield
        return
    with _replaced_forward(head, _packed_forward(head) if _can_pack(head.weight) else _transposed_forward(head)):
        yield


def onednn_pack(weight: torch.Tensor) -> torch.Tensor | None:
    """The weight reordered for oneDNN's linear (a copy), or None where this torch cannot: no oneDNN,
    not float32, a ZeRO-3 shard."""
    if not _can_pack(weight):
        return None
    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 8)
    except RuntimeError:
        return None


@contextmanager
def decode_head(model: torch.nn.Module):
    """Inside (a rollout): the output embedding runs as oneDNN's linear on a copy of the weight packed
    once on entry (a differentiated forward inside reorders per call, as cpu_head), or as cpu_head
    where that copy cannot be made (module docstring)."""
    head = _plain_cpu_head(model)
    if head is None:
        yield
        return
    packed = onednn_pack(head.weight)
    if packed is None:
        with cpu_head(model):
            yield
        return
    with _replaced_forward(head, _packed_forward(head, packed)):
        yield
