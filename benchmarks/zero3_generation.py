"""Hybrid generation under ZeRO-3: how long one rollout batch takes to generate with each
`generation.zero3_gather` mode (full, grouped, per_layer), how many all-gather collectives it
issues and how much memory each rank peaks at. A Llama built from a config (random weights),
wrapped exactly as the PPO actor is (`varpo.engines.ds_config` + `train_engine`, every
parameter partitioned), generates through the trainer's own `varpo.ppo.generation.hf.generate`.
One process per rank under the `deepspeed` launcher: 2 CPU ranks (gloo), or 1 rank on a GPU.

Modes alternate (full grouped per_layer full grouped per_layer ...) so that drift in the
machine's load spreads over all of them, and an actor update (forward, backward, optimizer
step, untimed) runs before every rollout as in PPO: that is the state in which a rollout
starts (DeepSpeed's coordinator holding the training trace). The collectives are counted in a
separate, untimed rollout per mode (DeepSpeed's comms logger synchronises every op).

    python benchmarks/zero3_generation.py --out benchmarks/results/zero3_generation
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from host import machine  # benchmarks/, the script's own folder

MODES = ("full", "grouped", "per_layer")


# ------------------------------------------------------------------------------ memory probes
def _rss_mb() -> tuple[float, float]:
    """(current, peak) resident set size of this process in MB, from /proc/self/status."""
    vals = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            vals[line.split(":")[0]] = int(line.split()[1]) / 1024
    return vals["VmRSS"], vals["VmHWM"]


def _reset_peak() -> bool:
    """Start a fresh high-water mark: return freed heap pages to the OS (glibc keeps freed blocks
    under its mmap threshold, which would carry one mode's peak into the next one's baseline),
    then reset VmHWM (Linux >= 4.0: writing 5 to clear_refs)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# ------------------------------------------------------------------------------ one rank
