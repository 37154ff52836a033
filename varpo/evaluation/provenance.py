"""What an experiment's result records about how it was made: the command line, the commit, the
host and how loaded it was. Scientific results (populations, sweeps) run beside other jobs on a
shared machine, which changes nothing in them but wall-clock time; timings are only meaningful
when `loadavg` stayed below the core count."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path


def git_commit(path: str | Path | None = None) -> str | None:
    """HEAD of the repository holding `path` (default: varpo's own), with `+dirty` when the work
    tree differs from it; None outside a git checkout."""
    where = Path(path) if path else Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def run_context(argv: list[str] | None = None) -> dict:
    """command, commit, cores, load average (1/5/15 min), python, platform and torch version."""
    import importlib.metadata as md

    try:
        torch_version = md.version("torch")
    except md.PackageNotFoundError:
        torch_version = None
    return {"command": " ".join(argv if argv is not None else [Path(sys.argv[0]).name, *sys.argv[1:]]),
            "commit": git_commit(), "cores": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()],
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "python": platform.python_version(),
            "platform": platform.platform(), "torch": torch_version}
