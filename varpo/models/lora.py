"""What every HF model varpo loads shares: load options (dtype, attention kernel, 4-bit base) and
LoRA adapters (peft) — attaching them with per-architecture targets, counting what trains, and
folding them back into plain HF weights for export.

LoRA on a ZeRO-3 model: adapters are attached after the base was partitioned while loading
(`engines.build_model`); peft reads the base layers' shapes from their attributes (`ds_shape` for
GPT-2's Conv1D), and DeepSpeed partitions the new adapter parameters when the engine starts.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ----------------------------------------------------------------------------- load options
def load_kwargs(model_cfg, *, quantize: bool = True) -> dict:
    """Keyword arguments for `from_pretrained` from `cfg.model` (a ModelConfig): dtype, the
    attention implementation and, when configured (and `quantize`), the 4-bit bitsandbytes config."""
    kw: dict = {"dtype": DTYPES[model_cfg.dtype]}
    if model_cfg.attn_implementation is not None:
        kw["attn_implementation"] = model_cfg.attn_implementation
    q = model_cfg.quantization
    if quantize and q.load_in_4bit:
        from transformers import BitsAndBytesConfig

        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=q.quant_type, bnb_4bit_use_double_quant=q.double_quant,
            bnb_4bit_compute_dtype=DTYPES[q.compute_dtype])
        kw["dtype"] = DTYPES[q.compute_dtype]  # the unquantized layers (norms, embeddings, head)
    return kw


def attn_kwargs(model_cfg) -> dict:
    """Only the attention implementation (for models whose dtype is chosen elsewhere)."""
    impl = model_cfg.attn_implementation
    return {} if impl is None else {"attn_implementation": impl}


# ----------------------------------------------------------------------------- LoRA
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


def is_peft(model: nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


def param_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters, counting ZeRO-3 partitioned parameters at full size and a
    4-bit packed parameter at its unpacked size."""
    trainable = total = 0
    for p in model.parameters():
        n = getattr(p, "ds_numel", None) or p.numel()
        if type(p).__name__ == "Params4bit":
            n *= 2  # two 4-bit values per stored byte
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total


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


# ----------------------------------------------------------------------------- environment
BNB_CPU_MIN = (0, 50)  # the oldest bitsandbytes whose CPU backend was checked to run nf4 layers here (0.50.2)


def _version_tuple(text: str) -> tuple[int, ...]:
    import re

    return tuple(int(x) for x in re.findall(r"\d+", text)[:2])


def check_environment(cfg) -> None:
    """Refuse, before any model is built, model features this machine cannot run: raises a
    ConfigError naming the field and what is missing. (The schema is validated without looking at
    the machine, so a cluster config still passes `varpo config check` on a laptop.)"""
    import importlib.metadata
    import importlib.util

    from .config import ConfigError

    m, problems = cfg.model, []
    cuda = torch.cuda.is_available()
    if m.attn_implementation == "flash_attention_2":
        if importlib.util.find_spec("flash_attn") is None:
            problems.append("model.attn_implementation=flash_attention_2: the flash-attn package is not installed "
                            "(pip install flash-attn, or varpo[gpu]); use sdpa or eager")
        if not cuda:
            problems.append("model.attn_implementation=flash_attention_2: needs a CUDA GPU and this machine has none "
                            "(flash-attn has no CPU kernels); use sdpa or eager")
    if m.quantization.load_in_4bit:
        if importlib.util.find_spec("bitsandbytes") is None:
            problems.append("model.quantization.load_in_4bit=true: the bitsandbytes package is not installed "
                            f"(pip install 'bitsandbytes>={BNB_CPU_MIN[0]}.{BNB_CPU_MIN[1]}', or varpo[gpu])")
        elif not cuda:
            have = importlib.metadata.version("bitsandbytes")
            if _version_tuple(have) < BNB_CPU_MIN:
                problems.append(f"model.quantization.load_in_4bit=true on CPU: bitsandbytes {have} predates "
                                f"{BNB_CPU_MIN[0]}.{BNB_CPU_MIN[1]}, the first whose CPU 4-bit backend varpo was checked "
                                f"with; need bitsandbytes>={BNB_CPU_MIN[0]}.{BNB_CPU_MIN[1]} or a CUDA GPU")
    if problems:
        raise ConfigError("this machine cannot run the configured model:\n  " + "\n  ".join(problems))
