"""Preference pairs labelled by the gold reward through Bradley–Terry noise.

For two responses a, b to one prompt with gold rewards g_a, g_b, the label is drawn as
    P(a ≻ b) = sigmoid((g_a − g_b) / T)
with a seeded generator; T = 0 is the noiseless limit (the higher gold wins, ties by a fair coin).
Gold rewards lie in [0, 1], so T = 0.1 flips a pair whose golds differ by 0.1 with probability 0.27.
`flip` > 0 then flips each drawn label with that probability, whatever the gold difference (the
uniform label noise of Coste et al. 2023), so P(a ≻ b) = (1 − flip)·BT + flip·(1 − BT).
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable


def prob_a_wins(g_a: float, g_b: float, temperature: float) -> float:
    """Bradley–Terry probability that a is preferred to b."""
    if temperature == 0.0:
        return 1.0 if g_a > g_b else 0.0 if g_a < g_b else 0.5
    z = (g_a - g_b) / temperature
    # numerically stable logistic
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def label_pairs(prompts: list[str], a: list[str], b: list[str], gold_a: list[float], gold_b: list[float],
                temperature: float, rng: random.Random, flip: float = 0.0) -> list[dict]:
    """Rows {"prompt", "chosen", "rejected", "chosen_gold", "rejected_gold", "p_chosen"}: one
    Bradley–Terry draw per pair (p_chosen is the model probability of the label that was drawn)."""
    rows = []
    for x, ya, yb, ga, gb in zip(prompts, a, b, gold_a, gold_b, strict=True):
        p = prob_a_wins(ga, gb, temperature)
        a_wins = rng.random() < p
        if flip > 0.0:  # a second draw only when asked: flip = 0 keeps the labels of older builds
            p = (1.0 - flip) * p + flip * (1.0 - p)
            a_wins = a_wins != (rng.random() < flip)
        chosen, rejected = (ya, yb) if a_wins else (yb, ya)
        gc, gr = (ga, gb) if a_wins else (gb, ga)
        rows.append({"prompt": x, "chosen": chosen, "rejected": rejected, "chosen_gold": gc,
                     "rejected_gold": gr, "p_chosen": p if a_wins else 1.0 - p})
    return rows


def sample_pairs(prompts: list[str], n_pairs: int, sample: Callable[[list[str], int], list[str]],
                 gold: Callable[[list[str], list[str]], list[float]], temperature: float, seed: int,
                 max_retries: int = 3, flip: float = 0.0) -> tuple[list[dict], int]:
    """n_pairs pairs on prompts[i % len(prompts)], two samples each from `sample(prompts, seed)`.
    A pair whose responses are equal or empty is resampled up to max_retries times, then dropped
    (such a pair carries no preference and is a bad row for `load_pairs`). Returns (rows, dropped)."""
    if n_pairs == 0:
        return [], 0
    xs = [prompts[i % len(prompts)] for i in range(n_pairs)]
    a = sample(xs, seed * 1000 + 1)
    b = sample(xs, seed * 1000 + 2)
    def ok(i):
        return bool(a[i]) and bool(b[i]) and a[i] != b[i]
    for retry in range(max_retries):
        bad = [i for i in range(n_pairs) if not ok(i)]
        if not bad:
            break
        fresh_a = sample([xs[i] for i in bad], seed * 1000 + 10 + 2 * retry)
        fresh_b = sample([xs[i] for i in bad], seed * 1000 + 11 + 2 * retry)
        for i, ya, yb in zip(bad, fresh_a, fresh_b):
            if not a[i]:
                a[i] = ya
            if not b[i] or b[i] == a[i]:
                b[i] = yb
    keep = [i for i in range(n_pairs) if ok(i)]
    xs, a, b = [xs[i] for i in keep], [a[i] for i in keep], [b[i] for i in keep]
    rows = label_pairs(xs, a, b, gold(xs, a), gold(xs, b), temperature, random.Random(f"bt-{seed}"), flip)
    return rows, n_pairs - len(keep)
