"""Two CPU ranks under the real `deepspeed` launcher, a ZeRO-3 actor, generation.backend=vllm: one
vLLM engine per rank (each in its own engine process with its own one-process torch.distributed
world, bound to its own core), the actor's gathered weights synced into every rank's engine after
every update. One rank's side is tests/vllm/multirank_worker.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from varpo.dist import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.vllm, pytest.mark.multirank, pytest.mark.slow, pytest.mark.timeout(2400)]
TOL = 5e-3  # |Δ log p|, vLLM's CPU kernels vs the trainer's forward, fp32, same weights (tests/vllm/test_engine.py)
STEPS = 3


def test_two_ranks_zero3_actor_vllm_engines(tiny_llama, prompts, tmp_path):
    prompts_file = tmp_path / "prompts.jsonl"
    prompts_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    probe_file = tmp_path / "probe.json"
    probe_file.write_text(json.dumps(prompts[:6]))
    out = tmp_path / "run"
    overrides = [
        f"model.policy_path={tiny_llama}", f"data.prompts_path={prompts_file}", "reward.type=gold",
        "deepspeed.zero_stage=3", "deepspeed.param_persistence_threshold=0", "deepspeed.dist_backend=gloo",
        f"ppo.steps={STEPS}", "ppo.batch_size=8", "ppo.mini_batch_size=8", "ppo.ppo_epochs=1",
        # a large step, so that one update moves the log-probs far more than TOL: a stale engine shows
        "ppo.actor_lr=1e-2",
        "generation.backend=vllm", "generation.max_new_tokens=8", "generation.max_prompt_len=8",
        # EOS masked at the first positions by the sampler: the engine's raw log-probs (the old
        # log-probs at temperature 1) are the unmasked distribution there too
        "generation.min_new_tokens=2",
        # several buckets per sync: one ZeRO-3 gather per transformer block
        "generation.vllm.sync_bucket_mb=0.0001",
    ]
    port = free_port()
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "VARPO_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    env.pop("VLLM_CPU_OMP_THREADS_BIND", None)  # varpo binds each rank's engine to its own cores
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_nodes", "1", "--num_accelerators", "2",
           "--master_port", str(port), str(ROOT / "tests/vllm/multirank_worker.py"), "--out", str(out),
           "--probe-prompts", str(probe_file), *[x for o in overrides for x in ("--set", o)]]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=2300, check=False)
    finally:
        left = list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"))
        for seg in left:
            seg.unlink(missing_ok=True)
    (tmp_path / "launch.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]

    # the run finished through the product's path: every step logged; the engine gave the old
    # log-probs (no actor forward at rollout), so there is no engine-vs-trainer mismatch to log
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(STEPS)) and all(r["world_size"] == 2 for r in rows)
    for r in rows:
        assert "skipped" not in r and "rollout_logprob_diff_max" not in r
        assert r["time/sync"] > 0
    assert (out / "policy" / "config.json").exists()

    ranks = [json.loads((out / "probe" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [x["rank"] for x in ranks] == [0, 1] and all(x["world"] == 2 for x in ranks)
    # each rank's engine on its own core (a 2-core host: "0" and "1")
    assert ranks[0]["omp_bind"] and ranks[1]["omp_bind"] and ranks[0]["omp_bind"] != ranks[1]["omp_bind"]
    for x in ranks:
        assert [row["step"] for row in x["rows"]] == list(range(STEPS))
        for row in x["rows"]:
            where = (x["rank"], row["step"])
            # this rank's own rollout: the old log-probs PPO trained with are the engine's, and they are
            # the sampling policy's own (its forward with the weights from before the update)
            assert row["old_logp_from_engine"] and not row["mismatch_logged"], where
            assert row["train_tokens"] > 0 and row["train_diff_max"] < TOL, where
            # after the update and the sync, this rank's engine samples the updated policy...
            assert row["now_diff_max"] < TOL, where
            # ...and the update moved the log-probs far beyond TOL, so a stale engine would fail above
            assert row["prev_diff_max"] > 20 * TOL, where
    for a, b in zip(ranks[0]["rows"], ranks[1]["rows"]):
        # same probe prompts, same step, same weights: the ranks' samples differ by their seeds alone
        assert a["probe_response_ids"] != b["probe_response_ids"], a["step"]
