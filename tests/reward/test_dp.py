"""Data parallelism: two ranks under torchrun (each a shard of every batch) train exactly the
ensemble one process trains (bootstrap weights and LoRA included)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from varpo.config import load_config
from varpo.defaults import EMBEDDED
from varpo.outputs import read_jsonl
from varpo.reward.train import train_reward_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_ranks_match_one(tmp_path, rm_overrides):
    overrides = [*rm_overrides, "reward_training.lora.enabled=true", "reward_training.lora.r=4"]
    one = train_reward_model(load_config(EMBEDDED, overrides), tmp_path / "one")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "launch" / "train_reward.py"), "--out", str(tmp_path / "two")]
    for o in overrides:
        cmd += ["--set", o]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    proc = subprocess.run(cmd, env={**env, "DS_ACCELERATOR": "cpu", "VARPO_NO_PROGRESS": "1"}, capture_output=True, check=False,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "rm_report.json").read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1
    loss1 = [r["loss"] for r in read_jsonl(tmp_path / "one" / "train_log.jsonl") if r["kind"] == "train"]
    loss2 = [r["loss"] for r in read_jsonl(tmp_path / "two" / "train_log.jsonl") if r["kind"] == "train"]
    assert loss2 == pytest.approx(loss1, rel=1e-4)
    h1, h2 = (load_file(str(tmp_path / d / "reward_model" / "heads.safetensors")) for d in ("one", "two"))
    torch.testing.assert_close(h2["weight"], h1["weight"], rtol=1e-4, atol=1e-4)
    assert two["head_accuracy"] == pytest.approx(one["head_accuracy"])


@pytest.mark.slow
def test_zero3_matches_stage0(tmp_path, rm_overrides):
    """ZeRO-3 (backbone partitioned while it loads, LoRA on) trains the same ensemble as stage 0.
    Run in a child process: HF's ZeRO-3 switch is process-global while the model lives."""
    overrides = [*rm_overrides, "reward_training.lora.enabled=true", "reward_training.lora.r=4", "reward_training.epochs=1"]
    ref = train_reward_model(load_config(EMBEDDED, overrides), tmp_path / "z0")
    cmd = [sys.executable, str(ROOT / "launch" / "train_reward.py"), "--out", str(tmp_path / "z3")]
    for o in [*overrides, "deepspeed.zero_stage=3"]:
        cmd += ["--set", o]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    proc = subprocess.run(cmd, env={**env, "DS_ACCELERATOR": "cpu", "VARPO_NO_PROGRESS": "1"}, capture_output=True, check=False,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    z3 = json.loads((tmp_path / "z3" / "rm_report.json").read_text())
    assert z3["head_accuracy"] == pytest.approx(ref["head_accuracy"])
    # Adam divides each gradient by its running RMS, so float reduction-order noise in near-zero
    # gradients (which differs between ZeRO-3's flat partitions and stage 0, and between CPUs)
    # becomes weight noise of order lr. Compare against the training update itself: a partition,
    # gather or reduction bug gives an error as large as the update; reordering noise stays ~1e-3.
    init = _initial_state(tiny_backbone_dir(rm_overrides), tmp_path / "z0" / "reward_model")
    moved = 0
    for name in ("heads.safetensors", "backbone/model.safetensors"):
        a, b = (load_file(str(tmp_path / d / "reward_model" / name)) for d in ("z0", "z3"))
        assert set(a) == set(b)
        for k in a:
            if k not in init[name]:  # never trained (prior heads, member shift/scale): identical copies
                assert torch.equal(a[k], b[k]), f"{name}:{k} differs between ZeRO-3 and stage 0"
                continue
            start = init[name][k]
            update = (a[k] - start).norm().item()
            if update == 0.0:  # frozen under both: ZeRO-3's partition and gather must be exact copies
                assert torch.equal(b[k], start), f"{name}:{k} is frozen yet changed under ZeRO-3"
                continue
            moved += 1
            assert (b[k] - a[k]).norm().item() <= 0.02 * update, (
                f"{name}:{k}: ZeRO-3 and stage 0 differ by {(b[k] - a[k]).norm().item():.3g}, "
                f"against a training update of {update:.3g}")
    assert moved >= 3, "expected the heads and the LoRA-adapted projections to train"


def tiny_backbone_dir(overrides: list[str]) -> Path:
    return Path(next(o.split("=", 1)[1] for o in overrides if o.startswith("reward_training.backbone_path=")))


def _initial_state(backbone_dir: Path, trained_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    """The weights before training: the backbone checkpoint (a CausalLM; the ensemble saves its base
    model, so without the `model.` prefix) and heads drawn from the seeds the ensemble recorded."""
    from varpo.reward.ensemble import init_heads, read_config

    raw = load_file(str(backbone_dir / "model.safetensors"))
    backbone = {k.removeprefix("model."): v for k, v in raw.items() if k.startswith("model.")}
    conf = read_config(trained_dir)
    weight, bias = torch.empty(conf["num_heads"], conf["hidden_size"]), torch.empty(conf["num_heads"])
    init_heads(weight, bias, conf["head_seeds"])
    return {"heads.safetensors": {"weight": weight, "bias": bias}, "backbone/model.safetensors": backbone}


@pytest.mark.slow
def test_zero3_scorer_matches_plain(tmp_path):
    """load_scorer(ds_cfg=ZeRO-3): the backbone is partitioned as it loads and scores the same."""
    from varpo.reward.model import EnsembleRewardModel

    from .conftest import llama_config, make_tokenizer

    torch.manual_seed(3)
    EnsembleRewardModel.from_backbone(llama_config(), 5).save_pretrained(tmp_path / "rm", tokenizer=make_tokenizer())
    code = f"""
import json
from varpo.config import DeepSpeedConfig
from varpo.engines import is_zero3
from varpo.reward.scorer import load_scorer
p, r = ["the food", "we visited"], ["was great .", "the room was dirty ."]
a = load_scorer({str(tmp_path / 'rm')!r}).score(p, r)
sc = load_scorer({str(tmp_path / 'rm')!r}, ds_cfg=DeepSpeedConfig(zero_stage=3))
b = sc.score(p, r)
print(json.dumps({{"zero3": is_zero3(sc.model.module), "diff": (a.extras["per_head"] - b.extras["per_head"]).abs().max().item()}}))
"""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    proc = subprocess.run([sys.executable, "-c", code], env={**env, "DS_ACCELERATOR": "cpu"}, capture_output=True, check=False,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["zero3"] and got["diff"] < 1e-5
