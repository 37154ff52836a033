"""The issue's contract: `varpo train-ppo -c configs/default.yaml --set generation.backend=vllm
--set ppo.steps=3 --out DIR` in the vLLM environment, on the embedded task (testbed LM: head_dim 32)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(2400)]
ROOT = Path(__file__).resolve().parents[2]


def test_train_ppo_cli_with_vllm(tmp_path, testbed):
    out = tmp_path / "run"
    env = {**os.environ, "VARPO_NO_PROGRESS": "1"}
    cmd = [sys.executable, "-m", "varpo.cli", "train-ppo", "-c", str(ROOT / "configs/default.yaml"),
           "--set", "generation.backend=vllm", "--set", "ppo.steps=3",
           # the first step's rollout is logged, the third's after two syncs
           "--set", "generation.vllm.importance_correction=tis", "--out", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=2300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    # importance correction needs the trainer's own old log-probs, and the run says so
    assert "old log-probs: generation.vllm.importance_correction=tis" in r.stderr
    assert "an actor forward at every rollout" in r.stderr
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 1, 2]
    for row in rows:
        assert "skipped" not in row
        mean, largest = row["rollout_logprob_diff_mean"], row["rollout_logprob_diff_max"]
        assert math.isfinite(mean) and math.isfinite(largest) and 0 <= mean <= largest
        # fp32 numerics differ by ~1e-5; the rest is min_new_tokens' EOS masking at the first
        # position, which vLLM's processed log-probs include and the trainer's do not
        assert largest < 1.0, row
        assert row["time/sync"] > 0
    assert (out / "policy" / "config.json").exists()
