"""User data: prompt sets and preference-pair sets from JSONL / JSON / CSV / TSV / Parquet files or
HF `datasets` folders (save_to_disk), with column mapping and row-precise errors."""
from .load import PAIR_FIELDS, LoadResult, load_pairs, load_prompts
from .readers import DataError

__all__ = ["PAIR_FIELDS", "DataError", "LoadResult", "load_pairs", "load_prompts"]
