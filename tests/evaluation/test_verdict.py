"""The quickstart's closing sentences and table, from compute_stats on synthetic populations."""
import numpy as np

from varpo.evaluation.stats import compute_stats
from varpo.evaluation.verdict import population_table, verdict


def _pop(rng, n, p_van, p_va):
    def mix(p):
        run = rng.random(n) < p
        return np.where(run, rng.uniform(0.03, 0.3, n), rng.normal(0.62, 0.04, n)).tolist()

    return {"reference": rng.normal(0.53, 0.01, n).tolist(), "vanilla": mix(p_van), "variance_aware": mix(p_va)}


def test_no_difference_is_said_when_no_declared_test_rejects():
    rng = np.random.default_rng(0)
    pop = _pop(rng, 6, 0.3, 0.3)
    stats = compute_stats(pop, seeds={m: list(range(6)) for m in pop}, primary_test=["mcnemar_risk"], power_sims=50)
    lines = verdict(stats)
    assert lines[0].startswith("primary test mcnemar_risk (one-sided") and "n = 6/6" in lines[0]
    assert any(x.startswith("No difference here") for x in lines)
    assert any("Seeds per method for power 0.8" in x for x in lines)


def test_a_rejecting_declared_test_is_reported_as_a_difference():
    pop = {"reference": [0.53, 0.54, 0.52] * 10, "vanilla": [0.1] * 15 + [0.6] * 15,
           "variance_aware": [0.6 + 0.001 * k for k in range(30)]}
    stats = compute_stats(pop, seeds={m: list(range(30)) for m in pop}, primary_test=["mcnemar_risk", "runaway_fisher"],
                          power_sims=0)
    lines = verdict(stats)
    assert "Holm" not in lines[0] and "p = " in lines[0]
    assert lines[-1].startswith("variance_aware is less variable / less risky than vanilla")
    rows = [{"method": m, "seed": k, "kl": 2.0} for m in pop for k in range(30)]
    table = {r["method"]: r for r in population_table(stats, rows)}
    assert table["vanilla"]["run-aways"] == "15/30" and table["variance_aware"]["below reference"] == "0/30"
    assert table["reference"]["run-aways"] == "–" and table["vanilla"]["KL"] == "2.00"


def test_unavailable_primary_test_is_named():
    rng = np.random.default_rng(1)
    pop = _pop(rng, 8, 0.2, 0.2)
    stats = compute_stats(pop, primary_test=["wilcoxon"], power_sims=0)  # no seeds: not paired
    assert "unavailable (needs policies that share seeds)" in verdict(stats)[0]
