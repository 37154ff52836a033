"""Prompt sets and preference-pair sets from user files, validated row by row.

A row is bad when it cannot be read (invalid JSON, not an object), when a needed field is missing
or null, not a string, or empty (whitespace only), or, for pairs, when chosen == rejected. By
default the first bad row raises `DataError` naming the file, the line/row and the field; with
`skip_bad_rows=True` bad rows are dropped, counted and their reasons kept in the result.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from .readers import Broken, DataError, read_records

T = TypeVar("T")
PAIR_FIELDS = ("prompt", "chosen", "rejected")


@dataclass
class LoadResult(Generic[T]):
    """The good rows of a file, and what was skipped (count and one reason per skipped row)."""

    path: str
    rows: list[T]
    skipped: int = 0
    reasons: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)


def _field_name(column: str, canonical: str) -> str:
    return repr(column) if column == canonical else f"{column!r} ({canonical})"


def _text(record: dict, column: str, canonical: str, path, loc: str) -> str:
    name = _field_name(column, canonical)
    value = record.get(column)
    if value is None:
        raise DataError(path, "missing (expected a non-empty string)", loc, name)
    if not isinstance(value, str):
        raise DataError(path, f"expected a string, got {type(value).__name__} {value!r:.40}", loc, name)
    if not value.strip():
        raise DataError(path, "empty text (expected a non-empty string)", loc, name)
    return value


def _load(path, columns: dict[str, str], parse, skip_bad_rows: bool) -> LoadResult:
    result = LoadResult(path=str(path), rows=[])
    for loc, record in read_records(path, list(columns.values())):
        try:
            if isinstance(record, Broken):
                raise DataError(path, record.reason, loc)
            result.rows.append(parse(record, loc))
        except DataError as err:
            if not skip_bad_rows:
                raise
            result.skipped += 1
            result.reasons.append(str(err))
    if not result.rows:
        detail = f" (all {result.skipped} rows were bad; first: {result.reasons[0]})" if result.skipped else ""
        raise DataError(path, f"no usable rows{detail}")
    if result.skipped:
        from ..outputs import console

        console.print(f"[yellow]warning:[/] {path}: skipped {result.skipped} bad row(s); first: {result.reasons[0]}",
                      highlight=False)
    return result


def load_prompts(path: str | Path, column: str = "prompt", skip_bad_rows: bool = False) -> LoadResult[str]:
    """Prompts (strings, as written) from the `column` field of each row."""
    return _load(path, {"prompt": column}, lambda rec, loc: _text(rec, column, "prompt", path, loc), skip_bad_rows)


def load_pairs(path: str | Path, columns: dict[str, str] | None = None,
               skip_bad_rows: bool = False) -> LoadResult[dict]:
    """Preference pairs as rows {"prompt", "chosen", "rejected"}; `columns` maps these names to the
    file's column names (missing keys keep the default name), e.g. {"chosen": "good", "rejected": "bad"}."""
    unknown = set(columns or {}) - set(PAIR_FIELDS)
    if unknown:
        raise ValueError(f"load_pairs: unknown column key(s) {sorted(unknown)}; expected some of {list(PAIR_FIELDS)}")
    cols = {k: (columns or {}).get(k, k) for k in PAIR_FIELDS}

    def parse(rec: dict, loc: str) -> dict:
        row = {k: _text(rec, c, k, path, loc) for k, c in cols.items()}
        if row["chosen"] == row["rejected"]:
            raise DataError(path, "chosen and rejected are identical (a pair must differ)", loc,
                            f"{_field_name(cols['chosen'], 'chosen')}/{_field_name(cols['rejected'], 'rejected')}")
        return row

    return _load(path, cols, parse, skip_bad_rows)
