"""Raw records from the supported file formats, each tagged with where it came from.

A reader yields `(location, record)` where location is "line N" (JSONL, CSV: the 1-based line of
the file) or "row N" (JSON arrays, Parquet, HF datasets: the 1-based row), and record is a dict,
or a `Broken` when the row itself cannot be read (invalid JSON, not an object). Problems that
affect the whole file (not found, unknown format, unparsable JSON document, a column missing from
a table's header) raise `DataError` at once: no row could be salvaged by skipping.
"""
from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..config.core import ConfigError

SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}


class DataError(ConfigError):
    """A user data problem, naming the file, the line or row, and the field when there is one.
    (A ConfigError, so the CLI reports it as a clean error with exit code 2.)"""

    def __init__(self, path, reason: str, location: str | None = None, field: str | None = None):
        self.path, self.location, self.field, self.reason = str(path), location, field, reason
        where = f"{path}" + (f", {location}" if location else "") + (f", field {field}" if field else "")
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True)
class Broken:
    """A row that could not be read as a record at all."""

    reason: str


def _jsonl(path: Path) -> Iterator[tuple[str, dict | Broken]]:
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                yield f"line {n}", Broken(f"invalid JSON ({exc.msg} at column {exc.colno})")
                continue
            yield f"line {n}", obj if isinstance(obj, dict) else Broken(f"expected a JSON object, got {type(obj).__name__}")


def _json(path: Path) -> Iterator[tuple[str, dict | Broken]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(path, f"invalid JSON ({exc.msg}); the whole document is unreadable, so no row can be "
                              "skipped (one object per line? name the file .jsonl)", location=f"line {exc.lineno} column {exc.colno}") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(path, f"expected a JSON array of objects (or {{\"data\": [...]}}), got {type(data).__name__}")
    for n, obj in enumerate(data, start=1):
        yield f"row {n}", obj if isinstance(obj, dict) else Broken(f"expected a JSON object, got {type(obj).__name__}")


def _csv(path: Path, delimiter: str, needed: list[str]) -> Iterator[tuple[str, dict | Broken]]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter, strict=True)
        try:
            header = reader.fieldnames or []
            _require_columns(path, header, needed)
            for row in reader:
                # DictReader gives None for cells missing from a short row, and puts surplus cells under None
                yield f"line {reader.line_num}", {k: v for k, v in row.items() if k is not None}
        except csv.Error as exc:
            raise DataError(path, f"malformed CSV ({exc})", location=f"line {reader.line_num}") from None


def _require_columns(path: Path, have: list[str], needed: list[str]) -> None:
    missing = [c for c in needed if c not in have]
    if missing:
        raise DataError(path, f"column(s) {', '.join(map(repr, missing))} not found; the file has "
                              f"{', '.join(map(repr, have)) or 'no columns'} (map yours with the column options)")


def _table_rows(path: Path, table_columns: list[str], rows: Iterator[dict], needed: list[str]):
    _require_columns(path, table_columns, needed)
    for n, row in enumerate(rows, start=1):
        yield f"row {n}", row


def _parquet(path: Path, needed: list[str]):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(path, f"not a readable Parquet file ({exc})") from None
    return _table_rows(path, table.column_names, iter(table.to_pylist()), needed)


def _hf_dataset(path: Path, needed: list[str]):
    from datasets import Dataset, DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:  # datasets' errors for folders that are not datasets
        raise DataError(path, f"a folder must be an HF dataset saved with save_to_disk ({exc})") from None
    if isinstance(ds, DatasetDict):
        if len(ds) != 1:
            raise DataError(path, f"a DatasetDict with splits {sorted(ds)}: point at one split folder, e.g. {path / min(ds)}")
        ds = next(iter(ds.values()))
    assert isinstance(ds, Dataset)
    return _table_rows(path, list(ds.column_names), iter(ds), needed)


def read_records(path: str | Path, needed: list[str]) -> Iterator[tuple[str, dict | Broken]]:
    """(location, record) pairs from a JSONL/JSON/CSV/TSV/Parquet file or an HF dataset folder.
    `needed` are the columns the caller will read (checked up front for tabular formats)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(path, "file or folder not found")
    if path.is_dir():
        return _hf_dataset(path, needed)
    kind = SUFFIXES.get(path.suffix.lower())
    if kind == "jsonl":
        return _jsonl(path)
    if kind == "json":
        return _json(path)
    if kind in ("csv", "tsv"):
        return _csv(path, "," if kind == "csv" else "\t", needed)
    if kind == "parquet":
        return _parquet(path, needed)
    raise DataError(path, f"unknown format {path.suffix!r}: expected one of {', '.join(sorted(SUFFIXES))} "
                          "or a folder saved with datasets' save_to_disk")
