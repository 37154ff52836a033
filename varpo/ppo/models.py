"""The four roles' models: actor and reference (causal LMs), critic (a backbone with a scalar
value head), built ZeRO-3-aware and wrapped in DeepSpeed engines (varpo.engines).

With `model.critic: shared_trunk` there is no critic model: the value head sits on the actor's
own trunk (`PolicyWithValueHead`), one engine and one optimizer train both, and one forward gives
the logits and the values.

With `model.lora.enabled` the actor (and with `model.lora.critic` the critic) trains LoRA adapters
on a frozen base, optionally 4-bit (`model.quantization`); with `model.lora.reference_from_base`
the reference is no model of its own but the actor's base with its adapters switched off."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from ..adapters import attach_lora, is_peft, is_quantized, load_kwargs, merged_state_dict, param_counts
from ..config import VarpoConfig
from ..engines import build_model, ds_config, gathered_params, inference_engine, is_zero3, train_engine


def disable_dropout(model: nn.Module) -> nn.Module:
    """PPO compares log-probs of the same tokens at rollout and update time; dropout would make
    them differ for no reason (TRL and OpenRLHF disable it too)."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model


def zero_value_head(model: nn.Module) -> nn.Linear:
    """hidden -> 1, zero-initialised: the first value estimates are 0 (no arbitrary initial bias)."""
    head = nn.Linear(_base(model).config.hidden_size, 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


class ValueModel(nn.Module):
    """Critic: a transformer backbone and a linear head giving one value per position (zero init)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.value_head = zero_value_head(backbone)

    def forward(self, input_ids, attention_mask=None, position_ids=None) -> torch.Tensor:
        h = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).last_hidden_state
        return self.value_head(h.to(self.value_head.weight.dtype)).squeeze(-1).float()


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

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=0, value_positions=None):
        kw = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                  logits_to_keep=logits_to_keep)
        if value_positions is None:
            return self.policy(**kw)
        # the last entry of hidden_states is the trunk's output after its final norm, i.e. the
        # last_hidden_state a separate critic's AutoModel gives (the input of the LM head)
        out = self.policy(**kw, output_hidden_states=True)
        h = out.hidden_states[-1][:, value_positions]
        values = self.value_head(h.to(self.value_head.weight.dtype)).squeeze(-1).float()
        return LogitsAndValues(out.logits, values)


class LogitsAndValues(NamedTuple):
    logits: torch.Tensor  # [B, kept positions, V]
    values: torch.Tensor  # [B, len(value_positions)] float32


def causal_lm(module: nn.Module) -> nn.Module:
    """The HF causal LM inside an actor module (the module itself unless it carries a value head)."""
    return module.policy if isinstance(module, PolicyWithValueHead) else module


def shares_trunk(model) -> bool:
    """Whether an actor engine (or module) carries the value head (model.critic=shared_trunk)."""
    return isinstance(getattr(model, "module", model), PolicyWithValueHead)


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


def lr_schedule(cfg: VarpoConfig):
    """ppo.lr_schedule as an update -> multiplier function for the trained roles' engines (None:
    constant, no warm-up): PPO steps counted in optimizer updates (ppo_epochs × minibatches each)."""
    p = cfg.ppo
    if p.lr_schedule == "constant" and not p.lr_warmup_steps:
        return None
    from functools import partial

    from ..engines import lr_factor

    per_step = p.ppo_epochs * (p.batch_size // p.mini_batch_size)
    return partial(lr_factor, warmup=p.lr_warmup_steps * per_step, total=p.steps * per_step,
                   schedule=p.lr_schedule, min_ratio=p.lr_min_ratio)


def _base(model: nn.Module) -> nn.Module:
    return model.get_base_model() if is_peft(model) else model


def _prepare_quantized(model: nn.Module, cfg: VarpoConfig) -> nn.Module:
    """A 4-bit base before adapters go on: norms and other small layers in fp32, input grads
    enabled so gradient checkpointing reaches the adapters (peft's QLoRA preparation)."""
    if not cfg.model.quantization.load_in_4bit:
        return model
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.model.gradient_checkpointing)


def _lora(model: nn.Module, cfg: VarpoConfig, task_type: str | None, field: str) -> nn.Module:
    lc = cfg.model.lora
    # adapter init draws from the global generator: the same A matrices on every rank and rerun
    torch.manual_seed(cfg.seed)
    return attach_lora(_prepare_quantized(model, cfg), lc.r, lc.alpha, lc.dropout, lc.target_modules,
                       field=field, task_type=task_type)


