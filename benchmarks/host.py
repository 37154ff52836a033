"""What a benchmark ran on — one description (`machine()`) that every benchmark records — and how
busy other processes kept the machine meanwhile
— the average number of cores they used, from /proc/stat's busy time minus this process's own (its
threads, and the children it has waited for). A load average cannot tell: it still carries the
last minute's work and counts the benchmark itself. Above SHARED_CORES the timings are reported as
taken under contention."""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path

SHARED_CORES = 0.25  # other processes' average core use above which a run counts as contended


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else whatever the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def commit() -> str | None:
    """The checkout's commit the benchmark ran from (short hash, "+dirty" when tracked files were
    modified), so a result names the code behind it; None outside a git checkout."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def machine(device: str | None = None, **extra) -> dict:
    """The host as every benchmark's results describe it: CPU model, cores (all, and usable by this
    process), Python, platform, the versions of torch / transformers / deepspeed / triton (None when
    absent), torch's thread count, the device (default: cuda when present) and its GPU, the load
    average now, the commit; `extra` adds a benchmark's own fields (e.g. the thread count of its child runs)."""
    import importlib.metadata as md

    import torch

    def version(pkg: str) -> str | None:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    info = {"cpu_model": cpu_model(), "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
            "transformers": version("transformers"), "deepspeed": version("deepspeed"), "triton": version("triton"),
            "torch_threads": torch.get_num_threads(),
            "device": device or ("cuda" if torch.cuda.is_available() else "cpu"),
            "loadavg": [round(x, 2) for x in os.getloadavg()], "commit": commit()}
    if info["device"].startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return {**info, **extra}


def busy_cpu_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot (every core); None without /proc."""
    try:
        f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    except (OSError, ValueError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = f
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class ForeignCpu:
    """watch = ForeignCpu(); ...; watch.cores() -> other processes' average core use since."""

    def __init__(self) -> None:
        self.busy0, self.own0, self.t0 = busy_cpu_seconds(), own_cpu_seconds(), time.perf_counter()

    def cores(self) -> float | None:
        busy1, own1, t1 = busy_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
        if self.busy0 is None or busy1 is None or t1 <= self.t0:
            return None
        return round(max(0.0, (busy1 - self.busy0) - (own1 - self.own0)) / (t1 - self.t0), 3)


def describe(cores: float | None) -> str:
    if cores is None:
        return "other processes' CPU use unknown (no /proc/stat)"
    verdict = "timings taken under contention" if cores > SHARED_CORES else "a quiet machine"
    return f"other processes kept {cores:.2f} cores busy on average during the run ({verdict})"


if __name__ == "__main__":  # a helper, imported by the benchmark scripts: --help says what it holds
    import argparse

    argparse.ArgumentParser(prog="benchmarks/host.py", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()


def git_commit() -> str:
    """The checkout's commit the results were measured at, with "+dirty" when tracked files differ from it."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")
