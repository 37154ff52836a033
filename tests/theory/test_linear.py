"""Theorem 2.4: the linear policies are the maximisers of their constrained problems (SLSQP in
float64), the closed-form risks agree with Monte Carlo within 4 standard errors on fresh random
instances, and P_va ≤ P_v with equality exactly when r* is an eigenvector of Σ."""
import numpy as np
import pytest
from scipy.optimize import minimize

from varpo.theory.linear import closed_form_risks, linear_policies, monte_carlo_risks


def random_instance(seed, k):
    rng = np.random.default_rng(seed)
    r = rng.normal(0.3, 1.0, k)
    s2 = rng.uniform(0.05, 3.0, k)
    return rng, r, s2


@pytest.mark.parametrize("seed,k", [(11, 3), (12, 5), (13, 7), (14, 2)])
def test_policies_solve_their_constrained_problems(seed, k):
    rng, _, s2 = random_instance(seed, k)
    r_hat = rng.normal(size=k)
    eps = 0.7
    d_v, d_va = linear_policies(r_hat, s2, eps)
    eps_va = eps * np.sqrt(s2.min())
    cons_v = {"type": "ineq", "fun": lambda d: eps ** 2 - d @ d}
    cons_va = {"type": "ineq", "fun": lambda d: eps_va ** 2 - d @ (s2 * d)}
    for d_closed, cons in ((d_v[0], cons_v), (d_va[0], cons_va)):
        best = max((minimize(lambda d: -(d @ r_hat), rng.normal(size=k) * 0.01, method="SLSQP", constraints=[cons],
                             options={"ftol": 1e-14, "maxiter": 500}) for _ in range(3)), key=lambda res: -res.fun)
        assert d_closed @ r_hat == pytest.approx(-best.fun, rel=1e-7)
        np.testing.assert_allclose(d_closed, best.x, atol=1e-5)
    assert d_v[0] @ d_v[0] == pytest.approx(eps ** 2)
    assert d_va[0] @ (s2 * d_va[0]) == pytest.approx(eps_va ** 2)


@pytest.mark.parametrize("seed,k", [(21, 3), (22, 5), (23, 9), (24, 4)])
def test_closed_form_matches_monte_carlo(seed, k):
    rng, r, s2 = random_instance(seed, k)
    r *= 0.4  # risks well inside (0, 1/2) so the test has power
    n = 60_000
    cf = closed_form_risks(r, s2)
    mc = monte_carlo_risks(r, s2, n, rng, eps=2.5, chunk=25_000)  # chunking must not change the estimate
    for name in ("vanilla", "variance_aware"):
        se = np.sqrt(cf[name] * (1 - cf[name]) / n)
        assert abs(mc[name]["risk"] - cf[name]) < 4 * se, (name, mc[name], cf[name])
        assert mc[name]["count"] == round(mc[name]["risk"] * n)
        assert mc[name]["se"] == pytest.approx(np.sqrt(mc[name]["risk"] * (1 - mc[name]["risk"]) / n))


def test_closed_form_against_direct_normal_probability():
    # ⟨d_va, r*⟩ < 0 ⟺ r̂ᵀΣ⁻¹r* < 0, and r̂ᵀΣ⁻¹r* ~ N(r*ᵀΣ⁻¹r*, r*ᵀΣ⁻¹r*): check the formula on
    # the explicit sum for one instance by numerical quadrature of the normal density
    from scipy.integrate import quad

    r = np.array([0.6, 0.8, 1.0, -0.2, 0.1])
    s2 = np.array([2.0, 0.1, 0.1, 0.7, 1.3])
    m_v = sum(x * x for x in r)
    v_v = sum(x * x * s for x, s in zip(r, s2))
    m_va = sum(x * x / s for x, s in zip(r, s2))
    def dens(x, m, v):
        return np.exp(-(x - m) ** 2 / (2 * v)) / np.sqrt(2 * np.pi * v)
    p_v = quad(dens, -np.inf, 0, args=(m_v, v_v))[0]
    p_va = quad(dens, -np.inf, 0, args=(m_va, m_va))[0]
    cf = closed_form_risks(r, s2)
    assert cf["vanilla"] == pytest.approx(p_v, rel=1e-8)
    assert cf["variance_aware"] == pytest.approx(p_va, rel=1e-8)


def test_variance_aware_risk_never_higher():
    rng = np.random.default_rng(5)
    for _ in range(500):
        k = int(rng.integers(2, 12))
        r = rng.normal(size=k)
        s2 = np.exp(rng.normal(0, 1.5, k))
        cf = closed_form_risks(r, s2)
        assert cf["variance_aware"] <= cf["vanilla"] * (1 + 1e-12)


def test_equal_risk_when_r_star_is_an_eigenvector():
    rng = np.random.default_rng(6)
    s2 = np.array([0.5, 2.0, 2.0, 0.3, 2.0])
    # eigenvectors of diag(σ²): a basis vector, or any vector supported on arms of equal variance
    for r in (np.array([0.0, 0.0, 0.0, 0.8, 0.0]), np.array([0.0, 0.4, -0.1, 0.0, 0.3])):
        cf = closed_form_risks(r, s2)
        assert cf["variance_aware"] == pytest.approx(cf["vanilla"], rel=1e-12)
    cf = closed_form_risks(rng.normal(size=4), np.full(4, 0.7))  # Σ ∝ I: every vector
    assert cf["variance_aware"] == pytest.approx(cf["vanilla"], rel=1e-12)
    # and strictly lower once r* leaves the eigenspace
    cf = closed_form_risks(np.array([0.0, 0.4, -0.1, 0.2, 0.3]), s2)
    assert cf["variance_aware"] < cf["vanilla"] * (1 - 1e-3)
