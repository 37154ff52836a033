"""FLOPs by formula (varpo.models.flops, varpo.ppo.phase_flops) against torch.utils.flop_counter
run on tiny models of each supported architecture, and against hand counts."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from varpo.models.flops import (
    ModelShape,
    forward_flops,
    generation_bytes,
    generation_flops,
    training_flops,
)

V = 97
ARCHS = ("llama", "gpt2", "qwen2", "mistral")


def _config(arch: str, **over):
    import transformers as tf

    ids = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if arch == "gpt2":
        return tf.GPT2Config(vocab_size=V, n_embd=48, n_layer=2, n_head=4, n_inner=80, n_positions=128, **ids, **over)
    cls = {"llama": tf.LlamaConfig, "qwen2": tf.Qwen2Config, "mistral": tf.MistralConfig}[arch]
    return cls(vocab_size=V, hidden_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               intermediate_size=80, max_position_embeddings=128, **ids, **over)


def _model(arch: str):
    import transformers as tf

    torch.manual_seed(0)
    # eager: the flop counter's sdpa formula counts grouped-query attention with the K/V heads only,
    # where every query head computes its own scores (eager repeats K/V and counts them all)
    return tf.AutoModelForCausalLM.from_config(_config(arch), attn_implementation="eager").eval()


def _count(fn) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_and_training_flops_match_the_flop_counter(arch):
    model = _model(arch)
    shape = ModelShape.from_config(model.config)
    ids = torch.randint(3, V, (3, 13))
    keep = torch.arange(5, 12)  # the LM head at 7 positions per sequence
    assert _count(lambda: model(input_ids=ids, logits_to_keep=keep)) == forward_flops(shape, [13] * 3, 3 * 7)
    assert _count(lambda: model(input_ids=ids, logits_to_keep=keep).logits.sum().backward()) == \
        training_flops(shape, [13] * 3, 3 * 7)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_generation_flops_match_the_flop_counter(arch):
    model = _model(arch)
    shape = ModelShape.from_config(model.config)
    ids = torch.randint(3, V, (2, 9))
    got = _count(lambda: model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                        max_new_tokens=6, min_new_tokens=6))
    assert got == generation_flops(shape, [9, 9], [6, 6])


def test_hand_counts():
    # GPT-2-like: 1 layer, hidden 4, 2 heads of 2, MLP 8, vocabulary 10
    s = ModelShape(layers=1, hidden=4, heads=2, kv_heads=2, head_dim=2, intermediate=8, vocab=10, gated_mlp=False)
    # per token: Q,K,V,O 4·(4·4) = 64 weights, MLP 2·(4·8) = 64 -> 2·128 = 256 FLOPs
    assert s.body_flops_per_token == 256
    # 3 tokens: 768; scores and PV: 2 heads × 2 dims × 3 × 3 × 2 products × 2 = 144; LM head once: 2·4·10 = 80
    assert forward_flops(s, [3], lm_head_positions=1) == 768 + 144 + 80
    assert training_flops(s, [3], 1) == 3 * (768 + 144 + 80)
    # two sequences attend within themselves: 2² + 1², not 3²
    assert forward_flops(s, [2, 1]) == 768 + 16 * 5
    # a critic's value head: 2·4 per token
    assert forward_flops(s, [3], value_head=True) == 768 + 144 + 24
    # generation: prompt 2, 3 new tokens = prefill(2) + decode at contexts 3 and 4
    prefill = 2 * 256 + 16 * 4 + 80
    decode = 2 * (256 + 80) + 16 * (3 + 4)
    assert generation_flops(s, [2], [3]) == prefill + decode
    assert generation_flops(s, [2], [0]) == 0
    # grouped-query attention and a gated MLP (Llama): K and V have 1 head of 2
    g = ModelShape(layers=2, hidden=4, heads=2, kv_heads=1, head_dim=2, intermediate=8, vocab=10, gated_mlp=True)
    assert g.layer_matmul_params == 2 * 4 * 4 + 2 * 4 * 2 + 3 * 4 * 8
    # a sliding window of 2: each of 5 tokens is counted against min(5, 2) keys
    w = ModelShape(layers=1, hidden=4, heads=2, kv_heads=2, head_dim=2, intermediate=8, vocab=10, gated_mlp=True,
                   sliding_window=2)
    assert forward_flops(w, [5]) - 5 * w.body_flops_per_token == 4 * 2 * 2 * 5 * 2


def test_generation_bytes_hand_count():
    s = ModelShape(layers=2, hidden=4, heads=2, kv_heads=1, head_dim=2, intermediate=8, vocab=10, gated_mlp=False,
                   param_bytes=2)
    weights = 2 * (2 * s.layer_matmul_params + 4 * 10)
    assert s.weight_bytes() == weights
    kv = 2 * 2 * 2 * 1 * 2  # K and V, 2 layers, 1 head of 2, 2 bytes
    # prompts 3 and 1, new tokens 3 and 1: 3 forwards (the longest); sample 0 decodes at contexts 4 and 5
    assert generation_bytes(s, [3, 1], [3, 1]) == 3 * weights + kv * (4 + 5)


def test_shapes_from_configs():
    import transformers as tf

    g = ModelShape.from_config(_config("gpt2"))
    assert (g.layers, g.hidden, g.heads, g.kv_heads, g.head_dim, g.intermediate, g.vocab, g.gated_mlp) == \
        (2, 48, 4, 4, 12, 80, V, False)
    assert ModelShape.from_config(tf.GPT2Config(n_embd=64, n_head=4, n_inner=None)).intermediate == 256
    m = ModelShape.from_config(_config("mistral", sliding_window=7))
    assert m.sliding_window == 7 and m.kv_heads == 2 and m.gated_mlp
    assert ModelShape.from_config(_config("qwen2", sliding_window=7)).sliding_window is None  # not in use
    assert ModelShape.from_config(_config("llama"), param_bytes=2).param_bytes == 2
    with pytest.raises(ValueError, match="cannot count FLOPs"):
        ModelShape.from_config(tf.PretrainedConfig())
