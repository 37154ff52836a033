"""The trunk's last block at the kept positions only: PPO reads a forward's outputs (log-probs,
values) at the positions that predict response tokens, yet a transformer's last block computes every
position, prompt included. Only the last block can skip positions: every earlier block's output at
a prompt position is a key and value some kept position attends to, but the last block's output is
read nowhere else. So the blocks before it run as HF runs them, and the last one computes keys and
values at every position and everything else (queries, attention, output projection, MLP, final
norm) at the kept positions: of its per-token products (QKV 3d², output d², MLP 8d² for GPT-2) the
prompt positions skip 9d² of 12d². With half of each sequence prompt and four blocks (the `small`
benchmark) that is ~1/10 of the trunk's matrix products, in the update's forward and backward of
actor and critic and in the reference and value forwards.

GPT-2 only for now (its blocks: ln_1, attn.c_attn/c_proj, ln_2, mlp; absolute position
embeddings, so the last block needs no positions, only the mask); submodules are called as modules,
so LoRA-wrapped projections keep their adapters and dropout modules act as in the full forward.
Other architectures, GPT-2 variants with non-default attention scaling and ZeRO-3 (hooks gather
parameters per module forward) keep the full forward (`trunk` returns None). Float64-checked against the full forward
(tests/models/test_last_block.py): logits, values and gradients, padded and packed."""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


def _hf_model(module: nn.Module) -> nn.Module:
    """The HF model under a peft wrapper (the module itself otherwise)."""
    get = getattr(module, "get_base_model", None)
    return get() if callable(get) else module


def trunk(module: nn.Module) -> nn.Module | None:
    """The GPT-2 trunk (GPT2Model) of a causal LM, of a critic's backbone or of either wrapped by peft,
    where its last block may run at the kept positions only; None where the full forward must run."""
    from transformers import GPT2LMHeadModel, GPT2Model

    hf = _hf_model(module)
    base = hf.transformer if isinstance(hf, GPT2LMHeadModel) else hf
    if not isinstance(base, GPT2Model) or len(base.h) == 0:
        return None
    c = base.config
    if (not c.scale_attn_weights or c.scale_attn_by_inverse_layer_idx or c.reorder_and_upcast_attn
            or c.add_cross_attention):
        return None  # attention scaled otherwise than 1/sqrt(head_dim), or a cross-attention
    if any(hasattr(p, "ds_id") for p in base.h[-1].parameters()):
        return None  # ZeRO-3: parameters gathered by hooks around each module's own forward
    return base


@contextmanager
def _without_last_block(base: nn.Module):
    """Inside: `base` runs every block but the last and no final norm, so its output is the last
    block's input."""
    blocks, ln_f = base.h, base.ln_f
    base.h, base.ln_f = nn.ModuleList(list(blocks)[:-1]), nn.Identity()
    try:
        yield blocks[-1], ln_f
    finally:
        base.h, base.ln_f = blocks, ln_f


def allowed_keys(keep: torch.Tensor, attention_mask: torch.Tensor | None,
                 position_ids: torch.Tensor) -> torch.Tensor:
    """[B, 1, m, L] bool: which positions each kept position attends to, as HF masks them: earlier or
    itself, not padding (`attention_mask` [B, L]); without a mask (packed rows), within its own
    sample, whose start is where the position ids restart at 0."""
    L = position_ids.shape[-1]
    allowed = torch.arange(L, device=keep.device)[None, :] <= keep[:, None]  # [m, L] causal
    if attention_mask is not None:
        return allowed[None, None] & attention_mask.bool()[:, None, None, :]
    sample = torch.cumsum(position_ids == 0, dim=-1)  # [B, L]
    same = sample[:, keep][:, :, None] == sample[:, None, :]  # [B, m, L]
    return (allowed[None] & same)[:, None]


def _last_block_at(block: nn.Module, ln_f: nn.Module, h: torch.Tensor, keep: torch.Tensor,
                   allowed: torch.Tensor) -> torch.Tensor:
    """GPT2Block then the final norm, at `keep` only: keys and values from every position of `h`."""
    attn = block.attn
    B, L, d = h.shape
    heads = attn.num_heads
    q, k, v = attn.c_attn(block.ln_1(h)).split(d, dim=2)
    q = q[:, keep]

    def split_heads(x):
        return x.view(B, x.shape[1], heads, d // heads).transpose(1, 2)

    q, k, v = split_heads(q), split_heads(k), split_heads(v)
    if attn.config._attn_implementation in ("eager", None):  # the products spelt out, as HF's eager does
        scores = (q @ k.transpose(-1, -2)) * (d // heads) ** -0.5
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min).softmax(-1)
        a = attn.attn_dropout(scores) @ v
    else:
        dropout = attn.attn_dropout.p if attn.training else 0.0  # as GPT-2's attention applies it
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout)
    a = attn.resid_dropout(attn.c_proj(a.transpose(1, 2).reshape(B, keep.numel(), d)))
    x = h[:, keep] + a
    x = x + block.mlp(block.ln_2(x))
    return ln_f(x)


def hidden_at(base: nn.Module, keep: torch.Tensor, input_ids: torch.Tensor,
              attention_mask: torch.Tensor | None, position_ids: torch.Tensor) -> torch.Tensor:
    """The trunk's last hidden state (after its final norm) at positions `keep` [m] of every row:
    [B, m, d], what `base(...).last_hidden_state[:, keep]` is, with the last block computing only
    those positions. `attention_mask` None: packed rows (samples told apart by restarting
    position ids)."""
    with _without_last_block(base) as (block, ln_f):
        h = base(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                 use_cache=False).last_hidden_state
    return _last_block_at(block, ln_f, h, keep, allowed_keys(keep, attention_mask, position_ids))
