"""Padding-free forwards (ppo.packing, varpo.ppo.packing): the layout functions, and exactness in
float64 against an independent reference, each sample run alone through the model with its real
tokens only (no padding, no mask, batch of one), for every supported architecture (Llama, GPT-2,
Qwen2, Mistral) with sdpa and eager attention: log-probs, entropy, values (a critic of its own and
a value head on the actor's trunk), the PPO losses and their gradients; with sdpa also against the
padded layout. (transformers' eager Llama-family attention turns a left-padded row into NaN in
float64, so eager is checked against the reference alone.) Then a short PPO run with packing on
matches the padded run, and the rollout-time forwards' micro-batches are balanced by tokens."""
from __future__ import annotations

import itertools
import json

import pytest
import torch

from varpo.config import KernelsConfig, PackingConfig
from varpo.models.value_head import PolicyWithValueHead, ValueModel
from varpo.ppo import core, packing
from varpo.ppo.actor import CausalLMRole
from varpo.ppo.critic import SeparateCritic, ValueHeadCritic
from varpo.ppo.forward import forward_in_chunks

ARCHS = ("llama", "gpt2", "qwen2", "mistral")
V = 61
TEMPERATURE = 0.7


def _config(arch: str):
    import transformers as tf

    if arch == "gpt2":
        return tf.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=2, n_positions=64, bos_token_id=1,
                             eos_token_id=2, pad_token_id=0)
    cls = {"llama": tf.LlamaConfig, "qwen2": tf.Qwen2Config, "mistral": tf.MistralConfig}[arch]
    return cls(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               intermediate_size=48, max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def _models(arch: str, attn: str):
    """A causal LM and a critic backbone of `arch` in float64, eval mode (no dropout), random init
    (the value head too, so values are not all zero)."""
    import transformers as tf

    torch.manual_seed(0)
    lm = tf.AutoModelForCausalLM.from_config(_config(arch), attn_implementation=attn).double().eval()
    critic = ValueModel(tf.AutoModel.from_config(_config(arch), attn_implementation=attn)).double().eval()
    torch.nn.init.normal_(critic.value_head.weight, std=0.3)
    return lm, critic


def _reference(lm, critic, exp):
    """The textbook per-sample quantities: each sample alone, its real tokens only, float64."""
    B, T = exp.response_ids.shape
    logp, ent, val = (torch.zeros(B, T, dtype=torch.float64) for _ in range(3))
    logp_rows, ent_rows, val_rows = [], [], []
    for b in range(B):
        prompt = exp.prompt_ids[b][exp.prompt_mask[b].bool()]
        r = int(exp.response_mask[b].sum())
        resp = exp.response_ids[b, :r]
        ids = torch.cat([prompt, resp])[None]
        p = len(prompt)
        logits = lm(input_ids=ids).logits[0, p - 1: p - 1 + r] / TEMPERATURE
        lsm = torch.log_softmax(logits, -1)
        logp_rows.append((b, r, lsm.gather(1, resp[:, None])[:, 0]))
        ent_rows.append((b, r, -(lsm.exp() * lsm).sum(-1)))
        val_rows.append((b, r, critic(ids)[0, p - 1: p - 1 + r]))
    # differentiable [B, T] from the rows (index_put keeps the graph)
    def assemble(rows, out):
        for b, r, x in rows:
            out = out.index_put((torch.full((r,), b), torch.arange(r)), x)
        return out
    return assemble(logp_rows, logp), assemble(ent_rows, ent), assemble(val_rows, val)


def _experience(seed: int, B: int = 6, P: int = 7, T: int = 8):
    from varpo.ppo.experience import Experience

    g = torch.Generator().manual_seed(seed)
    p_len = torch.randint(1, P + 1, (B,), generator=g)
    r_len = torch.randint(1, T + 1, (B,), generator=g)
    r_len[0], p_len[1] = T, P  # one full response, one full prompt: the padded width is used
    prompt_mask = (torch.arange(P)[None] >= P - p_len[:, None]).long()
    response_mask = (torch.arange(T)[None] < r_len[:, None]).long()
    exp = Experience(torch.randint(3, V, (B, P), generator=g) * prompt_mask, prompt_mask,
                     torch.randint(3, V, (B, T), generator=g) * response_mask, response_mask,
                     r_len < T)
    exp.mask = response_mask.double()
    exp.logp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    exp.values = torch.randn(B, T, generator=g, dtype=torch.float64)
    exp.advantages = torch.randn(B, T, generator=g, dtype=torch.float64) * exp.mask
    exp.returns = torch.randn(B, T, generator=g, dtype=torch.float64) * exp.mask
    return exp


def _ppo_loss(logp, entropy, values, exp):
    pg, _ = core.policy_loss(logp, exp.logp, exp.advantages, exp.mask, 0.2)
    vl, _ = core.value_loss(values, exp.values, exp.returns, exp.mask, 0.2)
    return pg - 0.01 * core.masked_mean(entropy, exp.mask) + 0.1 * vl


def _grads(*modules):
    return torch.cat([p.grad.flatten() for m in modules for p in m.parameters() if p.grad is not None])


def _zero(*modules):
    for m in modules:
        m.zero_grad(set_to_none=True)


# ---------------------------------------------------------------------------------------- layout


def test_pack_layout_matches_the_padded_tokens(padded_batch):
    g = torch.Generator().manual_seed(3)
    exp, rows = padded_batch(g, 7, 6, 5, 40)
    order = [4, 0, 6, 2]
    row = packing.pack(exp, order)
    ids, pos = [], []
    for b in order:
        pr, rs = rows[b]
        ids += pr.tolist() + rs.tolist()
        pos += list(range(len(pr) + len(rs)))
    assert row.input_ids[0].tolist() == ids and row.position_ids[0].tolist() == pos
    # the token after each kept position is the response token it predicts, and sits at (rows, cols)
    assert row.input_ids[0, row.keep + 1].tolist() == row.response_ids[0].tolist()
    assert exp.response_ids[row.rows, row.cols].tolist() == row.response_ids[0].tolist()
    assert sorted(set(row.rows.tolist())) == sorted(order)
    assert len(row.keep) == sum(len(rows[b][1]) for b in order)
    # unpack puts [m] values back, zeros elsewhere
    back = packing.unpack([row], [row.response_ids.double()], tuple(exp.response_ids.shape))
    sel = torch.zeros_like(exp.response_mask)
    sel[order] = 1
    assert torch.equal(back, (exp.response_ids * exp.response_mask * sel).double())


def test_pack_rejects_a_sample_without_prompt_tokens(padded_batch):
    exp, _ = padded_batch(torch.Generator().manual_seed(0), 3, 4, 4, 20)
    exp.prompt_mask[1] = 0
    with pytest.raises(ValueError, match="at least one prompt token"):
        packing.pack(exp, [0, 1, 2])


@pytest.mark.parametrize("seed", range(5))
def test_first_fit_decreasing_respects_the_capacity(seed):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 30, (int(torch.randint(1, 20, (1,), generator=g)),), generator=g).tolist()
    cap = max(lengths) + int(torch.randint(0, 20, (1,), generator=g))
    rows = packing.first_fit_decreasing(lengths, cap)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= cap for r in rows)
    assert all(r == sorted(r) for r in rows)
    # first fit leaves at most one row at most half full (a later one's samples would have fitted)
    sums = [sum(lengths[i] for i in r) for r in rows]
    assert sum(s <= cap / 2 for s in sums) <= 1
    assert packing.first_fit_decreasing(lengths, None) == [list(range(len(lengths)))]
    # a sample longer than the capacity gets a row of its own
    assert [0] in packing.first_fit_decreasing([50, 3, 4], 10)


