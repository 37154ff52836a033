"""The programmatic gold reward r*(x, y) of the embedded task (docs/design.md §3).

    gold(y) = positivity · variety · fluency · length          ∈ [0, 1]

computed on the response y only (the prompt is a neutral opening; it is accepted for the Scorer
interface and ignored). Words are the lower-cased alphabetic tokens of y.

- positivity = (1 + s) / 2 with s = (P − N) / (P + N + 1), where P (N) is the number of *distinct*
  positive (negative) lexicon adjectives standing in a predicative position: right after a copula
  (was/is/...), an intensifier (very/really/...), "a", "and", "but" or "not". "not" flips the word's
  polarity. No evaluative word gives 0.5; one positive 0.75; three positive 0.875.
- variety = (distinct content words / content words)²: content words are the non-function words, so
  repeating "good" (or a whole clause) shrinks it quadratically; 0 when there are no content words.
- fluency = min(1, function-word fraction / 0.3): a bare list of adjectives is not a review
  (natural reviews in the corpus have 35–60% function words).
- length = min(1, words / 6): fragments score little; the empty response scores exactly 0, the minimum.

Deterministic, pure Python, ~10 µs per response. Known limitation (by design, like any gold model):
a long enumeration of distinct positive adjectives in grammatical clauses scores high, which is the
behaviour the gold reward is meant to reward.
"""
from __future__ import annotations

import re

import torch

from ..reward_source import Scores
from .lexicon import FUNCTION_WORDS, INTENSIFIERS, NEGATIVE_SET, POSITIVE_SET

GOLD_MIN, GOLD_MAX = 0.0, 1.0
_WORD = re.compile(r"[a-z]+")
_LICENSORS = frozenset({"was", "were", "is", "are", "be", "been", "a", "and", "but", "not", "too", "bit"}
                       | {w for w in INTENSIFIERS if " " not in w})


def gold_score(response: str) -> float:
    """Gold reward of one response, in [0, 1] (see the module docstring for the formula)."""
    words = _WORD.findall(response.lower())
    n = len(words)
    if n == 0:
        return GOLD_MIN
    pos: set[str] = set()
    neg: set[str] = set()
    for i, w in enumerate(words):
        if (w in POSITIVE_SET or w in NEGATIVE_SET) and i > 0 and words[i - 1] in _LICENSORS:
            positive = (w in POSITIVE_SET) != (words[i - 1] == "not")
            (pos if positive else neg).add(w)
    s = (len(pos) - len(neg)) / (len(pos) + len(neg) + 1)
    positivity = 0.5 * (1.0 + s)
    content = [w for w in words if w not in FUNCTION_WORDS]
    variety = (len(set(content)) / len(content)) ** 2 if content else 0.0
    fluency = min(1.0, (n - len(content)) / n / 0.3)
    length = min(1.0, n / 6)
    return float(positivity * variety * fluency * length)


def gold_reward(prompts: list[str], responses: list[str]) -> list[float]:
    """Gold reward of each (prompt, response) pair, in [0, 1]; the prompt is ignored (see above)."""
    if len(prompts) != len(responses):
        raise ValueError(f"gold_reward: {len(prompts)} prompts but {len(responses)} responses")
    return [gold_score(r) for r in responses]


class GoldScorer:
    """The gold reward as a `varpo.reward_source.Scorer`: exact, so σ² = 0 and eval_reward = score."""

    def score(self, prompts: list[str], responses: list[str]) -> Scores:
        s = torch.tensor(gold_reward(prompts, responses), dtype=torch.float32)
        return Scores(score=s, variance=torch.zeros_like(s), eval_reward=s.clone())
