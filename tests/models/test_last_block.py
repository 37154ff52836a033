"""The trunk's last block at the kept positions only (varpo.models.last_block), through the PPO
forwards that use it (varpo.ppo.forward): logits, values and every parameter's gradient against
float64 references that run the whole model, padded (left-padded prompts, right-padded responses)
and packed (against each sample run alone), for a causal LM, a critic and a shared-trunk actor, with
LoRA adapters, and the architectures and settings that keep the full forward."""
from __future__ import annotations

import pytest
import torch

from varpo.models import last_block
from varpo.models.value_head import PolicyWithValueHead, ValueModel
from varpo.ppo import forward
from varpo.ppo.experience import Experience
from varpo.ppo.packing import pack

V = 61
ARCHS = ("gpt2", "llama", "qwen2", "qwen3", "mistral")


def gpt2(layers=3, seed=0, attn="sdpa", **over):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(n_embd=40, n_layer=layers, n_head=4, n_positions=64, vocab_size=V, bos_token_id=0,
                     eos_token_id=1, attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0, **over)
    cfg._attn_implementation = attn
    return GPT2LMHeadModel(cfg).double().eval()


def causal_lm(arch: str, seed=0, attn="sdpa"):
    """A 3-block model of `arch`, float64: grouped-query attention (4 query heads, 2 key/value heads),
    Qwen2's projection biases, Qwen3's query/key norms, Mistral's sliding window shorter than the
    sequences (so that it masks)."""
    import transformers as tf

    if arch == "gpt2":
        return gpt2(seed=seed, attn=attn)
    torch.manual_seed(seed)
    common = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=48, vocab_size=V, max_position_embeddings=64, bos_token_id=0, eos_token_id=1,
                  tie_word_embeddings=False)
    cfg = {"llama": lambda: tf.LlamaConfig(**common), "qwen2": lambda: tf.Qwen2Config(**common),
           "qwen3": lambda: tf.Qwen3Config(head_dim=8, **common),
           "mistral": lambda: tf.MistralConfig(sliding_window=5, **common)}[arch]()
    cfg._attn_implementation = attn
    model = tf.AutoModelForCausalLM.from_config(cfg).double().eval()
    for n, p in model.named_parameters():
        if n.endswith(".bias") or "norm" in n:  # zero biases and unit norms would hide a skipped one
            torch.nn.init.normal_(p, mean=1.0 if "norm" in n else 0.0, std=0.3)
    return model


def rollout(seed: int, B: int = 3, P: int = 7, T: int = 6) -> Experience:
    g = torch.Generator().manual_seed(seed)
    prompt_mask = torch.ones(B, P, dtype=torch.long)
    response_mask = torch.ones(B, T, dtype=torch.long)
    for b in range(B):  # left padding of the prompt, a response ending early
        prompt_mask[b, : int(torch.randint(0, P - 1, (1,), generator=g))] = 0
        response_mask[b, int(torch.randint(1, T + 1, (1,), generator=g)):] = 0
    return Experience(prompt_ids=torch.randint(2, V, (B, P), generator=g) * prompt_mask,
                      prompt_mask=prompt_mask, response_ids=torch.randint(2, V, (B, T), generator=g) * response_mask,
                      response_mask=response_mask, has_eos=torch.zeros(B, dtype=torch.bool))


def full_logits(model, exp: Experience) -> torch.Tensor:
    """The whole model over the padded batch, its logits at the positions predicting response tokens."""
    from varpo.masks import position_ids_from_mask

    seq, att = exp.sequences, exp.attention_mask
    T = exp.response_ids.shape[1]
    return model(input_ids=seq, attention_mask=att, position_ids=position_ids_from_mask(att)).logits[:, -(T + 1):-1]


