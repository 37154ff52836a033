"""The causal-LM roles of PPO: the actor (trained) and the reference (frozen). Each is an engine
and its forwards over an `Experience`'s sequences: log-probs (and entropy) of the response tokens,
or the fused reward-shaping pass over the same logits. An actor whose trunk carries the value
head (model.critic=shared_trunk) returns the values of the same forward beside them.

An engine is anything called like the HF causal LM it wraps (a DeepSpeed engine, the reference
from the actor's base, a bare module); the actor's engine also has backward/step/zero_grad."""
from __future__ import annotations

from typing import NamedTuple

import torch

from ..config import KernelsConfig, PackingConfig
from . import packing
from .experience import Experience
from .forward import packed_logits, response_logits
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
    reads the values. `packing` (ppo.packing): forwards over padding-free rows (varpo.ppo.packing)
    when enabled."""

    def __init__(self, engine, temperature: float, kernels: KernelsConfig, *, with_values: bool = False,
                 packing: PackingConfig | None = None):
        self.engine, self.temperature, self.kernels, self.with_values = engine, temperature, kernels, with_values
        self.packing = packing

    @property
    def module(self) -> torch.nn.Module:
        return getattr(self.engine, "module", self.engine)

    def _logits(self, exp: Experience) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.with_values:
            return response_logits(self.engine, exp, self.temperature, with_values=True)
        return response_logits(self.engine, exp, self.temperature), None

    def logprobs(self, exp: Experience, with_entropy: bool = False, inplace_backward: bool = False) -> LMOutput:
        """Log-probs (and entropy) of exp's response tokens; inplace_backward: see token_logprobs."""
        rows = packed_rows(exp, self.module, self.packing)
        if rows is not None:
            return self._packed_logprobs(exp, rows, with_entropy, inplace_backward)
        logits, values = self._logits(exp)
        out = token_logprobs(logits, exp.response_ids, self.kernels, with_entropy=with_entropy,
                             inplace_backward=inplace_backward)
        logp, entropy = out if with_entropy else (out, None)
        return LMOutput(logp, entropy, values)

    def _packed_logprobs(self, exp: Experience, rows: list[packing.PackedRow], with_entropy: bool,
                         inplace_backward: bool) -> LMOutput:
        """logprobs over padding-free rows: one forward per row, outputs back in [B, T] (0 at padding)."""
        logps, entropies, values = [], [], []
        for row in rows:
            if self.with_values:
                logits, v = packed_logits(self.engine, row, self.temperature, with_values=True)
                values.append(v)
            else:
                logits = packed_logits(self.engine, row, self.temperature)
            out = token_logprobs(logits, row.response_ids, self.kernels, with_entropy=with_entropy,
                                 inplace_backward=inplace_backward)
            logps.append(out[0] if with_entropy else out)
            if with_entropy:
                entropies.append(out[1])
        shape = tuple(exp.response_ids.shape)
        return LMOutput(packing.unpack(rows, logps, shape),
                        packing.unpack(rows, entropies, shape) if with_entropy else None,
                        packing.unpack(rows, values, shape) if self.with_values else None)

    def shaping(self, exp: Experience, other_logp: torch.Tensor, logits_of: str, estimator: str) -> LMOutput:
        """The fused reward-shaping pass over this model's logits (varpo_kernels.weighted_kl_from_logits):
        its log-probs, the per-token KL against the other model's log-probs `other_logp`, and
        exp.weights·KL, masked by exp.mask. logits_of: "reference" or "policy" (whose logits these are).
        Packed: the log-probs from the padding-free rows, then the same [B, T] KL and weighting as
        the kernels' PyTorch path (varpo_kernels.weighted_kl_torch)."""
        rows = packed_rows(exp, self.module, self.packing)
        if rows is not None:
            from varpo_kernels import FusedKL, weighted_kl_torch

            out = self._packed_logprobs(exp, rows, with_entropy=False, inplace_backward=False)
            pol, ref = (other_logp, out.logp) if logits_of == "reference" else (out.logp, other_logp)
            fused = FusedKL(out.logp, *weighted_kl_torch(pol, ref, exp.mask, exp.weights, estimator))
            return LMOutput(out.logp, None, out.values, fused)
        logits, values = self._logits(exp)
        fused = shaping_pass(logits, exp.response_ids, other_logp, exp.mask, exp.weights, estimator, logits_of,
                             self.kernels)
        return LMOutput(fused.logp, None, values, fused)


def packed_rows(exp: Experience, module: torch.nn.Module, cfg: PackingConfig | None) -> list[packing.PackedRow] | None:
    """exp's padding-free rows for a forward of `module` when ppo.packing is on (None: the padded layout)."""
    if cfg is None or not cfg.enabled:
        return None
    return packing.plan(exp, packing.attn_implementation(module), cfg.row_tokens, _shape(module))


def _shape(module: torch.nn.Module):
    """The module's ModelShape (cached on it), or None for a model varpo cannot read the shape of."""
    shape = getattr(module, "_varpo_shape", False)
    if shape is False:
        from .phase_flops import shape_of

        try:
            shape = shape_of(module)
        except (ValueError, AttributeError, StopIteration):
            shape = None
        try:
            object.__setattr__(module, "_varpo_shape", shape)
        except AttributeError:
            pass
    return shape


class Actor(CausalLMRole):
    """The trained policy: its forwards, and one optimizer step on a loss."""

    def step(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)
        self.engine.step()

    def zero_grad(self) -> None:
        self.engine.zero_grad()
