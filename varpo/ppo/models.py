"""The four roles' models: actor and reference (causal LMs), critic (a backbone with a scalar
value head), built ZeRO-3-aware and wrapped in DeepSpeed engines (varpo.engines)."""
from __future__ import annotations

import torch
from torch import nn

from ..config import VarpoConfig
from ..engines import build_model, ds_config, inference_engine, train_engine

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def disable_dropout(model: nn.Module) -> nn.Module:
    """PPO compares log-probs of the same tokens at rollout and update time; dropout would make
    them differ for no reason (TRL and OpenRLHF disable it too)."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model


class ValueModel(nn.Module):
    """Critic: a transformer backbone and a linear head giving one value per position.
    The head starts at zero so the first value estimates are 0 (no arbitrary initial bias)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        hidden = backbone.config.hidden_size
        self.value_head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids, attention_mask=None, position_ids=None) -> torch.Tensor:
        h = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).last_hidden_state
        return self.value_head(h.to(self.value_head.weight.dtype)).squeeze(-1).float()


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"  # prompts are left-padded so that generation continues at the end
    tok.truncation_side = "left"  # an over-long prompt keeps its end, which the response continues
    return tok


def micro_batch_per_rank(cfg: VarpoConfig, world: int) -> int:
    return max(1, cfg.ppo.mini_batch_size // world)


def build_actor(cfg: VarpoConfig, path: str, world: int):
    from transformers import AutoModelForCausalLM

    conf = ds_config(cfg.deepspeed, "actor", micro_batch_per_rank(cfg, world), trainable=True)
    model = build_model(lambda: AutoModelForCausalLM.from_pretrained(path, dtype=_DTYPES[cfg.model.dtype]), conf)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    disable_dropout(model)
    return train_engine(model, conf, lr=cfg.ppo.actor_lr, weight_decay=cfg.ppo.weight_decay)


def build_reference(cfg: VarpoConfig, path: str, world: int):
    from transformers import AutoModelForCausalLM

    conf = ds_config(cfg.deepspeed, "reference", micro_batch_per_rank(cfg, world), trainable=False)
    model = build_model(lambda: AutoModelForCausalLM.from_pretrained(path, dtype=_DTYPES[cfg.model.dtype]), conf)
    return inference_engine(disable_dropout(model), conf)


def build_critic(cfg: VarpoConfig, path: str, world: int):
    from transformers import AutoModel

    conf = ds_config(cfg.deepspeed, "critic", micro_batch_per_rank(cfg, world), trainable=True)
    model = build_model(lambda: ValueModel(AutoModel.from_pretrained(path, dtype=_DTYPES[cfg.model.dtype])), conf)
    if cfg.model.gradient_checkpointing:
        model.backbone.gradient_checkpointing_enable()
    disable_dropout(model)
    return train_engine(model, conf, lr=cfg.ppo.critic_lr, weight_decay=cfg.ppo.weight_decay)
