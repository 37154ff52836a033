"""Reward sources (what PPO is scored by) and the training of the multi-head reward ensemble."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from .core import Section


class RewardConfig(Section):
    type: Literal["ensemble", "judge", "gold"] = Field("ensemble", description="where (score, σ²) come from")
    path: str | None = Field(None, description="trained ensemble folder; None: the embedded task's default ensemble")
    aggregation: Literal["mean", "median", "min", "mean_minus_var", "mean_minus_std"] = Field(
        "mean", description="score s from the K head rewards: mean (the paper), median, min (worst case), "
        "mean − λ·var, or mean − k·std (lower confidence bound)",
    )
    lam: float = Field(1.0, ge=0.0, description="λ of mean_minus_var")
    k: float = Field(1.0, ge=0.0, description="k of mean_minus_std")
    ddof: int = Field(1, ge=0, description="σ² = variance over heads with this delta degrees of freedom (1: sample variance)")
    batch_size: int = Field(64, ge=1, description="texts per reward-model forward")
    max_length: int = Field(96, ge=2, description="tokens of prompt+response scored (longer texts keep their end)")


class LoraConfig(Section):
    # on by default: the embedded testbed LM is too small for its frozen features to separate the
    # pairs linearly (measured: a fully converged logistic probe on frozen last-token states reaches
    # 0.57 held-out accuracy; LoRA + heads reach 0.75, with the label noise capping it near 0.8)
    enabled: bool = Field(True, description="train LoRA adapters on the backbone (False: the backbone stays frozen, only the heads train)")
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["auto", "all-linear"] = Field(
        "auto", description="module names to adapt; auto: peft's per-architecture choice (the attention's query and "
        "value projections: q_proj, v_proj for Llama, Qwen2, Mistral; c_attn for GPT-2), all-linear for an "
        "architecture peft has no entry for; all-linear: every linear layer of the backbone")


class RewardTrainingConfig(Section):
    backbone_path: str | None = Field(None, description="HF folder of the backbone; None: the testbed LM")
    num_heads: int = Field(10, ge=1, description="K linear heads on one backbone")
    pooling: Literal["last", "mean"] = Field("mean", description="head input: the last non-padding token's hidden state (the paper's), or the mean over non-padding tokens (better on the tiny testbed LM: 0.76 vs 0.70 held-out accuracy)")
    head_seed: int = Field(0, description="head k is initialised from seed head_seed + k")
    bootstrap: bool = Field(True, description="each head sees its own bootstrap resample of the pairs")
    lr: float = Field(1e-2, gt=0.0, description="AdamW learning rate of the heads (and LoRA adapters)")
    weight_decay: float = Field(0.0, ge=0.0)
    epochs: int = Field(2, ge=1, description="passes over the training pairs")
    batch_size: int = Field(64, ge=1, description="pairs per optimizer step, global across ranks")
    max_length: int = Field(96, ge=2, description="tokens per text; longer prompt+response pairs lose the prompt's start (counted)")
    eval_every: int = Field(25, ge=1, description="optimizer steps between evaluations on held-out pairs")
    early_stopping_patience: int = Field(0, ge=0, description="stop after this many evaluations without improvement of early_stopping_metric (0: off); the best heads are kept")
    early_stopping_metric: Literal["accuracy", "loss"] = Field("accuracy", description="held-out ensemble-mean accuracy (higher is better) or Bradley–Terry loss (lower)")
    eval_batch_size: int = Field(128, ge=1, description="pairs per forward while evaluating")
    checkpoint_every: int = Field(0, ge=0, description="optimizer steps between DeepSpeed checkpoints under OUT/checkpoints (0: only at the end)")
    resume: bool = Field(True, description="continue from OUT/checkpoints when a previous run left one")
    separator: str = Field(" ", description="scored text = prompt + separator + response (saved with the model, used by the scorer)")
    max_train_pairs: int | None = Field(None, ge=1, description="use at most this many training pairs (a limited budget makes heads disagree)")
    lora: LoraConfig = LoraConfig()
