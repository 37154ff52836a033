"""A reward backbone loaded under ZeRO-3 one tensor at a time (varpo.models.zero3_load): two real
ranks (deepspeed launcher, gloo) on a checkpoint saved in several shard files; each rank holds half
of every parameter and the gathered parameters equal the saved ones exactly. A checkpoint that does
not match its config is refused naming the folder and the key."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from varpo.dist import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.multirank
@pytest.mark.slow
def test_two_ranks_load_a_sharded_checkpoint_tensor_by_tensor(tiny_models, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    from varpo.reward.model import EnsembleRewardModel

    base = tiny_models["llama"]
    torch.manual_seed(7)
    rm = EnsembleRewardModel.from_backbone(base, 3)
    with torch.no_grad():
        for p in rm.backbone.parameters():  # fresh values, not the initialisation zero.Init would redo
            p.add_(torch.randn_like(p))
    rm.save_pretrained(tmp_path / "rm", tokenizer=AutoTokenizer.from_pretrained(base))
    # re-save the backbone in several files, as large models are published
    for f in (tmp_path / "rm" / "backbone").glob("*.safetensors"):
        f.unlink()
    rm.backbone.save_pretrained(tmp_path / "rm" / "backbone", max_shard_size="20KB")
    assert len(list((tmp_path / "rm" / "backbone").glob("*.safetensors"))) >= 3
    want = {n: p.detach().clone() for n, p in AutoModel.from_pretrained(tmp_path / "rm" / "backbone").named_parameters()}
    port = free_port()
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "VARPO_NO_PROGRESS": "1"}
    # this environment's launcher: its ranks import this checkout's varpo (a `deepspeed` found on PATH may not)
    try:
        proc = subprocess.run([str(Path(sys.executable).with_name("deepspeed")), "--num_nodes", "1", "--num_accelerators", "2", "--master_port", str(port),
                               str(ROOT / "tests/models/zero3_load_worker.py"), str(tmp_path / "rm"), str(tmp_path)],
                              env=env, capture_output=True, text=True, timeout=600, check=False)
    finally:
        for seg in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"):
            seg.unlink(missing_ok=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for r in (0, 1):
        got = torch.load(tmp_path / f"rank{r}.pt")
        assert set(got["full"]) == set(want)
        for n, w in want.items():
            assert torch.equal(got["full"][n], w), n
            assert got["shard_numel"][n] == (w.numel() + 1) // 2, n  # half of it (DeepSpeed pads to the world)


def test_a_checkpoint_that_does_not_match_is_refused(tiny_models, tmp_path):
    from safetensors.torch import save_file
    from transformers import AutoModel

    from varpo.models.zero3_load import load_into_zero3

    model = AutoModel.from_pretrained(tiny_models["llama"])
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["layers.0.mlp.up_proj.weight"] = state["layers.0.mlp.up_proj.weight"][:, :3].contiguous()
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"up_proj.weight has shape \(128, 3\)"):
        load_into_zero3(model, tmp_path)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if "layers.1." not in k}
    state["not.a.weight"] = torch.zeros(2)
    (tmp_path / "model.safetensors").unlink()
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=rf"{tmp_path}.*unexpected keys \['not.a.weight'\].*layers.1"):
        load_into_zero3(model, tmp_path)
