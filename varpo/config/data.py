"""User-supplied prompt and preference-pair sets. Owned by varpo/data; extend freely."""
from __future__ import annotations

from pydantic import Field

from .core import Section


class DataConfig(Section):
    prompts_path: str | None = Field(None, description="prompt file or dataset folder; None: the testbed's prompts")
    skip_bad_rows: bool = Field(False, description="skip malformed rows (and report how many) instead of failing")
