"""Raw records from the supported sources, each tagged with where it came from.

Sources: a JSONL / JSON / CSV / TSV / Parquet file; a folder saved with `datasets`' save_to_disk
(a Dataset, or a DatasetDict of which one split is read); any other folder `datasets.load_dataset`
reads (data files named by split, e.g. train.jsonl and test.jsonl); or a dataset name
(`org/name`), through `datasets.load_dataset` and its cache, so a dataset loaded once works
offline (HF_DATASETS_OFFLINE=1). Datasets with splits are read at one split (`split`).

A reader yields `(location, record)` where location is "line N" (JSONL, CSV: the 1-based line of
the file) or "row N" (JSON arrays, Parquet, HF datasets: the 1-based row), and record is a dict,
or a `Broken` when the row itself cannot be read (invalid JSON, not an object). Problems that
affect the whole file (not found, unknown format, not UTF-8 text, unparsable JSON document, a
column missing from a table's header, a split the dataset lacks) raise `DataError` at once: no
row could be salvaged by skipping.
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


def _not_text(path: Path, exc: UnicodeDecodeError, kind: str, location: str | None = None) -> DataError:
    return DataError(path, f"not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}): a binary or "
                           f"differently encoded file? expected {kind}", location)


def _read_text(path: Path, kind: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise _not_text(path, exc, kind) from None


def _jsonl(path: Path) -> Iterator[tuple[str, dict | Broken]]:
    with path.open("rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:  # the whole file is suspect, not this row: never skipped
                raise _not_text(path, exc, "JSON Lines (one JSON object per line)", f"line {n}") from None
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
        data = json.loads(_read_text(path, "a JSON document"))
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
    import io

    text = _read_text(path, "CSV text" if delimiter == "," else "TSV text")
    with io.StringIO(text, newline="") as f:
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


SAVED_MARKERS = ("dataset_dict.json", "state.json", "dataset_info.json")  # what save_to_disk writes


def _is_name(text: str) -> bool:
    """Whether a path that does not exist could be a dataset name (`name` or `org/name`)."""
    return not text.startswith(("/", ".", "~")) and text.count("/") <= 1 and Path(text).suffix.lower() not in SUFFIXES


def _pick_split(path, ds, split: str | None, split_field: str, single_split_ok: bool):
    """One split of a DatasetDict: `split`, or (single_split_ok) the only one there is."""
    from datasets import DatasetDict

    if not isinstance(ds, DatasetDict):
        return ds
    if split in ds:
        return ds[split]
    if single_split_ok and len(ds) == 1:
        return next(iter(ds.values()))
    raise DataError(path, f"no split {split!r}: the dataset has splits {sorted(ds)}; choose one with {split_field}")


def _load_dataset(path: Path | str, config: str | None, exists: bool):
    """A folder `load_dataset` can read, or a dataset name (through its cache when offline)."""
    import datasets

    try:
        return datasets.load_dataset(str(path), config)
    except Exception as exc:  # datasets raises many kinds (not found, offline, no cache, bad config)
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if exists:
            raise DataError(path, f"a folder must be an HF dataset saved with save_to_disk, or hold data files "
                                  f"datasets.load_dataset reads ({msg})") from None
        raise DataError(path, f"no such file or folder, and no dataset of that name in the Hugging Face datasets "
                              f"cache or on the Hub ({type(exc).__name__}: {msg})") from None


def open_dataset(path, split: str | None = "train", config: str | None = None, split_field: str = "data.train_split",
                 single_split_ok: bool = True):
    """The `datasets.Dataset` behind a folder or a dataset name, at `split`."""
    from datasets import load_from_disk

    p = Path(str(path)).expanduser()
    if p.is_dir() and any((p / m).is_file() for m in SAVED_MARKERS):
        try:
            ds = load_from_disk(str(p))
        except (FileNotFoundError, ValueError) as exc:  # datasets' errors for folders that are not datasets
            raise DataError(p, f"a folder must be an HF dataset saved with save_to_disk ({exc})") from None
    else:
        ds = _load_dataset(p if p.is_dir() else path, config, exists=p.is_dir())
    return _pick_split(p, ds, split, split_field, single_split_ok)


def has_split(path, split: str, config: str | None = None) -> bool:
    """Whether `path` is a dataset (folder or name) with a split named `split`."""
    from datasets import DatasetDict, load_from_disk

    p = Path(str(path)).expanduser()
    if p.is_file():
        return False
    try:
        if p.is_dir() and any((p / m).is_file() for m in SAVED_MARKERS):
            ds = load_from_disk(str(p))
        else:
            ds = _load_dataset(p if p.is_dir() else path, config, exists=p.is_dir())
    except (DataError, FileNotFoundError, ValueError):
        return False
    return isinstance(ds, DatasetDict) and split in ds


def _hf_dataset(path, needed: list[str], split, config, split_field, single_split_ok):
    ds = open_dataset(path, split, config, split_field, single_split_ok)
    return _table_rows(Path(str(path)), list(ds.column_names), iter(ds), needed)


def read_records(path: str | Path, needed: list[str], split: str | None = "train", config: str | None = None,
                 split_field: str = "data.train_split", single_split_ok: bool = True
                 ) -> Iterator[tuple[str, dict | Broken]]:
    """(location, record) pairs from a JSONL/JSON/CSV/TSV/Parquet file, a dataset folder or a
    dataset name (at `split`, configuration `config`). `needed` are the columns the caller will
    read (checked up front for tabular formats). `split_field` names the option that chose the
    split, for the message when the dataset lacks it; `single_split_ok`: a dataset with one split
    of another name is read whole (a folder saved from a one-split DatasetDict)."""
    text = str(path)
    path = Path(text).expanduser()
    if not path.exists():
        if _is_name(text):
            return _hf_dataset(text, needed, split, config, split_field, single_split_ok)
        raise DataError(path, "file or folder not found")
    if path.is_dir():
        return _hf_dataset(path, needed, split, config, split_field, single_split_ok)
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
