"""The over-optimization task: its gold's shape, label flips, the cache key of the default task."""
import random

import pytest

from varpo.config.testbed import TestbedConfig
from varpo.testbed import gold_fn, gold_score
from varpo.testbed.build import cache_key
from varpo.testbed.overopt import bump, net_positive, overopt_gold_score
from varpo.testbed.pairs import label_pairs


def test_bump_rises_to_the_threshold_then_falls():
    tau = 3
    values = [bump(c, tau) for c in range(-6, 8)]
    peak = values.index(max(values))
    assert range(-6, 8)[peak] == tau and max(values) == 1.0
    assert all(a <= b for a, b in zip(values[: peak + 1], values[1 : peak + 1]))  # rises up to τ
    assert all(a > b or b == 0.0 for a, b in zip(values[peak:], values[peak + 1 :]))  # strictly falls after, to 0
    assert bump(tau + 1, tau) < bump(tau - 1, tau)  # one adjective too many is worse than one too few


def test_gold_hand_computed():
    # c = 2 (good, clean): h = (2 + 4)/7; form quality 1 (12 words, enough function words, no repeats)
    y = "the food was good and the rooms were clean . we liked it"
    assert net_positive(y) == 2
    base = gold_score(y) / (0.5 * (1 + 2 / 3))  # the default gold's form_quality factor
    assert overopt_gold_score(y) == pytest.approx(base * 6 / 7)
    # five distinct positives (c = 5 > τ = 3): h = max(0, 1 − 2/2) = 0
    gushing = "the food was good and tasty and the rooms were clean and quiet and cozy ."
    assert net_positive(gushing) == 5 and overopt_gold_score(gushing) == 0.0
    assert gold_fn("overopt", 3)([""], [gushing]) == [0.0]
    with pytest.raises(ValueError, match="testbed.task"):
        gold_fn("nope")


def test_label_flip_rate_and_unchanged_labels_without_it():
    n = 4000
    xs, a, b = ["p"] * n, [f"a{i}" for i in range(n)], [f"b{i}" for i in range(n)]
    ga, gb = [1.0] * n, [0.0] * n  # a is always better: with T = 0 only flips put b first
    rows = label_pairs(xs, a, b, ga, gb, 0.0, random.Random(0), flip=0.25)
    flipped = sum(r["chosen"].startswith("b") for r in rows) / n
    assert abs(flipped - 0.25) < 0.03
    assert {r["p_chosen"] for r in rows} == {0.75, 0.25}
    plain = label_pairs(xs[:50], a[:50], b[:50], [0.6] * 50, [0.4] * 50, 0.1, random.Random(3))
    again = label_pairs(xs[:50], a[:50], b[:50], [0.6] * 50, [0.4] * 50, 0.1, random.Random(3), flip=0.0)
    assert plain == again


def test_cache_key_of_the_default_task_is_unchanged_and_tasks_differ():
    # the key the default testbed had before `task` existed (keeps everyone's cache valid)
    assert cache_key(TestbedConfig()) == "testbed-9964dcc4ac6c125b-v1"
    assert cache_key(TestbedConfig(task="overopt")) != cache_key(TestbedConfig())
    assert cache_key(TestbedConfig(label_flip=0.25)) != cache_key(TestbedConfig())
