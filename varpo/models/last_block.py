"""The trunk's last block at the kept positions only: PPO reads a forward's outputs (log-probs,
values) at the positions that predict response tokens, yet a transformer's last block computes every
position, prompt included. Only the last block can skip positions: every earlier block's output at
a prompt position is a key and value some kept position attends to, but the last block's output is
read nowhere else. So the blocks before it run as HF runs them, and the last one computes keys and
values at every position and everything else (queries, attention, output projection, MLP, final
norm) at the kept positions. Per prompt token that skips 9 of GPT-2's 12 d² products of the block,
and more of a Llama block (its keys and values are the small grouped-query projections): with half
of each sequence prompt and four blocks (the `small` benchmark) about 1/10 of the trunk's products,
in the update's forward and backward of actor and critic and in the reference and value forwards;
for an L-block model about (prompt share)/L.

Architectures: GPT-2 (ln_1, attn.c_attn/c_proj, ln_2, mlp; absolute position embeddings) and the
Llama family (Llama, Qwen2, Qwen3, Mistral: input_layernorm, self_attn.q/k/v/o_proj with Qwen3's
q_norm/k_norm, rotary embeddings, grouped-query attention, a sliding window, post_attention_layernorm,
mlp). Submodules are called as modules, so LoRA-wrapped projections keep their adapters and dropout
modules act as in the full forward. Other architectures, GPT-2 with non-default attention scaling,
and ZeRO-3 (hooks gather parameters per module forward) keep the full forward (`trunk` returns
None). Float64-checked against the full forward (tests/models/test_last_block.py): logits, values
and gradients, padded and packed, each architecture."""
from __future__ import annotations

import sys
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


def _hf_model(module: nn.Module) -> nn.Module:
    """The HF model under a peft wrapper (the module itself otherwise)."""
    get = getattr(module, "get_base_model", None)
    return get() if callable(get) else module


def _blocks_and_norm(base: nn.Module) -> tuple[str, str] | None:
    """The attribute names of a supported trunk's blocks and final norm."""
    import transformers as tf

    if isinstance(base, tf.GPT2Model):
        c = base.config
        if (not c.scale_attn_weights or c.scale_attn_by_inverse_layer_idx or c.reorder_and_upcast_attn
                or c.add_cross_attention):
            return None  # attention scaled otherwise than 1/sqrt(head_dim), or a cross-attention
        return "h", "ln_f"
    if isinstance(base, (tf.LlamaModel, tf.Qwen2Model, tf.Qwen3Model, tf.MistralModel)):
        return "layers", "norm"
    return None


def trunk(module: nn.Module) -> nn.Module | None:
    """The trunk (e.g. GPT2Model, LlamaModel) of a causal LM, of a critic's backbone or of either
    wrapped by peft, where its last block may run at the kept positions only; None where the full
    forward must run."""
    base = getattr(_hf_model(module), "base_model", None)
    names = _blocks_and_norm(base) if base is not None else None
    if names is None or len(getattr(base, names[0])) == 0:
        return None
    if any(hasattr(p, "ds_id") for p in getattr(base, names[0])[-1].parameters()):
        return None  # ZeRO-3: parameters gathered by hooks around each module's own forward
    return base


def every_token_projections(base: nn.Module | None) -> str | None:
    """What of the last block `hidden_at` runs at every token of a `trunk`: "qkv" (GPT-2's one
    projection) or "kv" (keys and values; queries at the kept positions); None: no trunk."""
    import transformers as tf

    return None if base is None else "qkv" if isinstance(base, tf.GPT2Model) else "kv"


@contextmanager
def _without_last_block(base: nn.Module):
    """Inside: `base` runs every block but the last and no final norm, so its output is the last
    block's input."""
    blocks_name, norm_name = _blocks_and_norm(base)
    blocks, norm = getattr(base, blocks_name), getattr(base, norm_name)
    setattr(base, blocks_name, nn.ModuleList(list(blocks)[:-1]))
    setattr(base, norm_name, nn.Identity())
    try:
        yield blocks[-1], norm
    finally:
        setattr(base, blocks_name, blocks)
        setattr(base, norm_name, norm)


def at(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """x [B, L, ...] at positions `keep`: [m], the same in every row, or [B, m], each row's own."""
    if keep.dim() == 1:
        return x[:, keep]
    return x[torch.arange(x.shape[0], device=x.device)[:, None], keep]


def allowed_keys(keep: torch.Tensor, attention_mask: torch.Tensor | None, position_ids: torch.Tensor,
                 window: int | None = None) -> torch.Tensor:
    """[B, 1, m, L] bool: which positions each kept position ([m] or [B, m]) attends to, as HF masks
    them: earlier or itself (and, with a sliding `window`, fewer than `window` positions back), not
    padding (`attention_mask` [B, L]); without a mask (packed rows), within its own sample, whose
    start is where the position ids restart at 0."""
    B, L = position_ids.shape
    query = keep.expand(B, -1)[:, :, None]  # [B, m, 1]
    key = torch.arange(L, device=keep.device)
    allowed = key <= query  # [B, m, L] causal
    if window is not None:
        allowed &= key > query - window
    if attention_mask is not None:
        allowed &= attention_mask.bool()[:, None, :]
    else:
        sample = torch.cumsum(position_ids == 0, dim=-1)  # [B, L]
        allowed &= at(sample, keep)[:, :, None] == sample[:, None, :]
    return allowed[:, None]


def _attention(attn: nn.Module, q, k, v, allowed, scale: float, dropout: float, eager: bool,
               softmax_dtype: torch.dtype | None = None) -> torch.Tensor:
    """softmax(q kᵀ · scale, masked) v over heads [B, H, m, hd] × [B, H, L, hd]: the products spelt out
    where the model runs HF's eager attention (its softmax in `softmax_dtype`, as the architecture's
    eager attention takes it), else torch's fused kernel."""
    dropout = dropout if attn.training else 0.0
    if eager:
        scores = (q @ k.transpose(-1, -2)) * scale
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        scores = scores.softmax(-1, dtype=softmax_dtype).to(q.dtype)
        return F.dropout(scores, dropout, training=attn.training) @ v
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout, scale=scale)