def grads(model, out: torch.Tensor, w: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    (out * w).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_close(a, b, float32_softmax: bool = False):
    """Float64 rounding; `float32_softmax`: where HF's eager attention of the Llama family takes its
    softmax in float32 and two runs mask differently (a packed row against a sample alone)."""
    tol = dict(rtol=1e-5, atol=1e-7) if float32_softmax else dict(rtol=1e-10, atol=1e-11)
    torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("seed,attn", [(0, "sdpa"), (1, "eager")])
def test_padded_logits_and_gradients_equal_the_whole_model(arch, seed, attn):
    model = causal_lm(arch, seed=seed, attn=attn)
    assert model.config._attn_implementation == attn
    exp = rollout(seed)
    if attn == "eager" and arch != "gpt2":
        # HF's eager attention in float64 turns a left-padding row (every key masked) into NaN, which
        # then reaches every position through the values; no left padding there
        exp.prompt_mask[:] = 1
    assert last_block.trunk(model) is model.base_model
    got = forward.response_logits(model, exp, temperature=0.7)
    want = full_logits(model, exp) / 0.7
    assert_close(got, want)
    w = torch.randn_like(want)
    g_got, g_want = grads(model, forward.response_logits(model, exp, 0.7), w), grads(model, full_logits(model, exp) / 0.7, w)
    assert g_got.keys() == g_want.keys() == {n for n, _ in model.named_parameters()}
    for n in g_want:
        assert_close(g_got[n], g_want[n])


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("seed,attn", [(0, "sdpa"), (3, "eager")])
def test_packed_logits_equal_each_sample_run_alone(arch, seed, attn):
    model = causal_lm(arch, seed=seed, attn=attn)
    exp = rollout(seed, B=4)
    row = pack(exp, [2, 0, 3])
    got = forward.packed_logits(model, row, temperature=1.0)[0]  # [m, V]
    prompt_len, resp_len = exp.prompt_mask.sum(-1), exp.response_mask.sum(-1)
    for k, (b, t) in enumerate(zip(row.rows.tolist(), row.cols.tolist())):
        P = int(prompt_len[b])
        ids = torch.cat([exp.prompt_ids[b, -P:], exp.response_ids[b, : int(resp_len[b])]])[None]
        alone = model(input_ids=ids).logits[0, P - 1 + t]
        assert_close(got[k], alone, float32_softmax=attn == "eager" and arch != "gpt2")


@pytest.mark.parametrize("arch", ["gpt2", "qwen2"])
def test_critic_values_and_gradients_equal_the_whole_backbone(arch):
    from transformers import AutoModel

    config = causal_lm(arch).config
    torch.manual_seed(5)
    critic = ValueModel(AutoModel.from_config(config)).double().eval()
    assert last_block.trunk(critic.backbone) is critic.backbone
    torch.nn.init.normal_(critic.value_head.weight)  # zero-initialised: give the values something to show
    exp = rollout(7)
    P = exp.prompt_ids.shape[1]
    got = forward.response_values(critic, exp)
    want = critic(exp.sequences, attention_mask=exp.attention_mask,
                  position_ids=exp.attention_mask.cumsum(-1).sub(1).clamp(min=0))[:, P - 1:-1]
    assert_close(got, want)
    w = torch.randn_like(want)
    g_got = grads(critic, forward.response_values(critic, exp), w)
    g_want = grads(critic, critic(exp.sequences, attention_mask=exp.attention_mask,
                                  position_ids=exp.attention_mask.cumsum(-1).sub(1).clamp(min=0))[:, P - 1:-1], w)
    for n in g_want:
        assert_close(g_got[n], g_want[n])
    row = pack(exp, [1, 2])
    packed = forward.packed_values(critic, row)[0]
    assert_close(packed, got[row.rows, row.cols])


def test_shared_trunk_logits_and_values_from_one_forward():
    actor = PolicyWithValueHead(gpt2(seed=2)).double().eval()
    torch.nn.init.normal_(actor.value_head.weight)
    exp = rollout(11)
    logits, values = forward.response_logits(actor, exp, 1.0, with_values=True)
    T = exp.response_ids.shape[1]
    keep = torch.arange(exp.sequences.shape[1] - T - 1, exp.sequences.shape[1] - 1)
    from varpo.masks import position_ids_from_mask

    out = actor(input_ids=exp.sequences, attention_mask=exp.attention_mask,
                position_ids=position_ids_from_mask(exp.attention_mask), logits_to_keep=keep, value_positions=keep)
    assert_close(logits, out.logits)
    assert_close(values, out.values)


@pytest.mark.parametrize("arch,targets", [("gpt2", ["c_attn", "c_proj", "c_fc"]), ("llama", "all-linear")])
def test_lora_adapters_act_in_the_last_block(arch, targets):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(causal_lm(arch, seed=4), LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)  # B = 0 would hide an adapter the last block skipped
    model = model.double().eval()
    assert last_block.trunk(model) is not None
    exp = rollout(13)
    assert_close(forward.response_logits(model, exp, 1.0), full_logits(model, exp))


def test_training_mode_without_dropout_and_with_attention_dropout_in_distribution():
    """In training mode (the update), with dropout off as PPO runs: the same numbers. With the
    attention's dropout on, the kept path applies it too (two calls draw different masks)."""
    model = gpt2(seed=6).train()
    exp = rollout(6)
    assert_close(forward.response_logits(model, exp, 1.0), full_logits(model, exp))
    model.transformer.h[-1].attn.attn_dropout.p = 0.5
    a, b = forward.response_logits(model, exp, 1.0), forward.response_logits(model, exp, 1.0)
    assert not torch.equal(a, b)


def test_full_forward_kept_where_it_must_be():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    neox = GPTNeoXForCausalLM(GPTNeoXConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                            intermediate_size=64, vocab_size=V))
    assert last_block.trunk(neox) is None  # an architecture last_block does not know
    assert last_block.trunk(gpt2(scale_attn_by_inverse_layer_idx=True)) is None
    assert last_block.trunk(gpt2(reorder_and_upcast_attn=True)) is None
    model = gpt2()
    model.transformer.h[-1].attn.c_attn.weight.ds_id = 0  # a ZeRO-3 shard
    assert last_block.trunk(model) is None


