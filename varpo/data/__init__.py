"""User data: prompt sets, preference-pair sets and responses to score, from JSONL / JSON / CSV /
TSV / Parquet files, HF `datasets` folders or dataset names, plain or conversational, with column
mapping and row-precise errors."""
from .load import PAIR_FIELDS, LoadResult, load_pairs, load_prompts, load_responses
from .readers import DataError

__all__ = ["PAIR_FIELDS", "DataError", "LoadResult", "load_pairs", "load_prompts", "load_responses"]
