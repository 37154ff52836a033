"""The trained policy as a plain HF folder that `AutoModelForCausalLM` (and vLLM) load with no
peft: LoRA adapters folded in, a 4-bit base written dense, ZeRO-3 shards gathered, a shared-trunk
value head saved beside it."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..engines import gathered_params, is_zero3
from .lora import is_peft, is_quantized, merged_state_dict
from .value_head import causal_lm, save_value_head, shares_trunk


def export_actor(actor, tokenizer, path: Path, is_main: bool) -> Path:
    """Write the actor as a plain HF folder (safetensors) that `AutoModelForCausalLM` loads with
    no peft: LoRA adapters are folded into the base weights (the training model is left as it
    is), and the adapters alone are saved beside it in `<path>_adapter` (peft's format). A shared
    trunk's value head is not part of the policy folder (which stays a plain causal LM that vLLM
    and `from_pretrained` load as is): it is saved beside it in `<path>_value_head`. ZeRO-3
    shards are gathered first; every rank must call this, rank 0 writes."""
    with gathered_params(actor.module, enabled=is_zero3(actor.module)):
        if not is_main:
            return path
        if shares_trunk(actor):
            save_value_head(actor.module.value_head, path.with_name(path.name + "_value_head"))
        module = causal_lm(actor.module)
        if is_peft(module):
            base = module.get_base_model()
            state = merged_state_dict(module)
            if is_quantized(base):
                base = _dense_twin(base, state)  # the merged weights are dense: no quantization config
            base.save_pretrained(str(path), state_dict=state, safe_serialization=True)
            adapter_dir = path.with_name(path.name + "_adapter")
            module.save_pretrained(str(adapter_dir), state_dict={k: v.detach().cpu().clone()
                                                                  for k, v in module.state_dict().items()})
            tokenizer.save_pretrained(str(adapter_dir))
        else:
            state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
            module.save_pretrained(str(path), state_dict=state, safe_serialization=True)
        tokenizer.save_pretrained(str(path))
    return path


def _dense_twin(base: nn.Module, state: dict) -> nn.Module:
    """A plain (unquantized) model of `base`'s architecture holding `state`, for saving."""
    import copy

    from transformers import AutoModelForCausalLM

    conf = copy.deepcopy(base.config)
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(conf, attr):
            delattr(conf, attr)
    with torch.device("meta"):
        twin = AutoModelForCausalLM.from_config(conf)
    twin.load_state_dict(state, strict=False, assign=True)
    twin.tie_weights()
    return twin
