"""The paper's Section 2 model as pure numpy functions: a bandit whose reward estimate is
r̂ ~ N(r*, Σ), Σ = diag(σ²) (Assumption 2.1).

- `linear`: Theorem 2.4 — the vanilla and variance-aware linear policy steps, their closed-form
  risks and Monte Carlo estimates of them.
- `softmax`: Theorem 2.7 — KL-regularised policies on the simplex (vanilla and σ²-weighted).
- `bandit`: the illustration of Figs. 3–4 built from both (what `varpo theory bandit` runs).
"""
from .linear import closed_form_risks, linear_policies, monte_carlo_risks
from .softmax import (
    kl_divergence,
    sharpe_policy,
    vanilla_policy,
    weighted_kl_objective,
    weighted_kl_policy,
)

__all__ = [
    "closed_form_risks",
    "kl_divergence",
    "linear_policies",
    "monte_carlo_risks",
    "sharpe_policy",
    "vanilla_policy",
    "weighted_kl_objective",
    "weighted_kl_policy",
]
