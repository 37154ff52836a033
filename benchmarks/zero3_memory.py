"""Per-rank ZeRO-3 memory of a trainable role, measured on real DeepSpeed engines: the bytes of
the parameter shard and of the optimizer state (fp32 master partition + Adam moments) that each
rank holds, at world sizes 1 and 2 (CPU: gloo; GPU: nccl). One process per rank via the
`deepspeed` launcher; the driver compares the two.

    python benchmarks/zero3_memory.py --out benchmarks/results/zero3
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path

from host import machine  # benchmarks/, the script's own folder


def rank_main(out: Path, n_layer: int, n_embd: int) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from varpo.config import DeepSpeedConfig
    from varpo.dist import init_distributed
    from varpo.engines import build_model, ds_config, train_engine

    info = init_distributed()
    cfg = DeepSpeedConfig(zero_stage=3, param_persistence_threshold=0)
    conf = ds_config(cfg, "actor", 2, trainable=True)
    hc = GPT2Config(vocab_size=8192, n_positions=128, n_embd=n_embd, n_layer=n_layer, n_head=8)
    model = build_model(lambda: GPT2LMHeadModel(hc), conf)
    engine = train_engine(model, conf, lr=1e-4)
    x = torch.randint(0, 8192, (2, 32), device=engine.device)
    engine.backward(engine(input_ids=x, labels=x).loss)
    engine.step()  # materialises the Adam moments
    params = sum(p.ds_tensor.numel() * p.ds_tensor.element_size() for p in engine.module.parameters())
    full = sum(p.ds_numel for p in engine.module.parameters())
    opt = engine.optimizer
    master = sum(t.numel() * t.element_size() for t in opt.fp32_partitioned_groups_flat)
    moments = sum(v.numel() * v.element_size() for st in opt.optimizer.state.values() for v in st.values()
                  if torch.is_tensor(v) and v.dim() > 0)
    row = {"rank": info.rank, "world_size": info.world_size, "total_params": full, "param_shard_bytes": params,
           "optimizer_master_bytes": master, "optimizer_moment_bytes": moments,
           "optimizer_state_bytes": master + moments}
    (out / f"ws{info.world_size}_rank{info.rank}.json").write_text(json.dumps(row))


def driver(out: Path, n_layer: int, n_embd: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "VARPO_NO_PROGRESS": "1"}
    import torch

    if not torch.cuda.is_available():
        env["DS_ACCELERATOR"] = "cpu"
    from varpo.dist import free_port

    rows = []
    for n in (1, 2):
        cmd = ["deepspeed", "--num_nodes", "1", "--num_accelerators" if not torch.cuda.is_available() else "--num_gpus",
               str(n), "--master_port", str(free_port()), __file__, "--rank-main", "--out", str(out),
               "--n-layer", str(n_layer), "--n-embd", str(n_embd)]
        subprocess.run(cmd, check=True, env=env, capture_output=True)
        rows += [json.loads((out / f"ws{n}_rank{r}.json").read_text()) for r in range(n)]
    one = next(r for r in rows if r["world_size"] == 1)
    two = [r for r in rows if r["world_size"] == 2]
    result = {
        "model": f"GPT-2 {n_layer} layers × {n_embd}, vocab 8192 ({one['total_params'] / 1e6:.2f} M params)",
        "rows": rows,
        "ratio_2_over_1": {k: max(r[k] for r in two) / one[k] for k in ("param_shard_bytes", "optimizer_state_bytes")},
        "machine": machine(),
        "command": "python benchmarks/zero3_memory.py --out " + str(out),
    }
    (out / "zero3_memory.json").write_text(json.dumps(result, indent=2))
    lines = ["| world size | rank | param shard (MB) | optimizer state (MB) |", "|---|---|---|---|"]
    lines += [f"| {r['world_size']} | {r['rank']} | {r['param_shard_bytes'] / 1e6:.2f} | {r['optimizer_state_bytes'] / 1e6:.2f} |" for r in rows]
    lines += ["", f"max rank at 2 / 1 rank: params {result['ratio_2_over_1']['param_shard_bytes']:.3f}, "
              f"optimizer {result['ratio_2_over_1']['optimizer_state_bytes']:.3f}", "", f"`{result['command']}`"]
    (out / "zero3_memory.md").write_text(result["model"] + "\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=256)
    ap.add_argument("--rank-main", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(a.local_rank))
    rank_main(a.out, a.n_layer, a.n_embd) if a.rank_main else driver(a.out, a.n_layer, a.n_embd)
