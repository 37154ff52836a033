"""The roles of a PPO run, built from the config before the trainer and handed to it
(`build_roles` -> `Roles` -> `PPOTrainer`, as OpenRLHF assembles its roles in one function and
verl injects them): the process group, the actor, reference and critic (causal LMs and a backbone
with a scalar value head, built ZeRO-3-aware and wrapped in DeepSpeed engines, varpo.engines), the
reward source, the rollout engine and the callbacks.

With `model.critic: shared_trunk` there is no critic model: the value head sits on the actor's
own trunk (`varpo.models.value_head.PolicyWithValueHead`), one engine and one optimizer train
both, and one forward gives the logits and the values.

With `model.lora.enabled` the actor (and with `model.lora.critic` the critic) trains LoRA adapters
on a frozen base, optionally 4-bit (`model.quantization`); with `model.lora.reference_from_base`
the reference is no model of its own but the actor's base with its adapters switched off."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import dist
from ..callbacks import TrainerCallback
from ..config import VarpoConfig
from ..dist import DistInfo
from ..engines import build_model, ds_config, inference_engine, train_engine
from ..models.loading import disable_dropout, load_kwargs, load_tokenizer, param_counts
from ..models.lora import attach_lora, base_model, is_peft, prepare_quantized
from ..models.value_head import PolicyWithValueHead, ValueModel, causal_lm, shares_trunk
from ..reward_source import Scorer
from ..scoring import build_scorer
from .actor import Actor, CausalLMRole
from .critic import Critic, SeparateCritic, ValueHeadCritic
from .generation import RolloutEngine, build_rollout_engine
from .loggers import output_callbacks


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


def _lora(model: nn.Module, cfg: VarpoConfig, task_type: str | None, field: str) -> nn.Module:
    lc = cfg.model.lora
    # adapter init draws from the global generator: the same A matrices on every rank and rerun
    torch.manual_seed(cfg.seed)
    return attach_lora(prepare_quantized(model, cfg.model), lc.r, lc.alpha, lc.dropout, lc.target_modules,
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
        base_model(model).gradient_checkpointing_enable()
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
    """The engine of a critic of its own (model.critic=separate): a backbone and a value head."""
    from transformers import AutoModel

    conf = ds_config(cfg.deepspeed, "critic", micro_batch_per_rank(cfg, world), trainable=True)

    def make():
        backbone = AutoModel.from_pretrained(path, **load_kwargs(cfg.model))
        if cfg.model.lora.enabled and cfg.model.lora.critic:
            backbone = _lora(backbone, cfg, "FEATURE_EXTRACTION", "model.lora.target_modules (critic)")
        return ValueModel(backbone)

    model = build_model(make, conf)
    if cfg.model.gradient_checkpointing:
        base_model(model.backbone).gradient_checkpointing_enable()
    disable_dropout(model)
    return train_engine(model, conf, lr=cfg.ppo.critic_lr, weight_decay=cfg.ppo.weight_decay,
                        lr_lambda=lr_schedule(cfg))


def role_param_counts(actor: Actor, critic: Critic) -> dict:
    """Trainable and total parameters of the trainable roles (ZeRO-3 shards counted whole);
    `trainable_params`/`total_params` are the actor's causal LM; the critic's are its whole model,
    or with a shared trunk the value head alone (the trunk is counted with the actor)."""
    a_train, a_total = param_counts(causal_lm(actor.module))
    c_train, c_total = critic.param_counts()
    return {"trainable_params": a_train, "total_params": a_total,
            "critic_trainable_params": c_train, "critic_total_params": c_total}


# ----------------------------------------------------------------------------- the run's roles


@dataclass
class Roles:
    """What a PPO run is made of, built before the trainer and handed to it (`PPOTrainer(cfg, out,
    roles, prompts=...)`). Each is a small interface, so a trainer can be built around existing
    engines or light stand-ins (tests/ppo/test_standin_roles.py)."""

    info: DistInfo  # this process's rank, world size and device
    tokenizer: Any  # an HF tokenizer, left-padding (varpo.models.loading.load_tokenizer)
    actor: Actor  # the trained policy (varpo.ppo.actor)
    reference: CausalLMRole  # the frozen reference policy
    critic: Critic  # V(s_t): a model of its own, or a head on the actor's trunk (varpo.ppo.critic)
    reward: Scorer  # texts -> score s and σ² (varpo.reward_source)
    rollout: RolloutEngine  # samples the responses (varpo.ppo.generation)
    callbacks: list[TrainerCallback] = field(default_factory=list)  # called in this order
    run_info: dict = field(default_factory=dict)  # what produced the run (its reward source), for summary.json


CRITICS = {  # model.critic -> how its role is built from the actor's
    "separate": lambda cfg, path, world, actor: SeparateCritic(build_critic(cfg, path, world), cfg.ppo.packing),
    "shared_trunk": lambda cfg, path, world, actor: ValueHeadCritic(actor),
}


def build_roles(cfg: VarpoConfig, out_dir: str | Path, *, policy_path: str, critic_path: str | None = None,
                scorer: Scorer | None = None, callbacks: Sequence[TrainerCallback] = ()) -> Roles:
    """The roles of a PPO run from its config, in this order: the process group
    (deepspeed.*), varpo's own outputs under `out_dir` (rank 0; a logger that cannot start fails
    before any model loads), the reward source (`scorer`, or reward.* via varpo.scoring.build_scorer),
    the tokenizer, actor, reference and critic (model.*, from `policy_path`; the critic's backbone
    from `critic_path` or model.critic_path), the rollout engine (generation.backend), and the user's
    `callbacks` after varpo's own."""
    info = dist.join(cfg.deepspeed)
    own = output_callbacks(cfg, out_dir) if info.is_main else []
    reward = scorer if scorer is not None else build_scorer(cfg)
    world = info.world_size
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model.tokenizer_path or policy_path)
    t, kernels = cfg.generation.temperature, cfg.kernels
    actor_engine = build_actor(cfg, policy_path, world)
    packing = cfg.ppo.packing
    actor = Actor(actor_engine, t, kernels, with_values=shares_trunk(actor_engine), packing=packing)
    # with LoRA and model.lora.reference_from_base: the actor's base with adapters disabled
    reference = CausalLMRole(build_reference(cfg, policy_path, world, actor=actor_engine), t, kernels,
                             packing=packing)
    critic = CRITICS[cfg.model.critic](cfg, critic_path or cfg.model.critic_path or policy_path, world, actor)
    # HF generate with the actor itself, or a colocated vLLM engine that starts from policy_path
    rollout = build_rollout_engine(cfg, actor_engine, tokenizer, policy_path, info.rank, world)
    return Roles(info, tokenizer, actor, reference, critic, reward, rollout, [*own, *callbacks])
