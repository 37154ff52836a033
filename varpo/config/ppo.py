"""PPO hyper-parameters (docs/design.md §1 "Variance-aware PPO") and rollout sampling knobs."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .core import Section


class KLConfig(Section):
    estimator: Literal["k1", "k2", "k3"] = Field("k1", description="per-token KL estimator in the shaped reward")
    beta: float = Field(0.1, ge=0.0, description="initial KL coefficient (β)")
    controller: Literal["fixed", "adaptive"] = Field("fixed", description="fixed β, or Ziegler et al.'s adaptive controller")
    target: float = Field(6.0, gt=0.0, description="adaptive controller: target KL per sequence (nats)")
    horizon: int = Field(10000, gt=0, description="adaptive controller: horizon in episodes")


class VarianceWeightConfig(Section):
    """w(x,y) multiplying each sequence's KL penalty; `none` is vanilla PPO."""

    weighting: Literal["none", "raw", "batch_mean", "running_mean"] = Field(
        "none", description="none: w=1 (vanilla); raw: w=σ²; batch_mean/running_mean: w=σ²/mean(σ²)"
    )
    floor: float | None = Field(None, ge=0.0, description="lower clamp of w")
    ceiling: float | None = Field(None, gt=0.0, description="upper clamp of w")
    running_momentum: float = Field(0.9, ge=0.0, lt=1.0, description="EMA momentum of the running mean of σ²")
    eps: float = Field(1e-8, gt=0.0, description="guards the division by the mean σ²")
    heterogeneity: float = Field(
        1.0, ge=0.0, allow_inf_nan=False,
        description="α (Table 4): scales the spread of log w by α, keeping the mean weight; 1: unchanged, "
        "0: w = 1 (vanilla), 2: exaggerated; before floor/ceiling; batch_mean/running_mean only "
        "(raw needs 1); exact form: varpo.ppo.core.variance_weights",
    )

    @model_validator(mode="after")
    def _floor_below_ceiling(self):
        if self.floor is not None and self.ceiling is not None and self.floor > self.ceiling:
            raise ValueError(f"floor ({self.floor}) must not exceed ceiling ({self.ceiling})")
        return self

    @model_validator(mode="after")
    def _heterogeneity_needs_a_scale(self):
        # raw σ² has units: (σ²)^α moves the mean weight arbitrarily, there is no mean to keep
        if self.weighting == "raw" and self.heterogeneity != 1.0:
            raise ValueError(f"heterogeneity ({self.heterogeneity}) must be 1 with weighting=raw; "
                             "use batch_mean or running_mean to scale the heterogeneity")
        return self


