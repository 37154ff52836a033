"""How a run uses the machine it runs on (varpo.threads)."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from .core import Section


class RuntimeConfig(Section):
    threads: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto", description="torch intra-op threads per rank. auto: the cores found free over a short window at "
        "start-up, shared among this host's ranks (a machine other jobs keep busy gets fewer threads instead of "
        "oversubscribed cores), and OpenMP workers that sleep instead of spinning when it is busy. The environment "
        "wins over this field: OMP_NUM_THREADS as set by the user, then VARPO_THREADS (varpo.threads)")
    keep_freed_memory: bool = Field(
        True, description="CPU: large tensors reuse memory malloc already holds instead of fresh pages the kernel "
        "must fault in and zero on every allocation (glibc's mmap and trim thresholds raised to 1 GiB; "
        "varpo.allocator): a step's big temporaries (logits, their gradients) stop paying page faults; the process "
        "keeps its peak heap between steps. No effect outside glibc")
