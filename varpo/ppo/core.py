"""The maths of (variance-aware) PPO for language models, as pure tensor functions.

Conventions (every function):
- Tensors are [B, T] over *response* tokens; `mask` (bool or float) is 1 on real tokens, which are
  left-aligned and right-padded: a response of length L occupies positions 0..L−1. A row may be
  all zeros (a dropped sample): it contributes nothing anywhere.
- Masked positions of every [B, T] output are exactly 0; values at padded input positions are
  never read into a real position's result.
- Outputs are float32, or float64 when the main input is float64 (bf16/fp16 inputs are upcast:
  losses and advantages in half precision lose the small differences PPO lives on).
- "Token mean" = sum over all real tokens of the minibatch / number of real tokens.

Sources: Schulman et al. 2016 (GAE), Schulman et al. 2017 (PPO clipped surrogate and value clip as
in OpenAI baselines), Schulman 2020 "Approximating KL divergence" (k1/k2/k3), Ziegler et al. 2019
"Fine-tuning LMs from human preferences" (per-token KL reward, adaptive KL controller), and
arXiv 2507.15906 Algorithm 1, eq. 5–6 (the σ²-weighted KL penalty; docs/design.md §1).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from varpo_kernels.weighted_kl import kl_from_log_ratio

from ..masks import last_token_index

# ---------------------------------------------------------------------------- helpers


def _float(x: torch.Tensor) -> torch.Tensor:
    """float64 stays float64; everything else computes in float32."""
    return x if x.dtype == torch.float64 else x.float()


def _apply_mask(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x·mask with padded positions exactly 0 even where x is NaN/inf there (a dropped sample's
    score or σ² may be NaN; padding must not leak into sums)."""
    m = mask.to(x.dtype)
    return torch.where(m != 0, x * m, torch.zeros((), dtype=x.dtype, device=x.device))


def _check_same_shape(**tensors: torch.Tensor) -> None:
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"shape mismatch: {shapes} (expected all equal, [B, T])")


def _check_mask(mask: torch.Tensor, name: str = "mask") -> None:
    """A response mask must be 2-D, 0/1 and left-aligned (non-increasing along T): the score
    goes to index len−1 and GAE stops there, so a hole in the middle would misplace both."""
    if mask.dim() != 2:
        raise ValueError(f"{name} must be [B, T], got shape {tuple(mask.shape)}")
    m = mask.to(torch.int8) if mask.dtype == torch.bool else mask
    if not bool(((m == 0) | (m == 1)).all()):
        raise ValueError(f"{name} must contain only 0 and 1")
    if m.shape[1] > 1 and bool((m[:, 1:] > m[:, :-1]).any()):
        raise ValueError(f"{name} must be left-aligned (1s then 0s in every row): real tokens after padding")


# ---------------------------------------------------------------------------- masked statistics


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """Σ x over real tokens; over everything when dim is None, else along `dim`."""
    xm = _apply_mask(_float(x), mask)
    return xm.sum() if dim is None else xm.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """Mean over real tokens (all of them, or along `dim`); 0 where there are none."""
    x = _float(x)
    m = mask.to(x.dtype)
    count = m.sum() if dim is None else m.sum(dim)
    return masked_sum(x, m, dim) / count.clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over all real tokens (two-pass, for accuracy). unbiased=True divides by n − 1
    (ddof 1), else by n. Returns 0 when fewer than 2 (unbiased) or 1 real tokens exist."""
    x = _float(x)
    m = mask.to(x.dtype)
    n = m.sum()
    mean = masked_sum(x, m) / n.clamp(min=1)
    ss = masked_sum((x - mean) ** 2, m)
    return ss / (n - 1).clamp(min=1) if unbiased else ss / n.clamp(min=1)


def masked_moments(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Σx, Σx², n) over the real tokens, as 0-d tensors. They add up across ranks, so a trainer
    all-reduces them and whitens with the global mean Σx/n and variance
    (Σx² − n·mean²)/(n − 1) through `whiten_with`."""
    x = _float(x)
    return masked_sum(x, mask), masked_sum(x * x, mask), mask.to(x.dtype).sum()


