"""Policy populations and their statistics. Owned by varpo/evaluation; extend freely."""
from __future__ import annotations

from pydantic import Field

from .core import Section


class EvaluationConfig(Section):
    num_eval_prompts: int = Field(64, ge=1, description="evaluation prompts per policy")
