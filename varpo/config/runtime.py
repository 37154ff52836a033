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
    huge_pages: bool = Field(
        False, description="CPU, opt-in: tensors of 2 MiB and more on transparent huge pages (torch's "
        "THP_MEM_ALLOC_ENABLE, set before the run's first allocation; an exported THP_MEM_ALLOC_ENABLE wins; "
        "varpo.allocator): a fresh 51 MB tensor is written in 4 ms instead of 18, and kept heap blocks are reused "
        "exactly; a PPO step at ppo_vs_trl's small size did not measurably change (off/on 0.97 and 1.01 in two "
        "alternated A/Bs), since keep_freed_memory already spares it page faults. Linux with transparent huge pages "
        "in madvise or always mode; elsewhere, or where the process allocated before the run started, it says so "
        "and changes nothing")
