"""Scalar value heads: the critic's own model (`ValueModel`, a backbone and a head), or a head on
the policy's own trunk (`PolicyWithValueHead`, model.critic=shared_trunk), both zero-initialised
and position-wise; and the file a trained shared-trunk head is exported to."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from .lora import base_model


def zero_value_head(model: nn.Module) -> nn.Linear:
    """hidden -> 1, zero-initialised: the first value estimates are 0 (no arbitrary initial bias)."""
    head = nn.Linear(base_model(model).config.hidden_size, 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


def values_of(head: nn.Linear, h: torch.Tensor) -> torch.Tensor:
    """Values [B, n] of last hidden states h [B, n, d] (after the trunk's final norm): in float32
    (from half precision too); a float64 model keeps float64 (exactness tests)."""
    v = head(h.to(head.weight.dtype)).squeeze(-1)
    return v if v.dtype == torch.float64 else v.float()


class ValueModel(nn.Module):
    """Critic: a transformer backbone and a linear head giving one value per position (zero init)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.value_head = zero_value_head(backbone)

    def forward(self, input_ids, attention_mask=None, position_ids=None) -> torch.Tensor:
        # no KV cache: nothing reuses it, and a cache would stop HF from reading packed samples'
        # boundaries off restarting position ids (varpo.ppo.packing)
        h = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=False).last_hidden_state
        return values_of(self.value_head, h)


class PolicyWithValueHead(nn.Module):
    """model.critic=shared_trunk: the actor's causal LM (`policy`, possibly a peft model) and a
    value head on its last hidden state, the same position-wise head as ValueModel's (zero
    init). Called like the causal LM it is the causal LM (what the reference-from-base and any
    logits-only caller see); with `value_positions` (an index tensor over the sequence) the same
    forward also returns the values at those positions. Generation runs on `policy` directly
    (`causal_lm`)."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy
        self.value_head = zero_value_head(policy)

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=0, value_positions=None,
                use_cache=None):
        kw = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                  logits_to_keep=logits_to_keep)
        if use_cache is not None:
            kw["use_cache"] = use_cache
        if value_positions is None:
            return self.policy(**kw)
        # the last entry of hidden_states is the trunk's output after its final norm, i.e. the
        # last_hidden_state a separate critic's AutoModel gives (the input of the LM head)
        out = self.policy(**kw, output_hidden_states=True)
        return LogitsAndValues(out.logits, values_of(self.value_head, out.hidden_states[-1][:, value_positions]))


class LogitsAndValues(NamedTuple):
    logits: torch.Tensor  # [B, kept positions, V]
    values: torch.Tensor  # [B, len(value_positions)] float32


def causal_lm(module: nn.Module) -> nn.Module:
    """The HF causal LM inside an actor module (the module itself unless it carries a value head)."""
    return module.policy if isinstance(module, PolicyWithValueHead) else module


def shares_trunk(model) -> bool:
    """Whether an actor engine (or module) carries the value head (model.critic=shared_trunk)."""
    return isinstance(getattr(model, "module", model), PolicyWithValueHead)


def save_value_head(head: nn.Linear, folder: Path) -> Path:
    """`value_head.safetensors` (weight [1, hidden], bias [1], float32) and `value_head.json`
    saying what it applies to: the policy's last hidden state, one value per position."""
    import json

    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({"weight": head.weight.detach().float().cpu().contiguous(),
               "bias": head.bias.detach().float().cpu().contiguous()}, str(folder / "value_head.safetensors"))
    (folder / "value_head.json").write_text(json.dumps({
        "hidden_size": head.in_features, "input": "the policy's last hidden state (after its final norm)",
        "output": "V(s_t) at each position t: the value of the state before the token at t + 1"}, indent=1) + "\n")
    return folder
