"""model.critic=shared_trunk: the critic as a value head on the actor's own trunk, one engine and
one optimizer (varpo.models.value_head.PolicyWithValueHead), on tiny real models and real DeepSpeed
engines (CPU). The 2-rank ZeRO-3 check is in test_multirank.py."""
from __future__ import annotations

import pytest
import torch

from varpo.models.value_head import PolicyWithValueHead
from varpo.outputs import read_jsonl, without_timings
from varpo.ppo.critic import ValueHeadCritic
from varpo.ppo.forward import response_logits, response_values

_rows, _strip = read_jsonl, without_timings


def _trainer(cfg, out, prompts, scorer):
    from varpo.ppo.trainer import PPOTrainer

    return PPOTrainer.from_config(cfg, out, prompts=prompts, policy_path=cfg.model.policy_path, scorer=scorer)


def _reference_values(trunk, weight, bias, rows):
    """Per row, alone and unpadded, in float64: the value head on the hidden state (AutoModel's
    last_hidden_state) at each position that precedes a response token."""
    out = []
    for pr, rs in rows:
        with torch.no_grad():
            h = trunk(input_ids=torch.cat([pr, rs])[None]).last_hidden_state[0].double()
        out.append(h[len(pr) - 1 : len(pr) - 1 + len(rs)] @ weight.double().reshape(-1) + bias.double())
    return out


