"""The judge prompt: a Jinja template file rendered with prompt, response, lo and hi."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import jinja2

from ..config import ConfigError

DEFAULT_TEMPLATE = "interval.jinja"


@dataclass(frozen=True)
class PromptTemplate:
    text: str
    source: str  # file path or package resource, for error messages
    sha256: str  # part of the cache key: editing the template invalidates cached answers

    def render(self, prompt: str, response: str, lo: float, hi: float) -> str:
        env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)
        try:
            return env.from_string(self.text).render(prompt=prompt, response=response, lo=_fmt(lo), hi=_fmt(hi)).strip()
        except jinja2.TemplateError as exc:
            raise ConfigError(f"judge.template {self.source}: cannot render ({exc}); variables: prompt, response, lo, hi") from None


def _fmt(x: float) -> str:
    return f"{x:g}"


def load_template(path: str | None) -> PromptTemplate:
    """The template file at `path`, or the packaged default (varpo/judge/templates/interval.jinja)."""
    if path is None:
        text = resources.files("varpo.judge").joinpath("templates", DEFAULT_TEMPLATE).read_text()
        source = f"<packaged {DEFAULT_TEMPLATE}>"
    else:
        p = Path(path).expanduser()
        if not p.is_file():
            raise ConfigError(f"judge.template: file not found: {p}")
        text, source = p.read_text(), str(p)
    try:
        jinja2.Environment().parse(text)
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"judge.template {source}:{exc.lineno}: not a valid Jinja template ({exc.message})") from None
    return PromptTemplate(text=text, source=source, sha256=hashlib.sha256(text.encode()).hexdigest())
