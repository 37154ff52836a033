"""The critic V(s_t) of PPO behind one interface, so that the trainer never asks which kind it has
(model.critic): a model of its own (`SeparateCritic`: a backbone with a value head, own engine and
optimizer) or a value head on the actor's own trunk (`ValueHeadCritic`: trained in the actor's
engine by the actor's optimizer, its values read off the actor's forwards).

The update, per minibatch, for either kind:
    out = actor.logprobs(mb, ...)                       # with a head on the trunk, out.values too
    values = critic.values(mb, out.values)              # its own forward, or the actor's values
    actor.step(critic.actor_loss(policy_loss, value_loss))
    critic.step(value_loss)"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from ..config import PackingConfig
from ..models.loading import param_counts
from . import packing
from .actor import Actor, packed_rows
from .experience import Experience
from .forward import packed_values, response_values


class Critic(ABC):
    @property
    @abstractmethod
    def engines(self) -> dict:
        """The engines this critic trains besides the actor's, by checkpoint tag."""

    @abstractmethod
    def values(self, exp: Experience, from_actor: torch.Tensor | None = None) -> torch.Tensor:
        """V(s_t) [B, T] float32 of the states before exp's response tokens (differentiable when
        grad is on). `from_actor`: the values the actor's forward over the same exp gave, if any."""

    @abstractmethod
    def actor_loss(self, policy_loss: torch.Tensor, value_loss: torch.Tensor) -> torch.Tensor:
        """What the actor's optimizer minimises this minibatch."""

    @abstractmethod
    def step(self, value_loss: torch.Tensor) -> None:
        """This critic's own optimizer step on the (vf_coef-weighted) value loss, if it has one."""

    @abstractmethod
    def param_counts(self) -> tuple[int, int]:
        """(trainable, total) parameters of what this critic adds to the actor."""

    def zero_grad(self) -> None:
        for engine in self.engines.values():
            engine.zero_grad()


class SeparateCritic(Critic):
    """model.critic=separate: its own model (varpo.models.value_head.ValueModel), engine and optimizer."""

    def __init__(self, engine, packing: PackingConfig | None = None):
        self.engine, self.packing = engine, packing

    @property
    def engines(self) -> dict:
        return {"critic": self.engine}

    def values(self, exp: Experience, from_actor: torch.Tensor | None = None) -> torch.Tensor:
        return values_of(self.engine, exp, self.packing)

    def actor_loss(self, policy_loss: torch.Tensor, value_loss: torch.Tensor) -> torch.Tensor:
        return policy_loss

    def step(self, value_loss: torch.Tensor) -> None:
        self.engine.backward(value_loss)
        self.engine.step()

    def param_counts(self) -> tuple[int, int]:
        return param_counts(self.engine.module)


class ValueHeadCritic(Critic):
    """model.critic=shared_trunk: a value head on the actor's trunk, inside the actor's engine. Its
    values come from the actor's own forward (a trunk forward of their own when none ran); one
    optimizer step on policy loss + vf_coef·value loss trains trunk and head (the head's group at
    ppo.critic_lr), so there is no step of its own and nothing of its own to checkpoint."""

    def __init__(self, actor: Actor):
        self.actor = actor

    @property
    def engines(self) -> dict:
        return {}

    def values(self, exp: Experience, from_actor: torch.Tensor | None = None) -> torch.Tensor:
        return from_actor if from_actor is not None else values_of(self.actor.engine, exp, self.actor.packing)

    def actor_loss(self, policy_loss: torch.Tensor, value_loss: torch.Tensor) -> torch.Tensor:
        return policy_loss + value_loss

    def step(self, value_loss: torch.Tensor) -> None:
        pass

    def param_counts(self) -> tuple[int, int]:
        return param_counts(self.actor.module.value_head)


def values_of(engine, exp: Experience, cfg: PackingConfig | None) -> torch.Tensor:
    """V(s_t) [B, T] from `engine`'s forward over exp: padded, or over padding-free rows (ppo.packing)."""
    rows = packed_rows(exp, getattr(engine, "module", engine), cfg)
    if rows is None:
        return response_values(engine, exp)
    return packing.unpack(rows, [packed_values(engine, row) for row in rows], tuple(exp.response_ids.shape))
