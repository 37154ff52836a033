"""The forward passes of PPO's models over prompt+response sequences: the one place where the
actor, reference and critic modules are called for the per-token quantities PPO needs (logits of
the response tokens, values of the states before them), at rollout time and in the update.

Layout (varpo.ppo.experience): prompts left-padded to P tokens, responses right-padded to T, so
response token t sits at absolute position P + t. Its log-prob and its value are read at position
P + t − 1 (the state before emitting it). Or padding-free (ppo.packing, varpo.ppo.packing): the
real tokens of several samples in one row, position ids restarting per sample, outputs read at the
row's `keep` positions (`packed_logits`, `packed_values`). Either way the trunk's last block runs at
the kept positions only where varpo.models.last_block can (GPT-2, the Llama family), the model's own
forward elsewhere."""
from __future__ import annotations

import torch

from ..masks import position_ids_from_mask
from ..models import last_block
from ..models.value_head import ValueModel, causal_lm, shares_trunk, values_of
from .experience import Experience
from .lm_head import cpu_head, output_head
from .packing import PackedRow


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
        kw = dict(input_ids=seq, attention_mask=att, position_ids=position_ids_from_mask(att))
        logits, values = _at_kept(model, keep, kw, logits=True, values=with_values) or _full(model, keep, kw, with_values)
    else:
        if with_values:
            raise ValueError("response_logits(with_values=True) needs an actor with a value head (model.critic=shared_trunk)")
        logits = model(input_ids=seq, attention_mask=att, position_ids=position_ids_from_mask(att)).logits[:, -(T + 1) : -1]
    logits = logits / temperature if temperature != 1.0 else logits
    return (logits, values) if with_values else logits


def _full(model, keep: torch.Tensor, kw: dict, with_values: bool):
    """(logits, values or None) at `keep` from the model's own forward."""
    extra = {"value_positions": keep} if with_values else {}
    with cpu_head(model):  # the CPU head as oneDNN's linear (varpo.ppo.lm_head)
        out = model(**kw, logits_to_keep=keep, **extra)
    return out.logits, (out.values if with_values else None)


def _at_kept(model, keep: torch.Tensor, kw: dict, logits: bool, values: bool):
    """(logits [B, m, V] or None, values [B, m] or None) at positions `keep` [m], the trunk's last
    block computing only those (varpo.models.last_block); None where that does not apply (another
    architecture, ZeRO-3). `model`: an actor or reference (causal LM, with or without a
    value head) or a critic (ValueModel), or its engine; `kw`: its input_ids, attention_mask and
    position_ids (the mask None for a packed row)."""
    module = getattr(model, "module", model)
    base = last_block.trunk(module.backbone if isinstance(module, ValueModel) else causal_lm(module))
    if base is None:
        return None
    h = last_block.hidden_at(base, keep, kw["input_ids"], kw["attention_mask"], kw["position_ids"])
    out_logits = None
    if logits:
        with cpu_head(model):
            out_logits = output_head(model)(h)
    return out_logits, (values_of(module.value_head, h) if values else None)


def _takes_logits_to_keep(model) -> bool:
    """HF causal LMs (transformers ≥ 4.50) accept `logits_to_keep`; a custom module may not."""
    return "logits_to_keep" in _parameters(model)


def _takes(model, name: str) -> bool:
    """Whether the module's forward takes `name`, by name or through **kwargs."""
    import inspect

    params = _parameters(model)
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _parameters(model):
    import inspect

    module = getattr(model, "module", model)  # a DeepSpeed engine forwards kwargs to its module
    return inspect.signature(module.forward).parameters


def _packed_inputs(model, row: PackedRow) -> dict:
    """A packed row's forward arguments: no attention mask (its absence is what makes HF read the
    restarting position ids as sample boundaries) and no KV cache (a cache also turns that off)."""
    kw = dict(input_ids=row.input_ids, attention_mask=None, position_ids=row.position_ids)
    if _takes(model, "use_cache"):
        kw["use_cache"] = False
    return kw