def test_balanced_chunks_are_as_even_as_the_best_split_nearly():
    lengths = [90, 10, 80, 20, 70, 30, 60, 40]
    chunks = packing.balanced_chunks(lengths, 4)
    assert sorted(i for c in chunks for i in c) == list(range(8)) and all(len(c) <= 4 for c in chunks)
    sums = sorted(sum(lengths[i] for i in c) for c in chunks)
    assert sums == [200, 200]  # consecutive chunks would be 200 / 200 here by chance; the greedy is exact too
    lengths = [100, 90, 5, 4, 3, 2, 80, 1]  # consecutive chunks: 199 vs 86
    sums = sorted(sum(lengths[i] for i in c) for c in packing.balanced_chunks(lengths, 4))
    best = min(abs(sum(lengths[i] for i in c) * 2 - sum(lengths))
               for c in itertools.combinations(range(8), 4))
    assert sums[1] - sums[0] <= best + max(lengths[2:6])  # within one short sample of the optimum
    assert sums[1] - sums[0] < 199 - 86
    with pytest.raises(ValueError):
        packing.balanced_chunks([1, 2], 0)


def test_row_capacity_follows_the_attention_kernel():
    from varpo.models.flops import ModelShape

    assert packing.row_capacity([5, 9, 3], "sdpa", None) == 9
    assert packing.row_capacity([5, 9, 3], "eager", None) == 9
    assert packing.row_capacity([5, 9, 3], "flash_attention_2", None) is None
    assert packing.row_capacity([5, 9, 3], "sdpa", 40) == 40
    # GPT-2 small's shape: per token and layer 2·12·768² linear FLOPs; a row of C tokens adds 4·768·C of
    # dense attention; a quarter of the former allows C = 0.25 · 2 · 12 · 768² / (4 · 768) = 1152
    g = ModelShape(layers=12, hidden=768, heads=12, kv_heads=12, head_dim=64, intermediate=3072, vocab=50257,
                   gated_mlp=False)
    assert packing.row_capacity([100, 300], "sdpa", None, g) == 1152
    assert packing.row_capacity([2000, 300], "sdpa", None, g) == 2000  # never below the longest sample
    assert packing.row_capacity([100, 300], "flash_attention_2", None, g) is None


