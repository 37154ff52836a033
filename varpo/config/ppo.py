"""PPO hyper-parameters (docs/design.md §1 "Variance-aware PPO") and rollout sampling knobs."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .core import Section
from .lora import LoraConfig


class KLConfig(Section):
    estimator: Literal["k1", "k2", "k3"] = Field(
        "k1", description="per-token KL estimator in the shaped reward: k1 = r, k2 = r²/2, k3 = e^{−r} − 1 + r of "
        "r = log π − log π_ref (varpo_kernels.weighted_kl.kl_from_log_ratio, the one definition every path uses)")
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


class WandbConfig(Section):
    """Weights & Biases logging of a PPO run; optional: wandb is needed only when enabled, and the
    API key comes from the environment (WANDB_API_KEY or `wandb login`), never from a file."""

    enabled: bool = Field(False, description="log metrics and the sample table to W&B (needs `pip install wandb`)")
    project: str = Field("varpo", description="W&B project")
    entity: str | None = Field(None, description="W&B team or user; None: the key's default")
    run_name: str | None = Field(None, description="display name; None: W&B picks one")
    run_id: str | None = Field(None, description="resume this W&B run id; None: a new run")
    mode: Literal["online", "offline"] = Field("online", description="offline: write under OUT/wandb, sync later")


class PackingConfig(Section):
    """Padding-free forwards (varpo.ppo.packing): the reference, critic and actor forwards, and the
    update's backward, run over the samples' real tokens packed into rows, position ids restarting
    per sample, instead of the padded [B, prompt + response] layout; the rollout-time forwards'
    micro-batches are balanced by token count. Exact: the same log-probs, values, losses and
    gradients as the padded layout, up to float rounding (tests/ppo/test_packing.py, float64)."""

    enabled: bool = Field(
        False, description="pack each micro-batch's samples without padding (a micro-batch with no padding at all "
        "keeps the padded layout, which is then the same thing); worth it when responses end at EOS with varied "
        "lengths: the work saved is about the padding fraction")
    row_tokens: int | None = Field(
        None, ge=1, description="most tokens per packed row (one forward each); a longer sample gets a row of its "
        "own. None: the micro-batch's longest sample with sdpa/eager attention (their masked attention is dense "
        "over a row, so a row never costs more than that sample's padded row), one row per micro-batch with "
        "flash_attention_2 (its varlen kernel attends per sample)")


class PPOConfig(Section):
    steps: int = Field(20, ge=1, description="PPO iterations (rollout + update)")
    batch_size: int = Field(16, ge=1, description="prompts per iteration, global across ranks")
    mini_batch_size: int = Field(8, ge=1, description="sequences per optimizer step, global across ranks")
    ppo_epochs: int = Field(2, ge=1, description="passes over each rollout batch")
    actor_lr: float = Field(1e-5, gt=0.0, description="peak learning rate of the actor (AdamW)")
    critic_lr: float = Field(1e-5, gt=0.0, description="peak learning rate of the critic (or of a shared trunk's "
                             "value head)")
    lr_schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="learning-rate schedule of actor and critic over the run's optimizer steps, after "
        "the warm-up: constant, linear decay or cosine decay to lr_min_ratio × the peak (a torch LambdaLR stepped "
        "by the DeepSpeed engines and saved in their checkpoints)")
    lr_warmup_steps: int = Field(0, ge=0, description="PPO steps of linear warm-up from 0 to the peak learning rate")
    lr_min_ratio: float = Field(0.0, ge=0.0, le=1.0, description="linear/cosine: the final learning rate as a share "
                                "of the peak")
    weight_decay: float = Field(0.0, ge=0.0)
    gamma: float = Field(1.0, ge=0.0, le=1.0, description="GAE discount")
    lam: float = Field(0.95, ge=0.0, le=1.0, description="GAE λ")
    clip_range: float = Field(0.2, gt=0.0, description="policy ratio clip ε")
    clip_range_value: float = Field(0.2, gt=0.0, description="value clip around the old values")
    vf_coef: float = Field(
        0.1, ge=0.0, description="multiplies the critic's value loss. model.critic=separate: the critic has its own "
        "Adam optimizer, which is invariant to a constant loss scale, so this is not a policy/value trade-off: it "
        "moves the critic's gradient-clipping threshold (deepspeed.gradient_clipping applies to vf_coef·∇L, i.e. "
        "to ∇L at gradient_clipping/vf_coef) and scales the logged value_loss; set the critic's step size with "
        "critic_lr. model.critic=shared_trunk: one optimizer minimises policy loss + vf_coef·value loss, so vf_coef "
        "weighs the value gradient against the policy gradient in the shared trunk (the head alone sees only the "
        "value loss and takes critic_lr), and gradient clipping applies to the joint gradient")
    entropy_coef: float = Field(0.0, ge=0.0, description="entropy bonus weight")
    whiten_advantages: bool = True
    whiten_rewards: bool = False
    score_clip: float | None = Field(None, gt=0.0, description="clamp the score s to ±score_clip")
    missing_eos_penalty: float | None = Field(None, description="subtracted from s when a response has no EOS")
    kl: KLConfig = KLConfig()
    variance: VarianceWeightConfig = VarianceWeightConfig()
    packing: PackingConfig = PackingConfig()
    checkpoint_every: int = Field(0, ge=0, description="save a resumable checkpoint every N steps (0: only at the "
                                  "end); the run's last checkpoint is always written, so raising ppo.steps continues it")
    eval_every: int = Field(
        0, ge=0, description="every N PPO steps (and after the last), sample one response per held-out prompt "
        "(data.eval_prompts_path, the prompt dataset's eval split, or the testbed's) and log eval/score_mean, "
        "eval/variance_mean (σ² of the reward) and, where the task has one, eval/gold_mean with the step's "
        "metrics (metrics.jsonl, TensorBoard, W&B); 0: off")
    eval_prompts: int = Field(64, ge=1, description="held-out prompts per evaluation (the first N)")
    max_consecutive_bad_steps: int = Field(3, ge=1, description="non-finite steps in a row before the run stops")
    log_samples_every: int = Field(
        10, ge=0, description="every N steps, rank 0's prompts, responses, score and σ² to OUT/samples.jsonl and "
        "TensorBoard text (and W&B when enabled); 0: never")
    wandb: WandbConfig = WandbConfig()

    @model_validator(mode="after")
    def _warmup_within_the_run(self):
        if self.lr_warmup_steps > self.steps:
            raise ValueError(f"lr_warmup_steps ({self.lr_warmup_steps}) exceeds steps ({self.steps})")
        return self

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
        "engine at once; whole transformer blocks and whole modules only (one larger than this goes alone)",
    )
    cpu_kvcache_gb: float | None = Field(
        None, gt=0.0, description="CPU: KV-cache size in GiB; None: sized to the rollout (this rank's prompts × "
        "max_model_len × the model's key/value bytes per token, four times over, plus 32 MiB), which starts "
        "faster and holds less memory than a fixed GiB. The VLLM_CPU_KVCACHE_SPACE variable, when set, wins")
    engine_process: Literal["auto", "inline", "child"] = Field(
        "auto", description="where the engine runs. child: vLLM's engine core (scheduler, worker, model, KV "
        "cache) in processes of its own, each decode step a round trip through shared memory, each process "
        "importing vLLM again at start-up; inline: in the trainer's own process (no process start, no per-step "
        "IPC; its threads are the trainer's torch threads; one trainer rank and one engine device only); auto: "
        "inline for a one-rank CPU run without tensor parallelism, child otherwise")
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
    logprobs_from_generate: bool = Field(
        True, description="the rollout's old log-probs come from the rollout engine instead of a second actor "
                          "forward over the sequences. hf: read off generate's own logits (one B × V step at a "
                          "time); vllm: the engine's raw log-probs of the sampled tokens (at temperature 1 and "
                          "importance_correction=none only; otherwise the forward runs). They differ from a full "
                          "forward's by rounding (and, for vLLM, its kernels). false: recompute them with a "
                          "forward (as verl, OpenRLHF do by default)",
    )
    sampler: Literal["inverse_cdf", "multinomial"] = Field(
        "inverse_cdf", description="how the next token is drawn. inverse_cdf: one uniform number per "
        "sequence against the cumulative distribution (float64); multinomial: the backend's own sampler. hf: "
        "torch.multinomial, which on a CPU draws an exponential variate per vocabulary entry (a 64-token rollout "
        "1.33x slower at a 50k vocabulary on one core: benchmarks/results/decode_sampling) and reproduces the "
        "draws of runs made before varpo had this option. vllm on a CPU: inverse_cdf applies where the draw is "
        "from softmax(logits) and the engine's raw log-probs are the old log-probs (temperature 1, top_k 0, top_p 1, "
        "importance_correction none; varpo.ppo.generation.vllm_sampler), elsewhere vLLM's own Gumbel-max "
        "sampler draws. Same distribution either way",
    )
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


ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2")


class ModelLoraConfig(LoraConfig):
    """LoRA adapters (peft) on the actor and optionally the critic: only the adapters (and the
    critic's value head) train, the base weights stay frozen."""

    enabled: bool = Field(False, description="train LoRA adapters on the actor instead of all its weights")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="adapter dropout (PPO disables every dropout of the "
                           "actor so rollout and update log-probs agree; kept for fidelity to the paper's value)")
    critic: bool = Field(False, description="also give the critic LoRA adapters (its value head trains in full); "
                         "False: the critic is fully fine-tuned")
    reference_from_base: bool = Field(
        True, description="the reference is the actor's own base with its adapters disabled (one copy of the base "
        "in memory instead of two; exact: LoRA's B starts at zero, so at step 0 actor = reference); False: a "
        "separate frozen reference model")


