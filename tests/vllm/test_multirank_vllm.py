"""Two CPU ranks under the DeepSpeed launcher, the actor under ZeRO-3, one vLLM engine per rank
(each bound to its own core): every step the ranks gather the actor's shards bucket by bucket and
load them into their own engine; the engines' log-probs must then match the trainer's."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from varpo.dist import free_port

pytestmark = [pytest.mark.vllm, pytest.mark.multirank, pytest.mark.slow, pytest.mark.timeout(2400)]
ROOT = Path(__file__).resolve().parents[2]


def test_two_ranks_zero3_with_vllm(tiny_llama, prompts, tmp_path):
    prompts_file = tmp_path / "prompts.jsonl"
    prompts_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    out = tmp_path / "run"
    port = free_port()
    sets = [
        f"model.policy_path={tiny_llama}", f"data.prompts_path={prompts_file}", "reward.type=gold",
        "deepspeed.zero_stage=3", "deepspeed.param_persistence_threshold=0", "deepspeed.dist_backend=gloo",
        "ppo.steps=2", "ppo.batch_size=8", "ppo.mini_batch_size=4", "ppo.ppo_epochs=1", "ppo.actor_lr=1e-3",
        "ppo.critic_lr=1e-3", "generation.backend=vllm", "generation.max_new_tokens=6", "generation.max_prompt_len=8",
        "generation.min_new_tokens=0",  # no EOS masking: vLLM and the trainer sample the same distribution
        "generation.vllm.sync_bucket_mb=0.01",
    ]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "VARPO_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_nodes", "1", "--num_accelerators", "2",
           "--master_port", str(port), str(ROOT / "launch/train_ppo.py"), "--out", str(out),
           *[x for s in sets for x in ("--set", s)]]
    try:
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=2300)
    finally:
        for seg in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"):
            seg.unlink(missing_ok=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 1] and all(row["world_size"] == 2 for row in rows)
    for row in rows:
        assert "skipped" not in row
        assert math.isfinite(row["rollout_logprob_diff_mean"])
        # after the step-0 update at lr 1e-3, a rank whose engine kept stale weights would be far off
        assert row["rollout_logprob_diff_max"] < 5e-3, row
