"""Evaluate a policy the way the paper does (Algorithm 2): sample a response per evaluation prompt
(or several: `evaluation.samples_per_prompt`) and average the true reward over prompts — one
number per policy."""
from __future__ import annotations

from collections.abc import Callable

import torch

from ..config import GenerationConfig


@torch.no_grad()
def sample_responses(policy_path: str, prompts: list[str], gen: GenerationConfig, seed: int,
                     batch_size: int = 64, device: str | torch.device = "cpu", chat_template: bool = False,
                     load_kw: dict | None = None, reference_path: str | None = None) -> list[str] | tuple[list[str], list[float]]:
    """Sample one response per prompt. With `reference_path`, also each sample's sequence KL
    log π(y|x) − log π_ref(y|x) (sum over the response's tokens, both under the sampling
    temperature as PPO's own KL is): its mean over samples estimates KL(π ‖ π_ref) per sequence."""
    from transformers import AutoModelForCausalLM

    from ..models.loading import load_tokenizer
    from ..ppo.generation.hf import generate
    from ..ppo.tokens import decode_responses, tokenize_prompts

    tok = load_tokenizer(policy_path)
    model = AutoModelForCausalLM.from_pretrained(policy_path, **(load_kw or {})).to(device).eval()
    ref = (AutoModelForCausalLM.from_pretrained(reference_path, **(load_kw or {})).to(device).eval()
           if reference_path is not None else None)
    torch.manual_seed(seed)
    out: list[str] = []
    kls: list[float] = []
    for s in range(0, len(prompts), batch_size):
        ids, mask, _ = tokenize_prompts(tok, prompts[s : s + batch_size], gen.max_prompt_len, device, chat_template)
        exp = generate(model, tok, ids, mask, gen)
        out += decode_responses(tok, exp)
        if ref is not None:
            kls += sequence_kl(model, ref, exp, gen.temperature).tolist()
    return (out, kls) if ref is not None else out


def sequence_kl(policy, reference, exp, temperature: float = 1.0) -> torch.Tensor:
    """[B] float64: Σ_t (log π − log π_ref)(y_t) over each sampled response's real tokens."""
    from ..ppo.forward import response_logits

    ids = exp.response_ids.unsqueeze(-1)
    lp = torch.log_softmax(response_logits(policy, exp, temperature).double(), -1).gather(-1, ids).squeeze(-1)
    lr = torch.log_softmax(response_logits(reference, exp, temperature).double(), -1).gather(-1, ids).squeeze(-1)
    return ((lp - lr) * exp.response_mask).sum(-1)


def evaluate_policy(policy_path: str, prompts: list[str], reward_fn: Callable[[list[str], list[str]], list[float]],
                    gen: GenerationConfig, seed: int, batch_size: int = 64, samples_per_prompt: int = 1,
                    chat_template: bool = False, load_kw: dict | None = None, proxy=None,
                    reference_path: str | None = None) -> dict:
    """Mean true reward of the policy's samples on `prompts`: the mean over prompts of each prompt's
    mean over its `samples_per_prompt` samples (1 is the paper's Algorithm 2).

    Every policy is judged on the same prompts, so what differs between two evaluations of one
    policy is only the sampling of responses. With k ≥ 2 samples per prompt that noise is
    estimated from the within-prompt variances s²_p: reward_se² = mean_p(s²_p / k_p) / n_prompts
    (None for k = 1, where it cannot be separated from prompt-to-prompt differences).

    With `proxy` (the Scorer the policy was trained on) the same samples are scored by it too:
    `proxy_mean`, `sigma2_mean` and `calibration` (σ² against the proxy's squared error vs the true
    reward: `varpo.reward.report.sigma2_error_calibration`), i.e. the calibration on policy samples."""
    k = samples_per_prompt
    if k < 1:
        raise ValueError(f"samples_per_prompt must be ≥ 1, got {k}")
    repeated = [p for p in prompts for _ in range(k)]
    sampled = sample_responses(policy_path, repeated, gen, seed, batch_size, chat_template=chat_template,
                               load_kw=load_kw, reference_path=reference_path)
    responses, kls = sampled if reference_path is not None else (sampled, None)
    r = torch.tensor(reward_fn(repeated, responses), dtype=torch.float64).view(len(prompts), k)
    if not bool((~torch.isnan(r)).any()):
        raise RuntimeError(f"policy {policy_path}: the true reward dropped every evaluation sample")
    out = {**aggregate_rewards(r), "samples_per_prompt": k, "n_prompts": len(prompts),
           "mean_response_chars": sum(map(len, responses)) / max(len(responses), 1)}
    if kls is not None:
        k_t = torch.tensor(kls, dtype=torch.float64)
        out["kl"] = float(k_t.mean())
        out["kl_se"] = float(k_t.std() / len(kls) ** 0.5) if len(kls) > 1 else None
    if proxy is not None:
        from ..reward.report import sigma2_error_calibration

        sc = proxy.score(repeated, responses)
        out["proxy_mean"] = float(sc.score.double().mean())
        out["sigma2_mean"] = float(sc.variance.double().mean())
        out["calibration"] = sigma2_error_calibration(sc.variance, sc.score, r.flatten())
    return out


def aggregate_rewards(r: torch.Tensor) -> dict:
    """r [n_prompts, k] true rewards (NaN: a sample the reward source dropped) → the policy's reward
    (mean over prompts with a sample of their mean), its spread over prompts, reward_se (from the
    within-prompt variances of the prompts with ≥ 2 samples; None when there are none) and n_scored."""
    ok = ~torch.isnan(r)
    n_ok = ok.sum(1)
    vals = torch.where(ok, r, 0.0)
    prompt_mean = vals.sum(1) / n_ok.clamp(min=1)
    kept = prompt_mean[n_ok > 0]
    se = None
    two = n_ok >= 2
    if bool(two.any()):
        s2 = (torch.where(ok, r - prompt_mean[:, None], 0.0) ** 2).sum(1)[two] / (n_ok[two] - 1)
        se = float(((s2 / n_ok[two]).mean() / len(kept)).sqrt())
    return {"reward": kept.mean().item(), "reward_std_over_prompts": kept.std().item() if len(kept) > 1 else 0.0,
            "reward_se": se, "n_scored": int(n_ok.sum())}
