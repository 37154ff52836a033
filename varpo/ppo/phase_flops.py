"""What each phase of a PPO step computed, in matrix-product FLOPs (varpo.models.flops), from the
roles' model shapes and the step's real token counts: every metrics row carries `flops/<phase>`
beside `time/<phase>`, so that achieved FLOP/s per phase (and, against a measured peak, the model
FLOPs utilisation) follows from the row alone; `bytes/generate` is the memory traffic decoding
cannot avoid (weights once per decode step, the KV cache), for generation's bandwidth roofline.

Counted per rank (this rank's samples: its timings are its own), over real tokens only: padding a
phase computes anyway is not useful work, so a padded layout shows up as a lower utilisation.
  generate   prefill over each prompt, then one single-token forward per further response token
  reference  the reference forward (LM head at the response positions), plus the actor's forward
             when the rollout engine does not give the old log-probs (varpo.ppo.generation.old_logprobs_from_rollout)
  value      the critic's forward (value head at every position); with a value head on the actor's
             trunk: a trunk forward of its own, or nothing when the actor's forward gave the values
  update     ppo_epochs × (actor forward + backward, and the separate critic's), 3× a forward each
The reward source's forward (`score`) is not counted: it may be a remote judge, or any model."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..models import last_block
from ..models.flops import ModelShape, forward_flops, generation_bytes, generation_flops, training_flops
from ..models.value_head import causal_lm
from .generation.old_logprobs import old_logprobs_from_rollout
from .packing import sample_lengths

_BYTES = {torch.float32: 4, torch.float64: 8, torch.bfloat16: 2, torch.float16: 2}


@dataclass(frozen=True)
class RoleShapes:
    actor: ModelShape
    reference: ModelShape
    critic: ModelShape | None  # None: the value head sits on the actor's trunk


def shape_of(module: torch.nn.Module) -> ModelShape:
    """The shape of the HF model inside an engine's module (a value head or peft wrapper around it)."""
    module = getattr(module, "module", module)
    inner = getattr(module, "backbone", None)
    inner = causal_lm(module) if inner is None else inner
    config = getattr(inner, "config", None)
    if config is None:
        raise ValueError(f"no HF config on {type(module).__name__}: cannot count its FLOPs")
    dtype = next((p.dtype for p in inner.parameters()), torch.float32)
    shape = ModelShape.from_config(config, param_bytes=_BYTES.get(dtype, 4))
    return replace(shape, last_block_at_kept=last_block.every_token_projections(last_block.trunk(inner)))


def role_shapes(roles) -> RoleShapes | None:
    """The roles' shapes, or None when some role is not an HF model of a supported architecture
    (then no step carries FLOP counts)."""
    try:
        actor = shape_of(roles.actor.module)
        reference = shape_of(roles.reference.module)
        critic_engines = roles.critic.engines
        critic = shape_of(critic_engines["critic"]) if "critic" in critic_engines else None
    except (ValueError, AttributeError, StopIteration):
        return None
    return RoleShapes(actor, reference, critic)


def actor_forward_at_rollout(cfg) -> bool:
    """Whether the old log-probs come from an actor forward (not from the rollout engine)."""
    return not old_logprobs_from_rollout(cfg)[0]


def phase_flops(shapes: RoleShapes, exp, *, ppo_epochs: int, actor_forward_at_rollout: bool) -> dict[str, float]:
    """`flops/<phase>` and `bytes/generate` of one step on this rank (see the module docstring).
    `actor_forward_at_rollout`: the old log-probs came from an actor forward, not from the rollout engine."""
    prompt_len, response_len = (x.tolist() for x in sample_lengths(exp))
    seq = [p + r for p, r in zip(prompt_len, response_len)]
    responses = sum(response_len)
    kept = response_len  # the positions every forward below reads (varpo.ppo.forward)
    shared = shapes.critic is None
    reference = forward_flops(shapes.reference, seq, responses, kept=kept)
    if actor_forward_at_rollout:  # a shared trunk's values come from this same forward
        reference += forward_flops(shapes.actor, seq, responses, value_head=shared, kept=kept)
    if shared:  # the trunk's values alone: the LM head at each sequence's last position, or nowhere
        heads = 0 if shapes.actor.last_block_at_kept else len(seq)
        value = 0 if actor_forward_at_rollout else forward_flops(shapes.actor, seq, heads, value_head=True, kept=kept)
    else:
        value = forward_flops(shapes.critic, seq, value_head=True, kept=kept)
    update = training_flops(shapes.actor, seq, responses, value_head=shared, kept=kept)
    if not shared:
        update += training_flops(shapes.critic, seq, value_head=True, kept=kept)
    return {"flops/generate": float(generation_flops(shapes.actor, prompt_len, response_len)),
            "flops/reference": float(reference), "flops/value": float(value),
            "flops/update": float(ppo_epochs * update),
            "bytes/generate": float(generation_bytes(shapes.actor, prompt_len, response_len))}
