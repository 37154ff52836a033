"""User prompt and pair files: every format, column mapping, and one test per kind of bad row
for every format (strict: an error naming file, line/row and field; lenient: skipped and counted)."""
import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset, DatasetDict

from varpo.config import DataConfig, load_config
from varpo.data import DataError, load_pairs, load_prompts

FORMATS = ["jsonl", "json", "csv", "tsv", "parquet", "hf"]
COLS = ["prompt", "chosen", "rejected"]
MISSING = object()  # a field absent from a row


def good(i: int) -> dict:
    return {"prompt": f"prompt {i}", "chosen": f"good answer {i}", "rejected": f"bad answer {i}"}


def write(fmt: str, rows: list, tmp_path, columns=COLS):
    """Write rows (dicts, MISSING values, or raw strings for JSON formats) in `fmt`; return the path."""
    if fmt == "jsonl":
        path = tmp_path / "data.jsonl"
        lines = [r if isinstance(r, str) else json.dumps({k: v for k, v in r.items() if v is not MISSING}) for r in rows]
        path.write_text("\n".join(lines) + "\n")
    elif fmt == "json":
        path = tmp_path / "data.json"
        path.write_text(json.dumps([{k: v for k, v in r.items() if v is not MISSING} for r in rows], indent=1))
    elif fmt in ("csv", "tsv"):
        path = tmp_path / f"data.{fmt}"
        with path.open("w", newline="") as f:
            w = csv.writer(f, delimiter="," if fmt == "csv" else "\t")
            w.writerow(columns)
            for r in rows:
                cells = [r[c] for c in columns]
                while cells and cells[-1] is MISSING:  # a short row: the trailing cells are absent
                    cells.pop()
                assert MISSING not in cells, "CSV can only miss trailing cells"
                w.writerow(cells)
    else:
        data = {c: [None if r[c] is MISSING else r[c] for r in rows] for c in columns}
        if fmt == "parquet":
            path = tmp_path / "data.parquet"
            pq.write_table(pa.table(data), path)
        else:
            path = tmp_path / "dataset"
            Dataset.from_dict(data).save_to_disk(str(path))
    return path


def location(fmt: str, index: int) -> str:
    """Where the row with 0-based `index` is reported."""
    if fmt == "jsonl":
        return f"line {index + 1}"
    if fmt in ("csv", "tsv"):
        return f"line {index + 2}"  # the header is line 1
    return f"row {index + 1}"


# kind -> (formats where a single bad row can exist, the bad row, the field named in the error)
BAD_PAIRS = {
    "missing_field": (FORMATS, {**good(2), "chosen": MISSING}, "chosen"),
    "missing_last_field": (FORMATS, {**good(2), "rejected": MISSING}, "rejected"),
    "null_field": (["jsonl", "json", "parquet", "hf"], {**good(2), "chosen": None}, "chosen"),
    "non_string_field": (["jsonl", "json"], {**good(2), "chosen": 3}, "chosen"),
    "list_field": (["jsonl", "json"], {**good(2), "rejected": ["a", "b"]}, "rejected"),
    "empty_text": (FORMATS, {**good(2), "prompt": ""}, "prompt"),
    "whitespace_text": (FORMATS, {**good(2), "rejected": "  \t "}, "rejected"),
    "chosen_equals_rejected": (FORMATS, {**good(2), "rejected": "good answer 2"}, "'chosen'/'rejected'"),
    "invalid_json": (["jsonl"], '{"prompt": "p", "chosen": "a", ', None),
    "not_an_object": (["jsonl"], '["p", "a", "b"]', None),
}
CASES = [(fmt, kind) for kind, (fmts, _, _) in BAD_PAIRS.items() for fmt in fmts]


@pytest.mark.parametrize("fmt,kind", CASES, ids=[f"{f}-{k}" for f, k in CASES])
def test_bad_pair_row_strict_names_file_line_field(fmt, kind, tmp_path):
    _, bad, field = BAD_PAIRS[kind]
    if fmt in ("csv", "tsv") and kind == "missing_field":  # CSV can only miss trailing cells: move chosen last
        cols = ["prompt", "rejected", "chosen"]
    else:
        cols = COLS
    path = write(fmt, [good(0), good(1), bad, good(3)], tmp_path, cols)
    with pytest.raises(DataError) as info:
        load_pairs(path)
    err = info.value
    assert err.path == str(path) and err.location == location(fmt, 2)
    assert str(path) in str(err) and location(fmt, 2) in str(err)
    if field is None:
        assert err.field is None and ("JSON" in err.reason)
    else:
        assert field in err.field and f"field {err.field}" in str(err)


