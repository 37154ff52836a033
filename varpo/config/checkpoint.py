"""Checkpoints of the PPO and reward trainers (varpo.checkpoint): how many are kept, how they are checked."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from .core import Section


class CheckpointConfig(Section):
    keep_last: int = Field(2, ge=1, description="complete checkpoints kept per run; older ones are deleted after each save")
    verify: Literal["sha256", "size"] = Field(
        "sha256", description="what a checkpoint's manifest records and resume checks: each file's size and SHA-256 "
        "(catches any corruption; reads every byte at save and resume), or its size only (truncation and "
        "missing files; for checkpoints too large to hash)")
