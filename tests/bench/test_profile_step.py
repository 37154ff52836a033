"""benchmarks/profile_step.py end to end at the tiny size: a real varpo run whose update is split into
its parts. The parts are wall-clock sums inside the update, so each is positive and together they
stay within the update's own seconds and cover most of it (the rest is the loss arithmetic between
the calls); the operator tables come back when asked. No timing is asserted beyond that ordering."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_profile_step_splits_the_update(tmp_path):
    out = tmp_path / "prof"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "profile_step.py"), "--size", "tiny",
                           "--steps", "2", "--ops", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    res = json.loads((out / "profile.json").read_text())
    assert len(res["steps"]) == 2 and res["threads"] == 1
    for row in res["steps"]:
        parts = {k: v for k, v in row.items() if k.startswith("update/")}
        assert set(parts) == {f"update/{p}" for p in ("actor_forward", "actor_backward", "actor_optimizer",
                                                     "critic_forward", "critic_backward", "critic_optimizer")}
        assert all(v > 0 for v in parts.values()), parts
        assert 0.5 * row["update"] < sum(parts.values()) <= row["update"]
    assert set(res["ops"]) == {"rollout", "update"} and "aten::" in res["ops"]["update"]
    assert "| actor_backward |" in (out / "profile.md").read_text()
