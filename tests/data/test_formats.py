"""Data as users have it: conversational rows (TRL's format, UltraFeedback's layout, multi-turn
prompts) rendered with a real tokenizer's chat template, HH-RLHF rows (the prompt is the shared
start of chosen and rejected), dataset folders and dataset names (through a populated HF datasets
cache, offline), undecodable files. Small real datasets built here; no network."""
import json
import os
import subprocess
import sys

import pytest
from datasets import Dataset, DatasetDict

from varpo.config import ConfigError, load_config
from varpo.data import DataError, load_pairs, load_prompts
from varpo.data.chat import ChatRenderer, ChatText, NoChatTemplate, is_chat_text

TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
            "{% if add_generation_prompt %}<|assistant|> {% endif %}")


@pytest.fixture(scope="module")
def chat_tokenizer():
    """A real fast tokenizer (word level) with a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = "what is the sky blue green red it of course grass colour and why".split()
    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>",
                                          "<|end|>", *words])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>")
    tok.chat_template = TEMPLATE
    return tok


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_conversational_prompts_multi_turn_rendered_with_the_template(chat_tokenizer, tmp_path):
    rows = [{"prompt": [user("what is the sky")]},
            {"prompt": [{"role": "system", "content": "why"}, user("what is the sky"), assistant("blue"),
                        user("and the grass")]}]
    res = load_prompts(jsonl(tmp_path / "p.jsonl", rows), chat=ChatRenderer(chat_tokenizer))
    assert res.conversational and all(is_chat_text(p) for p in res.rows)
    assert res.rows[0] == "<s><|user|> what is the sky <|end|> <|assistant|> "
    assert res.rows[1] == ("<s><|system|> why <|end|> <|user|> what is the sky <|end|> <|assistant|> blue <|end|> "
                           "<|user|> and the grass <|end|> <|assistant|> ")
    # a prompt ending with the assistant's message has nothing left for the policy to write
    bad = jsonl(tmp_path / "b.jsonl", [rows[0], {"prompt": [user("what"), assistant("blue")]}])
    with pytest.raises(DataError, match=r"b.jsonl, line 2, field 'prompt': the conversation ends with an assistant"):
        load_prompts(bad, chat=ChatRenderer(chat_tokenizer))


def test_no_chat_template_is_an_error_naming_the_tokenizer(chat_tokenizer, tmp_path):
    import copy

    plain = copy.deepcopy(chat_tokenizer)
    plain.chat_template = None
    path = jsonl(tmp_path / "p.jsonl", [{"prompt": [user("what is the sky")]}])
    for skip in (False, True):  # not a bad row to skip: every row would go
        with pytest.raises(NoChatTemplate, match=r"p.jsonl: conversational rows .* chat template of "
                                                 r"model.policy_path \(/x/policy\), and that tokenizer has none"):
            load_prompts(path, skip_bad_rows=skip, chat=ChatRenderer(plain, "model.policy_path (/x/policy)"))
    assert isinstance(NoChatTemplate("x"), ConfigError)  # the CLI reports it in one line, exit 2


def test_malformed_messages_name_row_and_field(chat_tokenizer, tmp_path):
    cases = {
        "role": ({"prompt": [{"role": "robot", "content": "x"}]}, "message 0: role must be one of"),
        "content": ({"prompt": [{"role": "user", "content": 3}]}, "message 0: content must be a string, got int"),
        "empty": ({"prompt": [user(" ")]}, r"message 0 \(user\): empty content"),
        "not_messages": ({"prompt": ["what", "is"]}, "expected a non-empty string or a list of .* got list"),
    }
    for name, (bad, msg) in cases.items():
        path = jsonl(tmp_path / f"{name}.jsonl", [{"prompt": "the sky"}, bad])
        with pytest.raises(DataError, match=rf"{name}.jsonl, line 2, field 'prompt': {msg}"):
            load_prompts(path, chat=ChatRenderer(chat_tokenizer))
        assert load_prompts(path, skip_bad_rows=True).rows == ["the sky"]


def test_conversational_pairs_explicit_and_ultrafeedback_layouts(chat_tokenizer, tmp_path):
    chat = ChatRenderer(chat_tokenizer)
    want_prompt = "<s><|user|> what colour is the sky <|end|> <|assistant|> "
    # TRL's explicit layout: prompt messages, the replies alone
    explicit = [{"prompt": [user("what colour is the sky")], "chosen": [assistant("blue")],
                 "rejected": [assistant("green")]}]
    # UltraFeedback's: a prompt string plus whole conversations that repeat it
    ultra = [{"prompt": "what colour is the sky", "chosen": [user("what colour is the sky"), assistant("blue")],
              "rejected": [user("what colour is the sky"), assistant("green")]}]
    # TRL's implicit-prompt conversational layout: no prompt column at all
    implicit = [{k: v for k, v in ultra[0].items() if k != "prompt"}]
    # a standard prompt string with conversational replies: the prompt is one user turn
    mixed_row = [{"prompt": "what colour is the sky", "chosen": [assistant("blue")], "rejected": [assistant("green")]}]
    for name, rows in (("explicit", explicit), ("ultra", ultra), ("implicit", implicit), ("mixed", mixed_row)):
        res = load_pairs(jsonl(tmp_path / f"{name}.jsonl", rows), chat=chat)
        assert res.conversational, name
        assert res.rows == [{"prompt": want_prompt, "chosen": "blue", "rejected": "green"}], name
        assert isinstance(res.rows[0]["prompt"], ChatText)
    # multi-turn: the shared first messages are the prompt, the assistant's last replies the responses
    multi = [{"chosen": [user("what is the sky"), assistant("blue"), user("why"), assistant("of course")],
              "rejected": [user("what is the sky"), assistant("blue"), user("why"), assistant("it is red")]}]
    (row,) = load_pairs(jsonl(tmp_path / "multi.jsonl", multi), chat=chat).rows
    assert row["prompt"].endswith("<|user|> why <|end|> <|assistant|> ") and "blue" in row["prompt"]
    assert (row["chosen"], row["rejected"]) == ("of course", "it is red")


def test_bad_conversational_pairs(chat_tokenizer, tmp_path):
    chat = ChatRenderer(chat_tokenizer)
    good = {"prompt": [user("what")], "chosen": [assistant("blue")], "rejected": [assistant("green")]}
    cases = {
        "two_replies": ({**good, "chosen": [assistant("blue"), assistant("sky")]}, "'chosen'",
                        r"expected one assistant message, got \['assistant', 'assistant'\]"),
        "user_reply": ({**good, "rejected": [user("green")]}, "'rejected'", r"got \['user'\]"),
        "string_reply": ({**good, "chosen": "blue"}, "'chosen'", "a plain string beside conversational fields"),
        "no_prompt": ({"chosen": [assistant("blue")], "rejected": [assistant("green")]}, "'chosen'/'rejected'",
                      "no prompt column, and chosen and rejected share no first messages"),
        "same": ({**good, "rejected": [assistant("blue")]}, "'chosen'/'rejected'", "identical"),
    }
    for name, (bad, field, msg) in cases.items():
        path = jsonl(tmp_path / f"{name}.jsonl", [good, bad])
        with pytest.raises(DataError) as info:
            load_pairs(path, chat=chat)
        assert info.value.location == "line 2" and info.value.field == field, name
        assert msg in str(info.value) or __import__("re").search(msg, str(info.value)), (name, str(info.value))
        assert len(load_pairs(path, skip_bad_rows=True, chat=chat).rows) == 1


def test_one_format_per_file(chat_tokenizer, tmp_path):
    rows = [{"prompt": "the sky", "chosen": "blue", "rejected": "green"},
            {"prompt": [user("the sky")], "chosen": [assistant("blue")], "rejected": [assistant("green")]}]
    path = jsonl(tmp_path / "mix.jsonl", rows)
    for skip in (False, True):
        with pytest.raises(DataError, match=r"mix.jsonl: mixes conversational rows .*first at line 2.* plain-text "
                                            r"rows \(first at line 1\)"):
            load_pairs(path, skip_bad_rows=skip, chat=ChatRenderer(chat_tokenizer))


def test_hh_rlhf_rows_take_the_shared_start_as_the_prompt(tmp_path):
    h = "\n\nHuman: what colour is the sky?\n\nAssistant: It is blue.\n\nHuman: and the grass?\n\nAssistant:"
    rows = [{"chosen": h + " It is green, of course.", "rejected": h + " It is red."},
            # the replies start alike: the prompt still ends at the assistant's turn marker
            {"chosen": h + " It is green.", "rejected": h + " It is greenish."},
            # no turn marker: cut at a word boundary, never inside a word
            {"chosen": "The sky is blue today", "rejected": "The sky is bleak"}]
    res = load_pairs(jsonl(tmp_path / "hh.jsonl", rows))
    assert not res.conversational
    assert res.rows[0] == {"prompt": h, "chosen": "It is green, of course.", "rejected": "It is red."}
    assert res.rows[1] == {"prompt": h, "chosen": "It is green.", "rejected": "It is greenish."}
    assert res.rows[2] == {"prompt": "The sky is", "chosen": "blue today", "rejected": "bleak"}
    # scored as prompt + " " + response, the text is the row's own
    assert res.rows[0]["prompt"] + " " + res.rows[0]["chosen"] == rows[0]["chosen"]
    # a Parquet file with only chosen/rejected columns is HH-RLHF too (no prompt column needed)
    Dataset.from_list(rows[:1]).to_parquet(str(tmp_path / "hh.parquet"))
    assert load_pairs(tmp_path / "hh.parquet").rows == res.rows[:1]
    for name, bad, msg in (("nothing_shared", {"chosen": "blue", "rejected": "green"}, "share no start"),
                           ("prefix", {"chosen": h + " Blue", "rejected": h + " Blue and more"}, None),
                           ("one_is_start", {"chosen": "The sky is ", "rejected": "The sky is blue"},
                            "one of chosen/rejected is the other's start")):
        path = jsonl(tmp_path / f"{name}.jsonl", [rows[0], bad])
        if msg is None:  # replies that differ only after a shared word are fine
            assert load_pairs(path).rows[1]["chosen"] == "Blue"
            continue
        with pytest.raises(DataError, match=rf"{name}.jsonl, line 2, field 'chosen'/'rejected': .*{msg}"):
            load_pairs(path)


def test_undecodable_files_are_named(tmp_path):
    blob = b"\x1f\x8b\x08\x00" + bytes(range(128, 256)) * 4  # what a gzipped file starts with
    for suffix in (".jsonl", ".json", ".csv", ".tsv"):
        path = tmp_path / f"binary{suffix}"
        path.write_bytes(b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n' + blob)
        for skip in (False, True):  # a binary file is not a row to skip
            with pytest.raises(DataError, match=rf"binary{suffix}(, line 2)?: not UTF-8 text \(byte 0x8b"):
                load_pairs(path, skip_bad_rows=skip)
    (tmp_path / "binary.parquet").write_bytes(blob)
    with pytest.raises(DataError, match="binary.parquet: not a readable Parquet file"):
        load_pairs(tmp_path / "binary.parquet")


def test_dataset_folder_of_data_files_reads_its_splits(tmp_path):
    """A folder of data files named by split (what a dataset repository looks like), read by
    datasets.load_dataset at the split asked for."""
    folder = tmp_path / "prefs"
    folder.mkdir()
    jsonl(folder / "train.jsonl", [{"prompt": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(3)])
    jsonl(folder / "test.jsonl", [{"prompt": "held", "chosen": "a", "rejected": "b"}])
    assert [r["prompt"] for r in load_pairs(folder).rows] == ["p0", "p1", "p2"]
    assert [r["prompt"] for r in load_pairs(folder, split="test").rows] == ["held"]
    with pytest.raises(DataError, match=r"no split 'validation': the dataset has splits \['test', 'train'\]"):
        load_pairs(folder, split="validation", split_field="data.eval_split")


def test_pair_sets_from_a_dataset_dict_use_train_and_test_splits(tmp_path):
    from varpo.data.sets import pair_sets

    rows = lambda tag, n: [{"prompt": f"{tag}{i}", "chosen": "a", "rejected": "b"} for i in range(n)]  # noqa: E731
    DatasetDict({"train": Dataset.from_list(rows("tr", 6)), "test": Dataset.from_list(rows("te", 2))}).save_to_disk(
        str(tmp_path / "dd"))
    train, held, source = pair_sets(load_config(overrides=[f"data.pairs_path={tmp_path / 'dd'}"]))
    assert [r["prompt"] for r in train] == [f"tr{i}" for i in range(6)]  # the training split, not the test one
    assert [r["prompt"] for r in held] == ["te0", "te1"] and source.endswith("split test")
    # other split names (UltraFeedback's train_prefs/test_prefs)
    DatasetDict({"train_prefs": Dataset.from_list(rows("tr", 4)), "test_prefs": Dataset.from_list(rows("te", 1))}
                ).save_to_disk(str(tmp_path / "uf"))
    cfg = load_config(overrides=[f"data.pairs_path={tmp_path / 'uf'}", "data.train_split=train_prefs",
                                 "data.eval_split=test_prefs"])
    train, held, _ = pair_sets(cfg)
    assert len(train) == 4 and [r["prompt"] for r in held] == ["te0"]
    with pytest.raises(DataError, match=r"uf: no split 'train': the dataset has splits \['test_prefs', 'train_prefs'\]; "
                                        r"choose one with data.train_split"):
        pair_sets(load_config(overrides=[f"data.pairs_path={tmp_path / 'uf'}"]))


# loads a dataset by name from a cache populated here, in a fresh interpreter: the datasets
# library reads HF_DATASETS_CACHE and the offline switches when it is imported
NAME_SCRIPT = r"""
import json, os, shutil, sys
from pathlib import Path
cache, src = Path(sys.argv[1]), Path(sys.argv[2])
import datasets
datasets.load_dataset(str(src))  # what a first, online load_dataset("varpo-test/tiny-prefs") leaves in the cache
(cache / "tiny-prefs").rename(cache / "varpo-test___tiny-prefs")
"""


def test_dataset_by_name_from_the_hf_cache_offline(tmp_path):
    src = tmp_path / "tiny-prefs"
    src.mkdir()
    jsonl(src / "train.jsonl", [{"chosen": [user("what is the sky"), assistant("blue")],
                                 "rejected": [user("what is the sky"), assistant("red")]}] * 3)
    jsonl(src / "test.jsonl", [{"chosen": [user("and grass"), assistant("green")],
                                "rejected": [user("and grass"), assistant("red")]}])
    cache = tmp_path / "hf_datasets"
    env = {**os.environ, "HF_DATASETS_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    subprocess.run([sys.executable, "-c", NAME_SCRIPT, str(cache), str(src)], env=env, check=True, timeout=300,
                   capture_output=True)
    check = r"""
import sys
from varpo.config import load_config
from varpo.data.sets import pair_sets
from varpo.data.chat import ChatRenderer
from transformers import PreTrainedTokenizerFast
cfg = load_config(overrides=["data.pairs_path=varpo-test/tiny-prefs"])
class Tok:
    chat_template = "x"
    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return "|".join(m["content"] for m in messages) + "|>"
train, held, source = pair_sets(cfg, ChatRenderer(Tok()))
print(len(train), train[0]["prompt"], train[0]["chosen"], held[0]["prompt"], source)
from varpo.data import load_pairs, DataError
try:
    load_pairs("varpo-test/not-cached")
except DataError as e:
    print("ERR", e)
"""
    proc = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "3 what is the sky|> blue and grass|> varpo-test/tiny-prefs split test"
    assert lines[1].startswith("ERR varpo-test/not-cached: no such file or folder, and no dataset of that name in "
                               "the Hugging Face datasets cache")
