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

from ..moved import moved_names
from .lexicon import FUNCTION_WORDS, INTENSIFIERS, NEGATIVE_SET, POSITIVE_SET

GOLD_MIN, GOLD_MAX = 0.0, 1.0
_WORD = re.compile(r"[a-z]+")
_LICENSORS = frozenset({"was", "were", "is", "are", "be", "been", "a", "and", "but", "not", "too", "bit"}
                       | {w for w in INTENSIFIERS if " " not in w})


def gold_score(response: str) -> float:
    """Gold reward of one response, in [0, 1] (see the module docstring for the formula)."""
    words = _WORD.findall(response.lower())
    if not words:
        return GOLD_MIN
    n_pos, n_neg = evaluative_counts(words)
    s = (n_pos - n_neg) / (n_pos + n_neg + 1)
    return float(0.5 * (1.0 + s) * form_quality(words))


def evaluative_counts(words: list[str]) -> tuple[int, int]:
    """(P, N): distinct positive and negative lexicon adjectives in a predicative position (see the
    module docstring; "not" flips a word's polarity)."""
    pos: set[str] = set()
    neg: set[str] = set()
    for i, w in enumerate(words):
        if (w in POSITIVE_SET or w in NEGATIVE_SET) and i > 0 and words[i - 1] in _LICENSORS:
            positive = (w in POSITIVE_SET) != (words[i - 1] == "not")
            (pos if positive else neg).add(w)
    return len(pos), len(neg)


def form_quality(words: list[str]) -> float:
    """variety · fluency · length ∈ [0, 1] (module docstring): the guard against degenerate text."""
    n = len(words)
    if n == 0:
        return 0.0
    content = [w for w in words if w not in FUNCTION_WORDS]
    variety = (len(set(content)) / len(content)) ** 2 if content else 0.0
    fluency = min(1.0, (n - len(content)) / n / 0.3)
    length = min(1.0, n / 6)
    return variety * fluency * length


def words_of(response: str) -> list[str]:
    """The lower-cased alphabetic tokens the gold rewards read."""
    return _WORD.findall(response.lower())


def gold_reward(prompts: list[str], responses: list[str]) -> list[float]:
    """Gold reward of each (prompt, response) pair, in [0, 1]; the prompt is ignored (see above)."""
    if len(prompts) != len(responses):
        raise ValueError(f"gold_reward: {len(prompts)} prompts but {len(responses)} responses")
    return [gold_score(r) for r in responses]


# the task dispatch (gold_fn, GoldScorer) is varpo.testbed.tasks: overopt.py builds on this module
__getattr__ = moved_names(__name__, {"gold_fn": "varpo.testbed.tasks", "GoldScorer": "varpo.testbed.tasks"})