def build_actor(cfg: VarpoConfig, path: str, world: int):
    """The actor's training engine; with model.critic=shared_trunk its module is a
    PolicyWithValueHead, the head in its own optimizer group at ppo.critic_lr (trainable beside
    LoRA adapters when those are on)."""
    from transformers import AutoModelForCausalLM

    conf = ds_config(cfg.deepspeed, "actor", micro_batch_per_rank(cfg, world), trainable=True)
    model = build_model(lambda: AutoModelForCausalLM.from_pretrained(path, **load_kwargs(cfg.model)), conf)
    if cfg.model.lora.enabled:
        model = _lora(model, cfg, "CAUSAL_LM", "model.lora.target_modules")
    if cfg.model.gradient_checkpointing:
        _base(model).gradient_checkpointing_enable()
    lr_of = {}
    if cfg.model.critic == "shared_trunk":
        model = PolicyWithValueHead(model)
        lr_of = {"value_head.": cfg.ppo.critic_lr}
    disable_dropout(model)
    return train_engine(model, conf, lr=cfg.ppo.actor_lr, weight_decay=cfg.ppo.weight_decay, lr_of=lr_of,
                        lr_lambda=lr_schedule(cfg))


class ReferenceFromBase:
    """The reference policy as the actor's base with its LoRA adapters disabled: called like the
    reference engine (same forward arguments), no second copy of the base weights. Exact: what
    the actor computes with adapters off is what the frozen initial policy computes, since only
    the adapters ever train."""

    def __init__(self, actor_engine):
        self.engine = actor_engine
        self.module = actor_engine.module  # for callers that inspect the wrapped module's signature

    def __call__(self, *args, **kwargs):
        was_training = self.module.training
        self.module.eval()
        try:
            with torch.no_grad(), causal_lm(self.module).disable_adapter():
                return self.engine(*args, **kwargs)
        finally:
            self.module.train(was_training)


def build_reference(cfg: VarpoConfig, path: str, world: int, actor=None):
    """The frozen reference: `ReferenceFromBase(actor)` when LoRA is on and the config says so,
    else its own (ZeRO-3-shardable) inference engine."""
    from transformers import AutoModelForCausalLM

    if cfg.model.lora.enabled and cfg.model.lora.reference_from_base:
        if actor is None or not is_peft(causal_lm(actor.module)):
            raise ValueError("model.lora.reference_from_base: the reference needs the LoRA actor's engine")
        return ReferenceFromBase(actor)
    conf = ds_config(cfg.deepspeed, "reference", micro_batch_per_rank(cfg, world), trainable=False)
    model = build_model(lambda: AutoModelForCausalLM.from_pretrained(path, **load_kwargs(cfg.model)), conf)
    return inference_engine(disable_dropout(model), conf)


def build_critic(cfg: VarpoConfig, path: str, world: int):
    """The critic's engine, or None with model.critic=shared_trunk (the values come from the actor)."""
    from transformers import AutoModel

    if cfg.model.critic == "shared_trunk":
        return None

    conf = ds_config(cfg.deepspeed, "critic", micro_batch_per_rank(cfg, world), trainable=True)

    def make():
        backbone = AutoModel.from_pretrained(path, **load_kwargs(cfg.model))
        if cfg.model.lora.enabled and cfg.model.lora.critic:
            backbone = _lora(backbone, cfg, "FEATURE_EXTRACTION", "model.lora.target_modules (critic)")
        return ValueModel(backbone)

    model = build_model(make, conf)
    if cfg.model.gradient_checkpointing:
        _base(model.backbone).gradient_checkpointing_enable()
    disable_dropout(model)
    return train_engine(model, conf, lr=cfg.ppo.critic_lr, weight_decay=cfg.ppo.weight_decay,
                        lr_lambda=lr_schedule(cfg))


def role_param_counts(actor, critic) -> dict:
    """Trainable and total parameters of the trainable roles (ZeRO-3 shards counted whole);
    `trainable_params`/`total_params` are the actor's causal LM; the critic's are its whole model,
    or with a shared trunk the value head alone (the trunk is counted with the actor)."""
    a_train, a_total = param_counts(causal_lm(actor.module))
    c_train, c_total = param_counts(critic.module if critic is not None else actor.module.value_head)
    return {"trainable_params": a_train, "total_params": a_total,
            "critic_trainable_params": c_train, "critic_total_params": c_total}


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
