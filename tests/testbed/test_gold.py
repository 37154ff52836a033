"""The gold reward: bounds, minimum on empty output, resistance to repetition, determinism."""
import random

import pytest
import torch

from varpo.reward_source import Scorer
from varpo.testbed import GOLD_MAX, GOLD_MIN, GoldScorer, gold_reward, gold_score
from varpo.testbed import lexicon as L
from varpo.testbed.corpus import corpus_vocabulary, generate_corpus


def _random_text(rng: random.Random) -> str:
    vocab = corpus_vocabulary() + ["NOT", "good!!", "12", "über", "Great,"]
    return " ".join(rng.choice(vocab) for _ in range(rng.randint(0, 40)))


def test_bounds_on_random_word_salad():
    rng = random.Random(11)
    texts = [_random_text(rng) for _ in range(2000)]
    scores = gold_reward([""] * len(texts), texts)
    assert all(GOLD_MIN <= s <= GOLD_MAX for s in scores)
    assert max(scores) > 0.5 and min(scores) == 0.0  # the range is actually used


@pytest.mark.parametrize("empty", ["", "   ", " . . . ", "\n", "!!! 123"])
def test_empty_output_scores_the_minimum(empty):
    assert gold_score(empty) == GOLD_MIN


def test_hand_computed_values():
    # positivity (1 + 1/2)/2 = 0.75, variety 1, fluency 1 (2/4 function words), length 4/6
    assert gold_score("the food was great .") == pytest.approx(0.75 * 4 / 6)
    # 2 positive, 1 negative distinct: s = 1/4 → 0.625; 12 words, content {staff friendly rooms clean view dull} distinct
    assert gold_score("the staff were friendly and the rooms were clean but the view was dull .") == pytest.approx(0.625)
    # "not" flips: one negative → s = -1/2 → 0.25, length 5/6
    assert gold_score("the food was not great") == pytest.approx(0.25 * 5 / 6)


def test_repetition_of_a_good_word_does_not_pay():
    base = gold_score("the food was great and the staff were friendly .")
    for k in (2, 4, 8, 16):
        rep = gold_score("the food was " + " ".join(["great"] * k) + " .")
        assert rep < 0.35, (k, rep)
        assert rep < base
    assert gold_score("great " * 30) == 0.0  # no function words: not a review
    assert gold_score("great lovely nice tasty superb amazing") == 0.0
    clause = "the food was great"
    assert gold_score(" and ".join([clause] * 4) + " .") < 0.3 < gold_score(clause + " and the tea was warm .")


def test_sentiment_orders_reviews():
    pos = "the rooms were clean and the staff were very friendly . we had a great time ."
    neu = "we arrived by bus and the rooms are on the first floor ."
    neg = "the rooms were dirty and the staff were very rude . we had a bad time ."
    assert gold_score(pos) > gold_score(neu) > gold_score(neg) > GOLD_MIN


def test_deterministic_and_batch_independent():
    rng = random.Random(5)
    texts = [_random_text(rng) for _ in range(300)]
    a = gold_reward(["p"] * 300, texts)
    b = gold_reward(["other"] * 300, texts)
    singles = [gold_reward(["p"], [t])[0] for t in reversed(texts)][::-1]
    assert a == b == singles


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        gold_reward(["a", "b"], ["x"])


def test_gold_scorer_implements_scorer():
    s = GoldScorer()
    assert isinstance(s, Scorer)
    texts = ["the food was great .", "", "the food was awful ."]
    out = s.score(["x"] * 3, texts)
    assert out.score.dtype == torch.float32 and out.score.shape == (3,)
    assert torch.equal(out.variance, torch.zeros(3))
    assert torch.equal(out.eval_reward, out.score)
    assert out.score.tolist() == pytest.approx(gold_reward(["x"] * 3, texts))


def test_corpus_quality_varies_with_polarity():
    texts = generate_corpus(3000, seed=1)
    g = torch.tensor(gold_reward([t.opening for t in texts], [t.continuation for t in texts]), dtype=torch.float64)
    p = torch.tensor([t.polarity for t in texts], dtype=torch.float64)
    assert g.std() > 0.2  # a real spread of quality
    corr = torch.corrcoef(torch.stack([g, p]))[0, 1]
    assert corr > 0.6
    # every evaluative adjective in the lexicon is recognised exactly once
    assert not (L.POSITIVE_SET & L.NEGATIVE_SET) and len(L.POSITIVE_SET) == len(L.POSITIVE)
