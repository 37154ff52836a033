"""Torch's intra-op threads chosen from the cores actually free when a run starts, and an OpenMP
wait policy that does not spin on a busy machine.

Why: torch starts one worker per core by default and its OpenMP workers spin between parallel
regions. On a machine other jobs already keep busy (a shared server, a laptop) those workers fight
for cores that are not free, and every parallel region waits for its slowest, descheduled worker:
a PPO step measured 9 s at one thread and 185 s at two on two oversubscribed cores. So:

- threads: the user's OMP_NUM_THREADS wins (torch already obeys it), then VARPO_THREADS, then the
  config's `runtime.threads`; with "auto" (the default), the free cores measured over a short
  window at start-up (/proc/stat, on the cores this process may run on), shared among the ranks on
  this host (LOCAL_WORLD_SIZE), at least 1;
- wait policy: when the machine is busy at start-up (fewer free cores than usable ones), OpenMP's
  workers sleep at once after a parallel region (OMP_WAIT_POLICY=PASSIVE) instead of spinning. The
  OpenMP runtime reads this when torch loads, so it takes effect only where varpo sets it before
  torch is imported (the `varpo` commands and launch/train_ppo.py) and in the processes started
  after; a value the user set wins.
`announce` does this where a process starts a run (`varpo train-ppo`, launch/train_ppo.py) and
says what it chose; a program calling varpo.ppo.train_ppo itself keeps its own thread settings."""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

ENV = "VARPO_THREADS"
BUSY_MARGIN = 0.25  # a machine with more than this many cores busy elsewhere counts as busy


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    source: str  # OMP_NUM_THREADS | VARPO_THREADS | runtime.threads | free cores
    usable_cores: int
    free_cores: float | None  # measured at start-up (None: not measured, or no /proc/stat)
    wait_policy: str | None  # OMP_WAIT_POLICY of this process (None: the OpenMP runtime's default)

    def describe(self) -> str:
        free = "not measured" if self.free_cores is None else f"{self.free_cores:.2f} free"
        return (f"torch threads {self.threads} ({self.source}; {self.usable_cores} usable cores, {free}; "
                f"OMP_WAIT_POLICY {self.wait_policy or 'default'})")


def usable_cores() -> list[int]:
    """The cores this process may run on."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def _cpu_times(cores: list[int], stat: Path) -> dict[int, tuple[float, float]] | None:
    """(busy, total) jiffies per core from /proc/stat; None without it."""
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return None
    out = {}
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cores:
            f = [float(x) for x in fields[:8]]
            idle = f[3] + f[4]  # idle + iowait
            out[int(name[3:])] = (sum(f) - idle, sum(f))
    return out or None


def free_cores(window_s: float = 0.3, cores: list[int] | None = None, stat: Path = Path("/proc/stat")) -> float | None:
    """How many of `cores` (default: the usable ones) sat idle over the next `window_s` seconds, as
    a number of cores (0 .. len(cores)); None where /proc/stat cannot tell."""
    cores = usable_cores() if cores is None else cores
    before = _cpu_times(cores, stat)
    time.sleep(window_s)
    after = _cpu_times(cores, stat)
    if before is None or after is None:
        return None
    free = 0.0
    for c in after:
        if c in before:
            busy, total = after[c][0] - before[c][0], after[c][1] - before[c][1]
            free += 1.0 - busy / total if total > 0 else 1.0
    return free


def parse_threads(value, where: str) -> int | str:
    """'auto' or a positive integer; anything else is an error naming `where`."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        n = int(str(value).strip())
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{where}: expected 'auto' or a positive number of threads, got {value!r}")
    return n


def choose(setting="auto", env: Mapping[str, str] | None = None, *, local_ranks: int = 1,
           measure: Callable[[], float | None] | None = None, cores: int | None = None) -> ThreadChoice:
    """The thread count for this process (see the module docstring for the order); pure given
    `env`, `measure` (free cores now; default: this module's `free_cores`, looked up at the call)
    and `cores` (usable cores)."""
    env = os.environ if env is None else env
    measure = free_cores if measure is None else measure
    usable = len(usable_cores()) if cores is None else cores
    policy = env.get("OMP_WAIT_POLICY") or None
    if env.get("OMP_NUM_THREADS", "").strip():
        return ThreadChoice(parse_threads(env["OMP_NUM_THREADS"], "OMP_NUM_THREADS"), "OMP_NUM_THREADS", usable, None, policy)
    if env.get(ENV, "").strip():
        value, source = parse_threads(env[ENV], ENV), ENV
    else:
        value, source = parse_threads(setting, "runtime.threads"), "runtime.threads"
    if value != "auto":
        return ThreadChoice(value, source, usable, None, policy)
    free = measure()
    share = max(1, local_ranks)
    if free is None:
        return ThreadChoice(max(1, usable // share), "usable cores", usable, None, policy)
    # a core counts as free when at least three quarters of it is idle
    n = max(1, min(usable, int(free + BUSY_MARGIN)) // share)
    return ThreadChoice(n, "free cores", usable, round(free, 3), policy)


def wait_policy_for(choice: ThreadChoice, env: Mapping[str, str]) -> str | None:
    """PASSIVE when the machine was busy at start-up and the user set no policy, else None (leave it)."""
    if env.get("OMP_WAIT_POLICY") or choice.free_cores is None:
        return None
    return "PASSIVE" if choice.free_cores < choice.usable_cores - BUSY_MARGIN else None


def apply(setting="auto", env: dict | None = None) -> ThreadChoice:
    """Choose and set this process's torch threads (and, before torch loads, the wait policy)."""
    env = os.environ if env is None else env
    local_ranks = int(env.get("LOCAL_WORLD_SIZE") or env.get("LOCAL_SIZE") or 1)
    choice = choose(setting, env, local_ranks=local_ranks)
    policy = wait_policy_for(choice, env)
    if policy is not None and "torch" not in sys.modules:
        env["OMP_WAIT_POLICY"] = policy
        choice = ThreadChoice(choice.threads, choice.source, choice.usable_cores, choice.free_cores, policy)
    import torch

    if choice.source != "OMP_NUM_THREADS" and torch.get_num_threads() != choice.threads:
        torch.set_num_threads(choice.threads)
    return choice


def announce(setting="auto") -> ThreadChoice:
    """`apply`, and say what was chosen on stderr (once per host: local rank 0)."""
    choice = apply(setting)
    if os.environ.get("LOCAL_RANK", "0") == "0":
        print(f"varpo: {choice.describe()}", file=sys.stderr, flush=True)
    return choice
