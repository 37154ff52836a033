"""A stale DeepSpeed JIT lock must not block every later start on the host.

DeepSpeed builds (or, once built, loads) its C++ ops (the CPU `deepspeed_shm_comm` all-reduce,
CPU Adam, ...) through PyTorch's JIT extensions, which take a lock file,
`~/.cache/torch_extensions/<py>_<device>/<op>/lock` (`torch.utils.file_baton.FileBaton`), for the
whole build or load — even a load of an op that is already built. A process killed in that window
(kill -9, OOM kill, preemption) leaves the file behind, and every later process that needs the op
waits for it to disappear: forever, silently (seen in benchmarks/results/crash_resume/README.md).

While varpo is inside a phase that may load an op (`watch()`: DeepSpeed's process-group set-up
and engine creation), a thread looks at the calling thread's stack every second. Once it has been
waiting in `FileBaton.wait` for `WARN_AFTER_S`:
- if a process on this host has the lock file open, that process is building the op: say so
  (its pid) and keep waiting;
- if none has it open and the file lives on a local file system, no process anywhere can own it
  (the owner keeps the file open from creation to release): it is stale; remove it, say so, and the
  wait ends;
- on a network file system another host may be building the op: name the file and how to remove
  it, and keep waiting.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

WARN_AFTER_S = 30.0
POLL_S = 1.0
# file systems another host may share: a lock there can belong to a process varpo cannot see
NETWORK_FS = ("nfs", "lustre", "gpfs", "cifs", "smb", "ceph", "glusterfs", "beegfs", "9p", "afs", "fuse", "wekafs")


def waiting_on(thread_id: int) -> str | None:
    """The lock file a thread is waiting on in FileBaton.wait, or None."""
    from torch.utils.file_baton import FileBaton

    frame = sys._current_frames().get(thread_id)
    while frame is not None:
        if frame.f_code is FileBaton.wait.__code__:
            return str(frame.f_locals["self"].lock_file_path)
        frame = frame.f_back
    return None


def holders(path: str) -> list[int] | None:
    """Pids of the processes on this host that have `path` open (None: /proc could not be read)."""
    target = os.path.realpath(path)
    found, readable = [], False
    for pid in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not pid.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            readable = True
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    found.append(int(pid))
                    break
            except OSError:
                pass
    return found if readable else None


def file_system(path: str) -> str:
    """The type of the file system holding `path` (longest mount point in /proc/mounts)."""
    real, best, kind = os.path.realpath(path), "", "unknown"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mount, fstype, *_ = line.split()
            mount = mount.replace("\\040", " ")
            if (real == mount or real.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
                best, kind = mount, fstype
    except OSError:
        pass
    return kind


def resolve(path: str, waited_s: float) -> tuple[str, str]:
    """Deal with a lock waited on for `waited_s`: remove it if provably stale. Returns (what was
    found: released / held / unknown / removed, a message)."""
    fs = file_system(path)
    local = fs != "unknown" and not fs.startswith(NETWORK_FS)
    try:
        inode = os.stat(path).st_ino
    except FileNotFoundError:
        return "released", ""
    pids = holders(path)
    if pids:
        return "held", (f"varpo: waited {waited_s:.0f} s on DeepSpeed's JIT lock {path}: process(es) {pids} on this host "
                "hold it (building or loading the op); waiting on.")
    if pids is None or not local:
        why = "/proc cannot be read" if pids is None else f"it is on a {fs} file system another host may share"
        return "unknown", (f"varpo: waited {waited_s:.0f} s on DeepSpeed's JIT lock {path}; varpo cannot tell whether it is "
                f"stale ({why}). If no process on any host is building this op, remove it: rm '{path}'")
    time.sleep(POLL_S)  # the owner may be between closing and removing it (release): let it finish
    try:
        if os.stat(path).st_ino != inode or holders(path):
            return "released", ""
        os.remove(path)
    except FileNotFoundError:
        return "released", ""
    return "removed", (f"varpo: removed the stale DeepSpeed JIT lock {path} after waiting {waited_s:.0f} s: no process "
            f"had it open (a process killed while building or loading the op left it; {fs} file system).")


@contextmanager
def watch(warn_after_s: float = WARN_AFTER_S):
    """Within this block, a lock file the calling thread waits on for `warn_after_s` is reported,
    and removed when provably stale (see the module's docstring)."""
    target, stop = threading.get_ident(), threading.Event()

    def run() -> None:
        first_seen: dict[str, float] = {}
        check_at: dict[str, float] = {}  # a lock a live process holds is looked at again later
        said_before: set[tuple[str, str]] = set()
        while not stop.wait(POLL_S):
            path, now = waiting_on(target), time.monotonic()
            if path is None:
                continue
            first = first_seen.setdefault(path, now)
            if now < check_at.get(path, first + warn_after_s):
                continue
            kind, said = resolve(path, now - first)
            check_at[path] = now + warn_after_s
            if said and (path, kind) not in said_before:
                said_before.add((path, kind))
                print(said, file=sys.stderr, flush=True)

    thread = threading.Thread(target=run, name="varpo-jit-lock", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
