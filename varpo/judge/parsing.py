"""Reading an interval [a, b] out of a judge's free-text answer, and validating it.

Accepted forms (first match wins): a JSON object {"low": a, "high": b} (bare, inside a ```json
fence, or embedded in prose), a JSON list [a, b], or the text "[a, b]". A reasoning model's
<think>...</think> block is ignored. Validation: finite numbers with lo <= a <= b <= hi.
"""
from __future__ import annotations

import json
import math
import re

_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
_OBJECT = re.compile(r"\{[^{}]*\}", re.DOTALL)
_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_PAIR = re.compile(rf"\[\s*({_NUM})\s*,\s*({_NUM})\s*\]")


class InvalidAnswer(ValueError):
    """The answer holds no usable interval; the message says why (it is sent back on a re-ask)."""


def _number(v, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        if isinstance(v, str):
            try:
                return float(v)
            except ValueError:
                pass
        raise InvalidAnswer(f"'{name}' must be a number, got {v!r}")
    return float(v)


def _from_json(obj) -> tuple[float, float] | None:
    if isinstance(obj, dict):
        keys = {str(k).lower(): v for k, v in obj.items()}
        if "low" in keys and "high" in keys:
            return _number(keys["low"], "low"), _number(keys["high"], "high")
        raise InvalidAnswer('expected the keys "low" and "high"')
    if isinstance(obj, list) and len(obj) == 2:
        return _number(obj[0], "low"), _number(obj[1], "high")
    return None


def _try_json(text: str) -> tuple[float, float] | None:
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return None
    return _from_json(obj)


def extract_interval(text: str) -> tuple[float, float]:
    """The (a, b) the answer states, not yet checked against the bounds. Raises InvalidAnswer."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidAnswer("empty answer")
    body = _THINK.sub("", text).strip()
    candidates = [m.group(1).strip() for m in _FENCE.finditer(body)] + [body]
    for cand in candidates:
        got = _try_json(cand)
        if got is not None:
            return got
        for m in _OBJECT.finditer(cand):
            got = _try_json(m.group(0))
            if got is not None:
                return got
    m = _PAIR.search(body)
    if m:
        return float(m.group(1)), float(m.group(2))
    raise InvalidAnswer('no interval found; expected JSON like {"low": a, "high": b}')


def validate_interval(a: float, b: float, lo: float, hi: float) -> tuple[float, float]:
    """Check finite lo <= a <= b <= hi; raise InvalidAnswer naming the violated condition."""
    if not (math.isfinite(a) and math.isfinite(b)):
        raise InvalidAnswer(f"low and high must be finite, got [{a}, {b}]")
    if a > b:
        raise InvalidAnswer(f"low must not exceed high, got [{a}, {b}]")
    if a < lo or b > hi:
        raise InvalidAnswer(f"the interval must lie within [{lo:g}, {hi:g}], got [{a:g}, {b:g}]")
    return a, b


def parse_interval(text: str, lo: float, hi: float) -> tuple[float, float]:
    """extract_interval + validate_interval."""
    a, b = extract_interval(text)
    return validate_interval(a, b, lo, hi)
