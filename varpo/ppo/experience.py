"""One PPO batch as it moves through the trainer's stages (docs/design.md §2): a dataclass of
per-sample tensors that `rollout.generate` creates and every later stage fills in, up to the
update that consumes it.

Layout: B samples on this rank; prompts left-padded to P tokens, responses right-padded to T
tokens, so a sequence is [pad.. prompt | response ..pad] and response token t sits at absolute
position P + t. Every [B, T] tensor is over response tokens.

Adding a per-sample quantity (an importance weight, a group id, a baseline) is a local change:
declare it here as a field defaulting to None (or put it in `extras`), set it in the stage that
computes it, read it where it is used. `select` carries every field, and every `extras` entry,
into minibatches without further edits."""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch


@dataclass
class Experience:
    # 1. rollout: what the actor sampled
    prompt_ids: torch.Tensor  # [B, P] long, left-padded
    prompt_mask: torch.Tensor  # [B, P] long, 1 on real prompt tokens
    response_ids: torch.Tensor  # [B, T] long, right-padded (pad id after the first EOS)
    response_mask: torch.Tensor  # [B, T] long, 1 on real response tokens (EOS included)
    has_eos: torch.Tensor  # [B] bool: the response ended with EOS (not cut at max_new_tokens)
    prompts: list[str] | None = None  # B prompt texts
    responses: list[str] | None = None  # B decoded responses (special tokens removed)
    rollout_logp: torch.Tensor | None = None  # [B, T] the sampling engine's own log-probs (vLLM), else None
    # 2. score: the reward source's verdict (varpo.reward_source.Scores), float32
    score: torch.Tensor | None = None  # [B] s(x, y) as the source gave it (before EOS penalty / clip)
    variance: torch.Tensor | None = None  # [B] σ²(x, y) ≥ 0, the uncertainty of s
    valid: torch.Tensor | None = None  # [B] bool: False where the source dropped the sample
    gold: torch.Tensor | None = None  # [B] true reward, when the task has one (logged only)
    # 3. forward passes at rollout time, float32
    logp: torch.Tensor | None = None  # [B, T] actor log-probs ("old" log-probs of the update)
    ref_logp: torch.Tensor | None = None  # [B, T] frozen reference log-probs
    values: torch.Tensor | None = None  # [B, T] critic values V(s_t) ("old" values)
    # 4. shape: r_t = −β·w·kl_t + 1[t = T]·s
    mask: torch.Tensor | None = None  # [B, T] float: response_mask × valid (a dropped sample trains nothing)
    kl: torch.Tensor | None = None  # [B, T] per-token KL estimate, 0 on padding
    weights: torch.Tensor | None = None  # [B] w(σ²) multiplying each sample's KL penalty (1: vanilla)
    rewards: torch.Tensor | None = None  # [B, T] shaped per-token rewards
    # 5. GAE
    advantages: torch.Tensor | None = None  # [B, T] (whitened when ppo.whiten_advantages)
    returns: torch.Tensor | None = None  # [B, T] advantages + values (before whitening)
    # room for more: per-sample tensors with B rows (selected with the rest) or lists of B items
    extras: dict = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.response_ids.shape[0]

    @property
    def sequences(self) -> torch.Tensor:
        """[B, P + T] prompt and response ids, the input of every forward pass."""
        return torch.cat([self.prompt_ids, self.response_ids], 1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.response_mask], 1)

    def select(self, idx: torch.Tensor) -> Experience:
        """The samples `idx` (a 1-D index tensor) of every per-sample field and extra."""
        return Experience(**{f.name: _take(getattr(self, f.name), idx) for f in fields(self) if f.name != "extras"},
                          extras={k: _take(v, idx) for k, v in self.extras.items()})

    def chunks(self, size: int):
        """Consecutive minibatches of at most `size` samples, in order."""
        for s in range(0, self.batch_size, size):
            yield self.select(torch.arange(s, min(s + size, self.batch_size)))


def _take(x, idx: torch.Tensor):
    if x is None:
        return None
    if torch.is_tensor(x):
        return x[idx.to(x.device)]
    if isinstance(x, list):
        return [x[int(i)] for i in idx]
    raise TypeError(f"Experience holds per-sample tensors or lists; cannot select from {type(x).__name__}")