def whiten_with(x: torch.Tensor, mean, var, mask: torch.Tensor, shift_mean: bool = True,
                eps: float = 1e-8) -> torch.Tensor:
    """(x − mean)/sqrt(var + eps) on real tokens, 0 on padding. With shift_mean=False the mean is
    added back, so only the scale changes (TRL/OpenRLHF convention for whitening rewards, whose
    sign carries meaning). `mean`, `var`: floats or 0-d tensors (e.g. global statistics)."""
    x = _float(x)
    mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device)
    var = torch.as_tensor(var, dtype=x.dtype, device=x.device)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return _apply_mask(out, mask)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Whiten with this batch's own masked mean and unbiased (ddof 1) variance."""
    return whiten_with(x, masked_mean(x, mask), masked_var(x, mask, unbiased=True), mask, shift_mean, eps)


# ---------------------------------------------------------------------------- KL and σ² weights

def kl_per_token(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimate of KL(π‖π_ref) at the sampled token, from r = log π − log π_ref
    (Schulman 2020): k1 = r (unbiased, can be negative), k2 = ½r² (biased, low variance, ≥ 0),
    k3 = e^{−r} − 1 + r (unbiased, ≥ 0). [B, T] → [B, T]; the caller masks padding. The estimators
    are the kernels' own (varpo_kernels.weighted_kl.kl_from_log_ratio), so the fused shaping pass
    and this unfused path compute the same k3."""
    _check_same_shape(logp=logp, ref_logp=ref_logp)
    return kl_from_log_ratio(_float(logp) - _float(ref_logp), estimator)


VARIANCE_MODES = ("none", "raw", "batch_mean", "running_mean")


def variance_weights(var: torch.Tensor, mode: str, *, floor: float | None = None, ceiling: float | None = None,
                     running_mean: float | torch.Tensor | None = None, eps: float = 1e-8,
                     batch_mean: torch.Tensor | float | None = None, heterogeneity: float = 1.0,
                     mean_fn: Callable[[torch.Tensor], float | torch.Tensor] | None = None) -> torch.Tensor:
    """w(x, y) [B] that multiplies each sequence's KL penalty — the per-sample form of the paper's
    Σ-weighted constraint (Algorithm 1, eq. 5–6), from σ² `var` [B] (≥ 0):
      none         w = 1                        (vanilla PPO)
      raw          w = σ²                       (the paper's form; retune β)
      batch_mean   w = σ² / (mean(σ²) + eps)    (mean weight ≈ 1, so β keeps its meaning;
                                                 pass `batch_mean` for a mean over all ranks)
      running_mean w = σ² / (running_mean + eps) (EMA of batch means, see ExponentialMovingAverage)
    then clamped to [floor, ceiling] (either may be None). NaN σ² pass through (the trainer
    treats non-finite values); negative σ² is an error (it would reward divergence).

    `heterogeneity` α ≥ 0 (Table 4's knob) scales how much the normalised weights differ across
    samples while keeping their mean. With r = σ²/(m + eps) the ratio above (m the batch or
    running mean) and ρ = mean(σ²)/(m + eps) the batch's level (≈ 1 for batch_mean):
      w = ρ^α · r^α / mean(r^α)
    so log w spreads α times as wide as log r and mean(w) = ρ^α exactly (1 for batch_mean).
    α = 1 returns r itself (the unmodified weights), α = 0 gives w = 1 exactly (vanilla PPO), α = 2
    exaggerates. Dividing by mean(r^α) matters: (σ²/m)^α alone has mean 1 + CV² at α = 2 (Jensen),
    which would strengthen the overall penalty along with the heterogeneity. The clamp to
    [floor, ceiling] comes after, on the final weights (so with α = 0, w = clamp(1)). `raw` rejects
    α ≠ 1: (σ²)^α changes the units and the mean arbitrarily, there is no scale to keep; `none`
    ignores α. `mean_fn` reduces a [B] tensor to the batch mean the caller means (the trainer's:
    over valid samples on all ranks); default: `Tensor.mean`."""
    if var.dim() != 1:
        raise ValueError(f"variance must be [B], got shape {tuple(var.shape)}")
    if floor is not None and ceiling is not None and floor > ceiling:
        raise ValueError(f"variance weight floor ({floor}) must not exceed ceiling ({ceiling})")
    if not (math.isfinite(heterogeneity) and heterogeneity >= 0):
        raise ValueError(f"variance weight heterogeneity must be a finite number ≥ 0, got {heterogeneity}")
    if mode == "raw" and heterogeneity != 1:
        raise ValueError(f"variance weight heterogeneity ({heterogeneity}) needs a normalised weighting "
                         "(batch_mean or running_mean); raw σ² must use 1")
    var = _float(var)
    if bool((var < 0).any()):
        raise ValueError(f"variance must be ≥ 0, got min {var.min().item():.4g}")

    def mean(x: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(x.mean() if mean_fn is None else mean_fn(x), dtype=var.dtype, device=var.device)

    if mode == "none":
        w = torch.ones_like(var)
    elif mode == "raw":
        w = var.clone()
    elif mode in ("batch_mean", "running_mean"):
        if mode == "running_mean" and running_mean is None:
            raise ValueError("variance weighting 'running_mean' needs the running mean of σ² (running_mean=...)")
        level = None
        if mode == "batch_mean" or heterogeneity != 1:
            level = mean(var) if batch_mean is None else torch.as_tensor(batch_mean, dtype=var.dtype, device=var.device)
        denom = level if mode == "batch_mean" else torch.as_tensor(running_mean, dtype=var.dtype, device=var.device)
        w = var / (denom + eps)
        if heterogeneity != 1:
            # pow(NaN, 0) is 1: keep non-finite ratios as they are, for the caller to see
            p = torch.where(torch.isfinite(w), w.pow(heterogeneity), w)
            # max(·, eps), not + eps: at α = 0 the mean is exactly 1 and w must stay exactly 1;
            # the guard only matters when every σ² is 0 (then w = 0, as at α = 1)
            w = (level / (denom + eps)).pow(heterogeneity) * p / mean(p).clamp(min=eps)
    else:
        raise ValueError(f"unknown variance weighting {mode!r} (expected one of {', '.join(VARIANCE_MODES)})")
    if floor is not None or ceiling is not None:
        w = w.clamp(min=floor, max=ceiling)
    return w


class ExponentialMovingAverage:
    """Exponential moving average (of the batch mean of σ², for `running_mean` weighting):
    m ← μ·m + (1 − μ)·x, with μ the momentum; the first update sets m = x (no bias towards an
    arbitrary start). Its state_dict ({"momentum", "value"}) is what checkpoints store."""

    def __init__(self, momentum: float = 0.9):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"ExponentialMovingAverage momentum must be in [0, 1), got {momentum}")
        self.momentum, self.value = float(momentum), None

    def update(self, batch_mean: float | torch.Tensor) -> float:
        x = float(batch_mean)
        if not math.isfinite(x):
            raise ValueError(f"ExponentialMovingAverage.update got a non-finite batch mean ({x})")
        self.value = x if self.value is None else self.momentum * self.value + (1.0 - self.momentum) * x
        return self.value

    def state_dict(self) -> dict:
        return {"momentum": self.momentum, "value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.momentum = float(state["momentum"])
        self.value = None if state["value"] is None else float(state["value"])


# ---------------------------------------------------------------------------- rewards and GAE


def shape_rewards(score: torch.Tensor, kl: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor,
                  beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards (Ziegler et al. 2019; paper Algorithm 1, eq. 5–6):
        r_t = −β·w·kl_t + 1[t = len−1]·s
    score s [B], kl [B, T], weights w [B], mask [B, T]. Returns (rewards, penalty) [B, T] with
    penalty_t = −β·w·kl_t (≤ 0 where kl ≥ 0; log −penalty/β as the weighted KL); both 0 on
    padding. An empty row gets nothing (its score is dropped with it)."""
    _check_mask(mask)
    if kl.shape != mask.shape or score.shape != (kl.shape[0],) or weights.shape != (kl.shape[0],):
        raise ValueError(f"shape_rewards expects score [B], kl [B, T], weights [B], mask [B, T]; got "
                         f"{tuple(score.shape)}, {tuple(kl.shape)}, {tuple(weights.shape)}, {tuple(mask.shape)}")
    kl = _float(kl)
    penalty = _apply_mask(-beta * weights.to(kl.dtype)[:, None] * kl, mask)
    rows = torch.arange(kl.shape[0], device=kl.device)
    at_last = torch.zeros_like(kl)
    at_last[rows, last_token_index(mask)] = score.to(kl.dtype)
    return penalty + _apply_mask(at_last, mask), penalty


def apply_missing_eos_penalty(score: torch.Tensor, has_eos: torch.Tensor, penalty: float | None) -> torch.Tensor:
    """s − penalty for responses that never emitted EOS (truncated), s otherwise (TRL's
    `missing_eos_penalty`); penalty None leaves the score unchanged. [B], [B] bool → [B]."""
    if has_eos.shape != score.shape:
        raise ValueError(f"has_eos {tuple(has_eos.shape)} must match score {tuple(score.shape)}")
    score = _float(score)
    if penalty is None:
        return score
    return score - penalty * (~has_eos.bool()).to(score.dtype)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over response tokens:
        δ_t = r_t + γ·V_{t+1} − V_t,   A_t = δ_t + γλ·A_{t+1},
    with V_{len} = A_{len} = 0: the episode ends at the last real token, so nothing is
    bootstrapped from padding. Returns (advantages, returns = A + V), both [B, T], 0 on padding."""
    _check_same_shape(rewards=rewards, values=values, mask=mask)
    _check_mask(mask)
    values = _float(values)
    rewards = rewards.to(values.dtype)
    rewards, values = _apply_mask(rewards, mask), _apply_mask(values, mask)
    m = mask.to(values.dtype)
    adv = torch.zeros_like(values)
    next_adv = torch.zeros_like(values[:, 0])
    next_value = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv[:, t] = (delta + gamma * lam * next_adv) * m[:, t]
        # a padded position hands V = A = 0 back to the last real one
        next_adv, next_value = adv[:, t], values[:, t]
    return adv, adv + values


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                       var_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """How well the critic predicts the returns, over real tokens: 1 − Var[R − V] / Var[R]
    (1: perfectly, 0: no better than a constant, < 0: worse). NaN when Var[R] = 0, where it is
    undefined. [B, T] × 3 → 0-d. `var_fn(x, mask)` is the variance the caller means (the
    trainer's: over all ranks); default: `masked_var` (unbiased)."""
    _check_same_shape(values=values, returns=returns, mask=mask)
    values, returns = _float(values), _float(returns)
    var = masked_var if var_fn is None else var_fn
    var_returns = torch.as_tensor(var(returns, mask), dtype=returns.dtype)
    var_residual = torch.as_tensor(var(returns - values, mask), dtype=returns.dtype)
    return torch.where(var_returns > 0, 1 - var_residual / var_returns, torch.full_like(var_returns, float("nan")))


# ---------------------------------------------------------------------------- losses


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip_range: float, token_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate (Schulman et al. 2017), to be minimised:
        L = token_mean( c_t · max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)) ),   ρ = exp(logp − old_logp),
    the mean taken over all real tokens of the minibatch; c_t = `token_weights` (constants, e.g.
    truncated importance weights), 1 when None. Stats (detached 0-d tensors):
      clipfrac     share of real tokens where the clipped branch is the active one
      approx_kl    token_mean ½(log ρ)²           (k2 estimate of KL; TRL's `approxkl`)
      approx_kl_k3 token_mean (ρ − 1) − log ρ     (k3 estimate of KL(π_old‖π), unbiased, ≥ 0)
      ratio_mean   token_mean ρ"""
    _check_same_shape(logp=logp, old_logp=old_logp, advantages=advantages, mask=mask)
    # padded log-probs may be arbitrary: a zero log-ratio there keeps exp() and its gradient finite
    log_ratio = _apply_mask(_float(logp) - _float(old_logp), mask)
    ratio = torch.exp(log_ratio)
    advantages = advantages.to(ratio.dtype)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    per_token = torch.maximum(unclipped, clipped)
    if token_weights is not None:
        _check_same_shape(logp=logp, token_weights=token_weights)
        per_token = per_token * _apply_mask(token_weights.detach().to(per_token.dtype), mask)
    loss = masked_mean(per_token, mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).to(ratio.dtype), mask),
            "approx_kl": masked_mean(0.5 * log_ratio**2, mask),
            "approx_kl_k3": masked_mean(torch.expm1(log_ratio) - log_ratio, mask),
            "ratio_mean": masked_mean(ratio, mask),
        }
    return loss, stats


def truncated_importance_weights(logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor,
                                 cap: float) -> torch.Tensor:
    """Truncated importance sampling (TIS) for a rollout sampled by another engine:
        c_t = min(exp(logp_t − rollout_logp_t), cap),
    logp: the trainer's log-probs of the sampled tokens under the policy that sampled them (old
    log-probs), rollout_logp: the sampling engine's own log-probs of the same tokens. PPO's
    surrogate assumes the tokens came from π_old as the trainer computes it; the engine's
    numerics differ slightly, and c_t reweights each token toward the trainer's distribution,
    truncated at `cap` so a token the engine found far likelier than the trainer cannot dominate.
    Constants (no gradient); 0 on padding."""
    _check_same_shape(logp=logp, rollout_logp=rollout_logp, mask=mask)
    if not cap > 0:
        raise ValueError(f"cap must be > 0, got {cap}")
    log_w = _apply_mask(_float(logp).detach() - _float(rollout_logp).detach(), mask)
    return _apply_mask(torch.exp(log_w).clamp(max=cap), mask)


def logprob_mismatch(logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """|Δ log p| between the trainer's and the sampling engine's log-probs of the sampled tokens:
    (sum over real tokens, count of real tokens, max; max is 0 without real tokens). Sums and
    counts, not a mean, so ranks can be combined exactly."""
    _check_same_shape(logp=logp, rollout_logp=rollout_logp, mask=mask)
    diff = _apply_mask((_float(logp) - _float(rollout_logp)).abs(), mask)
    return diff.sum(), mask.to(diff.dtype).sum(), diff.max() if diff.numel() else diff.new_zeros(())


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip_range_value: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss (OpenAI baselines PPO2, as in TRL):
        L = ½·token_mean( max((V − R)², (clip(V, V_old − ε, V_old + ε) − R)²) ).
    Stats: vf_clipfrac = share of real tokens where the clipped term is the larger one."""
    _check_same_shape(values=values, old_values=old_values, returns=returns, mask=mask)
    values = _float(values)
    old_values, returns = old_values.to(values.dtype), returns.to(values.dtype)
    v_clipped = old_values + (values - old_values).clamp(-clip_range_value, clip_range_value)
    l1, l2 = (values - returns) ** 2, (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(l1, l2), mask)
    with torch.no_grad():
        stats = {"vf_clipfrac": masked_mean((l2 > l1).to(values.dtype), mask)}
    return loss, stats


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) per position, [B, T, V] → [B, T], in the stable form
    H = logsumexp(z) − Σ_v softmax(z)_v·z_v. −inf logits (filtered vocabulary) count as
    probability 0 and give neither NaN values nor NaN gradients."""
    z = _float(logits)
    p = torch.softmax(z, -1)
    z_finite = torch.where(torch.isfinite(z), z, torch.zeros_like(z))
    return torch.logsumexp(z, -1) - (p * z_finite).sum(-1)


def masked_entropy_mean(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token mean of the entropy over real tokens."""
    return masked_mean(entropy_from_logits(logits), mask)


# ---------------------------------------------------------------------------- KL controllers


class FixedKLController:
    """β stays at its initial value."""

    def __init__(self, beta: float):
        if not (math.isfinite(beta) and beta >= 0):
            raise ValueError(f"KL coefficient beta must be finite and ≥ 0, got {beta}")
        self.value = float(beta)

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController(FixedKLController):
    """Ziegler et al. 2019 (and TRL's AdaptiveKLController): after each batch,
        e = clip(current_kl / target − 1, −0.2, 0.2),   β ← β·(1 + e·n_steps / horizon),
    with current_kl the mean KL per *sequence* (nats) and n_steps the episodes in the batch.
    target and horizon come from the config; state_dict carries them for inspection, while
    load_state_dict restores only β."""

    def __init__(self, init_beta: float, target: float, horizon: int):
        super().__init__(init_beta)
        if not target > 0 or not horizon > 0:
            raise ValueError(f"adaptive KL needs target > 0 and horizon > 0, got target={target}, horizon={horizon}")
        self.target, self.horizon = float(target), int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        current_kl = float(current_kl)
        if not math.isfinite(current_kl):
            raise ValueError(f"AdaptiveKLController.update got a non-finite KL ({current_kl}); β left at {self.value}")
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}


def make_kl_controller(kl_cfg) -> FixedKLController:
    """The controller named by `varpo.config.KLConfig` (controller, beta, target, horizon)."""
    if kl_cfg.controller == "adaptive":
        return AdaptiveKLController(kl_cfg.beta, kl_cfg.target, kl_cfg.horizon)
    if kl_cfg.controller == "fixed":
        return FixedKLController(kl_cfg.beta)
    raise ValueError(f"ppo.kl.controller: unknown {kl_cfg.controller!r} (expected 'fixed' or 'adaptive')")
