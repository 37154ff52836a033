"""A reward model larger than one rank may hold, scored anyway: each rank runs under an enforced memory
budget (RLIMIT_DATA: the kernel refuses any private writable memory beyond it, so an allocation past
the budget fails instead of swapping or being killed), set below the model's own parameter bytes.

  unsharded        the ensemble loaded whole in one process, no budget: the reference scores
  unsharded+budget the same under the budget: must fail (the model alone exceeds it)
  zero3 ×1         one ZeRO-3 rank under the budget: must fail too (its shard is the whole model)
  zero3 ×2         two ZeRO-3 ranks, each under the budget: scores equal the reference
  nvme ×1          one rank, parameters offloaded to NVMe files (ZeRO-Infinity: DeepSpeed's async_io
                   op on its CPU accelerator, libaio), under the budget: scores equal the reference

Every case runs varpo's own scorer (`varpo.scoring.build_scorer`, a frozen DeepSpeed engine) on the
same prompt + response texts; each case's peak (allocator and resident, as memory_vs_estimate.py
measures them) and the budget are recorded.

    python benchmarks/reward_over_budget.py --out benchmarks/results/reward_over_budget
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from host import git_commit, machine  # benchmarks/, the script's own folder
from memory_vs_estimate import MIB, WIDTHS, Meter, bigmem, ensure_model, long_texts

ZERO3 = ["deepspeed.zero_stage=3", "deepspeed.reward.zero_stage=3", "deepspeed.precision=fp32",
         "deepspeed.dist_backend=gloo", "deepspeed.reward.max_live_parameters=20000000",
         "deepspeed.reward.allgather_sequential=true"]


def vm_data() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmData:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmData in /proc/self/status")


def case_main(args) -> None:
    """One process (a rank, or the plain unsharded case): optionally under the budget, build the scorer
    and score this rank's texts (all texts when unsharded)."""
    import torch  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401

    from varpo.config import load_config
    from varpo.dist import import_deepspeed, init_distributed

    import_deepspeed()
    import varpo.reward.scorer  # noqa: F401
    from varpo.scoring import build_scorer

    sets = json.loads(args.sets)
    cfg = load_config(None, sets)
    info = init_distributed(cfg.deepspeed.dist_backend, cfg.deepspeed.timeout_minutes, 0, 600) if args.ds else None
    rank, world = (info.rank, info.world_size) if info else (0, 1)
    out = {"rank": rank, "world_size": world, "budget_mib": args.budget_mib}
    if args.budget_mib:
        # the budget counts what this process allocates from here on: its VmData now plus the budget
        limit = vm_data() + args.budget_mib * MIB
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
        out["rlimit_data_bytes"] = limit
    meter = Meter()
    texts = json.loads(Path(args.texts).read_text())
    n = len(texts["prompts"]) // world
    prompts = texts["prompts"][rank * n:(rank + 1) * n]
    responses = texts["responses"][rank * n:(rank + 1) * n]
    try:
        with meter.phase("build"):
            scorer = build_scorer(cfg)
        for _ in range(2):
            with meter.phase("score"):
                s = scorer.score(prompts, responses)
        out.update(ok=True, scores=s.score.tolist(), variances=s.variance.tolist())
    except (RuntimeError, MemoryError, OSError) as exc:  # the budget's refusal, as the process sees it
        import traceback

        out.update(ok=False, error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
                   where=[f"{f.filename}:{f.lineno} {f.name}" for f in traceback.extract_tb(exc.__traceback__)][-8:])
    out.update(meter.summary())
    out["vm_data_end_mib"] = vm_data() / MIB
    out["vm_hwm_mib"] = next(int(x.split()[1]) for x in Path("/proc/self/status").read_text().splitlines()
                             if x.startswith("VmHWM:")) / 1024  # whole process, file-backed pages included
    (Path(args.case_dir) / f"rank{rank}.json").write_text(json.dumps(out, indent=1))


