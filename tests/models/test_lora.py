"""LoRA on the actor, critic and reward backbone: targets per architecture, adapters folded into
plain HF weights (checked against a float64 W + (α/r)·B·A), the reference served by the actor's
base with adapters disabled, parameter counts, and the model options every load receives."""
from __future__ import annotations

import pytest
import torch

from varpo.models.loading import param_counts
from varpo.models.lora import attach_lora, lora_targets, merged_state_dict

from .conftest import ARCHS, arch_config


def _randomize_adapters(model, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:  # B starts at 0; give the adapters an effect
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.mark.parametrize("arch", ARCHS)
def test_auto_targets_per_architecture_and_a_clear_error(testbed, arch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(testbed.model_path))
    model = AutoModelForCausalLM.from_config(arch_config(arch, tok))
    assert lora_targets(model, "auto") == (["c_attn"] if arch == "gpt2" else ["q_proj", "v_proj"])
    peft_model = attach_lora(model, 4, 8, 0.0, "auto")
    names = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert names and all("lora_" in n for n in names)
    with pytest.raises(ValueError, match=r"model.lora.target_modules=\['nope'\].*linear modules in this model"):
        attach_lora(AutoModelForCausalLM.from_config(arch_config(arch, tok)), 4, 8, 0.0, ["nope"])


@pytest.mark.parametrize("arch", ["gpt2", "llama"])  # Conv1D (fan_in_fan_out) and nn.Linear layouts
def test_merged_state_is_a_plain_model_computing_the_adapted_one(testbed, arch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(testbed.model_path))
    conf = arch_config(arch, tok)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(conf).eval()  # no dropout
    W0 = {k: v.clone().double() for k, v in base.state_dict().items()}
    r, alpha = 4, 12
    model = attach_lora(base, r, alpha, 0.0, "all-linear")
    _randomize_adapters(model)
    merged = merged_state_dict(model)
    assert not any("lora_" in k or "base_layer" in k for k in merged)
    # independent float64 reference of one adapted layer: W + (α/r)·B·A (GPT-2 stores W as [in, out])
    name = "transformer.h.1.attn.c_attn" if arch == "gpt2" else "model.layers.1.self_attn.v_proj"
    sd = dict(model.named_parameters())
    A = sd[f"base_model.model.{name}.lora_A.default.weight"].detach().double()
    B = sd[f"base_model.model.{name}.lora_B.default.weight"].detach().double()
    delta = (alpha / r) * (B @ A)
    expected = W0[f"{name}.weight"] + (delta.T if arch == "gpt2" else delta)
    assert torch.allclose(merged[f"{name}.weight"].double(), expected, atol=1e-6, rtol=0)
    plain = AutoModelForCausalLM.from_config(conf).eval()
    missing, unexpected = plain.load_state_dict(merged, strict=False)
    assert not unexpected and all("lm_head" in k for k in missing)  # a tied head is not stored twice
    plain.tie_weights()
    ids = torch.randint(3, len(tok), (3, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(plain(ids).logits, model(input_ids=ids).logits, atol=1e-5)
        with model.disable_adapter():
            off = model(input_ids=ids).logits
    assert not torch.allclose(plain(ids).logits, off, atol=1e-3)  # the adapters did change the model


def _engines(cfg_overrides, tiny_policy):
    from varpo import dist
    from varpo.config import load_config
    from varpo.ppo.roles import build_actor, build_critic, build_reference

    cfg = load_config(None, [f"model.policy_path={tiny_policy}", "ppo.batch_size=4", "ppo.mini_batch_size=4",
                             *cfg_overrides])
    dist.join(cfg.deepspeed)
    actor = build_actor(cfg, tiny_policy, 1)
    return cfg, actor, build_reference(cfg, tiny_policy, 1, actor=actor), build_critic(cfg, tiny_policy, 1)


def test_reference_from_base_is_the_initial_policy_and_only_adapters_train(tiny_models):
    from transformers import AutoModelForCausalLM

    from varpo.ppo.roles import ReferenceFromBase

    path = tiny_models["llama"]
    cfg, actor, ref, critic = _engines(["model.lora.enabled=true", "model.lora.r=4", "model.lora.critic=true",
                                        "model.lora.target_modules=all-linear"], path)
    assert isinstance(ref, ReferenceFromBase)
    _randomize_adapters(actor.module)
    plain = AutoModelForCausalLM.from_pretrained(path).eval()
    ids = torch.randint(3, 50, (2, 9), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        want = plain(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        got = ref(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        adapted = actor(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(adapted, want, atol=1e-3)
    assert actor.module.training  # serving the reference left the actor's mode alone
    # only adapters train: r·(in + out) per adapted linear layer of the actor
    lin = [m for n, m in plain.named_modules() if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")]
    expected = sum(4 * (m.in_features + m.out_features) for m in lin)
    trainable, total = param_counts(actor.module)
    assert trainable == expected and total == sum(p.numel() for p in plain.parameters()) + expected
    c_train, _ = param_counts(critic.module)
    assert c_train == expected + plain.config.hidden_size + 1  # adapters + the value head


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_attn_implementation_reaches_every_model(tiny_models, tmp_path, impl):
    from transformers import AutoTokenizer

    from varpo.config import load_config
    from varpo.models.loading import attn_kwargs
    from varpo.reward.model import EnsembleRewardModel
    from varpo.reward.scorer import load_scorer

    path = tiny_models["qwen2"]
    cfg, actor, ref, critic = _engines([f"model.attn_implementation={impl}"], path)
    rm_dir = tmp_path / "rm"
    EnsembleRewardModel.from_backbone(path, 2, load_kw=attn_kwargs(cfg.model)).save_pretrained(
        rm_dir, tokenizer=AutoTokenizer.from_pretrained(path))
    scorer = load_scorer(rm_dir, load_kw=attn_kwargs(load_config(None, [f"model.attn_implementation={impl}"]).model))
    for m in (actor.module, ref.module, critic.module.backbone, scorer.model.backbone):
        assert m.config._attn_implementation == impl
