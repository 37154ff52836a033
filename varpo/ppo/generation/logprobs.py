"""Old log-probs while generating: log π(y_t | x, y_<t) of every sampled token, read from the logits
HF `generate` computes anyway, so a rollout needs no second actor forward for them.

A forward hook on the causal LM sees each decoding call: its logits [B, V] at the last position
predict the next token, and the next call's `input_ids` end with the token that was sampled from
them. The hook keeps one call's logits at a time (B × V, not TRL's B × T × V of stacked scores)
and turns them into a log-prob as soon as the sampled token is known. The log-probs are those of
the model's own distribution at the sampling temperature — the logits before generate's processors
(min_new_tokens' EOS mask, top-k/top-p), the same definition as a full forward of the actor
(varpo.ppo.forward.response_logits); they differ from it only by the rounding of a KV-cached
forward against a full one."""
from __future__ import annotations

import torch

from ...config import KernelsConfig


class GenerationLogprobs:
    """with GenerationLogprobs(model, temperature, kcfg) as rec: model.generate(...); logp = rec.result(response)"""

    def __init__(self, model: torch.nn.Module, temperature: float, kcfg: KernelsConfig):
        self.model, self.temperature, self.kcfg = model, temperature, kcfg
        self.logps: list[torch.Tensor] = []
        self.prev: torch.Tensor | None = None
        self.handle = None

    def _logp(self, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        from varpo_kernels import selective_log_softmax

        if self.temperature != 1.0:
            logits = logits / self.temperature
        return selective_log_softmax(logits, ids, backend=self.kcfg.backend, chunk_size=self.kcfg.chunk_size)

    def _hook(self, module, args, kwargs, out):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            raise RuntimeError("GenerationLogprobs: generate called the model without input_ids; "
                               "set generation.logprobs_from_generate=false")
        if self.prev is not None:  # ids[:, -1] was sampled from the previous call's logits
            self.logps.append(self._logp(self.prev, ids[:, -1]))
        self.prev = out.logits[:, -1].detach()

    def __enter__(self) -> GenerationLogprobs:
        # a peft model's generate calls the wrapped causal LM directly, never its own forward:
        # hook the module whose forward the decoding steps actually run
        target = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        self.handle = target.register_forward_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()

    def result(self, response_ids: torch.Tensor) -> torch.Tensor:
        """[B, T] log-probs of the generated tokens `response_ids` (as generate returned them, before
        any padding of finished rows was rewritten). Under ZeRO-3's synced generation a finished
        rank keeps calling the model; those extra calls come after the T real ones and are dropped."""
        T = response_ids.shape[1]
        if len(self.logps) < T and self.prev is not None:
            self.logps.append(self._logp(self.prev, response_ids[:, len(self.logps)]))
        self.prev = None
        if len(self.logps) < T:
            raise RuntimeError(f"GenerationLogprobs: saw {len(self.logps)} decoding steps for {T} generated tokens")
        return torch.stack(self.logps[:T], 1)
