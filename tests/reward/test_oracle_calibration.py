"""The oracle reward source and the σ²-vs-error calibration, against float64 references."""
import math

import numpy as np
import pytest
import torch
from scipy import stats as st

from varpo.config import load_config
from varpo.reward.oracle import OracleScorer, cell_noise, oracle_sigma
from varpo.reward.report import disagreement_stats, sigma2_error_calibration
from varpo.scoring import Scorer, build_scorer
from varpo.testbed.overopt import overopt_gold_reward

TEXTS = ["the food was good .", "the food was good and tasty and the rooms were clean and quiet .",
         "the staff were rude and the beds were dirty .", "we stayed there .", "",
         "the view was good but the soup was bland ."]


def _oracle(seed=0):
    return OracleScorer(overopt_gold_reward, sigma_min=0.03, sigma_max=0.6, threshold=3, noise_seed=seed)


def test_oracle_is_gold_plus_noise_of_the_reported_variance():
    sc = _oracle(seed=7).score([""] * len(TEXTS), TEXTS)
    gold = torch.tensor(overopt_gold_reward([""] * len(TEXTS), TEXTS), dtype=torch.float64)
    c, z = sc.extras["c"].tolist(), sc.extras["z"].tolist()
    sigma = torch.tensor([0.03 * 20 ** min(1.0, abs(ci) / 4) for ci in c], dtype=torch.float64)
    assert torch.allclose(sc.variance.double(), sigma**2, rtol=1e-6)
    assert torch.allclose(sc.score.double(), gold + sigma * torch.tensor(z, dtype=torch.float64), atol=1e-6)
    # deterministic per (x, y) and per seed, different across seeds
    assert torch.equal(_oracle(7).score([""] * 6, TEXTS).score, sc.score)
    assert not torch.equal(_oracle(8).score([""] * 6, TEXTS).score, sc.score)
    assert c[1] == 4 and sc.variance[1] == pytest.approx(0.36)  # past the threshold: σ_max


def test_oracle_noise_is_standard_normal_across_cells_and_sigma_is_heteroscedastic():
    z = np.array([cell_noise(s, p, n) for s in range(40) for p in range(6) for n in range(6)])
    assert abs(z.mean()) < 0.1 and abs(z.std() - 1) < 0.08
    assert st.kstest(z, "norm").pvalue > 0.01
    assert oracle_sigma(0, 0.03, 0.6, 3) == pytest.approx(0.03)
    assert oracle_sigma(4, 0.03, 0.6, 3) == oracle_sigma(9, 0.03, 0.6, 3) == pytest.approx(0.6)
    assert oracle_sigma(-2, 0.03, 0.6, 3) == pytest.approx(0.03 * math.sqrt(20))


def test_build_scorer_oracle_from_config_and_its_seed():
    cfg = load_config(None, ["reward.type=oracle", "testbed.task=overopt", "seed=5"])
    scorer = build_scorer(cfg)
    assert isinstance(scorer, Scorer) and scorer.noise_seed == 5
    fixed = build_scorer(load_config(None, ["reward.type=oracle", "reward.oracle.noise_seed=2", "seed=5"]))
    assert fixed.noise_seed == 2


def _reference_calibration(s2, x, g):
    a, b = np.polyfit(x, g, 1)  # independent least squares
    e = (a * x + b - g) ** 2
    rank = lambda v: st.rankdata(v)  # noqa: E731
    r1, r2 = rank(s2), rank(e)
    rho = np.corrcoef(r1, r2)[0, 1]
    q = np.array_split(np.argsort(s2, kind="stable"), 4)
    return rho, [e[i].mean() for i in q], e.mean()


@pytest.mark.parametrize("n", [7, 101, 513])
def test_sigma2_error_calibration_matches_a_float64_reference(n):
    rng = np.random.default_rng(n)
    g = rng.uniform(0, 1, n)
    s2 = rng.uniform(0.001, 0.5, n)
    x = 3.0 * g - 1.0 + rng.normal(0, np.sqrt(s2))  # error variance = σ²: informative
    out = sigma2_error_calibration(torch.tensor(s2, dtype=torch.float32), torch.tensor(x), g)
    rho, by_q, mse = _reference_calibration(s2.astype(np.float32).astype(np.float64), x, g)
    assert out["spearman_sigma2_sqerr"] == pytest.approx(rho, abs=1e-9)
    assert out["sqerr_by_sigma2_quartile"] == pytest.approx(by_q, rel=1e-9)
    assert out["mse_after_affine"] == pytest.approx(mse, rel=1e-9)
    if n > 500:  # σ²·χ²₁ errors are noisy: a clear signal needs a few hundred samples
        assert out["spearman_sigma2_sqerr"] > 0.2 and out["spearman_pvalue"] < 0.01
        assert out["sqerr_by_sigma2_quartile"][-1] > out["sqerr_by_sigma2_quartile"][0]


def test_uninformative_sigma2_gives_no_correlation_and_nans_are_dropped():
    rng = np.random.default_rng(0)
    g = rng.uniform(0, 1, 2000)
    x = g + rng.normal(0, 0.1, 2000)
    s2 = rng.uniform(0, 1, 2000)
    s2[:5] = np.nan
    out = sigma2_error_calibration(s2, x, g)
    assert out["n"] == 1995 and abs(out["spearman_sigma2_sqerr"]) < 0.08


def test_disagreement_stats_carries_spearman_sigma2_sqerr_when_gold_is_given():
    g = torch.Generator().manual_seed(0)
    rc, rr = torch.randn(40, 5, generator=g), torch.randn(40, 5, generator=g)
    gold = torch.rand(80, generator=g, dtype=torch.float64)
    out, var_resp, _ = disagreement_stats(rc, rr, 1, gold_responses=gold)
    ref = sigma2_error_calibration(var_resp, torch.cat([rc.mean(1), rr.mean(1)]), gold)
    assert out["uncertainty_calibration"]["spearman_sigma2_sqerr"] == ref["spearman_sigma2_sqerr"]
    assert isinstance(out["uncertainty_calibration"]["spearman_sigma2_sqerr"], float)
    assert "spearman_sigma2_sqerr" not in disagreement_stats(rc, rr, 1)[0]["uncertainty_calibration"]