def test_values_are_the_head_on_the_trunk_hidden_states(tiny_policy, padded_batch):
    """One forward gives the causal LM's own logits and values equal to the head applied to the
    trunk's hidden states (the backbone loaded as AutoModel, each row alone, float64); the values
    of a trunk-only forward (the rollout's, when the old log-probs come from generate) are the same."""
    from transformers import AutoModel, AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(tiny_policy, dtype=torch.float64).eval()
    model = PolicyWithValueHead(lm).double().eval()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # a random head: the zero init would make every value 0
        model.value_head.weight.copy_(torch.randn(model.value_head.weight.shape, generator=g, dtype=torch.float64))
        model.value_head.bias.fill_(0.3)
    trunk = AutoModel.from_pretrained(tiny_policy, dtype=torch.float64).eval()
    exp, rows = padded_batch(g, B=5, P=7, T=6, V=lm.config.vocab_size)
    with torch.no_grad():
        logits, values = response_logits(model, exp, 0.7, with_values=True)
        trunk_only = response_values(model, exp)
        plain = response_logits(lm, exp, 0.7)
    # a float64 model keeps float64 values (the packing exactness tests need them); half precision
    # gives float32 values (below)
    assert values.dtype == torch.float64 and values.shape == exp.response_ids.shape
    assert torch.equal(logits, plain)  # the head changes nothing of the policy's forward
    want = _reference_values(trunk, model.value_head.weight, model.value_head.bias, rows)
    for b, w in enumerate(want):
        n = len(w)
        torch.testing.assert_close(values[b, :n].double(), w, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(trunk_only[b, :n].double(), w, rtol=1e-6, atol=1e-6)
    assert w.abs().max() > 0.1  # a non-trivial comparison
    with torch.no_grad():
        half = response_logits(model.to(torch.bfloat16), exp, 0.7, with_values=True)[1]
    assert half.dtype == torch.float32
    torch.testing.assert_close(half[0, : len(want[0])].double(), want[0], rtol=0.1, atol=0.1)


@pytest.mark.parametrize("from_generate", [True, False], ids=["gen_logprobs_trunk_forward", "actor_forward"])
def test_rollout_values_come_from_the_actor_trunk(make_cfg, prompts, tmp_path, word_scorer, from_generate):
    """The trainer's rollout values, with old log-probs from generate (a trunk forward of their own)
    and without (the actor's forward gives log-probs and values), against the head on the actor's
    hidden states computed independently in float64; no critic engine exists."""
    from transformers import AutoModel

    cfg = make_cfg("model.critic=shared_trunk", f"generation.logprobs_from_generate={str(from_generate).lower()}")
    tr = _trainer(cfg, tmp_path, prompts, word_scorer())
    assert isinstance(tr.critic, ValueHeadCritic) and tr.critic.engines == {} and tr.actor.with_values
    head = tr.actor.module.value_head
    with torch.no_grad():
        head.weight.normal_(generator=torch.Generator().manual_seed(3))
        head.bias.fill_(-0.2)
    exp = tr.experience.rollout(0)
    tr.experience.score(exp)
    tr.experience.weigh(exp)
    tr.experience.forward_passes(exp)
    trunk = AutoModel.from_pretrained(cfg.model.policy_path, dtype=torch.float64).eval()
    # the actor's current weights (transformer.* of the causal LM) in the float64 backbone
    lm_state = tr.actor.module.policy.state_dict()
    trunk.load_state_dict({k.removeprefix("transformer."): v.double() for k, v in lm_state.items()
                           if k.startswith("transformer.")})
    P = exp.prompt_ids.shape[1]
    rows = []
    for b in range(exp.batch_size):
        pm, rm = exp.prompt_mask[b].bool(), exp.response_mask[b].bool()
        rows.append((exp.prompt_ids[b, pm], exp.response_ids[b, rm]))
    want = _reference_values(trunk, head.weight, head.bias, rows)
    for b, w in enumerate(want):
        torch.testing.assert_close(exp.values[b, : len(w)].double(), w, rtol=1e-5, atol=1e-5)
    assert P > 0 and torch.cat(want).std() > 0.05


@pytest.mark.parametrize("from_generate", [True, False], ids=["gen_logprobs", "actor_forward"])
def test_one_actor_forward_per_minibatch_gives_logits_and_values(make_cfg, prompts, tmp_path, word_scorer,
                                                                  from_generate, monkeypatch):
    """Forwards of one step (batch 8, minibatch 4, 2 epochs): the update runs the actor once per
    minibatch (4) and every such forward feeds the value head; the rollout adds one actor forward
    per chunk (2): a trunk forward for the values when the old log-probs come from generate, else
    the forward that computes the old log-probs. No other model computes values."""
    cfg = make_cfg("model.critic=shared_trunk", "ppo.steps=1",
                   f"generation.logprobs_from_generate={str(from_generate).lower()}")
    tr = _trainer(cfg, tmp_path, prompts, word_scorer())
    from varpo.models import last_block

    calls = {"actor": 0, "head": 0}
    module = tr.actor.module
    trunk = last_block.trunk(module.policy)
    assert trunk is not None  # GPT-2: the forwards run its last block at the kept positions
    # the actor forwards: each one runs the trunk through last_block.hidden_at (generate runs the causal
    # LM's own forward, not counted)
    hidden_at = last_block.hidden_at
    monkeypatch.setattr(last_block, "hidden_at", lambda base, *a: (
        calls.__setitem__("actor", calls["actor"] + (base is trunk)), hidden_at(base, *a))[1])
    module.register_forward_pre_hook(lambda m, a: calls.__setitem__("actor", calls["actor"] + 1))
    module.value_head.register_forward_pre_hook(lambda m, a: calls.__setitem__("head", calls["head"] + 1))
    m = tr.train_step()
    assert m["value_loss"] > 0
    assert calls["actor"] == calls["head"] == 2 + 4


def test_shared_trunk_trains_and_exports(make_cfg, prompts, tmp_path, word_scorer):
    """A shared-trunk run trains (finite losses, the value head and the values move), saves one
    engine per checkpoint, and exports a plain causal LM with the head beside it."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    cfg = make_cfg("model.critic=shared_trunk", "ppo.variance.weighting=batch_mean", "ppo.checkpoint_every=1",
                   "ppo.vf_coef=0.5")
    summary = _trainer(cfg, tmp_path, prompts, word_scorer()).train()
    rows = _rows(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2]
    for r in rows:
        for k in ("policy_loss", "value_loss", "entropy", "kl_mean", "explained_variance"):
            assert r[k] == r[k] and abs(r[k]) < float("inf"), (r["step"], k)
    assert rows[0]["value_loss"] > 0 and rows[-1]["kl_mean"] != 0.0
    # the head starts at 0 (every first value 0) and trains; the values it gives then vary
    assert rows[0]["explained_variance"] != rows[-1]["explained_variance"]
    head = load_file(str(tmp_path / "policy_value_head" / "value_head.safetensors"))
    assert head["weight"].shape == (1, 32) and head["weight"].abs().max() > 0
    hidden = 32
    assert summary["critic_trainable_params"] == summary["critic_total_params"] == hidden + 1
    # the exported folder is the causal LM alone: loads with no missing/unexpected keys
    lm, info = AutoModelForCausalLM.from_pretrained(summary["policy_path"], output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ckpts = sorted((tmp_path / "checkpoints").glob("step_*"))
    assert ckpts and (ckpts[-1] / "actor").is_dir() and not (ckpts[-1] / "critic").exists()


def test_shared_trunk_resume_is_exact(make_cfg, prompts, tmp_path, word_scorer):
    """Interrupted after 2 steps and resumed, a shared-trunk run ends bit for bit where the
    uninterrupted one does (value head weights and its optimizer group in the actor's checkpoint)."""
    common = ("model.critic=shared_trunk", "ppo.checkpoint_every=1", "ppo.variance.weighting=running_mean",
              "ppo.kl.controller=adaptive", "ppo.critic_lr=3e-3")
    _trainer(make_cfg("ppo.steps=3", *common), tmp_path / "full", prompts, word_scorer()).train()
    _trainer(make_cfg("ppo.steps=2", *common), tmp_path / "part", prompts, word_scorer()).train()
    _trainer(make_cfg("ppo.steps=3", *common), tmp_path / "part", prompts, word_scorer()).train()
    ref, got = _rows(tmp_path / "full" / "metrics.jsonl"), _rows(tmp_path / "part" / "metrics.jsonl")
    assert [r["step"] for r in got] == [0, 1, 2]
    assert [_strip(r) for r in got] == [_strip(r) for r in ref]
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "full" / "policy_value_head" / "value_head.safetensors"))
    b = load_file(str(tmp_path / "part" / "policy_value_head" / "value_head.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_shared_trunk_with_lora(make_cfg, prompts, tmp_path, word_scorer):
    """LoRA adapters on the actor and the value head train together in one engine; the base stays
    frozen and the reference is the base with adapters off (model.lora.reference_from_base)."""
    cfg = make_cfg("model.critic=shared_trunk", "model.lora.enabled=true", "model.lora.r=4", "ppo.steps=2",
                   "ppo.critic_lr=2e-3")
    tr = _trainer(cfg, tmp_path, prompts, word_scorer())
    trainable = {n for n, p in tr.actor.module.named_parameters() if p.requires_grad}
    assert {"value_head.weight", "value_head.bias"} <= trainable
    assert all("lora_" in n or n.startswith("value_head.") for n in trainable)
    lrs = sorted(g["lr"] for g in tr.actor.engine.optimizer.param_groups)
    assert lrs == [cfg.ppo.actor_lr, cfg.ppo.critic_lr]  # the head in its own group at critic_lr
    base_before = {n: p.detach().clone() for n, p in tr.actor.module.named_parameters() if not p.requires_grad}
    summary = tr.train()
    rows = _rows(tmp_path / "metrics.jsonl")
    assert rows[0]["kl_mean"] == pytest.approx(0.0, abs=1e-5) and rows[-1]["kl_mean"] != 0.0
    assert all(r["value_loss"] == r["value_loss"] for r in rows)
    assert tr.actor.module.value_head.weight.abs().max() > 0
    assert all(torch.equal(p, base_before[n]) for n, p in tr.actor.module.named_parameters() if not p.requires_grad)
    assert (tmp_path / "policy_adapter").is_dir() and (tmp_path / "policy_value_head").is_dir()
    assert summary["critic_total_params"] == 33


@pytest.mark.parametrize("bad, match", [
    (["model.critic=shared"], "model.critic: Input should be 'separate' or 'shared_trunk'"),
    (["model.critic=shared_trunk", "model.critic_path=/some/critic"], "model.critic_path"),
    (["model.critic=shared_trunk", "model.lora.enabled=true", "model.lora.critic=true"], "model.lora.critic=true"),
])
def test_shared_trunk_config_errors(bad, match):
    from varpo.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=match):
        load_config(None, bad)
    assert load_config(None, []).model.critic == "separate"
