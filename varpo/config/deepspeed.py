"""How each role (actor, critic, reference, reward) is wrapped in a DeepSpeed engine."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .core import Section


class RoleEngineConfig(Section):
    zero_stage: Literal[0, 1, 2, 3] | None = Field(
        None, description="ZeRO stage for this role; None inherits deepspeed.zero_stage (frozen roles: 0 or 3)"
    )
    offload_optimizer: bool = Field(False, description="ZeRO-Offload of optimizer states to CPU (trainable roles)")
    offload_param: bool = Field(False, description="offload parameters to CPU (ZeRO-3 only)")
    offload_param_nvme_path: str | None = Field(
        None, description="ZeRO-3 with offload_param: keep the parameter shard in files under this folder on an "
        "NVMe drive (ZeRO-Infinity; DeepSpeed's async_io op, which needs libaio) instead of host memory")
    nvme_buffer_count: int = Field(5, ge=1, description="offload_param to NVMe: parameter buffers in memory")
    nvme_buffer_size: int = Field(
        int(1e8), ge=1, description="offload_param to NVMe: elements per buffer (at least the largest parameter's)")
    max_live_parameters: int | None = Field(
        None, ge=1, description="ZeRO-3: most parameters (elements) a rank holds gathered at once, prefetched ones "
        "included (DeepSpeed's stage3_max_live_parameters; None: its default 1e9). Once a forward's order is known "
        "DeepSpeed prefetches up to this many, so a frozen model smaller than it is gathered whole on every rank: "
        "set it (e.g. 2-3 × the largest layer's weight) when the point of sharding is that no rank holds the model")
    allgather_sequential: bool = Field(
        False, description="ZeRO-3: gather each parameter on its own (DeepSpeed's stage3_allgather_sequential) "
        "instead of through one flat buffer per bucket, whose contents are then copied into every parameter: no "
        "second copy of a bucket in memory, one collective per parameter")


    @model_validator(mode="after")
    def _nvme_is_a_param_offload(self):
        if self.offload_param_nvme_path and not self.offload_param:
            raise ValueError("offload_param_nvme_path is where offloaded parameters go: set offload_param=true too")
        return self


class DeepSpeedConfig(Section):
    zero_stage: Literal[0, 1, 2, 3] = Field(0, description="default ZeRO stage of every role")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="engine precision; CPU runs use fp32")
    gradient_clipping: float = Field(1.0, ge=0.0, description="global grad-norm clip (0 disables)")
    actor: RoleEngineConfig = RoleEngineConfig()
    critic: RoleEngineConfig = RoleEngineConfig()
    reference: RoleEngineConfig = RoleEngineConfig()
    reward: RoleEngineConfig = RoleEngineConfig()
    param_persistence_threshold: int = Field(
        0, ge=0, description="ZeRO-3: params smaller than this stay unpartitioned (0 = partition all, needed for tiny models)"
    )
    dist_backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="auto: nccl on CUDA, gloo on CPU")
    timeout_minutes: int = Field(30, ge=1, description="collective timeout")
    rendezvous_timeout_s: float = Field(
        600.0, gt=0.0, description="multi-rank runs: how long a rank waits at start-up for the others to reach "
        "the rendezvous store at MASTER_ADDR:MASTER_PORT (hosted by rank 0); then it exits with an error naming "
        "the missing ranks, or the store it could not reach or lost (varpo.dist.rendezvous)")
    peer_timeout_s: float = Field(
        120.0, ge=0.0, description="multi-rank runs: a rank whose heartbeat (a background thread writing to the "
        "process group's store) stops for this long is declared lost, and every other rank exits with an error "
        "naming it instead of waiting in a collective (0 disables; varpo.watchdog)")

    def stage_of(self, role: str) -> int:
        own = getattr(self, role).zero_stage
        return self.zero_stage if own is None else own
