"""Prompt sets and preference-pair sets from user data, validated row by row.

Rows come in the formats TRL names (https://huggingface.co/docs/trl/dataset_formats):
- standard: strings. Pairs {"prompt", "chosen", "rejected"}; with an implicit prompt (no prompt
  value: HH-RLHF's rows) the prompt is the shared start of chosen and rejected, cut after the last
  "\\n\\nAssistant:" in it (HH-RLHF's turn marker) or else at a word boundary, and each response
  is the rest.
- conversational: lists of {"role", "content"} messages. A prompt (or a multi-turn conversation
  that ends before the assistant's turn) is rendered with the policy's (or reward backbone's) chat
  template (varpo.data.chat); for pairs, chosen and rejected are the assistant's reply alone
  ([{"role": "assistant", ...}]) with the prompt in its own column, or whole conversations that
  share the prompt as their first messages (UltraFeedback's layout; the prompt column, if any, is
  then not needed). The responses are the replies' text.
One file holds one format (a mix is an error naming the first row that differs).

A row is bad when it cannot be read (invalid JSON, not an object), when a needed field is missing
or null, of the wrong type, or empty (whitespace only), when a conversation is malformed, or, for
pairs, when chosen == rejected. By default the first bad row raises `DataError` naming the file,
the line/row and the field; with `skip_bad_rows=True` bad rows are dropped, counted and their
reasons kept in the result.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from .chat import ChatRenderer, as_messages, check_messages, is_conversation, shared_prefix
from .readers import Broken, DataError, read_records

T = TypeVar("T")
PAIR_FIELDS = ("prompt", "chosen", "rejected")
HH_ASSISTANT = "\n\nAssistant:"  # HH-RLHF's marker of the assistant's turn


@dataclass
class LoadResult(Generic[T]):
    """The good rows of a file, and what was skipped (count and one reason per skipped row)."""

    path: str
    rows: list[T]
    skipped: int = 0
    reasons: list[str] = field(default_factory=list)
    conversational: bool = False  # rows were message lists, rendered with a chat template

    def __len__(self) -> int:
        return len(self.rows)


def _field_name(column: str, canonical: str) -> str:
    return repr(column) if column == canonical else f"{column!r} ({canonical})"


def _text(record: dict, column: str, canonical: str, path, loc: str, messages_ok: bool = False):
    """The field's string, or (messages_ok) its message list; DataError otherwise."""
    name = _field_name(column, canonical)
    value = record.get(column)
    expected = "a non-empty string" + (" or a list of {role, content} messages" if messages_ok else "")
    if value is None:
        raise DataError(path, f"missing (expected {expected})", loc, name)
    if messages_ok and is_conversation(value):
        why = check_messages(value)
        if why:
            raise DataError(path, why, loc, name)
        return as_messages(value)
    if not isinstance(value, str):
        raise DataError(path, f"expected {expected}, got {type(value).__name__} {value!r:.40}", loc, name)
    if not value.strip():
        raise DataError(path, f"empty text (expected {expected})", loc, name)
    return value


def _load(path, columns: dict[str, str], parse, skip_bad_rows: bool, read_kw: dict,
          needed: list[str] | None = None) -> LoadResult:
    result = LoadResult(path=str(path), rows=[])
    kinds: dict[bool, str] = {}  # conversational? -> location of the first such row
    records = read_records(path, list(columns.values()) if needed is None else needed, **read_kw)
    for loc, record in records:
        try:
            if isinstance(record, Broken):
                raise DataError(path, record.reason, loc)
            row, conversational = parse(record, loc)
            kinds.setdefault(conversational, loc)
            if len(kinds) > 1:  # one file, one format: never skipped (the other rows are not bad)
                conv, plain = kinds[True], kinds[False]
                raise DataError(path, f"mixes conversational rows (lists of messages, first at {conv}) with "
                                      f"plain-text rows (first at {plain}); give one format per file")
            result.rows.append(row)
        except DataError as err:
            if not skip_bad_rows or "one format per file" in err.reason:
                raise
            result.skipped += 1
            result.reasons.append(str(err))
    if not result.rows:
        detail = f" (all {result.skipped} rows were bad; first: {result.reasons[0]})" if result.skipped else ""
        raise DataError(path, f"no usable rows{detail}")
    result.conversational = kinds.get(True) is not None
    if result.skipped:
        from ..outputs import console

        console.print(f"[yellow]warning:[/] {path}: skipped {result.skipped} bad row(s); first: {result.reasons[0]}",
                      highlight=False)
    return result


