"""`varpo estimate-memory --find-min-gpus`: how many GPUs of a given memory a config needs. The
answer is checked against `plan` itself at every world size the trainer accepts: the one
returned fits, every smaller one does not."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from varpo.cli import app
from varpo.config import ConfigError, load_config
from varpo.memory import GIB, Cluster, find_min_gpus, plan, role_shapes

SHAPES = Path(__file__).parent / "model_configs"
BIG = [f"model.policy_path={SHAPES / 'llama3_8b_shape.json'}", f"reward.path={SHAPES / 'llama3_8b_shape.json'}",
       "deepspeed.zero_stage=3", "ppo.batch_size=64", "ppo.mini_batch_size=16", "deepspeed.precision=bf16",
       "generation.max_new_tokens=128", "generation.max_prompt_len=256"]


def _peak(cfg, world: int, gpn: int) -> float:
    cluster = Cluster(1, world) if world <= gpn else Cluster(world // gpn, gpn)
    return plan(cfg, cluster)["total_per_rank"]["gpu_bytes_peak_phase"] / GIB


def test_smallest_fitting_world_against_plan():
    cfg = load_config(None, BIG)
    one, eight = _peak(cfg, 1, 8), _peak(cfg, 8, 8)
    assert eight < one  # ZeRO-3 shards: more GPUs, less per rank
    budget = (one + eight) / 2  # fits somewhere between one GPU and eight
    found = find_min_gpus(cfg, budget, gpus_per_node=8)
    w = found["min_gpus"]
    assert w is not None and 1 < w <= 8
    assert found["plan"]["fits"] and found["plan"]["cluster"]["world_size"] == w
    worlds = [t["world_size"] for t in found["tried"]]
    assert worlds == [x for x in (1, 2, 4, 8, 16) if x <= w]  # the divisors of gcd(64, 16), smallest first
    for t in found["tried"][:-1]:
        assert not t["fits"] and _peak(cfg, t["world_size"], 8) > budget
    assert _peak(cfg, w, 8) <= budget
    # across nodes: with 2 GPUs per node, 4 GPUs are 2 nodes
    found2 = find_min_gpus(cfg, _peak(cfg, 4, 2) + 1e-6, gpus_per_node=2)
    assert found2["min_gpus"] is not None and found2["plan"]["cluster"]["gpus_per_node"] <= 2


def test_nothing_fits_says_why():
    cfg = load_config(None, BIG)
    found = find_min_gpus(cfg, 0.01)
    assert found["min_gpus"] is None and len(found["tried"]) == 5
    assert "no world size up to 16 (the largest dividing ppo.batch_size=64 and ppo.mini_batch_size=16) fits" in found["why"]


def test_cli_flag(tmp_path):
    args = ["estimate-memory", *[x for o in BIG for x in ("--set", o)], "--find-min-gpus", "--json"]
    res = CliRunner().invoke(app, args)
    assert isinstance(res.exception, ConfigError) and "--find-min-gpus needs --gpu-memory-gib" in str(res.exception)
    res = CliRunner().invoke(app, [*args, "--gpu-memory-gib", "80", "--num-nodes", "2"])
    assert isinstance(res.exception, ConfigError) and "chooses the number of nodes itself" in str(res.exception)
    res = CliRunner().invoke(app, [*args, "--gpu-memory-gib", "80"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout[res.stdout.index("{"):])
    assert data["find_min_gpus"]["min_gpus"] == data["cluster"]["world_size"] and data["fits"]
    assert f"needs {data['cluster']['world_size']} GPU(s) of 80.0 GiB" in res.stderr.replace("\n", " ")


def test_default_world_is_said(tmp_path):
    res = CliRunner().invoke(app, ["estimate-memory", "--json"])
    assert res.exit_code == 0, res.output
    assert "world of 1 node × 1 GPU" in json.loads(res.stdout[res.stdout.index("{"):])["note"]
    res = CliRunner().invoke(app, ["estimate-memory", "--json", "--num-gpus-per-node", "2"])
    assert "note" not in json.loads(res.stdout[res.stdout.index("{"):])


@pytest.fixture
def seqcls_folder(tmp_path):
    from transformers import LlamaConfig

    conf = LlamaConfig(vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_labels=1, architectures=["LlamaForSequenceClassification"])
    conf.save_pretrained(tmp_path / "rm")
    return tmp_path / "rm"


def test_sequence_classifier_reward_is_planned(seqcls_folder):
    cfg = load_config(None, [f"model.policy_path={SHAPES / 'llama3_8b_shape.json'}",
                             "reward.type=sequence_classifier", f"reward.path={seqcls_folder}"])
    shapes = role_shapes(cfg)
    from transformers import AutoConfig, AutoModel

    trunk = AutoModel.from_config(AutoConfig.from_pretrained(seqcls_folder))  # instantiated: the reference count
    assert shapes["reward"].total_params == sum(p.numel() for p in trunk.parameters()) + 32 + 1  # trunk + one head
