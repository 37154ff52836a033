"""4-bit (bitsandbytes nf4, double quantization, bf16 compute) LoRA PPO and flash-attn, end to
end. The CUDA test runs where a GPU is; its CPU twin is tests/models/test_architectures.py
(the same path, full-precision base, eager/sdpa attention). bitsandbytes ≥ 0.50 also runs 4-bit
on CPU: that test runs wherever it is installed (it is an optional dependency, varpo[gpu])."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json

import pytest
import torch

from varpo.config.environment import BNB_CPU_MIN, _version_tuple

HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None
BNB_CPU = HAS_BNB and _version_tuple(importlib.metadata.version("bitsandbytes")) >= BNB_CPU_MIN
QLORA = ["model.lora.enabled=true", "model.lora.critic=true", "model.lora.r=8", "model.lora.alpha=16",
         "model.quantization.load_in_4bit=true", "model.quantization.quant_type=nf4",
         "model.quantization.double_quant=true", "model.quantization.compute_dtype=bfloat16", "model.dtype=bfloat16",
         "reward.type=gold", "ppo.steps=2", "ppo.batch_size=4", "ppo.mini_batch_size=4", "ppo.ppo_epochs=1",
         "ppo.actor_lr=1e-3", "ppo.critic_lr=1e-3", "generation.max_new_tokens=6", "generation.max_prompt_len=16"]


def _run_qlora(path: str, out, extra: list[str]) -> dict:
    from transformers import AutoModelForCausalLM

    from varpo.config import load_config
    from varpo.ppo import train_ppo
    from varpo.ppo.trainer import PPOTrainer

    built = {}
    orig = PPOTrainer.__init__

    def keep(self, *a, **k):  # look at the real actor the trainer built
        orig(self, *a, **k)
        built["actor"] = self.actor.module

    PPOTrainer.__init__ = keep
    try:
        summary = train_ppo(load_config(None, [f"model.policy_path={path}", *QLORA, *extra]), out)
    finally:
        PPOTrainer.__init__ = orig
    kinds = {type(m).__name__ for m in built["actor"].modules()}
    assert "Linear4bit" in kinds  # the base really is 4-bit
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["policy_loss"])) for r in rows)
    assert 0 < summary["trainable_params"] < 0.2 * summary["total_params"]
    exported = AutoModelForCausalLM.from_pretrained(str(out / "policy"))  # merged, dequantized: plain HF
    assert not any("lora" in n for n, _ in exported.named_parameters())
    # it computes what the trained 4-bit actor computes (up to bf16 rounding of the merged weights)
    actor = built["actor"].eval()
    device = next(actor.parameters()).device
    ids = torch.randint(3, exported.config.vocab_size, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = actor(input_ids=ids.to(device)).logits.float().cpu()
        got = exported.to(device)(input_ids=ids.to(device)).logits.float().cpu()
    assert (got - want).abs().max() <= 0.05 * want.abs().max()
    return summary


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CPU twin: test_architectures.py)")
@pytest.mark.skipif(not HAS_BNB, reason="needs bitsandbytes (pip install -e '.[gpu]')")
def test_qlora_ppo_with_flash_attention_on_gpu(tiny_models, tmp_path):
    attn = "flash_attention_2" if importlib.util.find_spec("flash_attn") else "sdpa"
    s = _run_qlora(tiny_models["mistral"], tmp_path, [f"model.attn_implementation={attn}", "deepspeed.precision=bf16"])
    assert s["world_size"] == 1


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU backend; the GPU test above covers CUDA")
@pytest.mark.skipif(not BNB_CPU, reason=f"bitsandbytes >= {BNB_CPU_MIN[0]}.{BNB_CPU_MIN[1]} (CPU 4-bit backend) "
                    "is not installed; it is an optional dependency (varpo[gpu])")
def test_qlora_ppo_on_bitsandbytes_cpu_backend(tiny_models, tmp_path):
    _run_qlora(tiny_models["llama"], tmp_path, ["model.attn_implementation=sdpa"])
