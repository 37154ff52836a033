"""The estimator's replay of DeepSpeed's ZeRO-3 parameter coordinator (varpo.memory.
zero3_forward_working_set): on hand-worked traces, and against a real 2-rank DeepSpeed engine, whose
count of parameters gathered or in flight after each module's fetch and prefetch it must reproduce
exactly."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from varpo.memory import Zero3Knobs, zero3_forward_working_set, zero3_training_kept

ROOT = Path(__file__).resolve().parents[2]


def test_without_prefetch_each_module_holds_its_own_parameters():
    mods = [("a", [10]), ("b", [20, 4]), ("c", [30])]
    live: list[int] = []
    # b's two parameters go through one flat buffer: both copies exist until the second is fetched
    assert zero3_forward_working_set(mods, Zero3Knobs(prefetch_bucket=0), live_out=live) == [10, 48, 30]
    assert live == [10, 24, 30]
    assert zero3_forward_working_set(mods, Zero3Knobs(prefetch_bucket=0, sequential=True)) == [10, 24, 30]


def test_prefetch_by_hand():
    """A container prefetches a and b (the bucket of 15 is crossed by b, taken whole) in one flat
    buffer; a's fetch copies both out; a's prefetch skips b (in flight) and takes c; b's fetch frees
    the flat buffer."""
    mods = [("r", []), ("a", [10]), ("b", [10]), ("c", [10])]
    live: list[int] = []
    held = zero3_forward_working_set(mods, Zero3Knobs(max_live=100, prefetch_bucket=15), live_out=live)
    assert held == [20, 50, 40, 10] and live == [20, 30, 20, 10]
    # gloo stages the two oldest prefetches in flight: the flat buffer's 20 until a's fetch, c's 10
    # until c's own fetch waits on it
    staged = zero3_forward_working_set(mods, Zero3Knobs(max_live=100, prefetch_bucket=15), staging=True)
    assert staged == [40, 60, 50, 20]
    # two containers each prefetch one parameter: both collectives run at once, both staged
    two = [("r", []), ("s", []), ("a", [10]), ("b", [10])]
    assert zero3_forward_working_set(two, Zero3Knobs(max_live=100, prefetch_bucket=10), staging=True) == [20, 40, 40, 20]
    # max_live bounds the prefetch: with 12, r takes a (10 < 12) and b (crossing it), a nothing (20
    # live), b takes c once a is released (a module is released after its forward, before the next
    # one's fetch)
    live = []
    zero3_forward_working_set(mods, Zero3Knobs(max_live=12, prefetch_bucket=15), live_out=live)
    assert live == [20, 20, 20, 10]


def test_training_forward_keeps_what_the_backward_reuses_soon():
    mods = [("a", [40]), ("b", [30]), ("c", [20])]
    # a is reused after 2·(30 + 20) = 100 elements of trace: beyond a distance of 90, within 101
    assert zero3_training_kept(mods, Zero3Knobs(max_reuse_distance=90)) == {1, 2}
    assert zero3_training_kept(mods, Zero3Knobs(max_reuse_distance=101)) == {0, 1, 2}
    held = zero3_forward_working_set(mods, Zero3Knobs(prefetch_bucket=0), keep={1, 2})
    assert held == [40, 30, 50]


CASES = [  # (max_live, prefetch bucket, sequential): everything prefetched; bounded by the bucket; by max_live
    (10**9, 5_000, False), (10**9, 2_000, True), (9_000, 3_000, False)]


@pytest.mark.multirank
@pytest.mark.parametrize("max_live,bucket,sequential", CASES)
def test_replay_matches_a_real_two_rank_engine(tmp_path, max_live, bucket, sequential):
    from varpo.dist import free_port

    env = {**os.environ, "DS_ACCELERATOR": "cpu", "VARPO_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    port = free_port()
    cmd = [str(Path(sys.executable).with_name("deepspeed")), "--num_nodes", "1", "--num_accelerators", "2",
           "--master_port", str(port), str(ROOT / "tests/memory/zero3_replay_worker.py"), "--out", str(tmp_path),
           "--max-live", str(max_live), "--bucket", str(bucket), *(["--sequential"] if sequential else [])]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    finally:
        for seg in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"):
            seg.unlink(missing_ok=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for rank in (0, 1):
        rec = json.loads((tmp_path / f"rank{rank}.json").read_text())
        first, second = rec["runs"]
        assert [n for n, _ in first] == [n for n, _ in second]  # the order DeepSpeed recorded and replays
        mods = [(n, [tuple(x) for x in rec["own"][n]]) for n, _ in first]
        live: list[int] = []
        zero3_forward_working_set(mods, Zero3Knobs(max_live=max_live, prefetch_bucket=bucket, sequential=sequential),
                                  live_out=live)
        real = [n for _, n in second]
        assert live == real, (rank, list(zip([n for n, _ in first], real, live)))
        assert max(real) > max(n for own in rec["own"].values() for _, n in own)  # it did prefetch
