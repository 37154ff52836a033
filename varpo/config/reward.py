"""Reward sources (what PPO is scored by) and the training of the multi-head reward ensemble."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .core import Section
from .lora import LoraConfig
from .remote_reward import RemoteRewardConfig


class OracleConfig(Section):
    """reward.type=oracle: the testbed's gold plus noise of a known σ² (Assumption 2.1 made true);
    see varpo/reward/oracle.py for the formula."""
    sigma_min: float = Field(0.03, gt=0.0, description="noise std of responses with no net sentiment (c = 0)")
    sigma_max: float = Field(0.6, gt=0.0, description="noise std from |c| = overopt_threshold + 1 on (off the data's support)")
    noise_seed: int | None = Field(None, description="which draw of the noisy reward; None: the run's seed (every "
                                   "policy of a population faces its own draw, as if from its own reward model)")


class RewardConfig(Section):
    type: Literal["ensemble", "judge", "gold", "oracle", "sequence_classifier", "remote"] = Field(
        "ensemble", description="where (score, σ²) come from: a trained ensemble, interval judges, the testbed's "
        "gold (σ² = 0), the oracle (gold + noise with a known σ², reward.oracle), a Hugging Face "
        "sequence-classification reward model (reward.path: AutoModelForSequenceClassification with one label, as "
        "TRL's RewardTrainer writes it; one score, σ² = 0; for σ², train heads on it with varpo train-rm --set "
        "reward_training.backbone_path=...), or a reward server apart from the trainer (reward.remote)")
    oracle: OracleConfig = OracleConfig()
    remote: RemoteRewardConfig = RemoteRewardConfig()
    path: str | None = Field(None, description="type ensemble: a trained ensemble folder (varpo train-rm's "
                             "OUT/reward_model; None: the embedded task's default ensemble, refused with a policy "
                             "of your own); type sequence_classifier: the reward model's folder or cached name; "
                             "type remote: see reward.remote")
    aggregation: Literal["mean", "median", "min", "mean_minus_var", "mean_minus_std"] = Field(
        "mean", description="score s from the K head rewards: mean (the paper), median, min (worst case), "
        "mean − λ·var, or mean − k·std (lower confidence bound)",
    )
    lam: float = Field(1.0, ge=0.0, description="λ of mean_minus_var")
    k: float = Field(1.0, ge=0.0, description="k of mean_minus_std")
    ddof: int = Field(1, ge=0, description="σ² = variance over heads with this delta degrees of freedom (1: sample variance)")
    batch_size: int = Field(64, ge=1, description="texts per reward-model forward")
    max_length: int = Field(96, ge=2, description="tokens of prompt+response scored (longer texts keep their end)")

    @model_validator(mode="after")
    def _a_reward_model_needs_its_folder(self):
        if self.type == "sequence_classifier" and not self.path:
            raise ValueError("reward.type=sequence_classifier needs reward.path: the reward model's folder "
                             "(AutoModelForSequenceClassification, num_labels 1)")
        if self.type == "remote":
            self.remote.check(self.path)
        return self


class RewardLoraConfig(LoraConfig):
    # on by default: the embedded testbed LM is too small for its frozen features to separate the
    # pairs linearly (measured: a fully converged logistic probe on frozen last-token states reaches
    # 0.57 held-out accuracy; LoRA + heads reach 0.75, with the label noise capping it near 0.8)
    enabled: bool = Field(True, description="train LoRA adapters on the backbone (False: the backbone stays frozen, "
                          "only the heads train)")


class RewardTrainingConfig(Section):
    backbone_path: str | None = Field(None, description="HF folder of the backbone; None: the testbed LM")
    num_heads: int = Field(10, ge=1, description="K linear heads on one backbone")
    ensemble_kind: Literal["heads", "prior", "deep"] = Field(
        "heads", description="heads: K linear heads differing by seed (and bootstrap), the paper's; prior: each head "
        "plus prior_scale × a fixed random prior head of its own (randomized prior functions, Osband et al. 2018); "
        "deep: K members, each its own backbone (initialised from its own seed, deep_init) and head, trained on its "
        "own bootstrap (a deep ensemble, Lakshminarayanan et al. 2017)")
    deep_init: Literal["random", "pretrained"] = Field(
        "random", description="ensemble_kind=deep: each member's backbone drawn from its own seed with the "
        "backbone's architecture (random), or starting from the backbone's weights (pretrained)")
    backbone_lr: float | None = Field(None, gt=0.0, description="ensemble_kind=deep without LoRA: learning rate of "
                                      "the members' backbones (None: lr)")
    prior_scale: float = Field(1.0, ge=0.0, description="ensemble_kind=prior: weight of the random prior heads")
    standardize: bool = Field(False, description="after training, shift and scale each member to mean 0 and std 1 on "
                              "the held-out pairs' responses (reference samples), so σ² is not a difference of scales")
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
    separator: str = Field(" ", description="scored text = prompt + separator + response (saved with the model, used "
                           "by the scorer; also what a reward.type=sequence_classifier model is given); a prompt "
                           "rendered by a chat template takes no separator")
    max_train_pairs: int | None = Field(None, ge=1, description="use at most this many training pairs (a limited budget makes heads disagree)")
    lora: RewardLoraConfig = RewardLoraConfig()

    @model_validator(mode="after")
    def _deep_random_members_train_their_backbones(self):
        # LoRA on a randomly drawn backbone would train adapters over random features
        if self.ensemble_kind == "deep" and self.deep_init == "random" and self.lora.enabled:
            raise ValueError("reward_training.ensemble_kind=deep with deep_init=random trains each member's whole "
                             "backbone: set reward_training.lora.enabled=false (or deep_init=pretrained to put "
                             "LoRA adapters on pretrained members)")
        return self