@pytest.mark.parametrize("fmt,kind", CASES, ids=[f"{f}-{k}" for f, k in CASES])
def test_bad_pair_row_skipped_and_counted(fmt, kind, tmp_path):
    _, bad, _ = BAD_PAIRS[kind]
    cols = ["prompt", "rejected", "chosen"] if fmt in ("csv", "tsv") and kind == "missing_field" else COLS
    path = write(fmt, [good(0), bad, good(2), bad, good(4)], tmp_path, cols)
    res = load_pairs(path, skip_bad_rows=True)
    assert res.rows == [good(0), good(2), good(4)]
    assert res.skipped == 2 and len(res.reasons) == 2
    assert location(fmt, 1) in res.reasons[0] and location(fmt, 3) in res.reasons[1]


@pytest.mark.parametrize("fmt", ["parquet", "hf"])
def test_non_string_column_in_typed_formats(fmt, tmp_path):
    """Typed tables cannot mix types in a column: an int column fails on its first row."""
    path = write(fmt, [{**good(i), "chosen": i} for i in range(3)], tmp_path)
    with pytest.raises(DataError, match=r"row 1, field 'chosen': expected a non-empty string or a list of \{role, content\} messages, got int"):
        load_pairs(path)
    with pytest.raises(DataError, match="no usable rows .all 3 rows were bad"):
        load_pairs(path, skip_bad_rows=True)


@pytest.mark.parametrize("fmt", ["csv", "tsv", "parquet", "hf"])
def test_missing_column_in_header_is_a_file_error(fmt, tmp_path):
    path = write(fmt, [good(0), good(1)], tmp_path, columns=["prompt", "chosen"])
    for skip in (False, True):  # skipping every row would hide the real problem
        with pytest.raises(DataError, match=r"column\(s\) 'rejected' not found; the file has 'prompt', 'chosen'"):
            load_pairs(path, skip_bad_rows=skip)


