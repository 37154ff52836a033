"""varpo.threads: torch threads from the free cores at start-up, the user's overrides, the wait policy."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from varpo import threads
from varpo.config import load_config


def _choose(setting="auto", env=None, free=None, cores=4, local_ranks=1):
    return threads.choose(setting, env or {}, local_ranks=local_ranks, measure=lambda: free, cores=cores)


def test_the_users_omp_num_threads_wins_then_varpo_threads_then_the_config():
    c = _choose(3, {"OMP_NUM_THREADS": "2", "VARPO_THREADS": "5"}, free=4.0)
    assert (c.threads, c.source) == (2, "OMP_NUM_THREADS")
    c = _choose(3, {"VARPO_THREADS": "5"}, free=4.0)
    assert (c.threads, c.source) == (5, "VARPO_THREADS")
    c = _choose(3, {}, free=0.0)
    assert (c.threads, c.source, c.free_cores) == (3, "runtime.threads", None)  # not measured


@pytest.mark.parametrize("free, local_ranks, want", [
    (4.0, 1, 4), (3.9, 1, 4), (3.7, 1, 3), (1.2, 1, 1), (0.0, 1, 1),  # at least one
    (4.0, 2, 2), (3.0, 2, 1), (0.5, 4, 1), (9.0, 1, 4),  # never more than usable
])
def test_auto_counts_the_free_cores_shared_among_the_ranks(free, local_ranks, want):
    c = _choose("auto", {}, free=free, cores=4, local_ranks=local_ranks)
    assert (c.threads, c.source, c.usable_cores) == (want, "free cores", 4)
    assert c.free_cores == pytest.approx(free)


def test_auto_without_proc_stat_uses_the_usable_cores():
    c = _choose("auto", {}, free=None, cores=6, local_ranks=2)
    assert (c.threads, c.source) == (3, "usable cores")


@pytest.mark.parametrize("env, where", [({"OMP_NUM_THREADS": "0"}, "OMP_NUM_THREADS"),
                                        ({"VARPO_THREADS": "many"}, "VARPO_THREADS"),
                                        ({"VARPO_THREADS": "-2"}, "VARPO_THREADS")])
def test_bad_values_name_where_they_came_from(env, where):
    with pytest.raises(ValueError, match=where):
        _choose("auto", env, free=2.0)


def test_the_config_field_takes_auto_or_a_positive_count():
    assert load_config(None, []).runtime.threads == "auto"
    assert load_config(None, ["runtime.threads=3"]).runtime.threads == 3
    from varpo.config import ConfigError

    for bad in ("0", "fast"):
        with pytest.raises(ConfigError, match="runtime.threads"):
            load_config(None, [f"runtime.threads={bad}"])


def test_wait_policy_is_passive_on_a_busy_machine_unless_the_user_chose():
    busy, quiet = _choose(free=1.0, cores=4), _choose(free=3.9, cores=4)
    assert threads.wait_policy_for(busy, {}) == "PASSIVE"
    assert threads.wait_policy_for(quiet, {}) is None
    assert threads.wait_policy_for(busy, {"OMP_WAIT_POLICY": "ACTIVE"}) is None
    assert threads.wait_policy_for(_choose(2, {}, cores=4), {}) is None  # not measured: left alone


def test_free_cores_reads_proc_stat(tmp_path, monkeypatch):
    snaps = iter([
        "cpu  1 1 1 1 1 1 1 1\ncpu0 100 0 0 100 0 0 0 0 0 0\ncpu1 100 0 0 100 0 0 0 0 0 0\ncpu2 0 0 0 0 0 0 0 0\n",
        # cpu0 fully busy, cpu1 a quarter busy (iowait counts as idle), cpu2 not ours
        "cpu  1 1 1 1 1 1 1 1\ncpu0 200 0 0 100 0 0 0 0 0 0\ncpu1 110 0 15 160 15 0 0 0 0 0\ncpu2 9 0 0 0 0 0 0 0\n",
    ])
    real = threads._cpu_times

    def next_snapshot(cores, path):  # /proc/stat as it reads before and after the window
        path.write_text(next(snaps))
        return real(cores, path)

    monkeypatch.setattr(threads, "_cpu_times", next_snapshot)
    assert threads.free_cores(window_s=0.0, cores=[0, 1], stat=tmp_path / "stat") == pytest.approx(0.75)
    monkeypatch.setattr(threads, "_cpu_times", real)
    assert threads.free_cores(window_s=0.0, cores=[0], stat=tmp_path / "missing") is None


def test_free_cores_on_this_machine_is_between_zero_and_the_usable_cores():
    free = threads.free_cores(window_s=0.05)
    if free is None:
        pytest.skip("no /proc/stat on this platform")
    assert 0.0 <= free <= len(threads.usable_cores()) + 1e-9


def _run(code: str, env: dict) -> dict:
    drop = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "VARPO_THREADS", "OMP_WAIT_POLICY")
    env = {k: v for k, v in os.environ.items() if k not in drop} | env
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_apply_sets_torch_threads_and_the_wait_policy_before_torch_loads():
    code = (
        "import json, os, sys, varpo.threads as t\n"
        "t.free_cores = lambda *a, **k: 0.1\n"  # a busy machine
        "c = t.announce('auto')\n"
        "import torch\n"
        "print(json.dumps({'threads': torch.get_num_threads(), 'chosen': c.threads, "
        "'policy': os.environ.get('OMP_WAIT_POLICY'), 'source': c.source}))\n")
    got = _run(code, {"LOCAL_RANK": "0"})
    assert got == {"threads": 1, "chosen": 1, "policy": "PASSIVE", "source": "free cores"}
    got = _run(code.replace("0.1", "64.0"), {"VARPO_THREADS": "2"})
    assert got == {"threads": 2, "chosen": 2, "policy": None, "source": "VARPO_THREADS"}
    # the user's OMP_NUM_THREADS: torch keeps it, varpo only reports it
    got = _run(code, {"OMP_NUM_THREADS": "2"})
    assert got["threads"] == 2 and got["source"] == "OMP_NUM_THREADS" and got["policy"] is None
