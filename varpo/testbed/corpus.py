"""A generated corpus of short reviews whose quality (sentiment) varies from text to text.

Every text is `opening + " " + continuation`, tokens separated by single spaces (punctuation is a
token of its own, so a word-level tokenizer round-trips exactly):

    opening:       "on friday we visited the cafe near the river ."        (neutral, becomes a prompt)
    continuation:  "the coffee was really tasty but the seats were cramped . i would go back ."

Quality dimension: each text draws a polarity p ~ U[-1, 1]; every evaluative adjective is positive
with probability (1 + p) / 2, so the corpus holds glowing, mixed, neutral and scathing reviews and an
LM trained on it samples all of them. A small fraction of continuations are degenerate (an adjective
repeated, a clause cut short), which the gold reward scores low: a policy that drifts there is punished.
Everything is a pure function of the `random.Random` passed in, hence deterministic from a seed.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from . import lexicon as L


@dataclass(frozen=True)
class Text:
    opening: str  # the neutral first clause, used as a prompt
    continuation: str  # the rest, carrying the sentiment
    polarity: float  # the p the text was drawn with, in [-1, 1]

    @property
    def full(self) -> str:
        return f"{self.opening} {self.continuation}"


def _plural(noun: str) -> bool:
    return noun == "staff" or (noun.endswith("s") and noun not in ("grass", "class"))


def _opening(rng: random.Random, topic: str) -> str:
    where = rng.choice(L.PLACES)
    forms = (
        f"on {rng.choice(L.TIMES)} we {rng.choice(L.VERBS_VISIT)} the {topic} near {where} .",
        f"{rng.choice(L.PEOPLE)} and i {rng.choice(L.VERBS_VISIT)} the {topic} .",
        f"we spent {rng.choice(L.DURATIONS)} at the {topic} by {where} .",
        f"this is about the {topic} near {where} .",
        f"i {rng.choice(L.VERBS_VISIT)} the new {topic} on {rng.choice(L.TIMES)} .",
        f"our trip to the {topic} with {rng.choice(L.PEOPLE)} .",
    )
    return rng.choice(forms)


def _adjective(rng: random.Random, positive: bool) -> str:
    adj = rng.choice(L.POSITIVE if positive else L.NEGATIVE)
    if rng.random() < 0.35:
        adj = f"{rng.choice(L.INTENSIFIERS)} {adj}"
    return adj


def _clause(rng: random.Random, aspect: str, positive: bool) -> str:
    verb = "were" if _plural(aspect) else "was"
    if rng.random() < 0.25:  # two adjectives of the same polarity on one aspect
        return f"the {aspect} {verb} {_adjective(rng, positive)} and {rng.choice(L.POSITIVE if positive else L.NEGATIVE)}"
    return f"the {aspect} {verb} {_adjective(rng, positive)}"


def _fill(rng: random.Random, template: str, aspect: str) -> str:
    return template.format(place=rng.choice(L.PLACES), time=rng.choice(L.TIMES), aspect=aspect,
                           people=rng.choice(L.PEOPLE))


def _continuation(rng: random.Random, topic: str, p: float, degenerate: bool) -> str:
    aspects = list(L.TOPICS[topic])
    rng.shuffle(aspects)
    if degenerate:
        pos = rng.random() < (1 + p) / 2
        word = rng.choice(L.POSITIVE if pos else L.NEGATIVE)
        kind = rng.random()
        if kind < 0.5:  # an adjective stuck on repeat
            return f"the {aspects[0]} {'were' if _plural(aspects[0]) else 'was'} " + " ".join([word] * rng.randint(3, 8)) + " ."
        if kind < 0.8:  # a clause that restarts itself
            c = _clause(rng, aspects[0], pos)
            return " and ".join([c] * rng.randint(2, 3)) + " ."
        return f"the {aspects[0]} the {aspects[1]} the ."  # a broken fragment

    n_eval = rng.choice((1, 2, 2, 3))
    sentences: list[str] = []
    prev_pos = None
    clauses: list[str] = []
    for i in range(n_eval):
        pos = rng.random() < (1 + p) / 2
        c = _clause(rng, aspects[i], pos)
        if clauses and len(clauses) < 2:
            clauses.append(("and " if pos == prev_pos else "but ") + c)
        else:
            if clauses:
                sentences.append(" ".join(clauses) + " .")
            clauses = [c]
        prev_pos = pos
    sentences.append(" ".join(clauses) + " .")
    if rng.random() < 0.3:
        filler = _fill(rng, rng.choice(L.FILLERS), aspects[-1]) + " ."
        sentences.insert(rng.randint(0, len(sentences)), filler)
    if rng.random() < 0.6:
        ending = rng.choice(L.ENDINGS_POS if rng.random() < (1 + p) / 2 else L.ENDINGS_NEG)
        sentences.append(_fill(rng, ending, aspects[-1]) + " .")
    return " ".join(sentences)


def generate_text(rng: random.Random, degenerate_fraction: float = 0.05,
                  min_tokens: int = 8, max_tokens: int = 24) -> Text:
    """One review; the continuation has between min_tokens and max_tokens space-separated tokens."""
    while True:
        topic = rng.choice(sorted(L.TOPICS))
        p = rng.uniform(-1.0, 1.0)
        cont = _continuation(rng, topic, p, rng.random() < degenerate_fraction)
        if min_tokens <= len(cont.split()) <= max_tokens:
            return Text(_opening(rng, topic), cont, p)


def generate_corpus(n: int, seed: int, degenerate_fraction: float = 0.05,
                    min_tokens: int = 8, max_tokens: int = 24) -> list[Text]:
    """n texts, a pure function of (n, seed, ...): the same arguments give the same list."""
    rng = random.Random(seed)
    return [generate_text(rng, degenerate_fraction, min_tokens, max_tokens) for _ in range(n)]


def corpus_vocabulary() -> list[str]:
    """Every token the grammar can emit, sorted (the tokenizer's vocabulary is a subset of it)."""
    words: set[str] = {"."}
    for group in (L.POSITIVE, L.NEGATIVE, L.INTENSIFIERS, L.PEOPLE, L.TIMES, L.DURATIONS, L.PLACES,
                  L.VERBS_VISIT, L.FILLERS, L.ENDINGS_POS, L.ENDINGS_NEG):
        for phrase in group:
            words.update(w for w in phrase.split() if not w.startswith("{"))
    for topic, aspects in L.TOPICS.items():
        words.add(topic)
        words.update(aspects)
    words.update(["on", "we", "the", "near", "and", "i", "at", "by", "this", "is", "about", "new", "our", "trip", "to", "with", "were", "was", "but", "spent"])
    return sorted(words)
