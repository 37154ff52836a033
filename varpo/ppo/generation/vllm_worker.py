"""Loaded inside vLLM's worker (`worker_extension_cls`): the receiving end of the weight sync, and
the CPU engine's fused GELU. Across processes vLLM's RPC encodes a tensor nested in plain arguments
as a bare [dtype, shape, data] list, so the trainer sends raw bytes with their dtype and shape, and
they become tensors here; an inline engine (the trainer's own process) is handed the tensors."""
from __future__ import annotations

from collections.abc import Iterable

import torch

Packed = list[tuple[str, str, list[int], bytes]]


def pack(weights: list[tuple[str, torch.Tensor]]) -> Packed:
    """(name, tensor) on the host -> (name, dtype, shape, bytes)."""
    return [(name, str(t.dtype).removeprefix("torch."), list(t.shape), t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            for name, t in weights]


def unpack(packed: Packed):
    for name, dtype, shape, raw in packed:
        yield name, torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(getattr(torch, dtype)).reshape(shape)


class WeightSyncExtension:
    """Mixed into vLLM's worker class: `collective_rpc("varpo_load_weights", args=(packed,))` per bucket
    (or `varpo_load_tensors` in the trainer's own process), then `collective_rpc("varpo_finish_sync")`."""

    def varpo_load_weights(self, packed: Packed) -> int:
        return self.varpo_load_tensors(unpack(packed))

    def varpo_load_tensors(self, weights: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Load (name, tensor) pairs. Inline (the engine in the trainer's process) the trainer hands
        its parameters themselves: they are read during this call and copied into the engine's own
        weights, so the bytes of the cross-process path (two copies of every tensor) are not made."""
        if getattr(self, "_varpo_gemms_before", None) is None:  # the first bucket of a sync
            self._varpo_gemms_before = {id(m): m.cpu_linear for m in _cpu_gemm_layers(self)}
        n = 0

        def counted():
            nonlocal n
            for item in weights:
                n += 1
                yield item

        # reload_weights (not model.load_weights): it restores the checkpoint layout of the layers
        # it receives, loads, and re-runs the post-load processing (CPU GEMM pre-packing)
        self.reload_weights(weights_iterator=counted(), is_checkpoint_format=True)
        return n

    def varpo_finish_sync(self) -> int:
        """After the last bucket. On CPU, vLLM's GEMM layers run from a packed copy of their weight,
        made again by the reload for every layer that received weights. A head tied to the embedding
        receives none of its own (the checkpoint has none), so its packed copy would keep the old
        embedding: it takes the copy just made for the layer whose weight it shares (the embedding;
        the same tensor, so the same packing), or is packed again from the current weight. Returns
        how many layers were packed here."""
        before, self._varpo_gemms_before = getattr(self, "_varpo_gemms_before", None) or {}, None
        from vllm.platforms import current_platform

        if not current_platform.is_cpu():
            return 0
        from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

        layers = _cpu_gemm_layers(self)
        # packed again by the reload in this sync: their packed copy is no longer the one seen before it
        fresh = {id(m): m for m in layers if id(m) in before and m.cpu_linear is not before[id(m)]}
        n = 0
        for module in layers:
            if id(module) in fresh:
                continue
            twin = next((m for m in fresh.values() if m.weight is module.weight), None)
            if twin is not None:
                module.cpu_linear = twin.cpu_linear
            else:
                dispatch_cpu_unquantized_gemm(module, remove_weight=False)
                n += 1
        return n

    def varpo_fuse_activations(self) -> int:
        """On a CPU, vLLM runs GPT-2's `gelu_new` (its NewGELU) as the six-operation formula of its
        native path; torch's `gelu(approximate="tanh")` is the same function in one kernel, as
        varpo.activations does for the trainer's models (one rollout at ppo_vs_trl's small size:
        27 -> 9 ms). Returns how many modules now run it (vLLM may share one among the blocks); 0 on
        a GPU (vLLM's own kernel) or where this vLLM's CustomOp has no per-module forward to replace."""
        from vllm.platforms import current_platform

        if not current_platform.is_cpu():
            return 0
        from vllm.model_executor.layers.activation import NewGELU

        n = 0
        for module in self.model_runner.get_model().modules():
            if type(module) is NewGELU and hasattr(module, "_forward_method"):
                module._forward_method = _tanh_gelu
                n += 1
        return n


def _tanh_gelu(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.gelu(x, approximate="tanh")


def _cpu_gemm_layers(worker) -> list[torch.nn.Module]:
    """The model's layers that vLLM's CPU backend runs from a packed weight (`cpu_linear`)."""
    out = []
    for module in worker.model_runner.get_model().modules():
        weight = getattr(module, "weight", None)
        if hasattr(module, "cpu_linear") and isinstance(weight, torch.Tensor) and weight.numel() > 0:
            out.append(module)
    return out
