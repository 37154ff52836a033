"""The embedded default task (docs/design.md §3): a generated review corpus, a word-level tokenizer and a
tiny Llama pretrained on it, a programmatic gold reward (sentiment, guarded against repetition and
empty output), prompt sets and Bradley–Terry-labelled preference pairs, all cached by config."""
from .build import Testbed, build_testbed, cache_key, cache_root
from .gold import GOLD_MAX, GOLD_MIN, gold_reward, gold_score
from .tasks import GoldScorer, gold_fn, task_gold

__all__ = ["GOLD_MAX", "GOLD_MIN", "GoldScorer", "Testbed", "build_testbed", "cache_key", "cache_root",
           "gold_fn", "gold_reward", "gold_score", "task_gold"]