def _eager(config) -> bool:
    return getattr(config, "_attn_implementation", None) in ("eager", None)


def _attend(attn: nn.Module, q, k, v, keep, attention_mask, position_ids, scale: float, dropout: float,
            window: int | None = None, softmax_dtype: torch.dtype | None = None) -> torch.Tensor:
    """The kept queries q [B, H, m, hd] against keys and values [B, H, L, hd], masked as HF masks
    them (`allowed_keys`). A packed row (no attention mask, one row) goes sample by sample, each
    sample's kept queries against its own keys only: Σ kᵢ·nᵢ products as a variable-length kernel
    does, not m·L of which all but those are masked."""
    eager = _eager(attn.config)
    if attention_mask is not None or keep.dim() != 1 or q.shape[0] != 1:
        return _attention(attn, q, k, v, allowed_keys(keep, attention_mask, position_ids, window), scale,
                          dropout, eager, softmax_dtype)
    starts = (position_ids[0] == 0).nonzero().flatten()
    sample = torch.searchsorted(starts, keep, right=True) - 1  # of each kept position
    bounds = torch.cat([starts, starts.new_tensor([position_ids.shape[-1]])]).tolist()
    parts, order = [], []
    for s in sample.unique().tolist():
        rows = (sample == s).nonzero().flatten()
        a, b = bounds[s], bounds[s + 1]
        parts.append(_attention(attn, q[:, :, rows], k[:, :, a:b], v[:, :, a:b],
                                allowed_keys(keep[rows] - a, None, position_ids[:, a:b], window), scale, dropout,
                                eager, softmax_dtype))
        order.append(rows)
    return torch.cat(parts, dim=2)[:, :, torch.argsort(torch.cat(order))]


def _gpt2_block_at(block, h, keep, attention_mask, position_ids, base):
    attn = block.attn
    B, L, d = h.shape
    heads = attn.num_heads
    q, k, v = attn.c_attn(block.ln_1(h)).split(d, dim=2)

    def split_heads(x):
        return x.view(B, x.shape[1], heads, d // heads).transpose(1, 2)

    a = _attend(attn, split_heads(at(q, keep)), split_heads(k), split_heads(v), keep, attention_mask, position_ids,
                (d // heads) ** -0.5, attn.attn_dropout.p)
    a = attn.resid_dropout(attn.c_proj(a.transpose(1, 2).reshape(B, keep.shape[-1], d)))
    x = at(h, keep) + a
    return x + block.mlp(block.ln_2(x))


def _llama_block_at(block, h, keep, attention_mask, position_ids, base):
    attn = block.self_attn
    B, L, _ = h.shape
    hd = attn.head_dim
    rope = sys.modules[type(attn).__module__].apply_rotary_pos_emb  # the model's own rotary embedding
    cos, sin = base.rotary_emb(h, position_ids)  # [B, L, hd]
    x = block.input_layernorm(h)
    q = attn.q_proj(at(x, keep)).view(B, keep.shape[-1], -1, hd)
    k = attn.k_proj(x).view(B, L, -1, hd)
    v = attn.v_proj(x).view(B, L, -1, hd).transpose(1, 2)
    if hasattr(attn, "q_norm"):  # Qwen3: RMSNorm over each head's query and key
        q, k = attn.q_norm(q), attn.k_norm(k)
    q = rope(q.transpose(1, 2), q.transpose(1, 2), at(cos, keep), at(sin, keep))[0]
    k = rope(k.transpose(1, 2), k.transpose(1, 2), cos, sin)[0]
    groups = q.shape[1] // k.shape[1]  # grouped-query attention: each key/value head serves `groups` query heads
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    # Qwen2/3 name the window on each attention (None on its full-attention layers), Mistral on its config
    window = getattr(attn, "sliding_window", getattr(attn.config, "sliding_window", None))
    a = _attend(attn, q, k, v, keep, attention_mask, position_ids, attn.scaling, attn.attention_dropout, window,
                softmax_dtype=torch.float32)
    y = at(h, keep) + attn.o_proj(a.transpose(1, 2).reshape(B, keep.shape[-1], -1))
    return y + block.mlp(block.post_attention_layernorm(y))


def hidden_at(base: nn.Module, keep: torch.Tensor, input_ids: torch.Tensor,
              attention_mask: torch.Tensor | None, position_ids: torch.Tensor) -> torch.Tensor:
    """The trunk's last hidden state (after its final norm) at positions `keep`, [m] in every row or
    [B, m] per row: [B, m, d], what `base(...).last_hidden_state` is there, with the last block
    computing only those positions. `attention_mask` None: packed rows (samples told apart by restarting
    position ids)."""
    import transformers as tf

    block_at = _gpt2_block_at if isinstance(base, tf.GPT2Model) else _llama_block_at
    with _without_last_block(base) as (block, norm):
        h = base(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                 use_cache=False).last_hidden_state
    return norm(block_at(block, h, keep, attention_mask, position_ids, base))
