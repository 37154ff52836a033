"""The paper's three configurations (configs/paper/): each validates, carries the paper's
hyperparameters, and `varpo estimate-memory` plans it on the paper's hardware (Table 11: 4 × A40
48 GB; Tables 14-15: 4 × A100 80 GB) from the architecture files in configs/paper/model_shapes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from varpo.cli import app
from varpo.config import load_config

ROOT = Path(__file__).resolve().parents[2]
PAPER = ROOT / "configs" / "paper"
SHAPES = PAPER / "model_shapes"
# config, policy shape, reward backbone shape (None: judges), GPU memory of the paper's cards
CASES = [("gpt2_ensemble.yaml", "gpt2.json", "gemma-2b-it.json", 48),
         ("qwen2.5_0.5b_judges.yaml", "qwen2.5-0.5b.json", None, 80),
         ("mistral7b_lora_4bit.yaml", "mistral-7b.json", None, 80)]


@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_config_check_passes(name):
    res = CliRunner().invoke(app, ["config", "check", str(PAPER / name)])
    assert res.exit_code == 0, res.output
    assert "ok" in res.output


def test_the_papers_hyperparameters():
    g = load_config(PAPER / "gpt2_ensemble.yaml")
    assert (g.ppo.steps, g.ppo.batch_size, g.ppo.actor_lr, g.ppo.kl.beta, g.ppo.kl.controller) == \
        (192, 128, 1.414e-5, 0.2, "fixed")
    assert g.evaluation.methods["variance_aware"] == [
        "ppo.variance.weighting=raw", "ppo.kl.beta=0.05", "ppo.actor_lr=1.5e-5", "ppo.critic_lr=1.5e-5"]
    assert g.reward_training.num_heads == 10 and not g.reward_training.lora.enabled
    q = load_config(PAPER / "qwen2.5_0.5b_judges.yaml")
    assert (q.ppo.batch_size, q.ppo.mini_batch_size, q.ppo.actor_lr, q.ppo.kl.beta, q.ppo.kl.target,
            q.ppo.kl.horizon) == (16, 4, 3.14e-9, 0.3, 0.7, 19)
    assert not q.model.lora.enabled and not q.model.quantization.load_in_4bit and q.reward.type == "judge"
    m = load_config(PAPER / "mistral7b_lora_4bit.yaml")
    assert (m.model.lora.r, m.model.lora.alpha, m.model.lora.dropout) == (128, 32, 0.05)
    qc = m.model.quantization
    assert (qc.load_in_4bit, qc.quant_type, qc.double_quant, qc.compute_dtype) == (True, "nf4", True, "bfloat16")
    assert (m.ppo.actor_lr, m.ppo.clip_range_value, m.ppo.vf_coef, m.ppo.kl.beta) == (5.7e-5, 0.5, 0.3, 0.1)
    for c in (g, q, m):
        gen = c.generation
        assert (gen.max_new_tokens, gen.min_new_tokens, gen.top_k, gen.top_p, gen.temperature) == (32, 8, 50, 0.9, 1.5)
        assert c.ppo.batch_size % 4 == 0 and c.ppo.mini_batch_size % 4 == 0  # 4 ranks (Tables 11, 14, 15)


def test_shape_files_have_the_published_sizes():
    from varpo.memory import load_hf_config, shape_of

    sizes = {"gpt2.json": 124.4e6, "gemma-2b-it.json": 2.506e9, "qwen2.5-0.5b.json": 494.0e6, "mistral-7b.json": 7.24e9}
    for name, n in sizes.items():
        s = shape_of(load_hf_config(SHAPES / name, name), "causal_lm")
        assert s.total_params == pytest.approx(n, rel=0.005), name


@pytest.mark.slow
@pytest.mark.parametrize("name,policy,reward,gib", CASES)
def test_estimate_memory_plans_each_on_the_papers_hardware(tmp_path, name, policy, reward, gib):
    args = ["estimate-memory", "-c", str(PAPER / name), "--num-gpus-per-node", "4", "--gpu-memory-gib", str(gib),
            "--set", f"model.policy_path={SHAPES / policy}", "--out", str(tmp_path)]
    if reward:
        args += ["--reward-model-config", str(SHAPES / reward)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    plan = json.loads((tmp_path / "memory.json").read_text())
    assert plan["cluster"]["world_size"] == 4 and plan["fits"]
    roles = {r["role"]: r for r in plan["roles"]}
    assert ("reward" in roles) == (reward is not None)
    if name.startswith("mistral"):
        actor, ref = roles["actor"], roles["reference"]
        # LoRA r=128 on q_proj, v_proj: 32 layers × 128 × ((4096 + 4096) + (4096 + 1024)) adapters
        assert actor["details"]["trainable_params"] == 32 * 128 * (8192 + 5120)
        # the 4-bit base: about 0.52 B per linear weight, far below bf16's 2 B/param
        assert actor["details"]["frozen_base_bytes"] < 0.3 * 2 * actor["total_params"]
        assert ref["model_states_gpu"] == 0  # served by the actor's base
    else:
        assert roles["reference"]["model_states_gpu"] > 0
