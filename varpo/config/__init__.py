"""One configuration schema for every varpo command (see `varpo config show`)."""
from __future__ import annotations

from pydantic import Field

from .core import ConfigError, Section, build_config, config_hash, redacted_dict, save_resolved
from .data import DataConfig
from .deepspeed import DeepSpeedConfig, RoleEngineConfig
from .evaluation import EvaluationConfig
from .judge import JudgeConfig
from .kernels import KernelsConfig
from .ppo import GenerationConfig, KLConfig, ModelConfig, PPOConfig, VarianceWeightConfig, VLLMConfig
from .reward import RewardConfig, RewardTrainingConfig
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
    kernels: KernelsConfig = KernelsConfig()
    evaluation: EvaluationConfig = EvaluationConfig()


def load_config(path=None, overrides=None) -> VarpoConfig:
    return build_config(VarpoConfig, path, overrides)


__all__ = [
    "ConfigError", "Section", "VarpoConfig", "build_config", "config_hash", "load_config",
    "redacted_dict", "save_resolved", "DataConfig", "DeepSpeedConfig", "RoleEngineConfig",
    "EvaluationConfig", "JudgeConfig", "KernelsConfig", "GenerationConfig", "KLConfig", "ModelConfig",
    "PPOConfig", "VarianceWeightConfig", "VLLMConfig", "RewardConfig", "RewardTrainingConfig", "TestbedConfig",
]