def test_invalid_json_document(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text('[\n {"prompt": "p", "chosen": "a", "rejected": "b"},\n {"prompt": "q", "chosen": }\n]')
    with pytest.raises(DataError, match=r"pairs.json, line 3 column 28: invalid JSON"):
        load_pairs(path)
    with pytest.raises(DataError, match="whole document"):
        load_pairs(path, skip_bad_rows=True)
    path.write_text('[{"prompt": "p", "chosen": "a", "rejected": "b"}, 7]')
    with pytest.raises(DataError, match=r"row 2: expected a JSON object, got int"):
        load_pairs(path)
    path.write_text('{"rows": []}')
    with pytest.raises(DataError, match="expected a JSON array"):
        load_pairs(path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_column_mapping_and_good_files(fmt, tmp_path):
    rows = [{"question": f"q {i}", "good": f"g {i}", "bad": f"b {i}"} for i in range(5)]
    path = write(fmt, rows, tmp_path, columns=["question", "good", "bad"])
    res = load_pairs(path, columns={"prompt": "question", "chosen": "good", "rejected": "bad"})
    assert res.skipped == 0 and len(res) == 5
    assert res.rows[4] == {"prompt": "q 4", "chosen": "g 4", "rejected": "b 4"}
    assert load_prompts(path, column="question").rows == [f"q {i}" for i in range(5)]
    with pytest.raises(DataError) as info:  # names the user's column and the role it plays
        write(fmt, [*rows[:1], {"question": "", "good": "g", "bad": "b"}], tmp_path, columns=["question", "good", "bad"])
        load_pairs(path, columns={"prompt": "question", "chosen": "good", "rejected": "bad"})
    assert info.value.field == "'question' (prompt)" and info.value.location == location(fmt, 1)


# prompts: kind -> (formats, bad row, field)
BAD_PROMPTS = {
    "missing_field": (["jsonl", "json", "parquet", "hf"], {"prompt": MISSING, "id": "x"}),
    "non_string_field": (["jsonl", "json"], {"prompt": 12.5, "id": "x"}),
    "empty_text": (FORMATS, {"prompt": "", "id": "x"}),
    "invalid_json": (["jsonl"], "{not json"),
}
PCASES = [(fmt, kind) for kind, (fmts, _) in BAD_PROMPTS.items() for fmt in fmts]


@pytest.mark.parametrize("fmt,kind", PCASES, ids=[f"{f}-{k}" for f, k in PCASES])
def test_bad_prompt_rows(fmt, kind, tmp_path):
    bad = BAD_PROMPTS[kind][1]
    rows = [{"prompt": "a", "id": "1"}, bad, {"prompt": "c", "id": "3"}]
    path = write(fmt, rows, tmp_path, columns=["prompt", "id"])
    with pytest.raises(DataError) as info:
        load_prompts(path)
    assert info.value.location == location(fmt, 1) and str(path) in str(info.value)
    if kind != "invalid_json":
        assert info.value.field == "'prompt'"
    res = load_prompts(path, skip_bad_rows=True)
    assert res.rows == ["a", "c"] and res.skipped == 1


def test_csv_short_prompt_row_and_malformed_csv(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text('id,prompt\n1,hello\n2\n3,"a, quoted, prompt"\n')
    with pytest.raises(DataError, match=r"p.csv, line 3, field 'prompt': missing"):
        load_prompts(path)
    assert load_prompts(path, skip_bad_rows=True).rows == ["hello", "a, quoted, prompt"]
    path.write_text('prompt\n"unterminated\n')
    with pytest.raises(DataError, match=r"p.csv, line \d+: malformed CSV"):
        load_prompts(path)


def test_file_level_errors(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: file or folder not found"):
        load_prompts(tmp_path / "nope.jsonl")
    (tmp_path / "p.txt").write_text("hello\n")
    with pytest.raises(DataError, match=r"unknown format '.txt'"):
        load_prompts(tmp_path / "p.txt")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="no usable rows"):
        load_prompts(tmp_path / "empty.jsonl")
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataError, match="save_to_disk"):
        load_prompts(tmp_path / "folder")
    with pytest.raises(ValueError, match="unknown column key"):
        load_pairs(tmp_path / "empty.jsonl", columns={"answer": "x"})


def test_dataset_dict_folders(tmp_path):
    """A saved DatasetDict is read at a split (train by default), not refused: the split option
    picks another, a missing one is named with the splits there are."""
    one = DatasetDict({"train": Dataset.from_dict({"prompt": ["a", "b"]})})
    one.save_to_disk(str(tmp_path / "one"))
    assert load_prompts(tmp_path / "one").rows == ["a", "b"]
    two = DatasetDict({"train": Dataset.from_dict({"prompt": ["a"]}), "test": Dataset.from_dict({"prompt": ["b"]})})
    two.save_to_disk(str(tmp_path / "two"))
    assert load_prompts(tmp_path / "two").rows == ["a"]
    assert load_prompts(tmp_path / "two", split="test").rows == ["b"]
    with pytest.raises(DataError, match=r"two: no split 'validation': the dataset has splits \['test', 'train'\]; "
                                        r"choose one with data.eval_split"):
        load_prompts(tmp_path / "two", split="validation", split_field="data.eval_split")
    assert load_prompts(tmp_path / "two" / "test").rows == ["b"]  # a split's own folder still works
    odd = DatasetDict({"train_prefs": Dataset.from_dict({"prompt": ["x"]})})
    odd.save_to_disk(str(tmp_path / "odd"))
    assert load_prompts(tmp_path / "odd").rows == ["x"]  # one split: it is the data
    with pytest.raises(DataError, match="no split 'test'"):
        load_prompts(tmp_path / "odd", split="test", single_split_ok=False)


def test_json_data_wrapper_and_skip_warning(tmp_path, capsys):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"data": [{"prompt": "x"}, {"prompt": ""}]}))
    res = load_prompts(path, skip_bad_rows=True)
    assert res.rows == ["x"] and res.skipped == 1
    assert "skipped 1 bad row" in capsys.readouterr().err


def test_data_config_fields():
    cfg = load_config(overrides=["data.pairs_path=/x.jsonl", "data.chosen_column=good", "data.skip_bad_rows=true"])
    assert cfg.data.pair_columns() == {"prompt": "prompt", "chosen": "good", "rejected": "rejected"}
    assert cfg.data.skip_bad_rows is True and DataConfig().prompts_path is None
