"""Reward sources and the reward-ensemble training. Owned by varpo/reward; extend freely."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from .core import Section


class RewardConfig(Section):
    type: Literal["ensemble", "judge", "gold"] = Field("ensemble", description="where (score, σ²) come from")
    path: str | None = Field(None, description="trained ensemble folder; None: train one on the testbed")


class RewardTrainingConfig(Section):
    num_heads: int = Field(10, ge=1, description="K linear heads on one backbone")
