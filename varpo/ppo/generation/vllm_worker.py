"""Loaded inside vLLM's worker process (`worker_extension_cls`): the receiving end of the weight
sync. vLLM's RPC encodes a tensor nested in plain arguments as a bare [dtype, shape, data] list,
so the trainer sends raw bytes with their dtype and shape, and they become tensors here."""
from __future__ import annotations

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
    """Mixed into vLLM's worker class: `collective_rpc("varpo_load_weights", args=(packed,))`."""

    def varpo_load_weights(self, packed: Packed) -> int:
        # reload_weights (not model.load_weights): it restores the checkpoint layout of the layers
        # it receives, loads, and re-runs the post-load processing (CPU GEMM pre-packing)
        self.reload_weights(weights_iterator=unpack(packed), is_checkpoint_format=True)
        return len(packed)

    def varpo_finish_sync(self) -> int:
        """After the last bucket. On CPU, vLLM's embedding-shaped GEMM layers (the LM head) keep
        their weight and run from a packed copy made at load time; a head tied to the embedding
        receives no weight of its own in a reload (the checkpoint has none), so its packed copy
        would keep the old embedding: pack it again from the current weight. Returns how many
        layers were re-packed."""
        from vllm.platforms import current_platform

        if not current_platform.is_cpu():
            return 0
        from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

        n = 0
        for module in self.model_runner.get_model().modules():
            weight = getattr(module, "weight", None)
            if hasattr(module, "cpu_linear") and isinstance(weight, torch.Tensor) and weight.numel() > 0:
                dispatch_cpu_unquantized_gemm(module, remove_weight=False)
                n += 1
        return n
