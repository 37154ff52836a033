"""DeepSpeed engines for the four roles (docs/design.md §2): trainable roles (actor, critic, the
reward ensemble while it is trained) get a training engine with a client AdamW (no JIT-built
optimizer ops); frozen roles (reference, reward) get an inference engine, ZeRO-3-sharded when
the config says so -- that is how a reward model larger than one device fits. Gathering a ZeRO-3
actor's parameters while it generates is varpo.ppo.generation.zero3_gather."""
from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager

import torch

from . import jit_lock
from .config import DeepSpeedConfig
from .dist import import_deepspeed, world_size
from .moved import moved_names


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
            stage3_max_live_parameters=int(role_cfg.max_live_parameters or 1e9),
            stage3_prefetch_bucket_size=int(5e7),
        )
        if role_cfg.allgather_sequential:
            zero["stage3_allgather_sequential"] = True
        if role_cfg.offload_param and role_cfg.offload_param_nvme_path:
            zero["offload_param"] = {"device": "nvme", "nvme_path": role_cfg.offload_param_nvme_path,
                                     "buffer_count": role_cfg.nvme_buffer_count,
                                     "buffer_size": role_cfg.nvme_buffer_size, "pin_memory": torch.cuda.is_available()}
        elif role_cfg.offload_param:
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
    if trainable:  # 0 written out too: left out, DeepSpeed 0.19 clips at its default 1.0
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
    """Call `fn()` (which builds an HF model) so that ZeRO-3 shards it while loading; its
    activations then computed by fused kernels (varpo.activations)."""
    from .activations import fuse_activations

    # zero.Init may build or load a C++ op too (async_io for parameters offloaded to NVMe)
    with jit_lock.watch(), model_init_context(conf) as keep:
        model = fn()
    model._varpo_hf_ds_config = keep  # keep HF's weak reference alive for the model's lifetime
    return fuse_activations(model)


def _adamw_impl(model: torch.nn.Module) -> dict:
    """fused: one pass over each parameter's memory per step (AdamW is memory-bound: the
    multi-tensor `foreach` path makes ~8 passes over params, grads and both moments). Measured on
    one CPU thread, 16M GPT-2-shaped parameters: 0.12 s -> 0.017 s per step. Fused kernels exist
    for floating-point CPU and CUDA tensors; anything else (another device, an integer buffer made
    trainable) keeps foreach."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    fused_ok = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in trainable)
    return {"fused": True} if fused_ok and trainable else {"foreach": True}


def _clip_in_fused_step(conf: dict, optimizer: torch.optim.Optimizer) -> bool:
    """Whether `conf`'s gradient clipping can move into `optimizer`'s fused AdamW step: ZeRO stage 0
    in fp32, where DeepSpeed hands the client optimizer over unwrapped and clips before its step
    (deepspeed.runtime.utils.clip_grad_norm_: per-parameter norms, then a `grad.mul_(coef)` pass
    over every gradient, even at coef 1). Every other case keeps DeepSpeed's own clipping."""
    low_precision = any(conf.get(k, {}).get("enabled") for k in ("bf16", "bfloat16", "fp16", "torch_autocast"))
    return (conf.get("gradient_clipping", 0) > 0 and conf["zero_optimization"]["stage"] == 0
            and not low_precision and bool(optimizer.defaults.get("fused")))


def _clip_grad_norm_pre_hook(max_norm: float) -> Callable:
    """An optimizer step pre-hook doing DeepSpeed's fp32 clipping inside the fused AdamW step:
    torch's fused kernel divides each gradient by the optimizer's `grad_scale` (a float32 tensor) in
    its one pass over the parameter's memory, so DeepSpeed's separate multiply pass over every
    gradient goes. Measured (one thread, the machine this was written on; 16.3M GPT-2-shaped
    parameters): DS clip + fused step 18.2 ms, norm + fused step with grad_scale 14.8 ms, ~3.5 ms
    per optimizer step. Same coefficient as DeepSpeed, min(1, max_norm / (norm + 1e-6)): it
    multiplies by it, the kernel divides by its inverse, equal up to float rounding (and the CPU
    kernel writes the clipped gradient back into .grad, as DeepSpeed's multiply does). The hook runs
    inside optimizer.step(), which DeepSpeed calls after all-reducing (averaging) the gradients, so
    every rank computes the same norm as DeepSpeed's clip_grad_norm_ does."""

    def hook(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))).float()  # fp32 grads here
        optimizer.grad_scale = 1.0 / torch.clamp(max_norm / (norm + 1e-6), max=1.0)
        # DeepSpeed's engine copies an optimizer's `_global_grad_norm` after its step, for
        # engine.get_global_grad_norm() (its own stage-0 fp32 clipping records none); a tensor: no sync
        optimizer._global_grad_norm = norm

    return hook


def lr_factor(update: int, warmup: int, total: int, schedule: str = "constant", min_ratio: float = 0.0) -> float:
    """Multiplier of the peak learning rate at optimizer update `update` (0-based): linear warm-up
    over `warmup` updates from 1/warmup to 1, then constant, or a linear or cosine decay reaching
    `min_ratio` at update `total` (and staying there)."""
    if warmup > 0 and update < warmup:
        return (update + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (update - warmup) / (total - warmup))
    if schedule == "linear":
        return 1.0 - (1.0 - min_ratio) * progress
    if schedule == "cosine":
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown learning-rate schedule {schedule!r}: expected constant, linear or cosine")


def train_engine(model: torch.nn.Module, conf: dict, lr: float, weight_decay: float = 0.0,
                 lr_of: dict[str, float] | None = None, lr_lambda: Callable[[int], float] | None = None):
    """A trainable DeepSpeed engine with a client AdamW over the trainable parameters. `lr_of`:
    {parameter-name prefix: learning rate} for parameters that get their own group (e.g. a value
    head sharing the actor's trunk), the rest at `lr`. `lr_lambda`: update -> multiplier of every
    group's learning rate (a torch LambdaLR the engine steps after each optimizer step and saves in
    its checkpoints; groups keep their ratios). At ZeRO stage 0 in fp32 the gradient clipping
    runs inside the fused AdamW step (_clip_grad_norm_pre_hook), not as DeepSpeed's own pass."""
    deepspeed = import_deepspeed()
    lr_of = lr_of or {}
    groups: dict[float, list] = {lr: []}
    for name, p in model.named_parameters():
        if p.requires_grad:
            own = next((v for k, v in lr_of.items() if name.startswith(k)), lr)
            groups.setdefault(own, []).append(p)
    params = [{"params": ps, "lr": g} for g, ps in groups.items() if ps]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95), eps=1e-8,
                                  **_adamw_impl(model))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda) if lr_lambda is not None else None
    if _clip_in_fused_step(conf, optimizer):
        optimizer.register_step_pre_hook(_clip_grad_norm_pre_hook(conf["gradient_clipping"]))
        conf = {**conf, "gradient_clipping": 0.0}  # not left out: DeepSpeed 0.19's default is 1.0
    with jit_lock.watch():  # DeepSpeed may build or load a C++ op here (a stale lock must not block it)
        engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=conf,
                                                       lr_scheduler=scheduler)
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
    with jit_lock.watch():
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



# names that moved out: an import of one names its new home (varpo.moved)
__getattr__ = moved_names(__name__, {n: "varpo.ppo.generation.zero3_gather" for n in (
    "zero3_param_offload", "zero3_hooks_suspended", "GroupedGather", "generation_gather")})