def packed_logits(model, row: PackedRow, temperature: float, with_values: bool = False):
    """response_logits for a packed row: logits [1, m, V] at the row's kept positions, divided by
    the temperature (with_values: and the trunk's values [1, m] at the same positions)."""
    kw = _packed_inputs(model, row)
    values = None
    if _takes_logits_to_keep(model):
        logits, values = (_at_kept(model, row.keep, kw, logits=True, values=with_values)
                          or _full(model, row.keep, kw, with_values))
    else:
        if with_values:
            raise ValueError("packed_logits(with_values=True) needs an actor with a value head (model.critic=shared_trunk)")
        logits = model(**kw).logits[:, row.keep]
    logits = logits / temperature if temperature != 1.0 else logits
    return (logits, values) if with_values else logits


def packed_values(critic, row: PackedRow) -> torch.Tensor:
    """response_values for a packed row: [1, m] at its kept positions."""
    kw = _packed_inputs(critic, row)
    kept = _at_kept(critic, row.keep, kw, logits=False, values=True)
    if kept is not None:
        return kept[1]
    if shares_trunk(critic):
        return critic(**kw, logits_to_keep=1, value_positions=row.keep).values
    return critic(kw.pop("input_ids"), **kw)[:, row.keep]


def response_values(critic, rollout: Experience) -> torch.Tensor:
    """Values [B, T] of the states before each response token. `critic`: the critic's engine, or
    with model.critic=shared_trunk the actor's, whose trunk forward then feeds the value head and
    the LM head only at the last position (the logits are not wanted here)."""
    seq, att = rollout.sequences, rollout.attention_mask
    P = rollout.prompt_ids.shape[1]
    keep = torch.arange(P - 1, seq.shape[1] - 1, device=seq.device)
    kept = _at_kept(critic, keep, dict(input_ids=seq, attention_mask=att, position_ids=position_ids_from_mask(att)),
                    logits=False, values=True)
    if kept is not None:
        return kept[1]
    if shares_trunk(critic):
        return critic(input_ids=seq, attention_mask=att, position_ids=position_ids_from_mask(att),
                      logits_to_keep=1, value_positions=keep).values
    v = critic(seq, attention_mask=att, position_ids=position_ids_from_mask(att))
    return v[:, P - 1 : -1]


@torch.no_grad()
def forward_in_chunks(fn, exp: Experience, size: int, *per_sample: torch.Tensor | None,
                      chunks: list[list[int]] | None = None):
    """fn(chunk, *its rows of per_sample) over chunks of at most `size` samples (no grad), the
    outputs in the samples' order along the batch: tensors, or (named) tuples of them, nested;
    None stays None. A per_sample argument that is None is passed as None. `chunks`: the samples
    of each chunk (e.g. varpo.ppo.packing.balanced_chunks); default consecutive runs of `size`."""
    if chunks is None:
        chunks = [list(range(s, min(s + size, exp.batch_size))) for s in range(0, exp.batch_size, size)]
    parts = []
    for c in chunks:
        idx = torch.as_tensor(c, dtype=torch.long)
        parts.append(fn(exp.select(idx), *(None if x is None else x[idx.to(x.device)] for x in per_sample)))
    order = [i for c in chunks for i in c]
    inverse = None if order == list(range(len(order))) else torch.argsort(torch.as_tensor(order))
    return _cat(parts, inverse)


def _cat(parts: list, inverse: torch.Tensor | None = None):
    if parts[0] is None:
        return None
    if torch.is_tensor(parts[0]):
        out = torch.cat(parts, 0)
        return out if inverse is None else out[inverse.to(out.device)]
    fields = [_cat(list(f), inverse) for f in zip(*parts)]
    return tuple(fields) if type(parts[0]) is tuple else type(parts[0])(*fields)
