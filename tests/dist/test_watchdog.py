"""A dead or frozen rank does not hang the others: two gloo ranks started without a launcher (as on
two nodes, where no common parent can stop them), one killed with SIGKILL or frozen with SIGSTOP
while both run collectives; the survivor must exit with varpo.watchdog's code, naming the lost
rank, within the peer timeout. And two ranks that end at different times both exit 0."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from varpo.dist import free_port
from varpo.watchdog import EXIT_RANK_LOST

pytestmark = [pytest.mark.multirank, pytest.mark.slow]
TIMEOUT_S = 4.0
WORKER = """
import sys, time, torch
from varpo import dist
info = dist.init_distributed("gloo", 5, float(sys.argv[1]))
print("up", flush=True)
for _ in range(int(float(sys.argv[2]) / 0.05)):  # the same number of collectives on both ranks
    dist.all_reduce_sum(torch.ones(4))
    time.sleep(0.05)
dist.barrier()
time.sleep(float(sys.argv[3]) if info.rank == 1 else 0)  # rank 1 outlives rank 0, the store's host
"""


def _start(tmp_path, run_s: float, linger_s: float = 0.0):
    port, procs = free_port(), []
    for r in (0, 1):
        env = {**os.environ, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
        log = open(tmp_path / f"rank{r}.txt", "w+")
        procs.append((subprocess.Popen([sys.executable, "-c", WORKER, str(TIMEOUT_S), str(run_s), str(linger_s)],
                                       env=env, stdout=log, stderr=subprocess.STDOUT), log))
    deadline = time.monotonic() + 300
    while not all("up" in (tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)):
        assert time.monotonic() < deadline and all(p.poll() is None for p, _ in procs), "ranks did not start"
        time.sleep(0.2)
    return procs


@pytest.mark.parametrize("victim, sig", [(0, signal.SIGKILL), (1, signal.SIGSTOP)], ids=["kill_rank0", "freeze_rank1"])
def test_survivor_exits_naming_the_lost_rank(tmp_path, victim, sig):
    procs = _start(tmp_path, run_s=600)
    survivor = 1 - victim
    os.kill(procs[victim][0].pid, sig)
    t0 = time.monotonic()
    try:
        code = procs[survivor][0].wait(timeout=TIMEOUT_S * 10)
    finally:
        for p, log in procs:
            p.kill()
            p.wait()
            log.close()
    took = time.monotonic() - t0
    text = (tmp_path / f"rank{survivor}.txt").read_text()
    assert code == EXIT_RANK_LOST, text[-2000:]
    assert f"rank {survivor}: rank {victim} of 2 is lost" in text
    assert took < TIMEOUT_S * 10  # bounded (the collective timeout here is 5 minutes)


def test_ranks_ending_apart_exit_cleanly(tmp_path):
    """Rank 1 keeps running for twice the peer timeout after rank 0 is done: not a loss."""
    procs = _start(tmp_path, run_s=1, linger_s=2 * TIMEOUT_S)
    for r, (p, log) in enumerate(procs):
        assert p.wait(timeout=120) == 0, (tmp_path / f"rank{r}.txt").read_text()[-2000:]
        log.close()
    assert "is lost" not in (tmp_path / "rank0.txt").read_text() + (tmp_path / "rank1.txt").read_text()
