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
import torch

from varpo.dist import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.multirank, pytest.mark.slow]


def _launch(n: int, out: Path, overrides: list[str], script: Path = ROOT / "launch/train_ppo.py",
            args: tuple[str, ...] = ()) -> None:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "VARPO_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    sets = [x for o in overrides for x in ("--set", o)]
    port = free_port()
    if n == 1:
        cmd = [sys.executable, str(script)]
    else:
        cmd = ["deepspeed", "--num_nodes", "1", "--num_accelerators", str(n), "--master_port", str(port), str(script)]
    left: list[Path] = []
    try:
        proc = subprocess.run([*cmd, "--out", str(out), *args, *sets], env=env, capture_output=True, text=True,
                              timeout=600, check=False)
    finally:
        # DeepSpeed's CPU all-reduce creates one shared-memory segment per rank, named after the
        # master port (69 MB each) and never removes it; varpo.dist unlinks each rank's at exit.
        # Whatever a crashed run left is removed here, so a later launch never opens it stale.
        left = list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"))
        for seg in left:
            seg.unlink(missing_ok=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not left, f"shared-memory all-reduce buffers left behind: {left}"


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


@pytest.fixture(scope="module")
def tiny_reward(tiny_policy, tmp_path_factory) -> Path:
    """A 4-head reward ensemble on the tiny policy's backbone (random heads): scores and σ² that
    vary across responses, so every compared metric below is non-trivial."""
    from transformers import AutoTokenizer

    from varpo.reward.model import EnsembleRewardModel

    path = tmp_path_factory.mktemp("tiny_reward")
    torch.manual_seed(5)
    EnsembleRewardModel.from_backbone(tiny_policy, 4).save_pretrained(path, tokenizer=AutoTokenizer.from_pretrained(tiny_policy))
    return path


def test_two_ranks_match_one_rank_and_resume_on_one(tiny_policy, tiny_reward, prompts_file, tmp_path):
    """Every role under ZeRO-3, the reward an ensemble (sharded too), variance-aware weights
    normalised by the σ² mean over all ranks (α = 2 to make them differ strongly)."""
    common = [*_common(tiny_policy), f"data.prompts_path={prompts_file}", "reward.type=ensemble",
              f"reward.path={tiny_reward}", "ppo.variance.weighting=batch_mean", "ppo.variance.heterogeneity=2"]
    _launch(1, tmp_path / "one", [*common, "ppo.steps=3"])
    _launch(2, tmp_path / "two", [*common, "ppo.steps=2", "ppo.checkpoint_every=1"])
    one, two = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert [r["world_size"] for r in two] == [2, 2] and one[0]["world_size"] == 1
    # a real update with non-trivial values, or the comparison below would compare zeros
    assert one[0]["score_mean"] != 0 and one[0]["variance_mean"] > 0 and one[0]["weight_std"] > 0.05
    assert one[0]["value_loss"] > 0 and one[1]["kl_mean"] > 0
    for a, b in zip(one, two):
        for k in ("score_mean", "variance_mean", "weight_std", "kl_mean", "weighted_kl_mean", "policy_loss",
                  "value_loss", "returns_mean", "entropy"):
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), (a["step"], k)
    # the 2-rank checkpoint (ZeRO-3 shards of 2 ranks) resumes on 1 rank and finishes step 2
    _launch(1, tmp_path / "two", [*common, "ppo.steps=3", "ppo.checkpoint_every=1"])
    resumed = _rows(tmp_path / "two")
    assert [r["step"] for r in resumed] == [0, 1, 2] and resumed[2]["world_size"] == 1
    assert resumed[2]["score_mean"] == pytest.approx(one[2]["score_mean"], rel=1e-3, abs=1e-5)
    assert (tmp_path / "two" / "policy" / "model.safetensors").exists()


