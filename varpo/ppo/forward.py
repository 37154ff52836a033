"""The forward passes of PPO's models over prompt+response sequences: the one place where the
actor, reference and critic modules are called for the per-token quantities PPO needs (logits of
the response tokens, values of the states before them), at rollout time and in the update.

Layout (varpo.ppo.experience): prompts left-padded to P tokens, responses right-padded to T, so
response token t sits at absolute position P + t. Its log-prob and its value are read at position
P + t − 1 (the state before emitting it)."""
from __future__ import annotations

import torch

from ..masks import position_ids_from_mask
from ..models.value_head import shares_trunk
from .experience import Experience


def response_logits(model, rollout: Experience, temperature: float, with_values: bool = False):
    """Logits [B, T, V] that predicted each response token, divided by the sampling temperature
    so that log-probs are those of the distribution the tokens were drawn from. Only the T
    positions that predict response tokens go through the LM head (`logits_to_keep`): prompt
    positions predict nothing PPO uses, and the head over the vocabulary is a large share of a
    forward. with_values (an actor that shares its trunk with the value head,
    model.critic=shared_trunk): (logits, values [B, T]) from the same forward, the values read at
    the same T positions (the state before each response token)."""
    seq, att = rollout.sequences, rollout.attention_mask
    T, L = rollout.response_ids.shape[1], seq.shape[1]
    values = None
    if _takes_logits_to_keep(model):
        # position P − 1 + t predicts response token t: keeping exactly those T positions (an index
        # tensor, not the last T + 1 then a slice) makes the LM head's output the contiguous
        # [B, T, V] the kernels read, with no B·T·V copy forward or backward
        keep = torch.arange(L - T - 1, L - 1, device=seq.device)
        extra = {"value_positions": keep} if with_values else {}
        out = model(input_ids=seq, attention_mask=att, position_ids=position_ids_from_mask(att),
                    logits_to_keep=keep, **extra)
        logits, values = out.logits, (out.values if with_values else None)
    else:
        if with_values:
            raise ValueError("response_logits(with_values=True) needs an actor with a value head (model.critic=shared_trunk)")
        logits = model(input_ids=seq, attention_mask=att, position_ids=position_ids_from_mask(att)).logits[:, -(T + 1) : -1]
    logits = logits / temperature if temperature != 1.0 else logits
    return (logits, values) if with_values else logits


def _takes_logits_to_keep(model) -> bool:
    """HF causal LMs (transformers ≥ 4.50) accept `logits_to_keep`; a custom module may not."""
    import inspect

    module = getattr(model, "module", model)  # a DeepSpeed engine forwards kwargs to its module
    return "logits_to_keep" in inspect.signature(module.forward).parameters


def response_values(critic, rollout: Experience) -> torch.Tensor:
    """Values [B, T] of the states before each response token. `critic`: the critic's engine, or
    with model.critic=shared_trunk the actor's, whose trunk forward then feeds the value head and
    the LM head only at the last position (the logits are not wanted here)."""
    seq, att = rollout.sequences, rollout.attention_mask
    P = rollout.prompt_ids.shape[1]
    if shares_trunk(critic):
        keep = torch.arange(P - 1, seq.shape[1] - 1, device=seq.device)
        return critic(input_ids=seq, attention_mask=att, position_ids=position_ids_from_mask(att),
                      logits_to_keep=1, value_positions=keep).values
    v = critic(seq, attention_mask=att, position_ids=position_ids_from_mask(att))
    return v[:, P - 1 : -1]


@torch.no_grad()
def forward_in_chunks(fn, exp: Experience, size: int, *per_sample: torch.Tensor | None):
    """fn(chunk, *its rows of per_sample) over consecutive chunks of at most `size` samples (no
    grad), the outputs concatenated along the batch: tensors, or (named) tuples of them, nested;
    None stays None. A per_sample argument that is None is passed as None."""
    parts = []
    for s in range(0, exp.batch_size, size):
        idx = torch.arange(s, min(s + size, exp.batch_size))
        parts.append(fn(exp.select(idx), *(None if x is None else x[idx.to(x.device)] for x in per_sample)))
    return _cat(parts)


def _cat(parts: list):
    if parts[0] is None:
        return None
    if torch.is_tensor(parts[0]):
        return torch.cat(parts, 0)
    fields = [_cat(list(f)) for f in zip(*parts)]
    return tuple(fields) if type(parts[0]) is tuple else type(parts[0])(*fields)
