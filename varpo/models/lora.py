"""LoRA adapters (peft) on any HF model varpo trains, and the 4-bit bases they train on: attaching
them with per-architecture targets, the 4-bit preparation, and folding them back into plain HF
weights for export.

LoRA on a ZeRO-3 model: adapters are attached after the base was partitioned while loading
(`engines.build_model`); peft reads the base layers' shapes from their attributes (`ds_shape` for
GPT-2's Conv1D), and DeepSpeed partitions the new adapter parameters when the engine starts.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def lora_targets(model: nn.Module, target_modules: str | Sequence[str]) -> str | list[str]:
    """Resolve `auto` to peft's per-architecture choice (attention query/value projections), or
    to `all-linear` for an architecture peft has no entry for; lists and `all-linear` pass."""
    if target_modules != "auto":
        return target_modules if isinstance(target_modules, str) else list(target_modules)
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as BY_TYPE

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return list(BY_TYPE.get(model_type, [])) or "all-linear"


def linear_module_names(model: nn.Module) -> list[str]:
    """Leaf names of the linear layers (nn.Linear, GPT-2's Conv1D, bitsandbytes' Linear4bit)."""
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                   if type(m).__name__ in ("Linear", "Conv1D", "Linear4bit", "Linear8bitLt")})


def attach_lora(model: nn.Module, r: int, alpha: int, dropout: float, target_modules: str | Sequence[str],
                field: str = "model.lora.target_modules", task_type: str | None = None) -> nn.Module:
    """`model` wrapped by peft with fresh adapters (B = 0: the wrapped model computes what the base
    did). Afterwards only adapter parameters require grad. A target that matches nothing fails
    naming `field` and the linear modules the model has."""
    from peft import LoraConfig, get_peft_model

    targets = lora_targets(model, target_modules)
    conf = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none",
                      task_type=task_type)
    try:
        return get_peft_model(model, conf)
    except ValueError as err:  # peft names the missing modules; add which ones exist
        raise ValueError(f"{field}={targets!r}: {err}; linear modules in this model: "
                         f"{linear_module_names(model)} (or use all-linear)") from None


def prepare_quantized(model: nn.Module, model_cfg) -> nn.Module:
    """A 4-bit base (model.quantization.load_in_4bit) before adapters go on: norms and other small
    layers in fp32, input grads enabled so gradient checkpointing reaches the adapters (peft's
    QLoRA preparation); any other model as it is."""
    if not model_cfg.quantization.load_in_4bit:
        return model
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=model_cfg.gradient_checkpointing)


def is_peft(model: nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


def base_model(model: nn.Module) -> nn.Module:
    """The model under peft's wrapper (the model itself when it carries no adapters)."""
    return model.get_base_model() if is_peft(model) else model


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The plain HF state dict of a peft-wrapped model with every adapter folded in
    (W + (alpha/r)·B·A, in the base layer's layout), on CPU; the model itself is not modified.
    Parameters must be present (under ZeRO-3: call inside a gather)."""
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    deltas: dict[str, torch.Tensor] = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer) and not getattr(module, "merged", False):
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    d = module.get_delta_weight(adapter).detach()
                    key = f"{name}.base_layer.weight"
                    deltas[key] = deltas.get(key, 0) + d
    dense = {f"{name}.weight": _dequantized(m.weight) for name, m in base.named_modules()
             if type(getattr(m, "weight", None)).__name__ == "Params4bit"}
    state = {}
    for key, value in base.state_dict().items():
        if ".lora_" in key or "lora_magnitude" in key or any(key.startswith(k + ".") for k in dense):
            continue  # adapters, and a 4-bit weight's quantization state (absmax, quant_map, ...)
        v = dense.get(key, value).detach()
        if key in deltas:
            v = (v.float() + deltas[key].float()).to(v.dtype)
        state[key.replace(".base_layer.", ".")] = v.cpu().clone()
    return state


def _dequantized(weight) -> torch.Tensor:
    """A bitsandbytes 4-bit weight as a dense [out, in] tensor in its compute dtype."""
    import bitsandbytes.functional as bnbf

    return bnbf.dequantize_4bit(weight.data, weight.quant_state).to(weight.quant_state.dtype)


def is_quantized(model: nn.Module) -> bool:
    return any(type(p).__name__ == "Params4bit" for p in model.parameters())