def rank_main(a: argparse.Namespace) -> None:
    import torch
    import torch.distributed as tdist
    from transformers import LlamaConfig, LlamaForCausalLM

    from varpo.config import DeepSpeedConfig, GenerationConfig
    from varpo.dist import init_distributed
    from varpo.engines import build_model, ds_config, train_engine
    from varpo.ppo.generation.hf import generate
    from varpo.ppo.generation.zero3_gather import GroupedGather

    info = init_distributed()
    cuda = torch.cuda.is_available()
    conf = ds_config(DeepSpeedConfig(zero_stage=3, param_persistence_threshold=0), "actor", a.batch, trainable=True)
    for item in a.zero3:
        key, value = item.split("=", 1)
        conf["zero_optimization"][key] = int(float(value))
    hc = LlamaConfig(vocab_size=a.vocab, hidden_size=a.width, intermediate_size=a.width * 8 // 3 // 64 * 64,
                     num_hidden_layers=a.layers, num_attention_heads=a.width // 64, num_key_value_heads=a.width // 64,
                     max_position_embeddings=a.prompt_len + a.new_tokens + 8, tie_word_embeddings=False,
                     bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    engine = train_engine(build_model(lambda: LlamaForCausalLM(hc), conf), conf, lr=1e-5)
    module = engine.module
    params = list(module.parameters())
    model_bytes = sum(p.ds_numel * p.element_size() for p in params)
    budget_mb = a.budget_mb if a.budget_mb is not None else model_bytes / 4 / 2**20
    tok = type("TokenIds", (), {"pad_token_id": 0, "eos_token_id": 2, "bos_token_id": 1})
    g = torch.Generator().manual_seed(1000 + info.rank)  # each rank its own prompts, as in PPO
    ids = torch.randint(3, a.vocab, (a.batch, a.prompt_len), generator=g).to(engine.device)
    mask = torch.ones_like(ids)
    mask[: a.batch // 2, : a.prompt_len // 4] = 0  # half the prompts shorter (left padding)
    ids = torch.where(mask.bool(), ids, torch.zeros_like(ids))

    def gen_cfg(mode: str) -> GenerationConfig:
        return GenerationConfig(top_k=1, min_new_tokens=a.new_tokens, max_new_tokens=a.new_tokens,
                                max_prompt_len=a.prompt_len, zero3_gather=mode, zero3_gather_budget_mb=budget_mb)

    def update(ro) -> None:
        module.train()
        seq, att = ro.sequences, ro.attention_mask
        engine.backward(engine(input_ids=seq, attention_mask=att, labels=seq).loss)
        engine.step()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()
        tdist.barrier()

    def rollout(mode: str) -> tuple[object, dict]:
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated() / 2**20
        else:
            _reset_peak()
            before = _rss_mb()[0]
        t0 = time.perf_counter()
        ro = generate(engine, tok, ids, mask, gen_cfg(mode))
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else _rss_mb()[1]
        return ro, {"seconds": seconds, "peak_mb": peak, "rise_mb": peak - before}

    def all_ranks(row: dict) -> dict:
        """The rollout as the job sees it: its slowest rank, its most loaded rank."""
        rows = [None] * info.world_size
        tdist.all_gather_object(rows, row)
        return {k: max(r[k] for r in rows) for k in row}

    for mode in MODES:  # warm-up (grouped records its module order here), untimed
        update(rollout(mode)[0])
    timed = []
    for rep in range(a.reps):
        for mode in MODES:
            ro, row = rollout(mode)
            timed.append({"mode": mode, "rep": rep, **all_ranks(row)})
            update(ro)

    # untimed: all-gathers per rollout (DeepSpeed's comms logger) and the most parameter bytes
    # gathered at once (watched from hooks on every module)
    from deepspeed.comm import comm as dscomm
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    counts = {}
    for mode in MODES:
        peak = [0]

        def watch(*_, peak=peak):
            peak[0] = max(peak[0], sum(p.ds_numel * p.element_size() for p in params
                                       if p.ds_status == ZeroParamStatus.AVAILABLE))

        hooks = [h for m in module.modules() for h in (m.register_forward_pre_hook(watch), m.register_forward_hook(watch))]
        dscomm.configure(enabled=True, prof_all=True)
        dscomm.comms_logger.comms_dict = {}
        ro = generate(engine, tok, ids, mask, gen_cfg(mode))
        ops = {op: sum(c[0] for c in sizes.values()) for op, sizes in dscomm.comms_logger.comms_dict.items()}
        dscomm.configure(enabled=False)
        for h in hooks:
            h.remove()
        counts[mode] = all_ranks({"all_gathers": sum(n for op, n in ops.items() if op.startswith("all_gather")),
                                  "other_ds_collectives": sum(n for op, n in ops.items() if not op.startswith("all_gather")),
                                  "peak_gathered_param_mb": peak[0] / 2**20})
        update(ro)
    grouped = GroupedGather(module, budget_mb * 2**20)
    if info.rank == 0:
        n_params = sum(p.ds_numel for p in params)
        result = {
            "model": f"Llama {a.layers} layers x {a.width}, vocab {a.vocab}, untied ({n_params / 1e6:.1f} M params, "
                     f"{model_bytes / 2**20:.0f} MB fp32)",
            "model_params": n_params, "model_mb": model_bytes / 2**20,
            "world_size": info.world_size, "device": torch.cuda.get_device_name() if cuda else "cpu",
            "batch_per_rank": a.batch, "prompt_len": a.prompt_len, "new_tokens": a.new_tokens,
            "forwards_per_rollout": a.new_tokens, "reps": a.reps,
            "grouped": {"budget_mb": budget_mb, "groups": len(grouped.groups),
                        "group_mb": [round(b / 2**20, 2) for b in grouped.group_bytes]},
            "actor_zero3": {k: v for k, v in conf["zero_optimization"].items() if k != "stage"},
            "memory_metric": ("torch.cuda.max_memory_allocated (MB)" if cuda else
                              "VmHWM of the rank process, reset before each rollout (MB)"),
            "timed": timed, "counts": counts,
        }
        (a.out / "_ranks.json").write_text(json.dumps(result))


# ------------------------------------------------------------------------------ driver
def _summary(result: dict) -> dict:
    out = {}
    for mode in MODES:
        rows = [r for r in result["timed"] if r["mode"] == mode]
        secs = [r["seconds"] for r in rows]
        out[mode] = {"median_s": statistics.median(secs), "min_s": min(secs), "max_s": max(secs),
                     "median_peak_mb": statistics.median(r["peak_mb"] for r in rows),
                     "median_rise_mb": statistics.median(r["rise_mb"] for r in rows), **result["counts"][mode]}
    return out


def _markdown(result: dict) -> str:
    s, m, g, z = result["summary"], result["machine"], result["grouped"], result["actor_zero3"]
    mem = "peak GPU MB" if result["device"] != "cpu" else "peak RSS MB"
    setup = (f"{result['model']}; {result['world_size']} rank(s) ({result['device']}); per rank "
             f"{result['batch_per_rank']} prompts x {result['prompt_len']} tokens, {result['new_tokens']} new tokens "
             f"(greedy, fixed length); {result['reps']} timed rollouts per mode, alternating; an actor update "
             "before each rollout.")
    header = ("| mode | median s / rollout | min s | max s | all-gathers / rollout | most params gathered at once (MB) "
              f"| {mem} (median, max over ranks) | rise during rollout (MB) |")
    lines = [setup, "", header, "|---|---|---|---|---|---|---|---|"]
    for mode in MODES:
        r = s[mode]
        lines.append(f"| {mode} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['max_s']:.3f} | {r['all_gathers']} | "
                     f"{r['peak_gathered_param_mb']:.1f} | {r['median_peak_mb']:.0f} | {r['median_rise_mb']:.0f} |")
    groups = ", ".join(f"{x:g}" for x in g["group_mb"])
    reuse = z.get("stage3_max_reuse_distance", 1e9)  # DeepSpeed's default when the config leaves it out
    n = result["model_params"]
    small = n < z["stage3_prefetch_bucket_size"] and n < reuse
    modes = (f"grouped: budget {g['budget_mb']:.1f} MB -> {g['groups']} groups ({groups} MB). per_layer: DeepSpeed's "
             f"coordinator with the actor's stage3_prefetch_bucket_size = {z['stage3_prefetch_bucket_size']:.3g}, "
             f"stage3_max_live_parameters = {z['stage3_max_live_parameters']:.3g}, stage3_max_reuse_distance = "
             f"{reuse:.3g} elements (the model has {n:.3g}" + ("; below those the coordinator prefetches the whole "
             "model and, with the training trace it recorded last, keeps it gathered through the rollout" if small
             else "") + "). full: one gather per parameter per rollout, none in the decode loop.")
    how = (f"Memory: {result['memory_metric']}. Collectives: all-gathers counted by DeepSpeed's comms logger in one "
           "extra untimed rollout per mode (HF's synced_gpus all-reduce of one flag per token is not included).")
    if result["device"] == "cpu":
        how += (" RSS also counts freed buffers that glibc's malloc keeps for reuse, which grows with a mode that "
                "gathers and frees every forward; MALLOC_MMAP_THRESHOLD_=131072 in the environment makes RSS follow "
                "live memory, at a cost in time (page faults on every gather). The gathered-parameters column "
                "does not depend on the allocator.")
    host_line = (f"Machine: {m['cpu_model']}, {m['cores']} cores, OMP_NUM_THREADS={m['omp_num_threads']}; torch {m['torch']}, "
               f"deepspeed {m['deepspeed']}, transformers {m['transformers']}; load average (1, 5, 15 min) before "
               f"{m['loadavg_before']}, after {m['loadavg_after']}; {result['wall_s']} s in all.")
    lines += ["", modes, how, "", host_line, "", f"`{result['command']}`"]
    return "\n".join(lines) + "\n"


def driver(a: argparse.Namespace, argv: list[str]) -> None:
    import torch

    a.out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    ranks = a.ranks or (1 if cuda else 2)
    env = {**os.environ, "VARPO_NO_PROGRESS": "1"}
    if not cuda:
        env["DS_ACCELERATOR"] = "cpu"
        # one thread per core and rank: more would oversubscribe the cores the ranks share
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // ranks)))
    load_before = [round(x, 2) for x in os.getloadavg()]
    from varpo.dist import free_port

    # each rank removes DeepSpeed's shared-memory all-reduce buffer at exit (varpo.dist)
    cmd = ["deepspeed", "--num_nodes", "1", "--num_gpus" if cuda else "--num_accelerators", str(ranks),
           "--master_port", str(free_port()), __file__, "--rank-main", *argv]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"benchmark ranks failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    tmp = a.out / "_ranks.json"
    result = json.loads(tmp.read_text())
    tmp.unlink()
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    result["summary"] = _summary(result)
    result["machine"] = machine(omp_num_threads=env.get("OMP_NUM_THREADS"), loadavg_before=load_before,
                                loadavg_after=[round(x, 2) for x in os.getloadavg()])
    result["command"] = "python benchmarks/zero3_generation.py " + shlex.join(argv)
    (a.out / "zero3_generation.json").write_text(json.dumps(result, indent=2))
    md = _markdown(result)
    (a.out / "zero3_generation.md").write_text(md)
    print(md)


def _args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder for zero3_generation.json and .md")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--width", type=int, default=512, help="hidden size (heads of 64)")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=8, help="prompts per rank")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=5, help="timed rollouts per mode")
    ap.add_argument("--budget-mb", type=float, default=None, help="grouped budget (default: a quarter of the model)")
    ap.add_argument("--zero3", action="append", default=[], metavar="KEY=N",
                    help="override an integer entry of the actor's zero_optimization config, e.g. "
                         "stage3_prefetch_bucket_size=1e6 stage3_max_reuse_distance=1e6 to see per_layer as on a "
                         "model much larger than those thresholds (defaults 5e7 and 1e9 elements)")
    ap.add_argument("--ranks", type=int, default=None, help="default: 2 on CPU, 1 on a GPU")
    ap.add_argument("--rank-main", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


if __name__ == "__main__":
    argv = sys.argv[1:]
    a = _args(argv)
    if a.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(a.local_rank))
    if a.rank_main:
        rank_main(a)
    else:
        driver(a, argv)
