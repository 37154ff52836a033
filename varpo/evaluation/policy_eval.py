"""Evaluate a policy the way the paper does (Algorithm 2): sample one response per evaluation
prompt and average the true reward over prompts — one number per policy."""
from __future__ import annotations

from collections.abc import Callable

import torch

from ..config import GenerationConfig


@torch.no_grad()
def sample_responses(policy_path: str, prompts: list[str], gen: GenerationConfig, seed: int,
                     batch_size: int = 64, device: str | torch.device = "cpu") -> list[str]:
    from transformers import AutoModelForCausalLM

    from ..ppo.models import load_tokenizer
    from ..ppo.rollout import generate, tokenize_prompts

    tok = load_tokenizer(policy_path)
    model = AutoModelForCausalLM.from_pretrained(policy_path).to(device).eval()
    torch.manual_seed(seed)
    out: list[str] = []
    for s in range(0, len(prompts), batch_size):
        ids, mask, _ = tokenize_prompts(tok, prompts[s : s + batch_size], gen.max_prompt_len, device)
        ro = generate(model, tok, ids, mask, gen)
        out += tok.batch_decode([r[m.bool()] for r, m in zip(ro.response_ids, ro.response_mask)], skip_special_tokens=True)
    return out


def evaluate_policy(policy_path: str, prompts: list[str], reward_fn: Callable[[list[str], list[str]], list[float]],
                    gen: GenerationConfig, seed: int, batch_size: int = 64) -> dict:
    """Mean true reward of the policy's samples on `prompts` (plus their spread)."""
    responses = sample_responses(policy_path, prompts, gen, seed, batch_size)
    r = torch.tensor(reward_fn(prompts, responses), dtype=torch.float64)
    r = r[~torch.isnan(r)]  # NaN marks a sample the reward source dropped by policy
    if len(r) == 0:
        raise RuntimeError(f"policy {policy_path}: the true reward dropped every evaluation sample")
    return {"reward": r.mean().item(), "reward_std_over_prompts": r.std().item() if len(r) > 1 else 0.0,
            "n_prompts": len(prompts), "n_scored": len(r),
            "mean_response_chars": sum(map(len, responses)) / max(len(responses), 1)}
