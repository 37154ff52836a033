"""The embedded default task (DESIGN.md §3). Owned by varpo/testbed; extend freely."""
from __future__ import annotations

from pydantic import Field

from .core import Section


class TestbedConfig(Section):
    __test__ = False  # not a pytest class

    seed: int = Field(0, description="seed of everything the testbed generates")
    cache_dir: str | None = Field(None, description="where built testbeds are cached; None: $VARPO_CACHE or ~/.cache/varpo")
