"""Interval LLM judges behind an OpenAI-compatible endpoint. Owned by varpo/judge; extend freely."""
from __future__ import annotations

from pydantic import Field

from .core import Section


class JudgeConfig(Section):
    api_key_env: str = Field("OPENAI_API_KEY", description="name of the environment variable holding the key")