def _renderer(chat: ChatRenderer | None) -> ChatRenderer:
    return chat or ChatRenderer(lambda: None, "no tokenizer (this caller passed none)")


def load_prompts(path: str | Path, column: str = "prompt", skip_bad_rows: bool = False, *,
                 chat: ChatRenderer | None = None, **read_kw) -> LoadResult[str]:
    """Prompts from the `column` field of each row: strings as written, conversations (message
    lists ending before the assistant's turn) rendered by `chat` with its tokenizer's chat
    template. `read_kw`: split, config, split_field, single_split_ok (varpo.data.readers)."""
    chat = _renderer(chat)

    def parse(rec: dict, loc: str):
        value = _text(rec, column, "prompt", path, loc, messages_ok=True)
        if isinstance(value, str):
            return value, False
        if value[-1]["role"] == "assistant":
            raise DataError(path, "the conversation ends with an assistant message: a prompt ends before the "
                                  "assistant's turn (the policy writes it)", loc, _field_name(column, "prompt"))
        return chat.prompt(value, str(path)), True

    return _load(path, {"prompt": column}, parse, skip_bad_rows, read_kw)


def _implicit_prompt(chosen: str, rejected: str, path, loc: str, name: str) -> tuple[str, str, str]:
    """HH-RLHF rows: (prompt, chosen response, rejected response) from two texts sharing a start."""
    n = shared_prefix(chosen, rejected)
    head = chosen[:n]
    cut = head.rfind(HH_ASSISTANT)
    if cut >= 0:
        n = cut + len(HH_ASSISTANT)
    else:  # a word boundary, so neither response starts mid-word
        while n > 0 and not chosen[n - 1].isspace():
            n -= 1
    prompt, a, b = chosen[:n].rstrip(), chosen[n:].strip(), rejected[n:].strip()
    if not prompt.strip():
        raise DataError(path, "no prompt column, and chosen and rejected share no start to take as the prompt "
                              "(HH-RLHF rows both begin with the conversation; otherwise map your prompt column "
                              "with data.prompt_column)", loc, name)
    if not a or not b:
        raise DataError(path, "no prompt column, and one of chosen/rejected is the other's start: no response "
                              "is left after the shared prompt", loc, name)
    return prompt, a, b


def _reply(messages: list[dict], path, loc: str, name: str) -> str:
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        roles = [m["role"] for m in messages]
        raise DataError(path, f"after the prompt, expected one assistant message, got {roles or 'none'} (the "
                              "prompt's messages are the ones chosen and rejected share)", loc, name)
    return messages[0]["content"]


