"""Forward time of a K=10 reward ensemble against K=1 on the same backbone (issue 3, goal ≤ 1.05×):
the K heads are one Linear(hidden, K) on one pooled backbone pass, so extra heads should cost
next to nothing.

    python benchmarks/rm_heads.py --out benchmarks/results/rm            # CPU (or the GPU if present)
    python benchmarks/rm_heads.py --out DIR --reps 40 --batch 64 --seq 48

Both models share one backbone object; repetitions alternate K=1 and K=10 (so load drifts hit both)
and the ratio of medians is reported with the per-repetition ratios' median and the load average
before and after (a busy machine shows up there). Writes OUT/rm_heads[_<device>].json."""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path


def backbones(include_testbed: bool):
    """(name, backbone module): the testbed's tiny Llama (if it is built) and a mid-size Llama from a config."""
    from transformers import AutoModel, LlamaConfig

    out = []
    if include_testbed:
        from varpo.config import TestbedConfig
        from varpo.testbed import build_testbed

        tb = build_testbed(TestbedConfig(), progress=False)
        out.append(("testbed-llama-h128-L2", AutoModel.from_pretrained(str(tb.model_path))))
    conf = LlamaConfig(vocab_size=8000, hidden_size=512, num_hidden_layers=4, num_attention_heads=8,
                       intermediate_size=1376, max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    out.append(("llama-h512-L4", AutoModel.from_config(conf)))
    return out


def bench(backbone, device, batch: int, seq: int, reps: int, warmup: int) -> dict:
    import torch

    from varpo.reward import EnsembleRewardModel

    backbone = backbone.to(device).eval()
    models = {k: EnsembleRewardModel(backbone, k).to(device).eval() for k in (1, 10)}
    g = torch.Generator().manual_seed(0)
    vocab = backbone.config.vocab_size
    ids = torch.randint(3, vocab, (batch, seq), generator=g)
    lengths = torch.randint(seq // 2, seq + 1, (batch,), generator=g)
    mask = (torch.arange(seq)[None] < lengths[:, None]).long()
    ids, mask = ids.to(device), mask.to(device)

    def once(k):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.no_grad():
            models[k](ids, mask)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    for _ in range(warmup):
        once(1), once(10)
    times = {1: [], 10: []}
    for r in range(reps):
        order = (1, 10) if r % 2 == 0 else (10, 1)
        for k in order:
            times[k].append(once(k))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"batch": batch, "seq": seq, "reps": reps, "median_s_k1": med[1], "median_s_k10": med[10],
            "ratio_of_medians": med[10] / med[1],
            "median_of_paired_ratios": statistics.median(b / a for a, b in zip(times[1], times[10])),
            "parameters_backbone": sum(p.numel() for p in backbone.parameters())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq", type=int, default=48)
    ap.add_argument("--no-testbed", action="store_true", help="skip the testbed backbone (no build)")
    args = ap.parse_args()
    import torch
    from host import machine  # benchmarks/, the script's own folder

    from varpo.outputs import print_table, write_json

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    load_before = os.getloadavg()
    rows = []
    for name, backbone in backbones(not args.no_testbed):
        rows.append({"backbone": name, **bench(backbone, device, args.batch, args.seq, args.reps, args.warmup)})
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine(str(device)),
              "load_average_before": load_before, "load_average_after": os.getloadavg(), "goal": "K=10 / K=1 ≤ 1.05",
              "results": rows}
    out = Path(args.out) / f"rm_heads{'' if device.type == 'cpu' else '_' + device.type}.json"
    write_json(out, result)
    print_table(f"reward ensemble forward, K=10 vs K=1 ({device}) → {out}", rows,
                ["backbone", "median_s_k1", "median_s_k10", "ratio_of_medians", "median_of_paired_ratios"])


if __name__ == "__main__":
    main()
