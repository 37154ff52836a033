"""The maths of (variance-aware) PPO for language models, as pure tensor functions.

Conventions: tensors are [B, T] over *response* tokens; `mask` is 1 on real tokens, which are
left-aligned (a response of length L occupies positions 0..L−1). Masked positions of every output
are 0. Outputs keep the input dtype (tests run in float64). References: Ziegler et al. 2019
(adaptive KL), Schulman et al. 2016 (GAE), Schulman et al. 2017 (clipped surrogate), Schulman 2020
"Approximating KL divergence" (k1/k2/k3), and the paper's Algorithm 1 (σ²-weighted penalty).
"""
from __future__ import annotations

import torch

# ---------------------------------------------------------------------------- masked statistics


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    m = mask.to(x.dtype)
    return (x * m).sum() if dim is None else (x * m).sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """Mean over the real tokens (0 where there are none)."""
    m = mask.to(x.dtype)
    count = m.sum() if dim is None else m.sum(dim)
    return masked_sum(x, m, dim) / count.clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over the real tokens; unbiased divides by n − 1."""
    m = mask.to(x.dtype)
    n = m.sum()
    mean = masked_sum(x, m) / n.clamp(min=1)
    ss = masked_sum((x - mean) ** 2, m)
    return ss / (n - 1).clamp(min=1) if unbiased else ss / n.clamp(min=1)


def masked_moments(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Σx, Σx², n) over the real tokens: summable across ranks for global whitening."""
    m = mask.to(x.dtype)
    return (x * m).sum(), (x * x * m).sum(), m.sum()


def whiten_with(x, mean, var, mask, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x − mean)/sqrt(var + eps); with shift_mean=False the mean is added back (only the scale
    changes — used for rewards, whose sign carries meaning)."""
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Whiten with this batch's own masked mean and unbiased variance."""
    return whiten_with(x, masked_mean(x, mask), masked_var(x, mask), mask, shift_mean, eps)


# ---------------------------------------------------------------------------- KL and σ² weights


