"""benchmarks/multinode_probe.py kill-rank: it waits for what the drill needs (the rank's process
and a finished step), not for a fixed time, and says which never came when the job ends first."""
import os
import subprocess
import sys
import time
from pathlib import Path

PROBE = Path(__file__).resolve().parents[2] / "benchmarks/multinode_probe.py"


def _node(tmp_path, start_after_s: float) -> subprocess.Popen:
    """A stand-in node: a shell that starts `train_ppo.py --local_rank=0` with RANK=1 after a delay."""
    rank = tmp_path / "train_ppo.py"
    rank.write_text("import time\ntime.sleep(120)\n")
    script = f"sleep {start_after_s}; RANK=1 exec {sys.executable} {rank} --local_rank=0"
    return subprocess.Popen(["bash", "-c", f"{script} & wait"])


def _probe(node: subprocess.Popen, metrics: Path, until_pid: int, timeout: float = 60):
    return subprocess.run([sys.executable, str(PROBE), "kill-rank", "--node-pid", str(node.pid), "--rank", "1",
                           "--metrics", str(metrics), "--after-steps", "1", "--until-pid", str(until_pid),
                           "--timeout", str(timeout)], capture_output=True, text=True, timeout=120)


def test_waits_for_the_rank_and_a_step_then_kills_it(tmp_path):
    node = _node(tmp_path, start_after_s=1.5)
    metrics = tmp_path / "metrics.jsonl"
    writer = subprocess.Popen(["bash", "-c", f"sleep 3; echo '{{\"step\": 0}}' > {metrics}; sleep 60"])
    try:
        t0 = time.monotonic()
        r = _probe(node, metrics, until_pid=writer.pid)
        assert r.returncode == 0, r.stderr
        assert time.monotonic() - t0 >= 2.5  # not before the step was written
        killed = int(r.stdout.strip())
        assert node.wait(timeout=30) == 0  # `wait` returns once the killed rank is gone
        assert not os.path.exists(f"/proc/{killed}") or "Z" in Path(f"/proc/{killed}/stat").read_text().split()[2]
    finally:
        for p in (node, writer):
            p.kill()


def test_a_job_that_ends_first_is_named(tmp_path):
    node = _node(tmp_path, start_after_s=0.2)
    runner = subprocess.Popen(["sleep", "2"])
    try:
        r = _probe(node, tmp_path / "never.jsonl", until_pid=runner.pid)
        assert r.returncode != 0
        assert f"the job (runner pid {runner.pid}) ended with 0 of 1 steps done and rank 1 running" in r.stderr, r.stderr
        assert "RANK=1" in r.stderr
    finally:
        node.kill()
        runner.kill()
