"""Interval LLM judges behind OpenAI-compatible endpoints. Owned by varpo/judge; extend freely.

The API key is never part of the config: only the *name* of the environment variable holding it.
"""
from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from .core import Section


class JudgeEndpointConfig(Section):
    """One judge: an OpenAI-compatible chat-completions server and the model it serves."""

    base_url: str = Field(..., min_length=1, description="e.g. https://api.openai.com/v1 or http://localhost:8000/v1")
    model: str = Field(..., min_length=1, description="model name sent in each request")
    name: str | None = Field(None, description="label in statistics; None: 'model@base_url'")
    api_key_env: str | None = Field(None, description="env var with this judge's key; None: judge.api_key_env")

    @property
    def label(self) -> str:
        return self.name or f"{self.model}@{self.base_url}"


class JudgeConfig(Section):
    judges: list[JudgeEndpointConfig] = Field(
        default_factory=list, description="every sample is scored by every judge (combined by judge.combine)"
    )
    api_key_env: str = Field("OPENAI_API_KEY", min_length=1, description="name of the environment variable holding the key")
    bounds: tuple[float, float] = Field((0.0, 10.0), description="[lo, hi]: the judge's interval must lie inside")
    template: str | None = Field(None, description="Jinja prompt template file (vars: prompt, response, lo, hi); None: the packaged default")
    concurrency: int = Field(8, ge=1, description="requests in flight at once, per judge")
    timeout: float = Field(60.0, gt=0, description="seconds per request before it counts as timed out (then retried)")
    max_retries: int = Field(5, ge=0, description="retries per request on 429, 408/409, 5xx, timeouts, dropped connections")
    backoff_base: float = Field(0.5, ge=0, description="first retry delay in seconds; doubles per retry (with jitter)")
    backoff_max: float = Field(30.0, ge=0, description="cap of the exponential backoff delay in seconds")
    max_retry_after: float = Field(120.0, ge=0, description="longest server-requested Retry-After honoured (longer: capped)")
    max_reasks: int = Field(2, ge=0, description="re-ask an unparseable/out-of-bounds answer this many times")
    on_invalid: Literal["fail", "drop"] = Field(
        "fail", description="after the re-asks: fail (error naming the sample) or drop the sample (valid=False, counted)"
    )
    combine: Literal["mixture", "average"] = Field(
        "mixture",
        description="several judges: mixture = reward from the equal mixture of the U[a_j, b_j] (variance adds the "
        "judges' disagreement); average = U[mean a_j, mean b_j]",
    )
    cache: str | None = Field(
        "~/.cache/varpo/judge.sqlite", description="SQLite answer cache (shared by runs and processes); null disables"
    )
    seed: int = Field(0, description="seed of the U[a, b] draws (per sample, independent of request order)")
    temperature: float = Field(0.0, ge=0, description="sampling temperature sent to the judge")
    max_tokens: int = Field(256, ge=1, description="max tokens of a judge's answer")

    @field_validator("bounds")
    @classmethod
    def _bounds_ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"expected finite [lo, hi] with lo < hi, got [{lo}, {hi}]")
        return v

    @model_validator(mode="after")
    def _unique_labels(self) -> JudgeConfig:
        labels = [j.label for j in self.judges]
        dup = {x for x in labels if labels.count(x) > 1}
        if dup:
            raise ValueError(f"judges: duplicate judge {sorted(dup)} (give each a distinct 'name')")
        return self
