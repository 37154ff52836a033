"""Conversational rows: lists of {"role", "content"} messages (TRL's conversational format, what
UltraFeedback-style datasets hold), checked and rendered with a tokenizer's chat template.

A rendered prompt is a `ChatText`: a str that also says "a chat template wrote me", so that code
tokenizing it adds no special tokens of its own (the template wrote them) and joins a response to
it with no separator (the template's generation prompt already ends where the assistant's turn
starts). Everything else treats it as the string it is (JSON, logs, judges)."""
from __future__ import annotations

from ..config.core import ConfigError

ROLES = ("system", "user", "assistant", "tool")


class ChatText(str):
    """Text written by a chat template (a rendered prompt, ending with the generation prompt)."""

    __slots__ = ()


def is_chat_text(text) -> bool:
    return isinstance(text, ChatText)


def is_conversation(value) -> bool:
    """A list whose items are mappings: meant as messages (whether valid is `check_messages`'s job)."""
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(isinstance(m, dict) for m in value)


def check_messages(value) -> str | None:
    """Why `value` is not a valid message list, or None when it is."""
    if not is_conversation(value):
        return "expected a list of {role, content} messages"
    for i, m in enumerate(value):
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str) or role not in ROLES:
            return f"message {i}: role must be one of {', '.join(ROLES)}, got {role!r:.40}"
        if not isinstance(content, str):
            return f"message {i}: content must be a string, got {type(content).__name__}"
        if not content.strip() and role != "system":
            return f"message {i} ({role}): empty content"
    return None


def as_messages(value) -> list[dict]:
    """Messages with only role and content (datasets add None for keys other rows have)."""
    return [{"role": m["role"], "content": m["content"]} for m in value]


def shared_prefix(a: list, b: list) -> int:
    """Length of the longest common prefix of two sequences (messages or characters)."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class NoChatTemplate(ConfigError):
    """The tokenizer has no chat template, and one is needed (a ConfigError: the CLI says it in a line)."""


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer, messages: list[dict]) -> ChatText:
    """The prompt messages through the tokenizer's chat template, ending with the assistant's
    generation prompt (what the policy continues)."""
    if not has_chat_template(tokenizer):
        raise NoChatTemplate("the tokenizer has no chat template")
    return ChatText(tokenizer.apply_chat_template(as_messages(messages), tokenize=False, add_generation_prompt=True))


def transcript(messages: list[dict]) -> str:
    """A conversation as plain text ("role: content" per message), for readers with no tokenizer
    (LLM judges)."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


class ChatRenderer:
    """Renders conversational prompts with one tokenizer's chat template, loading the tokenizer
    only when a conversational row turns up. `source` names where the tokenizer comes from (a
    config field and its path), for the error when it has no template."""

    def __init__(self, tokenizer_or_loader, source: str = "the tokenizer"):
        self._tok, self.source = tokenizer_or_loader, source

    @property
    def tokenizer(self):
        if callable(self._tok) and not hasattr(self._tok, "apply_chat_template"):
            self._tok = self._tok()
        return self._tok

    def prompt(self, messages: list[dict], where: str) -> ChatText:
        tok = self.tokenizer
        if not has_chat_template(tok):
            # not a bad row (skipping would drop them all): the tokenizer is what must change
            raise NoChatTemplate(f"{where}: conversational rows (lists of role/content messages) are rendered with the "
                              f"chat template of {self.source}, and that tokenizer has none; name a tokenizer "
                              "that has one (model.tokenizer_path), or give plain-text rows")
        return render_prompt(tok, messages)
