"""varpo.jit_lock on PyTorch's real FileBaton (the lock DeepSpeed's JIT builds take): a lock left by
a killed process is removed and the wait ends; a lock a live process holds is named with its pid
and left alone (its owner removes it)."""
from __future__ import annotations

import subprocess
import sys
import time

from torch.utils.file_baton import FileBaton

from varpo import jit_lock


def test_a_stale_lock_is_removed_and_the_wait_ends(tmp_path, capfd):
    lock = tmp_path / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir()
    # left by a process killed between FileBaton.try_acquire and release: the file, no owner
    owner = subprocess.run([sys.executable, "-c", f"import os; os.open({str(lock)!r}, os.O_CREAT | os.O_EXCL)"])
    assert owner.returncode == 0 and lock.exists()
    t0 = time.monotonic()
    with jit_lock.watch(warn_after_s=1.0):
        FileBaton(str(lock), wait_seconds=0.05).wait()  # forever without the watcher
    assert not lock.exists()
    assert time.monotonic() - t0 < 30
    assert f"removed the stale DeepSpeed JIT lock {lock}" in capfd.readouterr().err


def test_a_held_lock_is_named_and_left_to_its_owner(tmp_path, capfd):
    lock = tmp_path / "lock"
    owner = subprocess.Popen(
        [sys.executable, "-c", "import os, sys, time\n"
         f"fd = os.open({str(lock)!r}, os.O_CREAT | os.O_EXCL); print('held', flush=True)\n"
         "time.sleep(4); os.close(fd); os.remove(" + repr(str(lock)) + ")"],  # FileBaton.release, 4 s later
        stdout=subprocess.PIPE, text=True)
    assert owner.stdout.readline().strip() == "held"
    with jit_lock.watch(warn_after_s=1.0):
        FileBaton(str(lock), wait_seconds=0.05).wait()
    assert owner.wait(timeout=30) == 0  # its own os.remove found the file: varpo did not take it
    err = capfd.readouterr().err
    assert f"DeepSpeed's JIT lock {lock}: process(es) [{owner.pid}] on this host hold it" in err
    assert "removed" not in err


def test_on_a_network_file_system_a_lock_is_only_named(tmp_path, monkeypatch):
    """Another host may own it there: resolve() names the file to remove and keeps it."""
    lock = tmp_path / "lock"
    lock.touch()
    monkeypatch.setattr(jit_lock, "file_system", lambda path: "nfs4")
    kind, said = jit_lock.resolve(str(lock), 31.0)
    assert kind == "unknown" and lock.exists()
    assert f"rm '{lock}'" in said and "nfs4 file system another host may share" in said


def test_file_system_of_a_path_is_read_from_the_mount_table(tmp_path):
    kind = jit_lock.file_system(str(tmp_path))
    assert kind != "unknown" and kind in open("/proc/mounts").read()
