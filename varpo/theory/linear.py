"""Theorem 2.4: linear objective, quadratic constraint.

Conventions: `r_star` and `variances` are 1-D arrays of length K (arms); Σ = diag(variances);
`r_hat` is [N, K] (one estimate per row). A policy *step* d = π − π_ref lives in R^K (the theorem
ignores the simplex); it underperforms π_ref when ⟨d, r*⟩ < 0.

  vanilla:         max ⟨d, r̂⟩ s.t. ‖d‖₂ ≤ ε        →  d_v  = ε  r̂ / ‖r̂‖₂
  variance-aware:  max ⟨d, r̂⟩ s.t. dᵀΣd ≤ ε'²      →  d_va = ε' Σ⁻¹r̂ / sqrt(r̂ᵀΣ⁻¹r̂)
  ε' = ε sqrt(λ_min(Σ)): the ellipsoid's longest semi-axis equals the ball's radius.

  P_v  = Φ(−‖r*‖² / sqrt(r*ᵀΣr*)),   P_va = Φ(−sqrt(r*ᵀΣ⁻¹r*)),   P_va ≤ P_v (Cauchy–Schwarz).
"""
from __future__ import annotations

import numpy as np
from scipy.stats import norm


def closed_form_risks(r_star: np.ndarray, variances: np.ndarray) -> dict[str, float]:
    """P(⟨d, r*⟩ < 0) for both policies; independent of ε."""
    r = np.asarray(r_star, dtype=np.float64)
    s2 = np.asarray(variances, dtype=np.float64)
    p_v = norm.cdf(-(r @ r) / np.sqrt(r @ (s2 * r)))
    p_va = norm.cdf(-np.sqrt(r @ (r / s2)))
    return {"vanilla": float(p_v), "variance_aware": float(p_va)}


def linear_policies(r_hat: np.ndarray, variances: np.ndarray, eps: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(d_v, d_va), each [N, K], the maximisers of the two constrained problems for each row of r_hat."""
    r_hat = np.atleast_2d(np.asarray(r_hat, dtype=np.float64))
    s2 = np.asarray(variances, dtype=np.float64)
    d_v = eps * r_hat / np.linalg.norm(r_hat, axis=1, keepdims=True)
    eps_va = eps * np.sqrt(s2.min())
    w = r_hat / s2  # Σ⁻¹ r̂
    d_va = eps_va * w / np.sqrt(np.sum(r_hat * w, axis=1, keepdims=True))
    return d_v, d_va


def sample_estimates(r_star: np.ndarray, variances: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n draws r̂ ~ N(r*, diag(variances)), as [n, K]."""
    r = np.asarray(r_star, dtype=np.float64)
    return r + rng.standard_normal((n, r.size)) * np.sqrt(np.asarray(variances, dtype=np.float64))


def monte_carlo_risks(r_star: np.ndarray, variances: np.ndarray, n_draws: int, rng: np.random.Generator,
                      eps: float = 1.0, chunk: int = 200_000) -> dict[str, dict[str, float]]:
    """Fraction of draws with ⟨d, r*⟩ < 0 per policy, with its binomial standard error
    sqrt(p(1−p)/n). Draws are made in chunks so memory stays bounded for large n."""
    r = np.asarray(r_star, dtype=np.float64)
    bad = {"vanilla": 0, "variance_aware": 0}
    left = n_draws
    while left > 0:
        m = min(chunk, left)
        d_v, d_va = linear_policies(sample_estimates(r, variances, m, rng), variances, eps)
        bad["vanilla"] += int(np.sum(d_v @ r < 0))
        bad["variance_aware"] += int(np.sum(d_va @ r < 0))
        left -= m
    out = {}
    for k, b in bad.items():
        p = b / n_draws
        out[k] = {"risk": p, "se": float(np.sqrt(p * (1 - p) / n_draws)), "count": b}
    return out
