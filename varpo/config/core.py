"""Typed configuration core: strict sections, YAML loading, dotted overrides, readable errors.

Every section is a pydantic model that forbids unknown keys, so a typo in a YAML file or on the
command line fails before any work starts, naming the field's dotted path and what was expected.
"""
from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError, ValidationInfo, field_validator

T = TypeVar("T", bound=BaseModel)


def wants_number(annotation) -> bool:
    """Whether a field of this type takes a number and no boolean (int, float, a Literal of numbers,
    optionally None), so that YAML's `yes`/`on`/`true` cannot silently become 1."""
    if annotation is bool:
        return False
    if annotation in (int, float):
        return True
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return any(isinstance(a, (int, float)) for a in args) and not any(isinstance(a, bool) for a in args)
    if origin in (Union, types.UnionType):
        return bool not in args and any(wants_number(a) for a in args)
    return False


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are re-validated,
    numbers must be finite (inf/nan would only fail deep inside a run) and a YAML boolean is not
    accepted where a number belongs (pydantic would read `beta: yes` as 1.0)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_for_a_number(cls, value, info: ValidationInfo):
        if isinstance(value, bool) and wants_number(cls.model_fields[info.field_name].annotation):
            raise ValueError(f"expected a number, got the boolean {str(value).lower()} (in YAML, yes/no/on/off/"
                             "true/false are booleans)")
        return value


class ConfigError(ValueError):
    """A configuration problem, already phrased for the user (source, field path, expectation)."""


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see `varpo config show` for the schema)"
        given = e.get("input")
        shown = "" if e["type"] in ("extra_forbidden", "missing") else f" (got {given!r})"
        lines.append(f"  {path}: {msg}{shown}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`ppo.kl.beta=0.05` -> (["ppo", "kl", "beta"], 0.05); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE with a dotted key, e.g. ppo.lr=1e-5")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from None
    return parts, value


def _set_dotted(tree: dict, parts: list[str], value: Any, origin: str) -> None:
    node = tree
    for i, p in enumerate(parts[:-1]):
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {origin!r}: {'.'.join(parts[: i + 1])} is a value, not a section")
        node = nxt
    node[parts[-1]] = value


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
                          "expected a YAML config file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(data).__name__}")
    return data


def build_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Load `cls` from an optional YAML file plus dotted `KEY=VALUE` overrides, strictly validated."""
    tree: dict = load_yaml(path) if path else {}
    for text in overrides or []:
        parts, value = parse_override(text)
        _set_dotted(tree, parts, value, text)
    source = str(path) if path else "defaults"
    if overrides:
        source += " + overrides " + " ".join(overrides)
    try:
        return cls.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def redacted_dict(cfg: BaseModel | dict) -> dict:
    """Plain JSON-able dict of the config (or of a dict holding sections) with every secret
    replaced by a marker."""

    def walk(obj: Any) -> Any:
        if isinstance(obj, SecretStr):
            return "**********" if obj.get_secret_value() else ""
        if isinstance(obj, BaseModel):
            return {k: walk(getattr(obj, k)) for k in type(obj).model_fields}
        if isinstance(obj, dict):
            return {k: walk(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [walk(v) for v in obj]
        if isinstance(obj, Path):
            return str(obj)
        return obj

    return walk(cfg)


def save_resolved(cfg: BaseModel, out_dir: str | Path, name: str = "config.yaml") -> Path:
    """Write the fully resolved config (secrets redacted) beside a run's outputs."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    path.write_text(yaml.safe_dump(redacted_dict(cfg), sort_keys=False))
    return path


CONFIG_HASH_LENGTH = 16  # hex characters: every cache key varpo derives from a config


def config_hash(section: BaseModel | dict) -> str:
    """Stable short hash of a section (or a dict of sections), used to key caches (rebuild only
    when the config changes)."""
    import hashlib

    blob = json.dumps(redacted_dict(section), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:CONFIG_HASH_LENGTH]


def _choices(annotation) -> list:
    """The values a Literal field (possibly inside Optional) allows, else []."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return list(args)
    if origin in (Union, types.UnionType):
        return [c for a in args for c in _choices(a)]
    return []


def documented_yaml(cfg: BaseModel, width: int = 100) -> str:
    """The config as YAML with each field's description (and allowed values) as comments above
    it, secrets redacted: what `varpo config show --doc` prints. Loading it back gives `cfg`."""
    import textwrap

    values = redacted_dict(cfg)
    lines: list[str] = []

    def comment(text: str, indent: str) -> None:
        for ln in textwrap.wrap(" ".join(text.split()), width - len(indent) - 2, break_on_hyphens=False,
                                break_long_words=False):
            lines.append(f"{indent}# {ln}")

    def walk(model: BaseModel, vals: dict, indent: str) -> None:
        for name, f in type(model).model_fields.items():
            sub = getattr(model, name)
            doc = f.description or ""
            if isinstance(sub, BaseModel):
                doc = doc or (type(sub).__doc__ or "")
                if doc:
                    comment(doc, indent)
                lines.append(f"{indent}{name}:")
                walk(sub, vals[name], indent + "  ")
                continue
            choices = _choices(f.annotation)
            if choices:
                doc = (doc + "; " if doc else "") + "one of " + ", ".join(map(str, choices))
            if doc:
                comment(doc, indent)
            text = yaml.safe_dump({name: vals[name]}, default_flow_style=True, width=10**6).strip()
            lines.append(indent + text[1:-1].strip())  # {key: value} without the braces

    walk(cfg, values, "")
    return "\n".join(lines) + "\n"