def test_zero3_gather_modes_agree(tiny_policy, prompts_file, tmp_path):
    """generation.zero3_gather full, grouped and per_layer: the same rollouts (also when the
    ranks stop at different lengths) and the same first PPO steps, in one launch (the modes run
    in turn in one process group; tests/ppo/zero3_gather_worker.py). grouped's budget is ~1/5 of
    the tiny actor, so it runs several groups, one of which borrows the tied embedding."""
    budget_mb = 0.02
    modes = ("full", "grouped", "per_layer")
    common = [*_common(tiny_policy), f"data.prompts_path={prompts_file}", f"generation.zero3_gather_budget_mb={budget_mb}"]
    _launch(2, tmp_path, common, script=ROOT / "tests/ppo/zero3_gather_worker.py", args=("--modes", *modes))
    res = {m: [json.loads((tmp_path / m / f"rank{r}.json").read_text()) for r in (0, 1)] for m in modes}
    full, grouped, per_layer = (res[m] for m in modes)
    for r in (0, 1):
        assert grouped[r]["response_ids"] == full[r]["response_ids"] == per_layer[r]["response_ids"], r
        assert grouped[r]["uneven_response_ids"] == full[r]["uneven_response_ids"] == per_layer[r]["uneven_response_ids"]
        assert [len(x) for x in full[r]["uneven_response_ids"]] == [1 + 3 * r] * len(full[r]["uneven_response_ids"])
        # collectives: full gathers each parameter once per rollout and nothing in the decode loop;
        # grouped gathers each group once per forward (4 forwards: the longer rank's, both ranks)
        assert full[r]["uneven_all_gathers"] == full[r]["n_params"]
        assert grouped[r]["uneven_all_gathers"] == 4 * grouped[0]["n_groups"]
    assert full[0]["response_ids"] != full[1]["response_ids"]  # each rank sampled its own prompts
    # every metric of the first steps, bit for bit: the modes differ only in how parameters are fetched
    first, second = full[0]["rows"]
    assert first["score_mean"] != 0 and first["value_loss"] > 0 and second["kl_mean"] > 0  # a real update happened
    assert grouped[0]["rows"] == full[0]["rows"] == per_layer[0]["rows"]
    # grouped really ran in groups, under its budget; full had the whole model; both left nothing gathered
    g, budget = grouped[0], budget_mb * 2**20
    assert g["n_groups"] >= 3 and g["recorded_order"] is not None and g["shared_bytes"] > 0
    assert max(g["group_bytes"]) <= max(budget, g["largest_module_bytes"])
    assert g["peak_gathered_bytes"] <= max(budget, g["largest_module_bytes"]) + g["shared_bytes"]
    assert g["peak_gathered_bytes"] < full[0]["peak_gathered_bytes"] / 2
    assert full[0]["peak_gathered_bytes"] == full[0]["model_bytes"]
    assert full[0]["still_gathered_after_generate"] == grouped[0]["still_gathered_after_generate"] == []


def test_shared_trunk_two_ranks_match_one_rank_and_resume_on_one(tiny_policy, tiny_reward, prompts_file, tmp_path):
    """model.critic=shared_trunk under ZeRO-3: the value head sits in the actor's sharded engine
    (a second optimizer group). Two ranks (generating with per_layer fetches, on the causal LM
    inside the head's module) give the one-rank run's metrics and exported head; their checkpoint
    (actor engine only) resumes on one rank through the universal format."""
    from safetensors.torch import load_file

    common = [*_common(tiny_policy), f"data.prompts_path={prompts_file}", "reward.type=ensemble",
              f"reward.path={tiny_reward}", "ppo.variance.weighting=batch_mean", "model.critic=shared_trunk",
              "ppo.vf_coef=0.5", "ppo.critic_lr=3e-3"]
    _launch(1, tmp_path / "one", [*common, "ppo.steps=3"])
    _launch(2, tmp_path / "two", [*common, "ppo.steps=2", "ppo.checkpoint_every=1", "generation.zero3_gather=per_layer"])
    one, two = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert [r["world_size"] for r in two] == [2, 2] and one[0]["world_size"] == 1
    assert one[0]["value_loss"] > 0 and one[1]["kl_mean"] > 0 and one[1]["explained_variance"] != 0
    for a, b in zip(one, two):
        for k in ("score_mean", "variance_mean", "kl_mean", "weighted_kl_mean", "policy_loss", "value_loss",
                  "returns_mean", "entropy", "explained_variance"):
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), (a["step"], k)
    h2 = load_file(str(tmp_path / "two" / "policy_value_head" / "value_head.safetensors"))
    assert h2["weight"].abs().max() > 0
    ckpt = sorted((tmp_path / "two" / "checkpoints").glob("step_*"))[-1]
    assert (ckpt / "actor").is_dir() and not (ckpt / "critic").exists()
    _launch(1, tmp_path / "two", [*common, "ppo.steps=3", "ppo.checkpoint_every=1"])
    resumed = _rows(tmp_path / "two")
    assert [r["step"] for r in resumed] == [0, 1, 2] and resumed[2]["world_size"] == 1
    for k in ("score_mean", "value_loss", "policy_loss", "explained_variance"):
        assert resumed[2][k] == pytest.approx(one[2][k], rel=1e-3, abs=1e-5), k
    h1, h3 = (load_file(str(tmp_path / d / "policy_value_head" / "value_head.safetensors")) for d in ("one", "two"))
    torch.testing.assert_close(h3["weight"], h1["weight"], rtol=1e-3, atol=1e-5)
