"""Matrix-product FLOPs of a decoder-only transformer, counted by formula from its shape (the way
verl's flops_counter counts them), so that every phase of a PPO step can say how much arithmetic it
did and a benchmark can divide by time and by the machine's measured peak (model FLOPs
utilisation, MFU). Pure functions of a `ModelShape` and the token layout; nothing is timed here.

Conventions (verl's, with two differences that make the count what varpo actually runs):
- 2 FLOPs per multiply-add; only matrix products count (the linear layers, the attention's QKᵀ and
  PV, the LM head), not norms, activations, softmax or the optimizer;
- attention over a sequence of L tokens counts the full L² score matrix (no halving for the causal
  mask, as verl and PaLM count it); a sliding window of W tokens counts L·min(L, W);
- a training forward + backward is 3× the forward (the backward computes the gradients of the
  inputs and of the weights);
- differences from verl: the embedding lookup is not a matrix product (verl counts 2·V·H per token
  for it), and the LM head counts only at the positions whose logits are computed (varpo keeps only
  those that predict response tokens; generate, only the last position of each forward);
- where the trunk's last block runs at the kept positions only (`last_block_at_kept`,
  varpo.models.last_block), a forward given `kept` counts that block's key and value projections
  (GPT-2's fused projection: queries too) at every token and the rest of it (attention of the kept
  queries, output projection, MLP) and a value head at the kept positions only.
`torch.utils.flop_counter.FlopCounterMode` counts the same for a model run on the same layout
(tests/models/test_flops.py checks it on tiny Llama, GPT-2, Qwen2 and Mistral models)."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelShape:
    """What the FLOP count needs of a decoder-only transformer."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    gated_mlp: bool  # gate, up and down projections (Llama, Qwen2, Mistral) or up and down (GPT-2)
    sliding_window: int | None = None  # tokens each position attends to at most (Mistral), None: all
    param_bytes: int = 4  # bytes per weight (float32 4, bfloat16 2)
    # PPO's forwards run the last block at the kept positions only, but for the projections at every
    # token: "kv" (keys and values) or "qkv" (GPT-2's one projection, queries too); None: whole model
    last_block_at_kept: str | None = None

    @classmethod
    def from_config(cls, config, param_bytes: int = 4) -> ModelShape:
        """From an HF config of the architectures varpo supports (Llama, GPT-2, Qwen2, Mistral and
        any config with Llama's field names)."""
        if getattr(config, "model_type", None) == "gpt2":
            hidden = config.n_embd
            return cls(layers=config.n_layer, hidden=hidden, heads=config.n_head, kv_heads=config.n_head,
                       head_dim=hidden // config.n_head, intermediate=config.n_inner or 4 * hidden,
                       vocab=config.vocab_size, gated_mlp=False, param_bytes=param_bytes)
        missing = [f for f in ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size",
                               "vocab_size") if getattr(config, f, None) is None]
        if missing:
            raise ValueError(f"cannot count FLOPs of a {getattr(config, 'model_type', type(config).__name__)!r} "
                             f"model: its config has no {missing} (supported: Llama, GPT-2, Qwen2, Mistral)")
        heads = config.num_attention_heads
        window = getattr(config, "sliding_window", None)
        if getattr(config, "model_type", None) == "qwen2" and not getattr(config, "use_sliding_window", False):
            window = None  # Qwen2 carries a window size but uses it only when use_sliding_window is set
        return cls(layers=config.num_hidden_layers, hidden=config.hidden_size, heads=heads,
                   kv_heads=getattr(config, "num_key_value_heads", None) or heads,
                   head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
                   intermediate=config.intermediate_size, vocab=config.vocab_size, gated_mlp=True,
                   sliding_window=window, param_bytes=param_bytes)

    @property
    def layer_matmul_params(self) -> int:
        """Weights of one block's linear layers: Q, K, V, O and the MLP."""
        q_o = 2 * self.hidden * self.heads * self.head_dim
        k_v = 2 * self.hidden * self.kv_heads * self.head_dim
        return q_o + k_v + (3 if self.gated_mlp else 2) * self.hidden * self.intermediate

    @property
    def every_token_params(self) -> int:
        """Weights of the last block's projections that run at every token when the rest of it runs at
        the kept positions only (`last_block_at_kept`)."""
        kv = 2 * self.hidden * self.kv_heads * self.head_dim
        return kv + (self.hidden * self.heads * self.head_dim if self.last_block_at_kept == "qkv" else 0)

    @property
    def body_flops_per_token(self) -> int:
        """The blocks' linear layers for one token (attention scores apart)."""
        return 2 * self.layers * self.layer_matmul_params

    @property
    def lm_head_flops(self) -> int:
        """The LM head at one position."""
        return 2 * self.hidden * self.vocab

    def attention_flops(self, queries: int, keys: int) -> int:
        """QKᵀ and PV, all layers, for `queries` positions against `keys` keys each."""
        return 4 * self.layers * self.heads * self.head_dim * queries * keys

    def window(self, length: int) -> int:
        return length if self.sliding_window is None else min(length, self.sliding_window)

    def weight_bytes(self, lm_head: bool = True) -> int:
        """Bytes of the weights a forward reads: the blocks' linear layers and the LM head."""
        return self.param_bytes * (self.layers * self.layer_matmul_params + (self.hidden * self.vocab if lm_head else 0))

    def kv_bytes_per_token(self) -> int:
        """Bytes of one token's keys and values, all layers (the KV cache a decode step reads)."""
        return self.param_bytes * 2 * self.layers * self.kv_heads * self.head_dim


