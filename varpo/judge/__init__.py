"""Prompted interval reward models: LLM judges behind OpenAI-compatible endpoints answer an
interval [a, b]; reward ~ U[a, b], variance (b − a)²/12, midpoint for evaluation (DESIGN.md §1)."""
from .cache import JudgeCache, cache_key
from .client import JudgeEndpoint, JudgeError, JudgeStats, resolve_api_key, scrub
from .panel import JudgePanel, Verdicts
from .parsing import InvalidAnswer, extract_interval, parse_interval, validate_interval
from .scorer import JudgedBatch, JudgeScorer, combine_intervals, draw_rewards, sample_seed
from .template import PromptTemplate, load_template

__all__ = [
    "JudgeCache", "cache_key", "JudgeEndpoint", "JudgeError", "JudgeStats", "resolve_api_key", "scrub",
    "JudgePanel", "Verdicts", "InvalidAnswer", "extract_interval", "parse_interval", "validate_interval",
    "JudgedBatch", "JudgeScorer", "combine_intervals", "draw_rewards", "sample_seed", "PromptTemplate",
    "load_template",
]
