"""Memory per rank of the PPO reference under LoRA: a separate frozen reference model
(`model.lora.reference_from_base=false`) against the actor's own base with its adapters disabled
(`true`, the default). Real engines built by varpo.ppo.roles, one process per rank via the
`deepspeed` launcher: world 1 (ZeRO-0) and world 2 (ZeRO-3, CPU: gloo). Each rank reports

  - the parameter bytes it holds for actor and reference (ZeRO-3: its shards), and
  - its peak resident memory (ru_maxrss) after building both, one reference forward and one actor
    update, and the resident memory at that point.

    python benchmarks/lora_reference_memory.py --out benchmarks/results/lora
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
from pathlib import Path

from host import ForeignCpu, describe, machine  # benchmarks/, the script's own folder


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _param_bytes(module) -> int:
    seen, total = set(), 0
    for p in module.parameters():
        t = getattr(p, "ds_tensor", None)
        t = p if t is None else t  # ZeRO-3: the rank's shard
        if t.data_ptr() in seen or t.numel() == 0:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def rank_main(out: Path, model_dir: str, from_base: bool, stage: int) -> None:
    import torch

    from varpo.config import load_config
    from varpo.dist import init_distributed
    from varpo.ppo.roles import ReferenceFromBase, build_actor, build_reference

    cfg = load_config(None, [f"model.policy_path={model_dir}", "model.lora.enabled=true", "model.lora.r=8",
                             f"model.lora.reference_from_base={str(from_base).lower()}", f"deepspeed.zero_stage={stage}",
                             "deepspeed.param_persistence_threshold=0", "ppo.batch_size=4", "ppo.mini_batch_size=4"])
    info = init_distributed()
    actor = build_actor(cfg, model_dir, info.world_size)
    ref = build_reference(cfg, model_dir, info.world_size, actor=actor)
    ids = torch.randint(3, 4000, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref(input_ids=ids)
    loss = actor(input_ids=ids).logits.float().pow(2).mean()
    actor.backward(loss)
    actor.step()
    ref_bytes = 0 if isinstance(ref, ReferenceFromBase) else _param_bytes(ref.module)
    row = {"rank": info.rank, "world_size": info.world_size, "zero_stage": stage, "reference_from_base": from_base,
           "actor_param_bytes": _param_bytes(actor.module), "reference_param_bytes": ref_bytes,
           "rss_bytes": _rss_bytes(), "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    (out / f"ws{info.world_size}_base{int(from_base)}_rank{info.rank}.json").write_text(json.dumps(row))


def driver(out: Path, hidden: int, layers: int) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from varpo.config import TestbedConfig
    from varpo.dist import free_port
    from varpo.testbed import build_testbed

    out.mkdir(parents=True, exist_ok=True)
    model_dir = out / "_model"
    tok = AutoTokenizer.from_pretrained(str(build_testbed(TestbedConfig(), progress=False).model_path))
    conf = LlamaConfig(vocab_size=max(len(tok), 4096), hidden_size=hidden, intermediate_size=int(hidden * 8 / 3),
                       num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(conf)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    del model
    env = {**os.environ, "VARPO_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    if not torch.cuda.is_available():
        env["DS_ACCELERATOR"] = "cpu"
    watch = ForeignCpu()
    rows = []
    # interleaved: each world size runs both settings back to back
    for n, stage in ((1, 0), (2, 3)):
        for from_base in (False, True):
            port = free_port()
            cmd = ["deepspeed", "--num_nodes", "1",
                   "--num_accelerators" if not torch.cuda.is_available() else "--num_gpus", str(n),
                   "--master_port", str(port), __file__, "--rank-main", "--out", str(out), "--model", str(model_dir),
                   "--stage", str(stage)] + (["--from-base"] if from_base else [])
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            for seg in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"):
                seg.unlink(missing_ok=True)
            if proc.returncode != 0:
                raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
            rows += [json.loads((out / f"ws{n}_base{int(from_base)}_rank{r}.json").read_text()) for r in range(n)]
    cores = watch.cores()
    for f in out.glob("ws*_rank*.json"):
        f.unlink()
    import shutil

    shutil.rmtree(model_dir, ignore_errors=True)

    def worst(n: int, from_base: bool, key: str) -> int:
        return max(r[key] for r in rows if r["world_size"] == n and r["reference_from_base"] == from_base)

    summary = {}
    for n in (1, 2):
        summary[f"world{n}"] = {
            key: {"separate": worst(n, False, key), "from_base": worst(n, True, key),
                  "saved": worst(n, False, key) - worst(n, True, key),
                  "ratio_from_base_over_separate": worst(n, True, key) / worst(n, False, key)}
            for key in ("reference_param_bytes", "rss_bytes", "peak_rss_bytes")}
    result = {
        "model": f"Llama {layers} layers × {hidden}, vocab {conf.vocab_size} ({n_params / 1e6:.1f} M params, fp32), "
                 "LoRA r=8 on q_proj/v_proj (peft's default for Llama)",
        "rows": rows, "max_over_ranks": summary,
        "machine": machine(),
        "other_processes_cores": cores, "contention": describe(cores),
        "command": f"python benchmarks/lora_reference_memory.py --out {out} --hidden {hidden} --layers {layers}",
    }
    (out / "lora_reference_memory.json").write_text(json.dumps(result, indent=2))
    mb = 1e6
    lines = ["| world (ZeRO) | reference | reference params / rank (MB) | RSS / rank (MB) | peak RSS / rank (MB) |",
             "|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["world_size"], r["reference_from_base"], r["rank"])):
        lines.append(f"| {r['world_size']} ({r['zero_stage']}), rank {r['rank']} | "
                     f"{'actor base, adapters off' if r['reference_from_base'] else 'separate model'} | "
                     f"{r['reference_param_bytes'] / mb:.1f} | {r['rss_bytes'] / mb:.1f} | {r['peak_rss_bytes'] / mb:.1f} |")
    lines.append("")
    for n in (1, 2):
        s = summary[f"world{n}"]
        lines.append(f"world {n}: per rank, from_base saves {s['reference_param_bytes']['saved'] / mb:.1f} MB of reference "
                     f"parameters; RSS {s['rss_bytes']['saved'] / mb:.1f} MB less "
                     f"(ratio {s['rss_bytes']['ratio_from_base_over_separate']:.3f}), peak RSS "
                     f"{s['peak_rss_bytes']['saved'] / mb:.1f} MB less "
                     f"(ratio {s['peak_rss_bytes']['ratio_from_base_over_separate']:.3f})")
    lines += ["", f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores; {result['contention']}.",
              "", f"`{result['command']}`"]
    (out / "lora_reference_memory.md").write_text("# LoRA reference memory\n\n" + result["model"] + "\n\n"
                                                  + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--rank-main", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--stage", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--from-base", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(a.local_rank))
    if a.rank_main:
        rank_main(a.out, a.model, a.from_base, a.stage)
    else:
        driver(a.out, a.hidden, a.layers)
