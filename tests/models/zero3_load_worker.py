"""One rank of tests/models/test_zero3_load.py (args: FOLDER OUT): the ensemble folder loaded under ZeRO-3 with
parameters partitioned from the start; writes each parameter, gathered, to OUT/rank{r}.pt."""
import sys
from pathlib import Path

import deepspeed
import torch
import transformers.modeling_utils as hf_loading

from varpo.config import DeepSpeedConfig
from varpo.dist import init_distributed
from varpo.engines import build_model, ds_config
from varpo.reward.model import EnsembleRewardModel


def _merged_load(*a, **kw):
    raise AssertionError("transformers' own loader ran (it maps every checkpoint file on rank 0 at once)")


hf_loading.load_state_dict = _merged_load  # the backbone must be filled tensor by tensor instead
folder, out = (a for a in sys.argv[1:] if not a.startswith("--local_rank"))
out = Path(out)
info = init_distributed("gloo", 5, 0, 120)
conf = ds_config(DeepSpeedConfig(zero_stage=3, param_persistence_threshold=0), "reward", 1, trainable=False)
model = build_model(lambda: EnsembleRewardModel.from_pretrained(folder), conf)
params = dict(model.backbone.named_parameters())
assert all(hasattr(p, "ds_numel") for p in params.values()), "not partitioned by zero.Init"
shards = {n: p.ds_tensor.numel() for n, p in params.items()}
full = {}
for n, p in params.items():
    with deepspeed.zero.GatheredParameters([p]):
        full[n] = p.detach().clone()
torch.save({"full": full, "shard_numel": shards}, out / f"rank{info.rank}.pt")
