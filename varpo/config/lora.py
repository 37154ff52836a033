"""LoRA adapters (peft), the one section every model that can train adapters configures:
`model.lora` (the PPO actor and critic) and `reward_training.lora` (the reward ensemble's
backbones) extend it with what only they need."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from .core import Section

LoraTargets = list[str] | Literal["auto", "all-linear"]


class LoraConfig(Section):
    """Adapters on a frozen base: the update of each adapted weight is (alpha / r)·B·A, B starting
    at zero (so the adapted model starts as the base)."""

    enabled: bool = Field(False, description="train LoRA adapters instead of all the weights")
    r: int = Field(8, ge=1, description="adapter rank")
    alpha: int = Field(16, ge=1, description="scaling numerator: the update is (alpha / r)·B·A")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="adapter dropout")
    target_modules: LoraTargets = Field(
        "auto", description="module names to adapt; auto: peft's per-architecture choice (the attention's query and "
        "value projections: q_proj, v_proj for Llama, Qwen2, Mistral; c_attn for GPT-2), all-linear for an "
        "architecture peft has no entry for; all-linear: every linear layer but a causal LM's output head")