def run_case(name: str, out: Path, sets: list[str], texts: Path, world: int, budget_mib: int | None,
             ds: bool) -> dict:
    d = out / "work" / name
    d.mkdir(parents=True, exist_ok=True)
    for f in d.glob("rank*.json"):
        f.unlink()
    # MALLOC_MMAP_THRESHOLD_: glibc serves every allocation of 1 MiB or more from its own mapping and
    # returns it when freed, as a device allocator would. Its default (a threshold that rises with the
    # sizes freed) put the ZeRO-3 shards and freed gathered weights in one heap whose holes RLIMIT_DATA
    # still counts: measured, 2 ZeRO-3 ranks under the 1486 MiB budget failed on fragmentation, not on
    # what they held (and scored with the fixed threshold)
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "VARPO_NO_PROGRESS": "1",
           "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    tail = [__file__, "--case", "--sets", json.dumps(sets), "--texts", str(texts), "--case-dir", str(d),
            "--budget-mib", str(budget_mib or 0)]
    if ds:
        from varpo.dist import free_port

        cmd = [str(Path(sys.executable).with_name("deepspeed")), "--num_nodes", "1", "--num_accelerators", str(world),
               "--master_port", str(free_port()), *tail, "--ds"]
    else:
        cmd = [sys.executable, *tail]
    t0 = time.time()
    with open(d / "log.txt", "w") as fh:
        rc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
    ranks = [json.loads(f.read_text()) for f in sorted(d.glob("rank*.json"))]
    return {"case": name, "world_size": world, "budget_mib": budget_mib, "exit_code": rc, "wall_s": round(time.time() - t0),
            "ok": rc == 0 and len(ranks) == world and all(r["ok"] for r in ranks),
            "errors": [r.get("error") for r in ranks if not r.get("ok")],
            "peak_alloc_mib": [round(r["peak_alloc_mib"]) for r in ranks],
            "peak_resident_mib": [round(r["peak_mib"]) for r in ranks],
            "process_peak_rss_mib": [round(r["vm_hwm_mib"]) for r in ranks],
            "scores": [x for r in ranks if r.get("ok") for x in r["scores"]],
            "variances": [x for r in ranks if r.get("ok") for x in r["variances"]], "log": str(d / "log.txt")}


def sharded_copy(path: Path, shard: str = "128MB") -> Path:
    """The ensemble folder with its backbone re-saved in checkpoint shards of `shard`, as large models
    are published: a loader maps one shard file at a time, so the file mapping (which RLIMIT_DATA
    counts: the loader maps it writable, copy-on-write) is not the whole model at once."""
    out = path.with_name(path.name + "-sharded")
    if out.exists():
        return out
    import shutil

    from transformers import AutoModel

    tmp = out.with_name(out.name + ".tmp")
    shutil.copytree(path, tmp, ignore=shutil.ignore_patterns("backbone"))
    with bigmem(6 * 2**30):
        AutoModel.from_pretrained(str(path / "backbone")).save_pretrained(str(tmp / "backbone"), max_shard_size=shard)
    tmp.rename(out)
    return out


