"""The disagreement report's uncertainty calibration: does σ² of the reward difference predict
which held-out pairs the ensemble orders wrongly?"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from varpo.reward.report import disagreement_stats, uncertainty_calibration


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their positions), by plain loops."""
    order = sorted(range(len(x)), key=lambda i: x[i])
    r = np.empty(len(x))
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return r


@pytest.mark.parametrize("seed", range(4))
def test_matches_loop_reference(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(9, 60))
    var = np.round(rng.exponential(size=n), 1)  # rounded: ties in the variance
    correct = rng.choice([0.0, 0.5, 1.0], size=n, p=[0.3, 0.1, 0.6])
    got = uncertainty_calibration(torch.tensor(var), torch.tensor(correct))
    order = sorted(range(n), key=lambda i: (var[i], i))  # stable: ties keep their index order
    sizes = [len(a) for a in np.array_split(np.arange(n), 4)]  # torch.tensor_split's sizes
    starts = np.cumsum([0, *sizes])
    want = [float(np.mean([correct[i] for i in order[starts[k]:starts[k + 1]]])) for k in range(4)]
    assert got["accuracy_by_diff_variance_group"] == pytest.approx(want, abs=1e-12)
    assert got["diff_variance_group_upper_bounds"] == pytest.approx(
        [max(var[i] for i in order[starts[k]:starts[k + 1]]) for k in range(4)])
    rv, rc = _ranks(var), _ranks(correct)
    rho = float(np.corrcoef(rv, rc)[0, 1])
    assert got["spearman_diff_variance_vs_correct"] == pytest.approx(rho, abs=1e-12)
    assert 0 <= got["spearman_pvalue"] <= 1


def test_informative_uncertainty_shows_falling_accuracy():
    """Margins measured with heteroscedastic noise whose variance is the reported σ²: the pairs
    with the largest σ² are misordered most often."""
    rng = np.random.default_rng(0)
    n = 4000
    sd = np.exp(rng.uniform(np.log(0.05), np.log(2.0), n))
    diff = 0.5 + sd * rng.normal(size=n)
    got = uncertainty_calibration(torch.tensor(sd**2), torch.tensor((diff > 0).astype(float)))
    acc = got["accuracy_by_diff_variance_group"]
    assert all(a > b for a, b in zip(acc, acc[1:])) and acc[0] > 0.99 and acc[-1] < 0.75
    assert got["spearman_diff_variance_vs_correct"] < -0.3 and got["spearman_pvalue"] < 1e-10


def test_uninformative_uncertainty_is_flat():
    rng = np.random.default_rng(1)
    n = 4000
    diff = 0.5 + rng.normal(size=n)
    got = uncertainty_calibration(torch.tensor(rng.exponential(size=n)), torch.tensor((diff > 0).astype(float)))
    assert abs(got["spearman_diff_variance_vs_correct"]) < 0.05
    assert max(got["accuracy_by_diff_variance_group"]) - min(got["accuracy_by_diff_variance_group"]) < 0.06


def test_constant_correctness_has_no_correlation():
    got = uncertainty_calibration(torch.rand(12, dtype=torch.float64), torch.ones(12, dtype=torch.float64))
    assert got["spearman_diff_variance_vs_correct"] is None and got["accuracy_by_diff_variance_group"] == [1.0] * 4


def test_report_carries_both_calibrations():
    g = torch.Generator().manual_seed(2)
    rc, rr = torch.randn(40, 5, generator=g), torch.randn(40, 5, generator=g)
    gold = torch.randn(40, generator=g)
    gold[3] = 0.0  # no gold order: left out of the gold calibration
    out, _, var_diff = disagreement_stats(rc, rr, gold_diff=gold)
    ens = rc.mean(1) - rr.mean(1)
    assert out["uncertainty_calibration"] == uncertainty_calibration(var_diff, (ens > 0).double())
    keep = gold != 0
    d = ens[keep] * gold[keep].sign()
    assert out["uncertainty_calibration_gold"] == uncertainty_calibration(var_diff[keep], (d > 0).double())