def load_pairs(path: str | Path, columns: dict[str, str] | None = None, skip_bad_rows: bool = False, *,
               chat: ChatRenderer | None = None, **read_kw) -> LoadResult[dict]:
    """Preference pairs as rows {"prompt", "chosen", "rejected"} of strings (conversational
    prompts rendered by `chat`); `columns` maps these names to the file's column names (missing
    keys keep the default name), e.g. {"chosen": "good", "rejected": "bad"}. A row without a
    prompt value takes the shared start of chosen and rejected (module doc). `read_kw`: split,
    config, split_field, single_split_ok (varpo.data.readers)."""
    unknown = set(columns or {}) - set(PAIR_FIELDS)
    if unknown:
        raise ValueError(f"load_pairs: unknown column key(s) {sorted(unknown)}; expected some of {list(PAIR_FIELDS)}")
    cols = {k: (columns or {}).get(k, k) for k in PAIR_FIELDS}
    names = {k: _field_name(c, k) for k, c in cols.items()}
    both = f"{names['chosen']}/{names['rejected']}"
    chat = _renderer(chat)

    def parse(rec: dict, loc: str):
        chosen = _text(rec, cols["chosen"], "chosen", path, loc, messages_ok=True)
        rejected = _text(rec, cols["rejected"], "rejected", path, loc, messages_ok=True)
        has_prompt = rec.get(cols["prompt"]) is not None
        prompt = _text(rec, cols["prompt"], "prompt", path, loc, messages_ok=True) if has_prompt else None
        conversational = any(isinstance(v, list) for v in (prompt, chosen, rejected))
        if not conversational:
            if prompt is None:
                prompt, chosen, rejected = _implicit_prompt(chosen, rejected, path, loc, both)
            row = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
        else:
            for key, v in (("chosen", chosen), ("rejected", rejected)):
                if isinstance(v, str):
                    raise DataError(path, "a plain string beside conversational fields: give chosen and rejected "
                                          "as message lists too", loc, names[key])
            if chosen == rejected:
                raise DataError(path, "chosen and rejected are identical (a pair must differ)", loc, both)
            k = shared_prefix(chosen, rejected)
            if k:  # whole conversations: the prompt is what they share
                turns = chosen[:k]
            elif prompt is not None:
                turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
            else:
                raise DataError(path, "no prompt column, and chosen and rejected share no first messages to take "
                                      "as the prompt", loc, both)
            if turns[-1]["role"] == "assistant":
                raise DataError(path, "the prompt ends with an assistant message: chosen and rejected must differ "
                                      "from the assistant's first reply on", loc, both)
            row = {"prompt": chat.prompt(turns, str(path)),
                   "chosen": _reply(chosen[k:], path, loc, names["chosen"]),
                   "rejected": _reply(rejected[k:], path, loc, names["rejected"])}
        if row["chosen"] == row["rejected"]:
            raise DataError(path, "chosen and rejected are identical (a pair must differ)", loc, both)
        return row, conversational

    return _load(path, cols, parse, skip_bad_rows, read_kw, needed=[cols["chosen"], cols["rejected"]])


def load_responses(path: str | Path, prompt_column: str = "prompt", response_column: str = "response",
                   skip_bad_rows: bool = False, **read_kw) -> LoadResult[dict]:
    """Rows to score (`varpo score`): {"prompt", "response", "id", "location", "row"} where prompt
    is a string or a message list (rendered by whoever scores it), response a string (a reply given
    as [{"role": "assistant", ...}], or as a whole conversation whose last message is the reply,
    is taken apart the same way as for pairs), id the row's optional "id", location where the row
    is, and row its original prompt and response values (kept in the output)."""
    pname, rname = _field_name(prompt_column, "prompt"), _field_name(response_column, "response")

    def parse(rec: dict, loc: str):
        prompt = _text(rec, prompt_column, "prompt", path, loc, messages_ok=True)
        response = _text(rec, response_column, "response", path, loc, messages_ok=True)
        original = {"prompt": rec[prompt_column], "response": rec[response_column]}
        if isinstance(response, list):
            turns = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            k = shared_prefix(turns, response)
            response = _reply(response[k:], path, loc, rname)
        if isinstance(prompt, list) and prompt[-1]["role"] == "assistant":
            raise DataError(path, "the conversation ends with an assistant message: the response answers the "
                                  "prompt's last turn", loc, pname)
        row = {"prompt": prompt, "response": response, "id": rec.get("id"), "location": loc, "row": original}
        return row, isinstance(prompt, list)

    return _load(path, {"prompt": prompt_column, "response": response_column}, parse, skip_bad_rows, read_kw)