class PPOConfig(Section):
    steps: int = Field(20, ge=1, description="PPO iterations (rollout + update)")
    batch_size: int = Field(16, ge=1, description="prompts per iteration, global across ranks")
    mini_batch_size: int = Field(8, ge=1, description="sequences per optimizer step, global across ranks")
    ppo_epochs: int = Field(2, ge=1, description="passes over each rollout batch")
    actor_lr: float = Field(1e-5, gt=0.0)
    critic_lr: float = Field(1e-5, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    gamma: float = Field(1.0, ge=0.0, le=1.0, description="GAE discount")
    lam: float = Field(0.95, ge=0.0, le=1.0, description="GAE λ")
    clip_range: float = Field(0.2, gt=0.0, description="policy ratio clip ε")
    clip_range_value: float = Field(0.2, gt=0.0, description="value clip around the old values")
    vf_coef: float = Field(0.1, ge=0.0, description="value-loss weight (separate critic: scales its loss)")
    entropy_coef: float = Field(0.0, ge=0.0, description="entropy bonus weight")
    whiten_advantages: bool = True
    whiten_rewards: bool = False
    score_clip: float | None = Field(None, gt=0.0, description="clamp the score s to ±score_clip")
    missing_eos_penalty: float | None = Field(None, description="subtracted from s when a response has no EOS")
    kl: KLConfig = KLConfig()
    variance: VarianceWeightConfig = VarianceWeightConfig()
    checkpoint_every: int = Field(0, ge=0, description="save a resumable checkpoint every N steps (0: only at the end)")
    max_consecutive_bad_steps: int = Field(3, ge=1, description="non-finite steps in a row before the run stops")

    @model_validator(mode="after")
    def _minibatches_divide(self):
        if self.batch_size % self.mini_batch_size:
            raise ValueError(
                f"mini_batch_size ({self.mini_batch_size}) must divide batch_size ({self.batch_size})"
            )
        return self


class VLLMConfig(Section):
    """The colocated vLLM engine of generation.backend=vllm (one per rank; varpo.ppo.generation.vllm)."""

    gpu_memory_utilization: float = Field(
        0.3, gt=0.0, le=1.0, description="GPU: share of the device's memory vLLM may take for weights and KV "
        "cache; it shares the GPU with the trainer's engines (colocated), so keep it well below 1",
    )
    sleep_mode: bool = Field(
        True, description="GPU: put the engine to sleep after each rollout (KV cache freed, weights offloaded "
        "per sleep_level) and wake it for the next weight sync; CPU: vLLM has no sleep mode (ignored)",
    )
    sleep_level: Literal[1, 2] = Field(
        1, description="1: weights offloaded to host memory during the update; 2: weights discarded too "
        "(every step re-syncs all of them anyway, so level 2 saves the host copy)",
    )
    tensor_parallel_size: int = Field(
        1, ge=1, description="GPUs one engine spans (an actor that does not fit one GPU); needs a world of "
        "one trainer rank (per-rank engines spanning several trainer ranks are not implemented)",
    )
    sync_bucket_mb: float = Field(
        256.0, gt=0.0, description="weight sync: most MB of parameters gathered (ZeRO-3) and sent to the "
        "engine at once; whole transformer blocks only (a block larger than this goes alone)",
    )
    cpu_kvcache_gb: int = Field(1, ge=1, description="CPU: KV-cache size in GiB (VLLM_CPU_KVCACHE_SPACE)")
    enforce_eager: bool | None = Field(
        None, description="no CUDA graphs / torch.compile; None: True on CPU (compile time dominates tiny "
        "runs), False on GPU",
    )
    max_model_len: int | None = Field(None, ge=16, description="None: max_prompt_len + max_new_tokens")
    importance_correction: Literal["none", "tis"] = Field(
        "none", description="tis: truncated importance sampling, each token's policy-loss term weighted by "
        "min(π_trainer/π_vllm, tis_cap) (vLLM samples from a slightly different distribution than the "
        "trainer computes); none: no correction. The mismatch is logged either way",
    )
    tis_cap: float = Field(2.0, gt=0.0, description="truncation C of the importance weight (tis only)")


class GenerationConfig(Section):
    backend: Literal["hf", "vllm"] = Field(
        "hf", description="rollout engine: hf (HF generate, with zero3_gather under ZeRO-3; everywhere) or "
        "vllm (a colocated vLLM engine per rank, weights synced in memory after every update; needs vLLM "
        "installed: the README's vLLM environment)",
    )
    max_new_tokens: int = Field(24, ge=1)
    min_new_tokens: int = Field(1, ge=0)
    temperature: float = Field(1.0, gt=0.0)
    top_k: int = Field(0, ge=0, description="0 disables top-k")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_prompt_len: int = Field(32, ge=1, description="prompts are left-truncated to this many tokens (counted)")
    zero3_gather: Literal["full", "grouped", "per_layer"] = Field(
        "full", description="how a ZeRO-3 actor's sharded parameters are gathered while it generates a rollout. "
        "full: gathered once per rollout phase and released after (fastest: no gather inside the decode loop; "
        "needs the whole model in each rank's memory); "
        "grouped: gathered per forward in groups of consecutive modules of at most zero3_gather_budget_mb, each "
        "group released after its last module ran (bounded memory; one collective per group per forward, far "
        "fewer than per layer); "
        "per_layer: DeepSpeed's own ZeRO-3 hooks fetch each submodule's parameters (with HF synced_gpus; least "
        "memory on a model much larger than the actor's stage3_prefetch_bucket_size, 5e7 elements, and "
        "stage3_max_reuse_distance, 1e9, below which the coordinator keeps what it fetched; most collectives)"
    )
    zero3_gather_budget_mb: float = Field(
        1024.0, gt=0.0, description="zero3_gather=grouped: most MB of actor parameters gathered at once per rank "
        "(a single module larger than this is gathered alone)"
    )

    vllm: VLLMConfig = VLLMConfig()


class ModelConfig(Section):
    policy_path: str | None = Field(None, description="HF folder of the initial policy; None: the embedded testbed LM")
    critic_path: str | None = Field(None, description="backbone of the critic; None: same as the policy")
    tokenizer_path: str | None = Field(None, description="None: the policy's folder")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    gradient_checkpointing: bool = False
