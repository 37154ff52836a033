"""Which implementation of the fused per-token math the trainer uses."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from .core import Section


class KernelsConfig(Section):
    backend: Literal["auto", "triton", "torch"] = Field(
        "auto", description="auto: Triton on CUDA, chunked PyTorch on CPU; triton forces Triton (CUDA or TRITON_INTERPRET=1)"
    )
    chunk_size: int = Field(4096, ge=1, description="vocabulary chunk of the PyTorch path (bounds its extra memory)")
