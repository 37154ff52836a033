"""DeepSpeed's multi-node launcher for real, on one machine: benchmarks/multinode_localhost.sh
starts two ssh "nodes" (127.0.0.2/3, own PID/mount/UTS namespaces), launches PPO with every role
under ZeRO-3 through the pdsh runner with one rank per node, and compares it with 2 ranks on one
node; resumes the 2-node checkpoint on 1 rank; an unreachable host and a killed rank must end the
job within a bound; and it must leave nothing behind. Tiny models (as in test_multirank.py) keep it
short; benchmarks/results/multinode/ has the same on the embedded task.

Root only (ssh servers in new namespaces; apt-get installs openssh-server and pdsh if missing)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks/multinode_localhost.sh"
pytestmark = [
    pytest.mark.multinode, pytest.mark.multirank, pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="starts ssh servers in new namespaces: needs root"),
    pytest.mark.skipif(shutil.which("unshare") is None, reason="no unshare (util-linux)"),
    pytest.mark.skipif(not Path("/usr/sbin/sshd").exists() and shutil.which("apt-get") is None,
                       reason="no sshd and no apt-get to install it"),
]


def _run(out: Path, tmp: Path, sets: list[str], **env) -> subprocess.CompletedProcess:
    tmp.mkdir(exist_ok=True)
    cmd = ["bash", str(SCRIPT), str(out), *[x for s in sets for x in ("--set", s)]]
    proc = subprocess.Popen(cmd, env={**os.environ, "TMPDIR": str(tmp), **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=2300)
    except BaseException:
        # a timeout (ours or pytest-timeout's): TERM lets the script's trap stop the ssh servers and
        # the ranks; a SIGKILL (subprocess.run's answer) would leave them running
        proc.terminate()
        try:
            proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def tiny_sets(tiny_policy, prompts, tmp_path_factory) -> list[str]:
    from transformers import AutoTokenizer

    from varpo.reward.model import EnsembleRewardModel

    root = tmp_path_factory.mktemp("multinode_models")
    torch.manual_seed(5)
    EnsembleRewardModel.from_backbone(tiny_policy, 4).save_pretrained(root / "reward", tokenizer=AutoTokenizer.from_pretrained(tiny_policy))
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return [f"model.policy_path={tiny_policy}", f"reward.path={root / 'reward'}", f"data.prompts_path={root / 'prompts.jsonl'}",
            "generation.max_new_tokens=5", "generation.max_prompt_len=8", "ppo.variance.heterogeneity=2"]


def _assert_clean(out: Path, tmp: Path, exit_code: int) -> None:
    clean = json.loads((out / "cleanup.json").read_text())
    assert clean == {"exit_code": exit_code, "node_processes_left": 0, "processes_naming_workdir_left": 0,
                     "run_processes_left": 0, "workdir_removed": True, "shm_buffers_left": 0}
    assert not list(tmp.glob("varpo-multinode.*"))  # keys, ssh configs, .deepspeed_env: gone


@pytest.mark.timeout(2500)  # ~11 min on an idle 2-core machine; far more when it is shared
def test_two_nodes_match_one_node_resume_and_failures(tiny_sets, tmp_path):
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    r = _run(out, tmp, tiny_sets)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads((out / "multinode.json").read_text())
    two = [json.loads(x) for x in (out / "two_nodes/metrics.jsonl").read_text().splitlines()]
    one = [json.loads(x) for x in (out / "one_node/metrics.jsonl").read_text().splitlines()]
    assert [x["world_size"] for x in two] == [2, 2] == [x["world_size"] for x in one]
    # a real update with non-trivial values, or the comparison would compare zeros
    assert one[0]["score_mean"] != 0 and one[0]["weight_std"] > 0.05 and one[1]["kl_mean"] > 0
    for a, b in zip(one, two):
        for k in res["tolerance"]["keys"]:
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), (a["step"], k)
    assert res["two_nodes_match_one_node"] is True and res["resumed_on_one_rank"] is True
    assert res["max_abs_diff_score_mean"] <= 1e-4 * abs(one[0]["score_mean"]) + 1e-6
    # each rank ran in its own node, with the variables only the env file could have given it
    ranks = res["ranks_seen"]
    assert {r: v["node_addr"] for r, v in ranks.items()} == {"0": "127.0.0.2", "1": "127.0.0.3"}
    for v in ranks.values():
        assert v["env"]["DS_ACCELERATOR"] == "cpu" and v["env"]["VARPO_MULTINODE_RUN"].startswith("varpo-multinode.")
        assert v["env"]["MASTER_ADDR"] == "127.0.0.2" and v["env"]["CROSS_SIZE"] == "2"
    assert res["ssh_session_env"]["DS_ACCELERATOR"] is None and res["ssh_session_env"]["hostname"] == "varpo-node2"
    # gloo listens on each node's own address (its hostname resolves there); rank 1 reaches node 1
    assert any(a.startswith("127.0.0.2:") for a in ranks["0"]["listen"])
    assert any(a.startswith("127.0.0.3:") for a in ranks["1"]["listen"])
    assert any("-> 127.0.0.2:" in c for c in ranks["1"]["to_other_node"])
    # both ranks wrote their ZeRO-3 shards into the checkpoint the 1-rank resume re-partitioned
    assert any("rank_1" in f for f in res["two_nodes_checkpoint_actor_files"]) and res["resume"]["universal_checkpoints"]
    # failures end within their bound and name the host
    f = res["failures"]
    assert f["unreachable_host_preflight"]["exit_code"] == 1 and f["unreachable_host_preflight"]["names_host"]
    assert f["unreachable_host_deepspeed_alone"]["exit_code"] not in (0, 124)
    assert f["unreachable_host_deepspeed_alone"]["names_host"]
    assert f["rank_killed"]["exit_code"] not in (0, 124) and f["rank_killed"]["names_host"]
    assert f["rank_killed"]["processes_left_in_nodes"] == []
    _assert_clean(out, tmp, 0)


def test_cleanup_after_a_failure(tmp_path):
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    r = _run(out, tmp, [], VARPO_MULTINODE_FAIL_AFTER_NODES="1")
    assert r.returncode == 3 and "nodes up" in r.stdout, r.stdout + r.stderr
    _assert_clean(out, tmp, 3)
