"""DeepSpeed engines for the four roles (DESIGN.md §2): trainable roles (actor, critic, the
reward ensemble while it is trained) get a training engine with a client AdamW (no JIT-built
optimizer ops); frozen roles (reference, reward) get an inference engine, ZeRO-3-sharded when
the config says so -- that is how a reward model larger than one device fits."""
from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch

from .config import DeepSpeedConfig
from .dist import import_deepspeed, world_size


def _precision_block(cfg: DeepSpeedConfig) -> dict:
    if cfg.precision == "bf16":
        return {"bf16": {"enabled": True}}
    if cfg.precision == "fp16":
        return {"fp16": {"enabled": True, "initial_scale_power": 12}}
    return {}


def _zero_block(cfg: DeepSpeedConfig, role: str, trainable: bool) -> dict:
    role_cfg = getattr(cfg, role)
    stage = cfg.stage_of(role)
    if not trainable and stage in (1, 2):
        stage = 0  # stages 1-2 shard optimizer state and gradients, which a frozen role has none of
    zero: dict = {"stage": stage}
    if stage == 3:
        zero.update(
            stage3_param_persistence_threshold=cfg.param_persistence_threshold,
            stage3_max_live_parameters=int(1e9),
            stage3_prefetch_bucket_size=int(5e7),
        )
        if role_cfg.offload_param:
            zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if trainable and role_cfg.offload_optimizer and stage > 0:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    return zero


def ds_config(cfg: DeepSpeedConfig, role: str, micro_batch_per_rank: int, trainable: bool) -> dict:
    """The DeepSpeed JSON config of one role. Gradient accumulation is done by the PPO loop
    itself (one optimizer step per mini-batch), so DeepSpeed's is 1."""
    conf = {
        "train_micro_batch_size_per_gpu": micro_batch_per_rank,
        "gradient_accumulation_steps": 1,
        "train_batch_size": micro_batch_per_rank * world_size(),
        "zero_optimization": _zero_block(cfg, role, trainable),
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        # a client torch optimizer is kept under ZeRO-Offload too (avoids the cpu_adam JIT build)
        "zero_force_ds_cpu_optimizer": False,
        **_precision_block(cfg),
    }
    if trainable and cfg.gradient_clipping > 0:
        conf["gradient_clipping"] = cfg.gradient_clipping
    return conf


@contextmanager
def model_init_context(conf: dict):
    """Build HF models inside this context. Under ZeRO-3, HfDeepSpeedConfig makes
    `from_pretrained`/`from_config` partition weights as they load (and still run HF's weight
    init); the object must outlive construction, so it is yielded for the caller to keep."""
    if conf["zero_optimization"]["stage"] == 3:
        import_deepspeed()
        from transformers.integrations import HfDeepSpeedConfig

        keep = HfDeepSpeedConfig(conf)
        yield keep
    else:
        yield None


def build_model(fn: Callable[[], torch.nn.Module], conf: dict) -> torch.nn.Module:
    """Call `fn()` (which builds an HF model) so that ZeRO-3 shards it while loading."""
    with model_init_context(conf) as keep:
        model = fn()
    model._varpo_hf_ds_config = keep  # keep HF's weak reference alive for the model's lifetime
    return model


def train_engine(model: torch.nn.Module, conf: dict, lr: float, weight_decay: float = 0.0):
    """A trainable DeepSpeed engine with a client AdamW over the trainable parameters."""
    deepspeed = import_deepspeed()
    params = [p for p in model.parameters() if p.requires_grad]
    # foreach: one multi-tensor kernel per step instead of a Python loop over parameters
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95), eps=1e-8, foreach=True)
    engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=conf)
    if world_size() == 1 and conf["zero_optimization"]["stage"] < 2:
        # alone, averaging gradients over ranks is the identity, yet stage 0/1 would still flatten
        # every gradient into a bucket and all-reduce it after each backward (the attribute is
        # DeepSpeed's own switch, set the same way when it has no communication backend)
        engine.enable_backward_allreduce = False
    return engine


def inference_engine(model: torch.nn.Module, conf: dict):
    """A frozen DeepSpeed engine (no optimizer); ZeRO-3 configs shard its parameters."""
    deepspeed = import_deepspeed()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    engine, *_ = deepspeed.initialize(model=model, config=conf)
    engine.eval()
    return engine


@contextmanager
def gathered_params(module: torch.nn.Module, enabled: bool = True):
    """Gather a ZeRO-3 module's full parameters for the duration of the block (no-op otherwise)."""
    params = [p for p in module.parameters() if hasattr(p, "ds_id")]
    if not enabled or not params:
        yield
        return
    deepspeed = import_deepspeed()
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield


def is_zero3(module: torch.nn.Module) -> bool:
    return any(hasattr(p, "ds_id") for p in module.parameters())
