"""Theorem 2.7: each policy equals a direct numerical maximisation (SLSQP on the simplex, float64)
of the objective it claims to maximise, on random instances with odd numbers of arms."""
import numpy as np
import pytest
from scipy.optimize import minimize

from varpo.theory.softmax import (
    kl_divergence,
    sharpe_policy,
    vanilla_policy,
    weighted_kl_objective,
    weighted_kl_policy,
)


def loop_objective(pi, r_hat, weights, pi_ref, beta):
    """Σ_y π(y) r̂(y) − β Σ_y w(y) π(y) log(π(y)/π_ref(y)), as a plain loop."""
    total = 0.0
    for p, r, w, q in zip(pi, r_hat, weights, pi_ref):
        total += p * r - (beta * w * p * np.log(p / q) if p > 0 else 0.0)
    return total


def maximise_on_simplex(objective, k, rng):
    best = None
    for start in (np.full(k, 1.0 / k), rng.dirichlet(np.ones(k))):
        res = minimize(lambda p: -objective(p), start, method="SLSQP", bounds=[(1e-12, 1.0)] * k,
                       constraints=[{"type": "eq", "fun": lambda p: p.sum() - 1.0}],
                       options={"ftol": 1e-15, "maxiter": 1000})
        if best is None or res.fun < best.fun:
            best = res
    return best.x, -best.fun


CASES = [(31, 3, 0.5), (32, 5, 0.2), (33, 7, 1.3), (34, 5, 3.0)]


@pytest.mark.parametrize("seed,k,beta", CASES)
def test_weighted_kl_policy_is_the_maximiser(seed, k, beta):
    rng = np.random.default_rng(seed)
    r_hat, s2, pi_ref = rng.normal(size=k), rng.uniform(0.1, 2.0, k), rng.dirichlet(np.ones(k) * 2)
    pi = weighted_kl_policy(r_hat, s2, pi_ref, beta)
    x, best = maximise_on_simplex(lambda p: loop_objective(p, r_hat, s2, pi_ref, beta), k, rng)
    assert pi.sum() == pytest.approx(1.0, abs=1e-14)
    assert loop_objective(pi, r_hat, s2, pi_ref, beta) >= best - 1e-10
    np.testing.assert_allclose(pi, x, atol=2e-5)
    assert weighted_kl_objective(pi, r_hat, s2, pi_ref, beta) == pytest.approx(loop_objective(pi, r_hat, s2, pi_ref, beta))


@pytest.mark.parametrize("seed,k,beta", CASES)
def test_vanilla_policy_is_the_maximiser(seed, k, beta):
    rng = np.random.default_rng(seed)
    r_hat, pi_ref = rng.normal(size=k), rng.dirichlet(np.ones(k) * 2)
    pi = vanilla_policy(r_hat, pi_ref, beta)
    x, best = maximise_on_simplex(lambda p: loop_objective(p, r_hat, np.ones(k), pi_ref, beta), k, rng)
    assert loop_objective(pi, r_hat, np.ones(k), pi_ref, beta) >= best - 1e-10
    np.testing.assert_allclose(pi, x, atol=2e-5)


@pytest.mark.parametrize("seed,k,beta", CASES)
def test_sharpe_policy_maximises_the_variance_scaled_reward(seed, k, beta):
    rng = np.random.default_rng(seed)
    r_hat, s2, pi_ref = rng.normal(size=k), rng.uniform(0.1, 2.0, k), rng.dirichlet(np.ones(k) * 2)
    pi = sharpe_policy(r_hat, s2, pi_ref, beta)
    x, best = maximise_on_simplex(lambda p: loop_objective(p, r_hat / s2, np.ones(k), pi_ref, beta), k, rng)
    assert loop_objective(pi, r_hat / s2, np.ones(k), pi_ref, beta) >= best - 1e-10
    np.testing.assert_allclose(pi, x, atol=2e-5)


def test_forms_coincide_for_constant_variance_and_differ_otherwise():
    rng = np.random.default_rng(4)
    r_hat, pi_ref = rng.normal(size=(9, 5)), np.full(5, 0.2)
    c = np.full(5, 0.4)
    w = weighted_kl_policy(r_hat, c, pi_ref, 0.5)
    np.testing.assert_allclose(w, sharpe_policy(r_hat, c, pi_ref, 0.5), atol=1e-12)
    np.testing.assert_allclose(w, vanilla_policy(r_hat, pi_ref, 0.2), atol=1e-12)
    s2 = np.array([0.1, 0.5, 1.0, 2.0, 0.3])
    assert np.abs(weighted_kl_policy(r_hat, s2, pi_ref, 0.5) - sharpe_policy(r_hat, s2, pi_ref, 0.5)).max() > 1e-2


def test_shift_invariance():
    # λ absorbs a common shift of r̂ in the weighted form; the Sharpe form (r̂/σ²) is not invariant
    rng = np.random.default_rng(8)
    r_hat, s2, pi_ref = rng.normal(size=(4, 7)), rng.uniform(0.1, 2.0, 7), np.full(7, 1 / 7)
    np.testing.assert_allclose(weighted_kl_policy(r_hat + 3.0, s2, pi_ref, 0.7),
                               weighted_kl_policy(r_hat, s2, pi_ref, 0.7), atol=1e-10)
    np.testing.assert_allclose(vanilla_policy(r_hat + 3.0, pi_ref, 0.7), vanilla_policy(r_hat, pi_ref, 0.7), atol=1e-12)
    assert np.abs(sharpe_policy(r_hat + 3.0, s2, pi_ref, 0.7) - sharpe_policy(r_hat, s2, pi_ref, 0.7)).max() > 1e-2


def test_extreme_beta_stays_finite_and_weighted_kl_has_a_floor():
    r_hat, s2, pi_ref = np.array([[0.3, 0.9, 0.5]]), np.array([0.05, 2.0, 0.5]), np.full(3, 1 / 3)
    for beta in (1e-6, 1e6):
        for pi in (weighted_kl_policy(r_hat, s2, pi_ref, beta), sharpe_policy(r_hat, s2, pi_ref, beta),
                   vanilla_policy(r_hat, pi_ref, beta)):
            assert np.all(np.isfinite(pi)) and pi.sum() == pytest.approx(1.0)
    assert np.argmax(weighted_kl_policy(r_hat, s2, pi_ref, 1e-6)) == 1  # greedy on r̂
    # Σ σ² π log(π/π_ref) is not minimised at π_ref: as β → ∞ the policy leans to the low-σ² arms
    far = weighted_kl_policy(r_hat, s2, pi_ref, 1e6)[0]
    assert kl_divergence(far, pi_ref) > 0.05 and np.argmax(far) == 0
    assert kl_divergence(vanilla_policy(r_hat, pi_ref, 1e6), pi_ref)[0] < 1e-10
