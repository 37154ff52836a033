"""A dead rank must not hang the others.

When one rank of a multi-rank job dies (kill -9, OOM kill, a lost node), the others may wait in
a collective until its timeout (deepspeed.timeout_minutes, 30 by default), or forever in
operations that have none. Under one launcher on one node the launcher notices the dead child and
kills the rest; across nodes, or under a per-node launcher, nothing does.

So each rank runs a heartbeat thread on the process group's own key-value store (the TCPStore
rank 0 hosts, already there for the rendezvous; started as soon as all ranks have met there, so
it also covers the process group's and DeepSpeed's set-up): it bumps its own counter every
`peer_timeout_s / 10` seconds and watches the counter of the next rank in a ring. A counter that
has not moved for `peer_timeout_s` (measured on the watcher's own clock: no clock sync needed)
marks that rank lost in the store; every rank polls that mark and exits with EXIT_RANK_LOST and
a message naming the lost rank. A store that stays unreachable for `peer_timeout_s` means rank 0,
its host, is gone. Each rank watches one peer and reads one mark, so the load on the store grows
linearly with the ranks. A rank that exits normally says so first, so it is never reported lost;
rank 0 waits (at most `peer_timeout_s`) for the others to say so before it takes the store away.

Exit is os._exit: the main thread may be blocked inside a collective that cannot be interrupted;
the job is meant to be restarted, and it resumes from its last checkpoint (varpo.checkpoint)."""
from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable

EXIT_RANK_LOST = 75  # EX_TEMPFAIL: try again (a restart resumes from the last checkpoint)
_BEAT, _DONE, _LOST, _HOST = ("varpo_watchdog/beat/{}", "varpo_watchdog/done/{}", "varpo_watchdog/lost",
                              "varpo_watchdog/host/{}")
# messages of a collective that failed because a peer's connection went away (gloo, NCCL)
PEER_LOSS_SIGNS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Timed out",
                   "Connection was likely closed",  # the store's host (rank 0) gone during a store operation
                   "timed out", "NCCL communicator was aborted", "remote process exited")


class Watchdog:
    def __init__(self, store, rank: int, world_size: int, timeout_s: float, before_exit: Callable[[], None] = lambda: None):
        self.store, self.rank, self.world, self.timeout = store, rank, world_size, timeout_s
        self.peer = (rank + 1) % world_size
        self.interval = max(timeout_s / 10, 0.1)
        self.before_exit = before_exit
        self._host_key = _HOST.format(socket.gethostname())
        self._local: dict[int, int] = {}  # rank -> pid of the ranks on this host (kept should the store go)
        self._done_seen: set[int] = set()  # ranks seen leaving normally (kept should the store go)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="varpo-watchdog", daemon=True)

    def start(self) -> Watchdog:
        self.store.append(self._host_key, f"{self.rank}:{os.getpid()} ")
        self.store.add(_BEAT.format(self.rank), 1)
        self._thread.start()
        return self

    def stop(self) -> None:
        """This rank is exiting normally: its silence from now on is not a loss."""
        self._stop.set()
        try:
            self.store.add(_DONE.format(self.rank), 1)
            if self.rank == 0:  # the store's host stays until the others are done (or the timeout)
                end = time.monotonic() + self.timeout
                others = range(1, self.world)
                while (time.monotonic() < end and not all(self.store.add(_DONE.format(r), 0) for r in others)
                       and not self.store.add(_LOST, 0) and not self.dead_here()):
                    time.sleep(self.interval / 2)
        except Exception:  # rank 0 (the store's host) already gone: nothing to tell
            pass
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=2 * self.interval)

    def _read_local(self) -> None:
        pairs = (x.split(":") for x in self.store.get(self._host_key).decode().split())
        self._local = {int(r): int(pid) for r, pid in pairs}

    def dead_here(self, ranks=None) -> list[int]:
        """Ranks (default: all others) whose process ran on this host and is gone: known at once,
        without waiting for a heartbeat to go stale (also when the dead one is rank 0, the store's host)."""
        try:
            self._read_local()
        except Exception:  # the store is gone with rank 0: what was read before still names it
            pass
        dead = []
        for r, pid in sorted(self._local.items()):
            if r == self.rank or r in self._done_seen or (ranks is not None and r not in ranks) or _alive(pid):
                continue
            try:
                if self.store.add(_DONE.format(r), 0):
                    continue  # it finished normally
            except Exception:
                pass
            dead.append(r)
        return dead

    def _run(self) -> None:
        seen, seen_at, unreachable_since = -1, time.monotonic(), None
        started = seen_at
        # every second at first: the other local ranks register just after this one
        while not self._stop.wait(min(self.interval, 1.0) if time.monotonic() - started < 10 else self.interval):
            now = time.monotonic()
            try:
                self.store.add(_BEAT.format(self.rank), 1)
                self._read_local()
                beat = self.store.add(_BEAT.format(self.peer), 0)
                peer_done = self.store.add(_DONE.format(self.peer), 0) > 0
                lost = self.store.add(_LOST, 0)
                if self.rank and self.store.add(_DONE.format(0), 0):
                    self._done_seen.add(0)
            except Exception as exc:
                if 0 in self._done_seen:  # rank 0 left normally, and its store with it
                    return
                gone = self.dead_here()
                if gone and not self._stop.is_set():
                    self._exit(gone[0], "its process on this host is gone; the store went with it")
                unreachable_since = unreachable_since or now
                if now - unreachable_since >= self.timeout and not self._stop.is_set():
                    self._exit(0, f"the process group's store, hosted by rank 0, has been unreachable for "
                                  f"{now - unreachable_since:.0f} s ({type(exc).__name__}: {exc})")
                continue
            unreachable_since = None
            if peer_done:
                self._done_seen.add(self.peer)
            if lost:  # some rank found its peer lost; the mark holds that rank + 1
                self._exit(lost - 1, "reported by its watcher")
            if beat != seen:
                seen, seen_at = beat, now
            elif not peer_done and self.dead_here([self.peer]):
                self._mark_and_exit(f"its process on this host is gone (silent for {now - seen_at:.1f} s)")
            elif not peer_done and now - seen_at >= self.timeout:
                self._mark_and_exit(f"no heartbeat for {now - seen_at:.0f} s")

    def _mark_and_exit(self, why: str) -> None:
        try:
            self.store.set(_LOST, str(self.peer + 1))  # +1: 0 means "none lost"
        except Exception:
            pass
        self._exit(self.peer, why)

    def _exit(self, lost_rank: int, why: str) -> None:
        if self._stop.is_set():
            return
        _say(self.rank, self.world, lost_rank, why, f"exiting with code {EXIT_RANK_LOST} instead of waiting for it")
        try:
            self.before_exit()
        finally:
            os._exit(EXIT_RANK_LOST)

    def wait_for_verdict(self) -> None:
        """Called when the main thread's collective failed: if a peer is being lost, give the
        watchdog the time to name it (it then exits the process); otherwise return at once."""
        if self._thread.is_alive():
            self._thread.join(timeout=self.timeout + 3 * self.interval)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")  # a zombie is dead, not yet reaped
    except OSError:
        return False


