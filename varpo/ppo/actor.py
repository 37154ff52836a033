"""The causal-LM roles of PPO: the actor (trained) and the reference (frozen). Each is an engine
and its forwards over an `Experience`'s sequences: log-probs (and entropy) of the response tokens,
or the fused reward-shaping pass over the same logits. An actor whose trunk carries the value
head (model.critic=shared_trunk) returns the values of the same forward beside them.

An engine is anything called like the HF causal LM it wraps (a DeepSpeed engine, the reference
from the actor's base, a bare module); the actor's engine also has backward/step/zero_grad."""
from __future__ import annotations

from typing import NamedTuple

import torch

from ..config import KernelsConfig
from .experience import Experience
from .forward import response_logits
from .logprobs import shaping_pass, token_logprobs


class LMOutput(NamedTuple):
    """What one forward of a causal-LM role gives over B samples' T response tokens."""

    logp: torch.Tensor  # [B, T] float32 log p(response token)
    entropy: torch.Tensor | None = None  # [B, T] when asked for
    values: torch.Tensor | None = None  # [B, T] float32: the value head's, when the role's trunk carries one
    shaping: tuple | None = None  # varpo_kernels.FusedKL of the fused reward-shaping pass over the same logits


class CausalLMRole:
    """A causal LM of the run and its forwards; `with_values`: its module is a policy with a value
    head on its trunk (varpo.models.value_head.PolicyWithValueHead), whose every forward here also
    reads the values."""

    def __init__(self, engine, temperature: float, kernels: KernelsConfig, *, with_values: bool = False):
        self.engine, self.temperature, self.kernels, self.with_values = engine, temperature, kernels, with_values

    @property
    def module(self) -> torch.nn.Module:
        return getattr(self.engine, "module", self.engine)

    def _logits(self, exp: Experience) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.with_values:
            return response_logits(self.engine, exp, self.temperature, with_values=True)
        return response_logits(self.engine, exp, self.temperature), None

    def logprobs(self, exp: Experience, with_entropy: bool = False, inplace_backward: bool = False) -> LMOutput:
        """Log-probs (and entropy) of exp's response tokens; inplace_backward: see token_logprobs."""
        logits, values = self._logits(exp)
        out = token_logprobs(logits, exp.response_ids, self.kernels, with_entropy=with_entropy,
                             inplace_backward=inplace_backward)
        logp, entropy = out if with_entropy else (out, None)
        return LMOutput(logp, entropy, values)

    def shaping(self, exp: Experience, other_logp: torch.Tensor, logits_of: str, estimator: str) -> LMOutput:
        """The fused reward-shaping pass over this model's logits (varpo_kernels.weighted_kl_from_logits):
        its log-probs, the per-token KL against the other model's log-probs `other_logp`, and
        exp.weights·KL, masked by exp.mask. logits_of: "reference" or "policy" (whose logits these are)."""
        logits, values = self._logits(exp)
        fused = shaping_pass(logits, exp.response_ids, other_logp, exp.mask, exp.weights, estimator, logits_of,
                             self.kernels)
        return LMOutput(fused.logp, None, values, fused)


class Actor(CausalLMRole):
    """The trained policy: its forwards, and one optimizer step on a loss."""

    def step(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)
        self.engine.step()

    def zero_grad(self) -> None:
        self.engine.zero_grad()
