"""A rank started without a launcher never waits the whole collective timeout (5 min here) at
start-up: real processes, gloo, the ports of real TCP stores.
- a rank alone, whose peer never comes: it exits within deepspeed.rendezvous_timeout_s with an
  error naming the address and the missing rank (rank 1: the store's host it could not reach);
- the store's host killed while another rank waits at the rendezvous for a third;
- the store's host killed after the rendezvous, while the other rank sets up the process group:
  the watchdog (already running) makes it exit, naming rank 0."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import pytest

from varpo.dist import free_port
from varpo.watchdog import EXIT_RANK_LOST

pytestmark = [pytest.mark.multirank, pytest.mark.slow]
RDZV_S, PEER_S = 4.0, 4.0
WORKER = """
import sys, time, torch
from varpo import dist
world, pause0 = int(sys.argv[3]), sys.argv[4] == "pause0"
if pause0:  # rank 0 stops right after the rendezvous: the others go on into the process group's set-up
    meet = dist.rendezvous
    def rendezvous(rank, world, timeout_s):
        store = meet(rank, world, timeout_s)
        if rank == 0:
            print("met", flush=True)
            time.sleep(600)
        return store
    dist.rendezvous = rendezvous
t0 = time.monotonic()
try:
    info = dist.init_distributed("gloo", 5, float(sys.argv[1]), float(sys.argv[2]))
except dist.RendezvousError as exc:
    print(f"varpo-waited {time.monotonic() - t0:.1f} s: {exc}", flush=True)
    sys.exit(3)
print("up", flush=True)
dist.barrier()
"""


def _rank(tmp_path, r: int, world: int, port: int, mode: str = "-"):
    env = {**os.environ, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    log = open(tmp_path / f"rank{r}_{port}.txt", "w+")
    proc = subprocess.Popen([sys.executable, "-c", WORKER, str(PEER_S), str(RDZV_S), str(world), mode], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    return proc, log, tmp_path / f"rank{r}_{port}.txt"


def _kill_rank0_and_wait(procs, timeout: float) -> tuple[int, float]:
    """SIGKILL rank 0; (rank 1's exit code, seconds it took to exit after the kill)."""
    os.kill(procs[0][0].pid, signal.SIGKILL)
    t0 = time.monotonic()
    code = procs[1][0].wait(timeout=timeout)
    return code, time.monotonic() - t0


def _finish(procs):
    for p, log, _ in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
        log.close()


def _wait_for(cond, what: str, procs, limit_s: float = 300):
    end = time.monotonic() + limit_s
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        assert all(p.poll() is None for p, _, _ in procs), f"a rank exited before {what}"
        time.sleep(0.1)


def test_a_rank_alone_exits_naming_what_it_waited_for(tmp_path):
    """Rank 1 of 2 with no store to reach; rank 0 of 2 hosting a store that rank 1 never reaches."""
    p1, p0 = free_port(), free_port()
    procs = [_rank(tmp_path, 1, 2, p1), _rank(tmp_path, 0, 2, p0)]
    try:
        codes = [p.wait(timeout=240) for p, _, _ in procs]
    finally:
        _finish(procs)
    (lone1, lone0) = (path.read_text() for _, _, path in procs)
    assert codes == [3, 3], lone1[-2000:] + lone0[-2000:]
    assert (f"rank 1 of 2: could not reach the rendezvous store at 127.0.0.1:{p1} (hosted by rank 0) within "
            f"deepspeed.rendezvous_timeout_s = {RDZV_S:g} s") in lone1
    assert (f"rank 0 of 2: rank(s) 1 did not reach the rendezvous at 127.0.0.1:{p0} (hosted by rank 0) within "
            f"deepspeed.rendezvous_timeout_s = {RDZV_S:g} s (1 of 2 arrived)") in lone0
    for text in (lone1, lone0):  # waited about the rendezvous timeout (the store client retries once more)
        waited = float(text.split("varpo-waited ")[1].split(" s:")[0])
        assert waited < RDZV_S * 4, text[-1000:]


def test_store_host_killed_while_a_rank_waits_for_another(tmp_path):
    """World of 3, rank 2 never started: rank 1 waits at the rendezvous; rank 0 (the store's host) dies."""
    from torch.distributed import TCPStore

    port = free_port()
    procs = [_rank(tmp_path, 0, 3, port), _rank(tmp_path, 1, 3, port)]
    try:
        probe = []

        def rank1_arrived() -> bool:  # seen from outside, as a client of rank 0's store
            try:
                probe[:] = probe or [TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(seconds=2))]
                return probe[0].check(["varpo_rendezvous/0/rank/1"])
            except Exception:  # noqa: BLE001  the store is not up yet
                probe.clear()
                return False

        # rank 1 has arrived (and rank 0, the host, waits with it for rank 2): kill the host
        _wait_for(rank1_arrived, "rank 1 at the rendezvous", procs)
        code, took = _kill_rank0_and_wait(procs, timeout=60)
    finally:
        _finish(procs)
    text = procs[1][2].read_text()
    assert code == 3, text[-2000:]
    assert (f"rank 1 of 3: lost the rendezvous store at 127.0.0.1:{port} (hosted by rank 0) while waiting for "
            "rank(s) 2 to arrive") in text
    assert took < 30  # at once in practice (the next poll); the rendezvous bound here is 4 s anyway


def test_store_host_killed_during_set_up(tmp_path):
    """Rank 0 stops right after the rendezvous and is killed; rank 1, inside the process group's
    set-up, must not wait the collective timeout: the watchdog names rank 0."""
    port = free_port()
    procs = [_rank(tmp_path, 0, 2, port, "pause0"), _rank(tmp_path, 1, 2, port, "pause0")]
    try:
        _wait_for(lambda: "met" in procs[0][2].read_text(), "the rendezvous", procs)
        time.sleep(1.0)  # rank 1 is past the rendezvous now, its watchdog running
        code, took = _kill_rank0_and_wait(procs, timeout=120)
    finally:
        _finish(procs)
    text = procs[1][2].read_text()
    assert code == EXIT_RANK_LOST, text[-2000:]
    assert "rank 1: rank 0 of 2 is lost" in text
    assert "up" not in text.split()
    assert took < PEER_S * 10


def test_the_config_field_is_validated_and_read():
    """deepspeed.rendezvous_timeout_s is a validated field: a value is kept; a bound that is not > 0
    is refused with an error naming the field."""
    from varpo.config import ConfigError, load_config

    assert load_config(overrides=["deepspeed.rendezvous_timeout_s=45"]).deepspeed.rendezvous_timeout_s == 45.0
    with pytest.raises(ConfigError, match=r"deepspeed\.rendezvous_timeout_s"):
        load_config(overrides=["deepspeed.rendezvous_timeout_s=0"])