def _stderr():
    """The process's real stderr: torch's excepthook (installed by init_process_group, around this
    module's) points sys.stderr at a buffer while the hooks run, and a rank that exits with
    os._exit from there would lose everything written to it."""
    return sys.__stderr__ or sys.stderr


def _say(rank: int, world: int, lost: int, why: str, action: str) -> None:
    print(f"varpo: rank {rank}: rank {lost} of {world} is lost ({why}); {action}. Restart the job: it resumes "
          "from its last checkpoint.", file=_stderr(), flush=True)


_current: Watchdog | None = None


def start(rank: int, world_size: int, timeout_s: float, before_exit: Callable[[], None] = lambda: None,
          store=None) -> Watchdog | None:
    """Start this rank's watchdog (world size > 1) on `store`, by default the default process
    group's (varpo.dist starts it on the rendezvous store, before the process group exists)."""
    global _current
    if world_size < 2 or timeout_s <= 0 or _current is not None:
        return _current
    if store is None:
        import torch.distributed.distributed_c10d as c10d

        store = c10d._get_default_store()
    _current = Watchdog(store, rank, world_size, timeout_s, before_exit).start()
    previous = sys.excepthook

    def hook(kind, value, tb):
        # a collective that failed because a peer vanished: name the lost rank (at once if it ran
        # on this host, else once the watchdog sees its heartbeat stop)
        if _current is not None and any(s in str(value) for s in PEER_LOSS_SIGNS):
            print(f"varpo: rank {rank}: {kind.__name__}: {value}", file=_stderr(), flush=True)
            gone = _current.dead_here()
            if gone:
                traceback.print_exception(kind, value, tb, file=_stderr())
                for lost in gone:
                    _say(rank, world_size, lost, "its process on this host is gone", f"exiting with code {EXIT_RANK_LOST}")
                _current.before_exit()
                os._exit(EXIT_RANK_LOST)  # an orderly exit would wait on the dead rank
            _current.wait_for_verdict()
        previous(kind, value, tb)

    def on_sigterm(signum, frame):
        # a launcher stopping the job because a rank died (the deepspeed launcher sends SIGTERM to
        # the others, and logs a command line that is not always the dead rank's): name it
        if _current is not None:
            for lost in _current.dead_here():
                _say(rank, world_size, lost, "its process on this host is gone", "stopped by the launcher")
            _current.before_exit()  # the default SIGTERM exit skips atexit: free the shared memory now
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    sys.excepthook = hook
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, on_sigterm)
    return _current


def stop() -> None:
    global _current
    if _current is not None:
        _current.stop()
        _current = None
