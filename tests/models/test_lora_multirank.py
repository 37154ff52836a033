"""LoRA PPO under ZeRO-3 on two CPU ranks (real `deepspeed` launcher, gloo): trainable adapters on
a frozen, sharded base, the reference served by that base with adapters off. Deterministic
decoding (top_k=1, fixed length) and one minibatch per step make the 2-rank run reproduce the
1-rank run (tolerance: the order of floating-point reductions). The exported policy is a plain
HF model equal to base + adapters."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from varpo.dist import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.multirank, pytest.mark.slow]


def _launch(n: int, out: Path, overrides: list[str]) -> None:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "VARPO_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    port = free_port()
    script = str(ROOT / "launch/train_ppo.py")
    cmd = [sys.executable, script] if n == 1 else [
        # this interpreter's DeepSpeed launcher, not whichever `deepspeed` is first on PATH
        sys.executable, "-m", "deepspeed.launcher.runner", "--num_nodes", "1", "--num_accelerators", str(n),
        "--master_port", str(port), script]
    try:
        proc = subprocess.run([*cmd, "--out", str(out), *[x for o in overrides for x in ("--set", o)]], env=env,
                              capture_output=True, text=True, timeout=900, check=False)
    finally:
        for seg in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"):
            seg.unlink(missing_ok=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_lora_zero3_two_ranks_match_one_and_export_a_plain_model(tiny_models, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from varpo.reward.model import EnsembleRewardModel

    base = tiny_models["llama"]
    # random heads on the base: scores and σ² that differ between responses, so the first update
    # has a gradient (the gold reward of a random tiny model's text is 0 for every response)
    torch.manual_seed(5)
    EnsembleRewardModel.from_backbone(base, 4).save_pretrained(tmp_path / "rm", tokenizer=AutoTokenizer.from_pretrained(base))
    common = [f"model.policy_path={base}", f"reward.path={tmp_path / 'rm'}", "ppo.variance.weighting=batch_mean", "deepspeed.zero_stage=3",
              "deepspeed.param_persistence_threshold=0", "model.lora.enabled=true", "model.lora.r=4",
              "model.lora.critic=true", "model.lora.target_modules=all-linear", "ppo.steps=2", "ppo.batch_size=4",
              "ppo.mini_batch_size=4", "ppo.ppo_epochs=1", "ppo.actor_lr=3e-3", "ppo.critic_lr=3e-3",
              "generation.top_k=1", "generation.min_new_tokens=4", "generation.max_new_tokens=4",
              "generation.max_prompt_len=12", "ppo.kl.beta=0.1"]
    one, two = tmp_path / "one", tmp_path / "two"
    _launch(1, one, common)
    _launch(2, two, common)
    rows = {k: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()] for k, d in (("1", one), ("2", two))}
    assert [r["world_size"] for r in rows["2"]] == [2, 2]
    for r1, r2 in zip(rows["1"], rows["2"]):
        for key in ("score_mean", "variance_mean", "kl_mean", "policy_loss", "value_loss", "returns_mean"):
            assert r1[key] == pytest.approx(r2[key], rel=1e-4, abs=1e-6), key
    assert rows["1"][1]["kl_mean"] != 0.0  # the adapters moved the policy away from the base reference

    s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    plain = AutoModelForCausalLM.from_pretrained(base)
    lin = [m for n, m in plain.named_modules() if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")]
    adapters = sum(4 * (m.in_features + m.out_features) for m in lin)
    n_base = sum(p.numel() for p in plain.parameters())
    for s in (s1, s2):  # ZeRO-3 shards counted whole
        assert s["trainable_params"] == adapters and s["total_params"] == n_base + adapters

    # the export: a plain HF folder (no peft needed) = base + the saved adapters, merged
    exported = AutoModelForCausalLM.from_pretrained(str(two / "policy")).eval()
    assert not any("lora" in n for n, _ in exported.named_parameters())
    via_peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(two / "policy_adapter")).eval()
    ids = torch.randint(3, 50, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(exported(ids).logits, via_peft(input_ids=ids).logits, atol=1e-5)
        assert not torch.allclose(exported(ids).logits, plain(ids).logits, atol=1e-4)