def kl_per_token(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimate of KL(π‖π_ref) from the sampled token's log ratio r = log π − log π_ref:
    k1 = r (unbiased, can be negative), k2 = ½r² (low variance, biased), k3 = e^{−r} − 1 + r
    (unbiased and ≥ 0)."""
    r = logp - ref_logp
    if estimator == "k1":
        return r
    if estimator == "k2":
        return 0.5 * r * r
    if estimator == "k3":
        return torch.expm1(-r) + r
    raise ValueError(f"unknown KL estimator {estimator!r} (expected k1, k2 or k3)")


def variance_weights(var: torch.Tensor, mode: str, *, floor=None, ceiling=None, running_mean=None,
                     eps: float = 1e-8, batch_mean=None) -> torch.Tensor:
    """w(x, y) that multiplies each sequence's KL penalty (the per-sample form of the paper's
    Σ-weighted constraint):
      none         w = 1                    (vanilla PPO)
      raw          w = σ²                   (the paper's form; retune β)
      batch_mean   w = σ² / mean_batch(σ²)  (β keeps its meaning: mean weight 1)
      running_mean w = σ² / EMA(σ²)
    then clamped to [floor, ceiling]. `batch_mean` may be passed in (a mean over all ranks)."""
    if mode == "none":
        w = torch.ones_like(var)
    elif mode == "raw":
        w = var.clone()
    elif mode == "batch_mean":
        denom = var.mean() if batch_mean is None else torch.as_tensor(batch_mean, dtype=var.dtype)
        w = var / (denom + eps)
    elif mode == "running_mean":
        if running_mean is None:
            raise ValueError("variance weighting 'running_mean' needs the running mean of σ²")
        w = var / (torch.as_tensor(running_mean, dtype=var.dtype) + eps)
    else:
        raise ValueError(f"unknown variance weighting {mode!r}")
    if floor is not None or ceiling is not None:
        w = w.clamp(min=floor, max=ceiling)
    return w


class RunningMean:
    """Exponential moving average of σ²'s batch mean; the first update initialises it."""

    def __init__(self, momentum: float = 0.9):
        self.momentum, self.value = momentum, None

    def update(self, batch_mean: float) -> float:
        x = float(batch_mean)
        self.value = x if self.value is None else self.momentum * self.value + (1 - self.momentum) * x
        return self.value

    def state_dict(self) -> dict:
        return {"momentum": self.momentum, "value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.momentum, self.value = state["momentum"], state["value"]


# ---------------------------------------------------------------------------- rewards and GAE


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of each sequence's last real token (0 for an empty one)."""
    return (mask.long().sum(-1) - 1).clamp(min=0)


def shape_rewards(score, kl, weights, mask, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards r_t = −β·w·kl_t + 1[t = last]·s (Algorithm 1, eq. 5–6).
    Returns (rewards, penalty) where penalty = −β·w·kl_t, both zero on padding."""
    m = mask.to(kl.dtype)
    penalty = -beta * weights.to(kl.dtype)[:, None] * kl * m
    rewards = penalty.clone()
    rows = torch.arange(score.shape[0], device=score.device)
    has_tokens = m.sum(-1) > 0
    rewards[rows, last_token_index(m)] += torch.where(has_tokens, score.to(kl.dtype), torch.zeros_like(score, dtype=kl.dtype))
    return rewards, penalty


def apply_missing_eos_penalty(score: torch.Tensor, has_eos: torch.Tensor, penalty) -> torch.Tensor:
    """Subtract `penalty` from the score of responses that never emitted EOS (truncated ones)."""
    if penalty is None:
        return score
    return score - penalty * (~has_eos.bool()).to(score.dtype)


def gae(rewards, values, mask, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens.
    δ_t = r_t + γ·V_{t+1} − V_t,  A_t = δ_t + γλ·A_{t+1}, with V = A = 0 past the last real token
    (the episode ends there). Returns (advantages, returns = A + V), zero on padding."""
    m = mask.to(values.dtype)
    T = rewards.shape[1]
    adv = torch.zeros_like(values)
    next_adv = torch.zeros_like(values[:, 0])
    next_value = torch.zeros_like(values[:, 0])
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        a = delta + gamma * lam * next_adv
        adv[:, t] = a * m[:, t]
        # a padded position passes nothing back: the next real step sees V = A = 0
        next_adv = adv[:, t]
        next_value = values[:, t] * m[:, t]
    return adv, (adv + values) * m


# ---------------------------------------------------------------------------- losses


def policy_loss(logp, old_logp, advantages, mask, clip_range: float) -> tuple[torch.Tensor, dict]:
    """PPO clipped surrogate −min(ρA, clip(ρ, 1−ε, 1+ε)A), ρ = exp(logp − old_logp), averaged over
    all real tokens of the minibatch. Stats: clipfrac (share of tokens where the clipped branch is
    active), approx_kl = mean ½(log ρ)² (k2 estimate of KL(old‖new)), ratio mean."""
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).to(logp.dtype), mask),
            "approx_kl": masked_mean(0.5 * log_ratio**2, mask),
            "ratio_mean": masked_mean(ratio, mask),
        }
    return loss, stats


def value_loss(values, old_values, returns, mask, clip_range_value: float) -> tuple[torch.Tensor, dict]:
    """Clipped value loss ½·max((V − R)², (clip(V, V_old ± ε) − R)²), token mean over the mask."""
    v_clipped = old_values + (values - old_values).clamp(-clip_range_value, clip_range_value)
    l1, l2 = (values - returns) ** 2, (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(l1, l2), mask)
    with torch.no_grad():
        stats = {"vf_clipfrac": masked_mean((l2 > l1).to(values.dtype), mask)}
    return loss, stats


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) per position: logsumexp(z) − Σ softmax(z)·z (stable)."""
    z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    p = torch.softmax(z, -1)
    return torch.logsumexp(z, -1) - (p * z).sum(-1)


def masked_entropy_mean(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return masked_mean(entropy_from_logits(logits), mask)


# ---------------------------------------------------------------------------- KL controllers


class FixedKLController:
    """β stays at its initial value."""

    def __init__(self, beta: float):
        self.value = float(beta)

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController(FixedKLController):
    """Ziegler et al. 2019: e = clip(KL/target − 1, −0.2, 0.2); β ← β·(1 + e·n_steps/horizon)."""

    def __init__(self, init_beta: float, target: float, horizon: int):
        super().__init__(init_beta)
        self.target, self.horizon = float(target), int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


def make_kl_controller(kl_cfg) -> FixedKLController:
    if kl_cfg.controller == "adaptive":
        return AdaptiveKLController(kl_cfg.beta, kl_cfg.target, kl_cfg.horizon)
    return FixedKLController(kl_cfg.beta)
