"""Theorem 2.7: KL-regularised policies on the simplex.

Conventions: `r_hat` is [N, K] or [K]; `variances` (σ², > 0) and `pi_ref` (> 0, sums to 1) are [K];
every policy returned has r_hat's shape and rows summing to 1. All in float64, in log space, so a
small β·σ² (large exponents) cannot overflow.

Three policies, each the exact maximiser of its own objective (strictly concave on the simplex):
- vanilla          max_π ⟨π, r̂⟩ − β Σ_y π(y) log(π(y)/π_ref(y))
                   → π ∝ π_ref exp(r̂/β)
- weighted_kl      max_π ⟨π, r̂⟩ − β Σ_y σ²(y) π(y) log(π(y)/π_ref(y))     (Thm 2.7's objective,
                   and what variance-aware PPO optimises: its per-sample KL penalty is σ²-weighted)
                   → π(y) = π_ref(y) exp((r̂(y) − λ)/(β σ²(y)) − 1), λ the normaliser (Newton)
- sharpe           π ∝ π_ref exp(r̂/(β σ²)), the closed form the paper states for Thm 2.7; it is
                   the exact maximiser of ⟨π, r̂/σ²⟩ − β KL(π‖π_ref) (reward-to-variance ratio), and
                   coincides with `weighted_kl` only when σ² is constant across arms, because the
                   normaliser λ is divided by σ²(y) arm by arm.
"""
from __future__ import annotations

import numpy as np
from scipy.special import logsumexp, softmax


def _log(pi_ref: np.ndarray) -> np.ndarray:
    return np.log(np.asarray(pi_ref, dtype=np.float64))


def vanilla_policy(r_hat: np.ndarray, pi_ref: np.ndarray, beta: float) -> np.ndarray:
    """π ∝ π_ref exp(r̂/β)."""
    return softmax(_log(pi_ref) + np.asarray(r_hat, dtype=np.float64) / beta, axis=-1)


def sharpe_policy(r_hat: np.ndarray, variances: np.ndarray, pi_ref: np.ndarray, beta: float) -> np.ndarray:
    """π ∝ π_ref exp(r̂/(β σ²))."""
    s2 = np.asarray(variances, dtype=np.float64)
    return softmax(_log(pi_ref) + np.asarray(r_hat, dtype=np.float64) / (beta * s2), axis=-1)


def weighted_kl_policy(r_hat: np.ndarray, variances: np.ndarray, pi_ref: np.ndarray, beta: float,
                       max_iters: int = 100, tol: float = 1e-13) -> np.ndarray:
    """The maximiser of ⟨π, r̂⟩ − β Σ σ² π log(π/π_ref) on the simplex.

    Stationarity gives log π(y) = log π_ref(y) + (r̂(y) − λ)/(β σ²(y)) − 1 with λ such that the
    masses sum to 1. g(λ) = logsumexp_y(...) is convex and decreasing in λ, so Newton's method
    started left of the root (at λ where one arm alone has mass 1, g ≥ 0) climbs to it monotonically
    without overshooting; vectorised over rows.

    Note: Σ σ² π log(π/π_ref) is not a divergence when σ² varies — it can be negative and is not
    minimised at π_ref — so as β → ∞ this policy tends to π ∝ π_ref exp(−λ/σ²), not to π_ref.
    """
    r = np.atleast_2d(np.asarray(r_hat, dtype=np.float64))
    c = beta * np.asarray(variances, dtype=np.float64)  # β σ²(y)
    lp = _log(pi_ref)
    lam = np.max(r - c * (1.0 - lp), axis=-1, keepdims=True)
    for _ in range(max_iters):
        logits = lp + (r - lam) / c - 1.0
        g = logsumexp(logits, axis=-1, keepdims=True)
        if np.all(np.abs(g) < tol):
            break
        p = softmax(logits, axis=-1)
        lam = lam + g / np.sum(p / c, axis=-1, keepdims=True)  # λ − g/g', g' = −Σ p/c
    pi = softmax(lp + (r - lam) / c - 1.0, axis=-1)  # removes the last Newton residual
    return pi.reshape(np.shape(r_hat))


def kl_divergence(pi: np.ndarray, pi_ref: np.ndarray) -> np.ndarray:
    """KL(π‖π_ref) per row (nats), with 0·log 0 = 0."""
    pi = np.asarray(pi, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(pi > 0, pi * (np.log(pi) - _log(pi_ref)), 0.0)
    return terms.sum(axis=-1)


def weighted_kl_objective(pi: np.ndarray, r_hat: np.ndarray, variances: np.ndarray, pi_ref: np.ndarray,
                          beta: float) -> np.ndarray:
    """⟨π, r̂⟩ − β Σ σ² π log(π/π_ref), per row (σ² = 1 gives the vanilla objective)."""
    pi = np.asarray(pi, dtype=np.float64)
    s2 = np.asarray(variances, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(pi > 0, s2 * pi * (np.log(pi) - _log(pi_ref)), 0.0)
    return (pi * np.asarray(r_hat, dtype=np.float64)).sum(-1) - beta * terms.sum(-1)
