"""Two CPU ranks (gloo) under the real `deepspeed` launcher, every role under ZeRO-3.

Rollouts are made identical across world sizes by deterministic decoding (top_k=1) and a fixed
response length, and each step is one minibatch: then a 2-rank run with global batch B must
reproduce a 1-rank run with batch B. Tolerance 1e-4 (relative): the only difference is the
order of floating-point reductions (gradients averaged by all-reduce vs summed in one rank)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.multirank, pytest.mark.slow]


def _launch(n: int, out: Path, overrides: list[str]) -> None:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "VARPO_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    sets = [x for o in overrides for x in ("--set", o)]
    if n == 1:
        cmd = [sys.executable, str(ROOT / "launch/train_ppo.py")]
    else:
        cmd = ["deepspeed", "--num_nodes", "1", "--num_accelerators", str(n), "--master_port", str(29500 + os.getpid() % 1000),
               str(ROOT / "launch/train_ppo.py")]
    proc = subprocess.run([*cmd, "--out", str(out), *sets], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _common(tiny_policy):
    return [
        f"model.policy_path={tiny_policy}", "reward.type=gold", "deepspeed.zero_stage=3",
        "deepspeed.param_persistence_threshold=0", "ppo.batch_size=8", "ppo.mini_batch_size=8", "ppo.ppo_epochs=1",
        "ppo.actor_lr=1e-3", "ppo.critic_lr=1e-3", "generation.top_k=1", "generation.min_new_tokens=5",
        "generation.max_new_tokens=5", "generation.max_prompt_len=8", "ppo.kl.beta=0.5",
    ]


@pytest.fixture(scope="module")
def prompts_file(prompts, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return path


def test_two_ranks_match_one_rank_and_resume_on_one(tiny_policy, prompts_file, tmp_path):
    common = [*_common(tiny_policy), f"data.prompts_path={prompts_file}"]
    _launch(1, tmp_path / "one", [*common, "ppo.steps=3"])
    _launch(2, tmp_path / "two", [*common, "ppo.steps=2", "ppo.checkpoint_every=1"])
    one, two = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert [r["world_size"] for r in two] == [2, 2] and one[0]["world_size"] == 1
    for a, b in zip(one, two):
        for k in ("score_mean", "kl_mean", "policy_loss", "value_loss", "returns_mean", "entropy"):
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), (a["step"], k)
    # the 2-rank checkpoint (ZeRO-3 shards of 2 ranks) resumes on 1 rank and finishes step 2
    _launch(1, tmp_path / "two", [*common, "ppo.steps=3", "ppo.checkpoint_every=1"])
    resumed = _rows(tmp_path / "two")
    assert [r["step"] for r in resumed] == [0, 1, 2] and resumed[2]["world_size"] == 1
    assert resumed[2]["score_mean"] == pytest.approx(one[2]["score_mean"], rel=1e-3, abs=1e-5)
    assert (tmp_path / "two" / "policy" / "model.safetensors").exists()
