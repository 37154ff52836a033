"""One rank of tests/memory/test_zero3_replay.py, under the `deepspeed` launcher: a tiny ensemble as a
frozen ZeRO-3 engine (gloo) with the given prefetch knobs; two forwards (the first records
DeepSpeed's trace, the second prefetches from it). After DeepSpeed's own pre-forward hook of every
module (its fetch and prefetch), records the elements of parameters gathered or in flight, and the
modules' call order and own parameter counts. Writes OUT/rank<r>.json."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def main(out: Path, max_live: int, bucket: int, sequential: bool) -> None:
    import torch
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus
    from deepspeed.runtime.zero.partitioned_param_coordinator import iter_params
    from transformers import LlamaConfig

    from varpo.config import DeepSpeedConfig
    from varpo.dist import init_distributed
    from varpo.engines import build_model, ds_config, inference_engine
    from varpo.reward.model import EnsembleRewardModel

    info = init_distributed("gloo")
    conf = ds_config(DeepSpeedConfig(zero_stage=3), "reward", 1, trainable=False)
    conf["zero_optimization"].update(stage3_max_live_parameters=max_live, stage3_prefetch_bucket_size=bucket,
                                     stage3_allgather_sequential=sequential)
    hc = LlamaConfig(vocab_size=61, hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    engine = inference_engine(build_model(lambda: EnsembleRewardModel.from_backbone(hc, 3), conf), conf)
    module = engine.module
    params = list(module.parameters())
    trace: list[tuple[str, int]] = []

    def live() -> int:
        return sum(p.ds_numel for p in params if p.ds_status != ZeroParamStatus.NOT_AVAILABLE)

    for name, m in module.named_modules():  # registered after DeepSpeed's hooks: they run after its fetch
        m.register_forward_pre_hook(lambda *_, _n=name: trace.append((_n, live())))
    ids = torch.randint(0, 61, (2, 9))
    runs = []
    for _ in range(2):
        trace.clear()
        with torch.no_grad():
            engine(ids, torch.ones_like(ids))
        runs.append(list(trace))
    # the parameters DeepSpeed fetches for each module: its own and the ones its forward reads from
    # submodules (its "external" parameters, registered during the first forward: the ensemble's
    # forward reads heads.weight.dtype)
    own = {n: [[p.ds_id, p.ds_numel] for p in iter_params(m)] for n, m in module.named_modules()}
    (out / f"rank{info.rank}.json").write_text(json.dumps({"runs": runs, "own": own, "world": info.world_size}))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--max-live", type=int, required=True)
    ap.add_argument("--bucket", type=int, required=True)
    ap.add_argument("--sequential", action="store_true")
    ap.add_argument("--local_rank", type=int, default=None)
    a = ap.parse_args()
    if a.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(a.local_rank))
    main(a.out, a.max_live, a.bucket, a.sequential)
