"""The bandit illustration: structure, KL-matched β, the spurious-arm draw, Fig. 4's direction."""
import numpy as np
import pytest

from varpo.theory.bandit import check_inputs, kl_regularised, match_beta, run_bandit
from varpo.theory.linear import sample_estimates
from varpo.theory.softmax import kl_divergence, sharpe_policy


@pytest.fixture(scope="module")
def result():
    return run_bandit([0.6, 0.8, 1.0], [2.0, 0.1, 0.1], n_draws=30_000, seed=3, repeats=12, draws_per_repeat=600)


def test_risks_and_illustration(result):
    for name in ("vanilla", "variance_aware"):
        se = np.sqrt(result["risk_closed_form"][name] * (1 - result["risk_closed_form"][name]) / 30_000)
        assert abs(result["risk_monte_carlo"][name] - result["risk_closed_form"][name]) < 4 * se + 1e-12
    ill = result["illustration"]
    r_hat = np.array(ill["r_hat"])
    assert ill["widest_arm"] == 0 and np.argmax(r_hat) == 0 and r_hat[0] > 0.6 + np.sqrt(2.0)
    assert "spuriously" in ill["note"] and 0 < ill["spurious_fraction"] < 1


def test_kl_regularised_policies(result):
    kl = result["kl_regularised"]
    assert kl["reference_return"] == pytest.approx(0.8) and kl["beta_rule"] == "kl"
    pol = kl["policies"]
    for name in ("variance_aware", "sharpe"):
        assert pol[name]["kl_matched"] is True
        assert pol[name]["mean_kl"] == pytest.approx(pol["vanilla"]["mean_kl"], rel=0.03)
        # the paper's Fig. 3: at the same KL, the variance-aware policy underperforms π_ref far less often
        assert pol[name]["underperformance"] < pol["vanilla"]["underperformance"] / 5
        assert pol[name]["return_std"] < pol["vanilla"]["return_std"]
    for p in pol.values():
        lo, hi = p["underperformance_ci95"]
        assert lo <= p["underperformance"] <= hi and p["n"] == 30_000


def test_heterogeneity_linear_gain_grows_with_spread(result):
    het = result["heterogeneity"]
    n, w = het["settings"]["narrow"], het["settings"]["wide"]
    assert w["mean_over_repeats"]["sd_spread"] > n["mean_over_repeats"]["sd_spread"]
    assert w["linear_risk_gain"] > n["linear_risk_gain"] > 0
    assert w["variance_aware_variance_ratio"] > n["variance_aware_variance_ratio"]
    assert "_pooled" in het and het["_pooled"]["wide"]["vanilla"].size == 12 * 600


def test_match_beta_hits_the_target_kl():
    rng = np.random.default_rng(2)
    r, s2, pi_ref = np.array([0.1, 0.5, 0.2, 0.9, 0.4]), rng.uniform(0.2, 1.5, 5), np.full(5, 0.2)
    r_hat = sample_estimates(r, s2, 500, rng)
    def fn(x, b):
        return sharpe_policy(x, s2, pi_ref, b)
    beta, ok = match_beta(fn, r_hat, pi_ref, 0.12, 1.0)
    assert ok and kl_divergence(fn(r_hat, beta), pi_ref).mean() == pytest.approx(0.12, abs=1e-6)


def test_explicit_and_mean_rules():
    r, s2 = np.array([0.6, 0.8, 1.0]), np.array([2.0, 0.1, 0.1])
    r_hat = sample_estimates(r, s2, 200, np.random.default_rng(0))
    out = kl_regularised(r, s2, r_hat, beta=0.5, beta_va=3.0)
    assert out["beta_rule"] == "explicit" and out["policies"]["sharpe"]["beta"] == 3.0
    out = kl_regularised(r, s2, r_hat, beta=0.5, rule="mean")
    assert out["policies"]["variance_aware"]["beta"] == pytest.approx(0.5 / s2.mean())


@pytest.mark.parametrize("r,s2,msg", [
    ([1.0, 0.8], [2.0, 0.1, 0.1], "variances: expected 2 values"),
    ([1.0, 0.8, 0.6], [2.0, 0.0, 0.1], "variances: every value must be finite and > 0"),
    ([1.0, float("nan"), 0.6], [2.0, 0.1, 0.1], "true_rewards: every value must be finite"),
    ([1.0], [2.0], "at least 2 arms"),
    ([0.0, 0.0], [1.0, 1.0], "all zero"),
])
def test_bad_inputs(r, s2, msg):
    with pytest.raises(ValueError, match=msg):
        check_inputs(r, s2)


def test_bad_options():
    with pytest.raises(ValueError, match="beta: must be"):
        run_bandit([1, 0.8], [1, 2], beta=0.0)
    with pytest.raises(ValueError, match="wide: expected an interval"):
        run_bandit([1, 0.8], [1, 2], wide=(2.0, 1.0))