def test_plan_keeps_the_padded_layout_when_nothing_is_padded(padded_batch):
    exp, _ = padded_batch(torch.Generator().manual_seed(1), 4, 5, 5, 30)
    exp.prompt_mask[:] = 1
    exp.response_mask[:] = 1
    assert packing.plan(exp, "sdpa") is None and packing.padding_fraction(exp) == 0.0
    exp.response_mask[2, 3:] = 0
    rows = packing.plan(exp, "sdpa")
    assert rows is not None and packing.padding_fraction(exp) == pytest.approx(2 / 40)


# ---------------------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("row_tokens", [None, 6, 200], ids=["auto", "short_rows", "one_row"])
def test_packed_forwards_are_exact_in_float64(arch, attn, row_tokens):
    exp = _experience(seed=ARCHS.index(arch))
    lm, critic = _models(arch, attn)
    kernels = KernelsConfig()
    mask = exp.mask

    _zero(lm, critic)
    ref_logp, ref_ent, ref_val = _reference(lm, critic, exp)
    _ppo_loss(ref_logp, ref_ent, ref_val, exp).backward()
    ref_grad = _grads(lm, critic)

    def run(cfg):
        _zero(lm, critic)
        out = CausalLMRole(lm, TEMPERATURE, kernels, packing=cfg).logprobs(exp, with_entropy=True)
        values = SeparateCritic(critic, cfg).values(exp)
        loss = _ppo_loss(out.logp, out.entropy, values, exp)
        loss.backward()
        return out.logp, out.entropy, values, loss, _grads(lm, critic)

    packed = run(PackingConfig(enabled=True, row_tokens=row_tokens))
    assert packed[0].dtype == torch.float64
    # transformers' eager attention of the Llama family takes its softmax in float32 whatever the
    # model's dtype: there float64 agreement is to float32 rounding of the attention weights
    tol = {"rtol": 1e-6, "atol": 1e-7} if attn == "eager" and arch != "gpt2" else {"rtol": 1e-9, "atol": 1e-10}
    for got, want in zip(packed[:3], (ref_logp, ref_ent, ref_val)):
        torch.testing.assert_close(got * mask, want * mask, **tol)
    torch.testing.assert_close(packed[3], _ppo_loss(ref_logp, ref_ent, ref_val, exp), **tol)
    torch.testing.assert_close(packed[4], ref_grad, rtol=tol["rtol"] * 100, atol=tol["atol"])
    if attn == "sdpa":  # and the padded layout agrees with both
        padded = run(PackingConfig(enabled=False))
        for got, want in zip(packed[:3], padded[:3]):
            torch.testing.assert_close(got * mask, want * mask, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(packed[4], padded[4], rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_packed_shared_trunk_values_and_shaping_are_exact(arch):
    """A value head on the actor's trunk: values from the actor's own packed forward, and from a
    trunk forward of their own; the fused shaping pass (log-probs, KL, w·KL) from packed rows."""
    from varpo_kernels import weighted_kl_from_logits

    exp = _experience(seed=11)
    exp.weights = torch.rand(exp.batch_size, dtype=torch.float64) + 0.5
    lm, critic = _models(arch, "sdpa")
    actor = PolicyWithValueHead(lm).double()
    torch.nn.init.normal_(actor.value_head.weight, std=0.3)
    on, off = PackingConfig(enabled=True), PackingConfig(enabled=False)
    mask = exp.mask
    role_on = CausalLMRole(actor, TEMPERATURE, KernelsConfig(), with_values=True, packing=on)
    role_off = CausalLMRole(actor, TEMPERATURE, KernelsConfig(), with_values=True, packing=off)
    a, b = role_on.logprobs(exp), role_off.logprobs(exp)
    torch.testing.assert_close(a.logp * mask, b.logp * mask, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(a.values * mask, b.values * mask, rtol=1e-9, atol=1e-10)
    own = ValueHeadCritic(role_on).values(exp)  # a trunk forward of its own, packed
    torch.testing.assert_close(own * mask, b.values * mask, rtol=1e-9, atol=1e-10)
    for est, logits_of in (("k1", "reference"), ("k3", "policy")):
        s_on = role_on.shaping(exp, exp.logp, logits_of, est).shaping
        want = weighted_kl_from_logits(  # the fused kernel over the padded logits, independent of packing
            role_off._logits(exp)[0], exp.response_ids, exp.logp, mask, exp.weights, est, logits_of=logits_of)
        for got, ref in zip(s_on, want):
            torch.testing.assert_close(got * (mask if got.dim() == 2 else 1), ref * (mask if ref.dim() == 2 else 1),
                                       rtol=1e-9, atol=1e-10)


def test_forward_in_chunks_puts_balanced_chunks_back_in_order(padded_batch):
    exp, _ = padded_batch(torch.Generator().manual_seed(5), 9, 5, 6, 30)
    prompt_len, response_len = packing.sample_lengths(exp)
    chunks = packing.balanced_chunks((prompt_len + response_len).tolist(), 4)
    assert chunks != [list(range(0, 4)), list(range(4, 8)), [8]]  # the balance reorders here
    extra = torch.arange(9.0) * 10
    out = forward_in_chunks(lambda c, e: (c.response_ids.sum(-1), e), exp, 4, extra, chunks=chunks)
    assert torch.equal(out[0], exp.response_ids.sum(-1)) and torch.equal(out[1], extra)


# ---------------------------------------------------------------------------------------- in a run


@pytest.mark.slow
def test_ppo_run_with_packing_matches_the_padded_run(make_cfg, prompts, tmp_path, word_scorer):
    """Responses end at EOS with varied lengths here; packed and padded runs agree (float32:
    to rounding), and the padded layout really had padding to remove."""
    from varpo.ppo import PPOTrainer

    rows = {}
    for on in (False, True):
        cfg = make_cfg("ppo.steps=2", "generation.min_new_tokens=0", "generation.max_new_tokens=8",
                       f"ppo.packing.enabled={str(on).lower()}")
        out = tmp_path / str(on)
        PPOTrainer.from_config(cfg, out, prompts=prompts, policy_path=cfg.model.policy_path,
                               scorer=word_scorer()).train()
        rows[on] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(r["response_length"] < 8 for r in rows[False])  # some responses ended early
    for a, b in zip(rows[False], rows[True]):
        # the useful work per phase is the same whatever the layout (real tokens only)
        assert a["flops/update"] == b["flops/update"] > 0 and a["flops/generate"] == b["flops/generate"] > 0
        for k in ("score_mean", "kl_mean", "policy_loss", "value_loss", "entropy", "returns_mean", "response_length"):
            assert b[k] == pytest.approx(a[k], rel=1e-3, abs=1e-5), k
