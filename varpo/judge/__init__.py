"""Prompted interval reward models: LLM judges behind OpenAI-compatible endpoints answer an
interval [a, b]; reward ~ U[a, b], variance (b − a)²/12, midpoint for evaluation (docs/design.md §1)."""
from .cache import JudgeCache, cache_key
from .client import JudgeEndpoint, JudgeError, JudgeStats, resolve_api_key, scrub
from .panel import JudgePanel, Verdicts
from .parsing import InvalidAnswer, extract_interval, parse_interval, validate_interval
from .scorer import JudgedBatch, JudgeScorer, combine_intervals, draw_rewards, sample_seed
from .template import PromptTemplate, load_template

__all__ = [
    "InvalidAnswer",
    "JudgeCache",
    "JudgeEndpoint",
    "JudgeError",
    "JudgePanel",
    "JudgeScorer",
    "JudgeStats",
    "JudgedBatch",
    "PromptTemplate",
    "Verdicts",
    "cache_key",
    "combine_intervals",
    "draw_rewards",
    "extract_interval",
    "load_template",
    "parse_interval",
    "resolve_api_key",
    "sample_seed",
    "scrub",
    "validate_interval",
]
