"""Bradley–Terry labelling of preference pairs."""
import math
import random

import pytest
from scipy.special import expit

from varpo.testbed.pairs import label_pairs, prob_a_wins, sample_pairs


def test_prob_matches_logistic():
    rng = random.Random(0)
    for _ in range(500):
        ga, gb, t = rng.random(), rng.random(), rng.choice([1e-3, 0.05, 0.1, 1.0, 10.0])
        assert prob_a_wins(ga, gb, t) == pytest.approx(float(expit((ga - gb) / t)), rel=1e-12, abs=1e-300)
    assert prob_a_wins(0.9, 0.1, 0.0) == 1.0 and prob_a_wins(0.1, 0.9, 0.0) == 0.0
    assert prob_a_wins(0.5, 0.5, 0.0) == 0.5
    assert prob_a_wins(1.0, 0.0, 1e-6) == 1.0 and math.isfinite(prob_a_wins(0.0, 1.0, 1e-6))


def test_zero_temperature_always_prefers_higher_gold():
    rng = random.Random(1)
    n = 400
    ga = [rng.random() for _ in range(n)]
    gb = [rng.random() for _ in range(n)]
    rows = label_pairs(["x"] * n, [f"a{i}" for i in range(n)], [f"b{i}" for i in range(n)], ga, gb, 0.0, random.Random(2))
    assert all(r["chosen_gold"] > r["rejected_gold"] for r in rows)
    for r, a, b in zip(rows, ga, gb):  # the gold travels with its response
        assert (r["chosen"][0], r["chosen_gold"]) in (("a", a), ("b", b))


@pytest.mark.parametrize("temperature,diff", [(0.1, 0.1), (0.1, 0.3), (0.5, 0.2)])
def test_label_frequency_matches_bradley_terry(temperature, diff):
    n = 20000
    rows = label_pairs(["x"] * n, ["a"] * n, ["b"] * n, [0.5 + diff] * n, [0.5] * n, temperature, random.Random(3))
    wins = sum(r["chosen"] == "a" for r in rows)
    p = 1.0 / (1.0 + math.exp(-diff / temperature))
    assert abs(wins / n - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_sample_pairs_resamples_identical_and_empty():
    calls = []

    def sampler(prompts, seed):
        calls.append(seed)
        r = random.Random(seed)
        # few distinct answers, some empty: identical pairs happen often
        return [r.choice(["", "one", "two", "three"]) for _ in prompts]

    rows, dropped = sample_pairs(["p1", "p2", "p3"], 300, sampler, lambda ps, ys: [len(y) / 5 for y in ys],
                                 temperature=0.0, seed=4, max_retries=5)
    assert len(rows) + dropped == 300 and len(rows) > 200
    assert all(r["chosen"] and r["rejected"] and r["chosen"] != r["rejected"] for r in rows)
    assert all(r["chosen_gold"] >= r["rejected_gold"] for r in rows)
    assert [r["prompt"] for r in rows[:3]] == ["p1", "p2", "p3"]
    assert len(calls) > 2  # retries happened
    assert sample_pairs(["p"], 0, sampler, lambda ps, ys: [0.0] * len(ys), 0.1, seed=0) == ([], 0)