def test_the_model_is_whole_again_after_a_failing_forward():
    model = gpt2()
    blocks, ln_f = model.transformer.h, model.transformer.ln_f
    with pytest.raises(IndexError):
        last_block.hidden_at(model.transformer, torch.tensor([0]), torch.tensor([[V + 5]]), None,
                             torch.tensor([[0]]))
    assert model.transformer.h is blocks and model.transformer.ln_f is ln_f and len(blocks) == 3


def test_allowed_keys_against_a_loop():
    g = torch.Generator().manual_seed(3)
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    keep = torch.tensor([1, 2, 4, 6, 8])
    got = last_block.allowed_keys(keep, None, pos)[0, 0]
    sample = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    want = torch.tensor([[k <= q and sample[k] == sample[q] for k in range(9)] for q in keep.tolist()])
    assert torch.equal(got, want)
    att = (torch.rand(2, 9, generator=g) > 0.3).long()
    got = last_block.allowed_keys(keep, att, pos.expand(2, 9))[:, 0]
    want = torch.tensor([[[k <= q and bool(att[b, k]) for k in range(9)] for q in keep.tolist()] for b in range(2)])
    assert torch.equal(got, want)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen3"])
def test_flop_formula_counts_what_the_kept_forward_runs(arch):
    """FlopCounterMode over the kept forward (eager attention: the counter sees its products) equals
    varpo.models.flops.forward_flops with `kept`, the count every metrics row carries."""
    from torch.utils.flop_counter import FlopCounterMode

    from varpo.models.flops import forward_flops
    from varpo.ppo.phase_flops import shape_of

    model = causal_lm(arch, attn="eager").float()
    exp = rollout(4, B=1, P=9, T=5)
    exp.prompt_mask[:] = 1
    exp.response_mask[:] = 1
    shape = shape_of(model)
    assert shape.last_block_at_kept == ("qkv" if arch == "gpt2" else "kv")
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        forward.response_logits(model, exp, 1.0)
    assert fc.get_total_flops() == forward_flops(shape, [14], lm_head_positions=5, kept=[5])
    assert forward_flops(shape, [14], 5, kept=[5]) < forward_flops(shape, [14], 5)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_reward_pooling_at_each_rows_last_token(arch):
    """A reward backbone's "last" pooling runs the last block at each row's own last real token (left
    and right padding in one batch): equal to the whole backbone's last hidden state there, values
    and gradients."""
    from transformers import AutoModel

    from varpo.masks import last_token_index, position_ids_from_mask
    from varpo.reward.ensemble import pool

    torch.manual_seed(8)
    backbone = AutoModel.from_config(causal_lm(arch).config).double().eval()
    assert last_block.trunk(backbone) is backbone
    g = torch.Generator().manual_seed(8)
    ids = torch.randint(2, V, (4, 11), generator=g)
    mask = torch.ones(4, 11, dtype=torch.long)
    mask[0, :3] = 0  # left padding
    mask[1, 7:] = 0  # right padding
    mask[2, :2] = 0
    mask[2, 9:] = 0  # both
    w = torch.randn(4, causal_lm(arch).config.hidden_size, generator=g, dtype=torch.float64)

    def whole():
        h = backbone(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).last_hidden_state
        return h[torch.arange(4), last_token_index(mask)]

    got, want = pool(backbone, ids, mask, "last", True), whole()
    assert_close(got, want)
    g_got, g_want = grads(backbone, got, w), grads(backbone, whole(), w)
    for n in g_want:
        assert_close(g_got[n], g_want[n])


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_packed_row_attends_sample_by_sample(arch):
    """A packed row of three samples: in the kept forward's products (eager: the counter sees them)
    the last block's attention is each sample's kept queries against its own keys (what forward_flops
    counts with `kept`), not against the whole row. The blocks before it run HF's eager attention,
    which over a packed row computes the whole row's L² scores (masked): that surplus is added here."""
    from torch.utils.flop_counter import FlopCounterMode

    from varpo.models.flops import forward_flops
    from varpo.ppo.phase_flops import shape_of

    model = causal_lm(arch, attn="eager").float()
    exp = rollout(9, B=3, P=6, T=5)
    row = pack(exp, [0, 1, 2])
    prompt_len, resp_len = exp.prompt_mask.sum(-1).tolist(), exp.response_mask.sum(-1).tolist()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        forward.packed_logits(model, row, 1.0)
    seq = [p + r for p, r in zip(prompt_len, resp_len)]
    shape = shape_of(model)
    per_layer = shape.attention_flops(1, 1) // shape.layers  # one block's QKᵀ and PV per query and key
    hf_surplus = (shape.layers - 1) * per_layer * (sum(seq) ** 2 - sum(n * n for n in seq))
    assert fc.get_total_flops() == forward_flops(shape, seq, lm_head_positions=sum(resp_len), kept=resp_len) + hf_surplus