class QuantizationConfig(Section):
    """4-bit base weights through bitsandbytes (QLoRA): actor, reference and critic bases load
    quantized; only LoRA adapters can train on them."""

    load_in_4bit: bool = Field(False, description="load the base weights in 4 bits (bitsandbytes; needs a CUDA GPU "
                               "and model.lora.enabled with model.lora.critic)")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type: NormalFloat4 (QLoRA's) or FP4")
    double_quant: bool = Field(True, description="quantize the quantization constants too (≈0.4 bit/param saved)")
    compute_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="dtype the 4-bit weights are dequantized to for each matmul")


class ModelConfig(Section):
    policy_path: str | None = Field(None, description="HF folder of the initial policy; None: the embedded testbed LM")
    critic_path: str | None = Field(None, description="backbone of the critic (critic=separate); None: same as the policy")
    critic: Literal["separate", "shared_trunk"] = Field(
        "separate", description="separate: the critic is its own model (a backbone from critic_path with a value "
        "head), own DeepSpeed engine and optimizer (critic_lr, deepspeed.critic); shared_trunk: the critic is a "
        "value head on the actor's own trunk, trained in the actor's engine and optimizer (deepspeed.actor; the "
        "head's learning rate is critic_lr): one forward per minibatch gives the logits and the values, no second "
        "model in memory, and the loss is policy loss + ppo.vf_coef·value loss, so vf_coef weighs the two. The "
        "exported policy stays a plain causal LM; the head is saved beside it in OUT/policy_value_head")
    tokenizer_path: str | None = Field(None, description="None: the policy's folder")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    gradient_checkpointing: bool = False
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] | None = Field(
        None, description="attention kernel of every HF model varpo loads (actor, reference, critic, reward "
        "backbone): eager, sdpa (PyTorch's fused attention), flash_attention_2 (needs the flash-attn package and "
        "a CUDA GPU, with dtype bfloat16/float16); None: transformers' default for the architecture")
    lora: ModelLoraConfig = ModelLoraConfig()
    quantization: QuantizationConfig = QuantizationConfig()

    @model_validator(mode="after")
    def _quantized_base_needs_adapters(self):
        critic_adapted = self.lora.critic or self.critic == "shared_trunk"  # a shared trunk has the actor's
        if self.quantization.load_in_4bit and not (self.lora.enabled and critic_adapted):
            raise ValueError("quantization.load_in_4bit=true: 4-bit base weights cannot be trained; set "
                             "lora.enabled=true and lora.critic=true (adapters on actor and critic)")
        return self

    @model_validator(mode="after")
    def _shared_trunk_has_no_critic_model(self):
        if self.critic != "shared_trunk":
            return self
        if self.critic_path is not None:
            raise ValueError(f"model.critic=shared_trunk puts the value head on the actor's trunk, so model.critic_path "
                             f"({self.critic_path!r}) has nothing to load; unset model.critic_path or set "
                             "model.critic=separate")
        if self.lora.critic:
            raise ValueError("model.critic=shared_trunk with model.lora.critic=true: there is no separate critic "
                             "to give adapters; the value head trains beside the actor's adapters (model.lora.enabled). Set "
                             "model.lora.critic=false or model.critic=separate")
        return self

    @model_validator(mode="after")
    def _flash_attention_needs_half_precision(self):
        if self.attn_implementation == "flash_attention_2" and self.dtype == "float32" \
                and not self.quantization.load_in_4bit:
            raise ValueError("attn_implementation=flash_attention_2 runs in bfloat16/float16 only; set "
                             "model.dtype=bfloat16 (or float16)")
        return self