def _ints(xs: Iterable) -> list[int]:
    return [int(x) for x in xs]


def forward_flops(shape: ModelShape, seq_lens: Iterable[int], lm_head_positions: int = 0,
                  value_head: bool = False, kept: Iterable[int] | None = None) -> int:
    """One forward over sequences of `seq_lens` tokens (each attends within itself): the blocks,
    the attention, the LM head at `lm_head_positions` positions in all, and with `value_head` a
    hidden -> 1 head at every position (a critic's). `kept`: per sequence, how many positions PPO
    reads (its response tokens); where `shape.last_block_at_kept`, the last block and the value head
    count at those only (module docstring)."""
    lens = _ints(seq_lens)
    tokens = sum(lens)
    flops = lm_head_positions * shape.lm_head_flops
    if kept is None or not shape.last_block_at_kept:
        flops += tokens * shape.body_flops_per_token + sum(shape.attention_flops(n, shape.window(n)) for n in lens)
        return flops + (2 * shape.hidden * tokens if value_head else 0)
    kept = _ints(kept)
    layer = shape.attention_flops(1, 1) // shape.layers  # one block's QKᵀ and PV per query and key
    flops += tokens * 2 * ((shape.layers - 1) * shape.layer_matmul_params + shape.every_token_params)
    flops += sum(kept) * 2 * (shape.layer_matmul_params - shape.every_token_params)
    flops += sum((shape.layers - 1) * layer * n * shape.window(n) + layer * k * shape.window(n) for n, k in zip(lens, kept))
    return flops + (2 * shape.hidden * sum(kept) if value_head else 0)


def training_flops(shape: ModelShape, seq_lens: Iterable[int], lm_head_positions: int = 0,
                   value_head: bool = False, kept: Iterable[int] | None = None) -> int:
    """Forward and backward (3× the forward)."""
    return 3 * forward_flops(shape, seq_lens, lm_head_positions, value_head, kept)


def generation_flops(shape: ModelShape, prompt_lens: Iterable[int], new_tokens: Iterable[int]) -> int:
    """Sampling `new_tokens[i]` tokens after a prompt of `prompt_lens[i]` tokens with a KV cache: a
    prefill forward over the prompt (LM head at its last position: the first new token), then one
    single-token forward per further new token, attending to everything before it."""
    flops = 0
    for p, n in zip(_ints(prompt_lens), _ints(new_tokens)):
        if n <= 0:
            continue
        flops += forward_flops(shape, [p], lm_head_positions=1)
        # decode step k (1 ≤ k < n) feeds token k − 1 of the response at context length p + k
        for k in range(1, n):
            flops += shape.body_flops_per_token + shape.lm_head_flops + shape.attention_flops(1, shape.window(p + k))
    return flops


def generation_bytes(shape: ModelShape, prompt_lens: Iterable[int], new_tokens: Iterable[int]) -> int:
    """The memory traffic generation cannot avoid when the batch decodes together: each forward
    (the prefill, then one per decode step of the longest response) reads every weight once, and
    each sample's decode step reads its KV cache so far. Activations are left out (a few rows)."""
    prompts, news = _ints(prompt_lens), _ints(new_tokens)
    if not news or max(news) <= 0:
        return 0
    forwards = max(news)  # the batch's prefill, then max − 1 decode steps
    kv = shape.kv_bytes_per_token()
    cache = sum(kv * (p + k) for p, n in zip(prompts, news) for k in range(1, n))
    return forwards * shape.weight_bytes() + cache
