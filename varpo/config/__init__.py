"""One configuration schema for every varpo command (see `varpo config show`)."""
from __future__ import annotations

from pydantic import Field, model_validator

from .checkpoint import CheckpointConfig
from .core import (
    ConfigError,
    Section,
    build_config,
    config_hash,
    documented_yaml,
    redacted_dict,
    save_resolved,
)
from .data import DataConfig
from .deepspeed import DeepSpeedConfig, RoleEngineConfig
from .evaluation import EvaluationConfig
from .judge import JudgeConfig
from .kernels import KernelsConfig
from .ppo import (
    GenerationConfig,
    KLConfig,
    ModelConfig,
    ModelLoraConfig,
    PackingConfig,
    PPOConfig,
    QuantizationConfig,
    VarianceWeightConfig,
    VLLMConfig,
)
from .reward import RewardConfig, RewardTrainingConfig
from .runtime import RuntimeConfig
from .testbed import TestbedConfig


class VarpoConfig(Section):
    seed: int = Field(0, description="seed of the run (policy init, sampling, data order)")
    testbed: TestbedConfig = TestbedConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    reward: RewardConfig = RewardConfig()
    reward_training: RewardTrainingConfig = RewardTrainingConfig()
    judge: JudgeConfig = JudgeConfig()
    ppo: PPOConfig = PPOConfig()
    generation: GenerationConfig = GenerationConfig()
    deepspeed: DeepSpeedConfig = DeepSpeedConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    kernels: KernelsConfig = KernelsConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    @model_validator(mode="after")
    def _quantized_roles_not_zero3(self):
        # bitsandbytes keeps 4-bit weights packed in uint8 tensors with their quantization state
        # beside them; ZeRO-3 would flatten and partition those bytes and lose that state
        if self.model.quantization.load_in_4bit:
            bad = [r for r in ("actor", "critic", "reference") if self.deepspeed.stage_of(r) == 3]
            if bad:
                raise ValueError(f"model.quantization.load_in_4bit=true with ZeRO-3 for {', '.join(bad)}: 4-bit "
                                 "bases are not partitioned; use deepspeed.zero_stage 0-2 for those roles (stage 2 "
                                 "shards the adapters' gradients and optimizer states)")
        return self


    @model_validator(mode="after")
    def _variance_weighting_needs_a_variance(self):
        # one reward model gives σ² = 0 everywhere: batch_mean/running_mean would divide 0 by ~0 and
        # weight every KL penalty by 0, raw would drop it outright
        if self.reward.type == "sequence_classifier" and self.ppo.variance.weighting != "none":
            raise ValueError(f"ppo.variance.weighting={self.ppo.variance.weighting} with reward.type="
                             "sequence_classifier: one reward model gives σ² = 0, so every KL penalty would be "
                             "weighted by 0; use weighting=none, or train heads on the model (varpo train-rm --set "
                             "reward_training.backbone_path=...) for a σ²")
        return self


def load_config(path=None, overrides=None) -> VarpoConfig:
    return build_config(VarpoConfig, path, overrides)


__all__ = [
    "CheckpointConfig", "ConfigError", "Section", "VarpoConfig", "build_config", "config_hash", "documented_yaml",
    "load_config",
    "redacted_dict", "save_resolved", "DataConfig", "DeepSpeedConfig", "RoleEngineConfig",
    "EvaluationConfig", "JudgeConfig", "KernelsConfig", "GenerationConfig", "KLConfig", "ModelConfig",
    "PackingConfig", "PPOConfig", "VarianceWeightConfig", "VLLMConfig", "WandbConfig", "ModelLoraConfig", "QuantizationConfig",
    "RewardConfig", "RewardTrainingConfig", "RuntimeConfig", "TestbedConfig",
]