def driver(args) -> None:
    from varpo.config import TestbedConfig
    from varpo.testbed import build_testbed

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    models = args.models or out / "models"
    models.mkdir(parents=True, exist_ok=True)
    tb = build_testbed(TestbedConfig(), progress=False)
    path = sharded_copy(ensure_model(models, "reward", args.width, args.layers, str(tb.model_path)))
    texts = models / f"budget_texts_{args.tokens}.json"
    if not texts.exists():
        texts.write_text(json.dumps({"prompts": long_texts(tb, 4, args.tokens, seed=4),
                                     "responses": long_texts(tb, 4, args.tokens, seed=5)}))
    h, inter, *_ = WIDTHS[args.width]
    params = sum(x.stat().st_size for x in (path / "backbone").glob("*.safetensors")) // 4  # fp32
    model_mib = params * 4 / MIB
    budget = args.budget_mib or int(0.8 * model_mib)
    base = [f"reward.path={path}", f"reward.max_length={2 * args.tokens + 2}", "reward.batch_size=2",
            "ppo.batch_size=4", "ppo.mini_batch_size=4", f"generation.max_prompt_len={args.tokens}", f"generation.max_new_tokens={args.tokens}"]
    nvme = out / "nvme_swap"
    cases = [
        ("unsharded", base + ["deepspeed.zero_stage=0", "deepspeed.dist_backend=gloo"], 1, None, False),
        ("unsharded+budget", base + ["deepspeed.zero_stage=0", "deepspeed.dist_backend=gloo"], 1, budget, False),
        ("zero3x1+budget", base + ZERO3, 1, budget, True),
        ("zero3x2+budget", base + ZERO3, 2, budget, True),
        ("nvme-x1+budget", base + ZERO3 + ["deepspeed.reward.offload_param=true",
                                           f"deepspeed.reward.offload_param_nvme_path={nvme}",
                                           "deepspeed.reward.nvme_buffer_count=4",
                                           f"deepspeed.reward.nvme_buffer_size={max(h * inter, 1 << 20)}"], 1, budget, True),
    ]
    results = []
    for name, sets, world, b, ds in cases:
        if args.only and name not in args.only.split(","):
            continue
        with bigmem(max(6 * 2**30, model_mib * MIB * 2.5)):  # always under the machine's big-memory lock
            r = run_case(name, out, sets, texts, world, b, ds)
        results.append(r)
        print(f"{name}: ok={r['ok']} peak alloc {r['peak_alloc_mib']} MiB, resident {r['peak_resident_mib']} MiB "
              f"(budget {b}) {r['errors'][:1]}", flush=True)
    ref = next((r for r in results if r["case"] == "unsharded" and r["ok"]), None)
    import torch

    for r in results:
        if ref is not None and r["ok"] and r["case"] != "unsharded":
            r["max_abs_diff_score"] = float((torch.tensor(r["scores"]) - torch.tensor(ref["scores"])).abs().max())
            r["max_abs_diff_variance"] = float((torch.tensor(r["variances"]) - torch.tensor(ref["variances"])).abs().max())
    result = {"model": f"{args.width} width ({h} hidden, {inter} intermediate), {args.layers} layers, "
                       f"{params / 1e6:.0f} M parameters, fp32: {model_mib:.0f} MiB of parameters",
              "budget_mib": budget, "budget": "RLIMIT_DATA of each rank: its VmData when the case starts + budget_mib",
              "tokens_per_text": 2 * args.tokens, "cases": results, "machine": machine(),
              "commit": git_commit(),
              "command": f"python benchmarks/reward_over_budget.py --out {args.out} --width {args.width} "
                         f"--layers {args.layers} --tokens {args.tokens}"}
    (out / "over_budget.json").write_text(json.dumps(result, indent=1))
    lines = [result["model"], f"per-rank budget {budget} MiB (enforced: RLIMIT_DATA)", "",
             "| case | ranks | scored | peak allocated per rank (MiB) | peak resident per rank (MiB) | "
             "process peak RSS (MiB) | max |Δ score| vs unsharded | max |Δ σ²| | refusal |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['case']} | {r['world_size']} | {'yes' if r['ok'] else 'no'} | {r['peak_alloc_mib']} | "
                     f"{r['peak_resident_mib']} | {r['process_peak_rss_mib']} | {r.get('max_abs_diff_score', '')} | "
                     f"{r.get('max_abs_diff_variance', '')} | "
                     f"{(r['errors'] or [''])[0] or ''} |")
    lines += ["", f"`{result['command']}`"]
    (out / "over_budget.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--models", type=Path, default=None)
    ap.add_argument("--width", default="llama1b", choices=sorted(WIDTHS))
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=128, help="prompt and response tokens per text")
    ap.add_argument("--budget-mib", type=int, default=None, help="default: 80%% of the model's parameter bytes")
    ap.add_argument("--only", default=None)
    ap.add_argument("--case", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ds", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--sets", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--texts", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--case-dir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(a.local_rank))
    if a.case:
        a.budget_mib = a.budget_mib or None
        case_main(a)
    else:
        if a.out is None:
            ap.error("--out is required")
        driver(a)
