"""Backend choice: Triton on CUDA tensors, the chunked PyTorch twin everywhere else.

Triton is imported lazily, only after a backend resolved to "triton": on a machine without a GPU,
importing a Triton kernel raises "0 active drivers" unless TRITON_INTERPRET=1 was set, so
`import varpo_kernels` must never touch it."""
from __future__ import annotations

import importlib
import os
from types import ModuleType

import torch

BACKENDS = ("auto", "triton", "torch")


def interpreter_enabled() -> bool:
    """True when Triton runs kernels through its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def resolve_backend(name: str, device: torch.device | str) -> str:
    """"auto" → "triton" on CUDA tensors, "torch" otherwise. "triton" on a non-CUDA tensor is
    allowed only under TRITON_INTERPRET=1 (the interpreter; tests). Returns "triton" or "torch"."""
    if name not in BACKENDS:
        raise ValueError(f"kernels.backend: unknown backend {name!r} (expected one of {', '.join(BACKENDS)})")
    device = torch.device(device)
    if name == "torch":
        return "torch"
    if name == "auto":
        return "triton" if device.type == "cuda" else "torch"
    if device.type != "cuda" and not interpreter_enabled():
        raise RuntimeError(
            f"kernels.backend='triton' on a {device.type} tensor needs the Triton interpreter: set "
            "TRITON_INTERPRET=1 before triton is first used, or use backend='auto'/'torch'"
        )
    return "triton"


def triton_module(name: str) -> ModuleType:
    """Import varpo_kernels.triton_kernels.<name> on first use (never at package import)."""
    return importlib.import_module(f"varpo_kernels.triton_kernels.{name}")
