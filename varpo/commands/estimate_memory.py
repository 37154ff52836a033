"""`varpo estimate-memory`: per-rank GPU/CPU memory of each PPO role for a config and a cluster
(DeepSpeed's ZeRO estimators + activation/KV estimates; see varpo/memory.py for the formulas)."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from .common import ConfigOpt, SetOpt, load


def register(app: typer.Typer) -> None:
    @app.command("estimate-memory")
    def estimate_memory_cmd(
        config: Path | None = ConfigOpt,
        set_: list[str] | None = SetOpt,
        num_gpus_per_node: int | None = typer.Option(
            None, "--num-gpus-per-node", min=1, help="GPUs (ranks) per node (default 1; with --find-min-gpus, 8: the "
            "node size the search fills before adding nodes)"),
        num_nodes: int | None = typer.Option(None, "--num-nodes", min=1, help="nodes (default 1)"),
        hostfile: Path | None = typer.Option(
            None, "--hostfile", help="DeepSpeed hostfile ('host slots=N' lines); replaces --num-nodes/--num-gpus-per-node"),
        reward_model_config: Path | None = typer.Option(
            None, "--reward-model-config", help="HF config.json (or folder) of the reward backbone, instead of reward.path"),
        gpu_memory_gib: float | None = typer.Option(
            None, "--gpu-memory-gib", help="memory of one GPU (e.g. 80): adds a fits/does-not-fit verdict"),
        out: Path | None = typer.Option(None, "--out", "-o", help="write OUT/memory.json"),
        as_json: bool = typer.Option(False, "--json", help="print the JSON plan on stdout"),
        find_min_gpus: bool = typer.Option(
            False, "--find-min-gpus", help="how many GPUs of --gpu-memory-gib the config needs: the smallest world "
            "size the trainer accepts (dividing ppo.batch_size and ppo.mini_batch_size) whose per-rank peak fits, "
            "filling one node of --num-gpus-per-node GPUs before adding whole nodes"),
    ) -> None:
        """Per-rank memory for actor, critic (trainable), reference and reward (frozen).

        Parameter counts come from the model configs (built on the meta device, no weights);
        model states from DeepSpeed's ZeRO estimators; activations and KV cache are estimates
        (formulas in varpo/memory.py). The table is also written as JSON (--out or --json)."""
        from ..config import ConfigError
        from ..memory import Cluster, plan, read_hostfile

        cfg = load(config, set_)
        if find_min_gpus:
            if gpu_memory_gib is None:
                raise ConfigError("--find-min-gpus needs --gpu-memory-gib: the memory of one GPU, e.g. 80")
            if hostfile or num_nodes:
                raise ConfigError("--find-min-gpus chooses the number of nodes itself: drop --hostfile/--num-nodes")
            from ..memory import find_min_gpus as search

            found = search(cfg, gpu_memory_gib, num_gpus_per_node or 8, reward_model_config)
            result = {**found["plan"], "find_min_gpus": {k: v for k, v in found.items() if k != "plan"}}
        else:
            default_world = not hostfile and num_nodes is None and num_gpus_per_node is None
            cluster = read_hostfile(hostfile) if hostfile else Cluster(num_nodes or 1, num_gpus_per_node or 1)
            result = plan(cfg, cluster, reward_model_config, gpu_memory_gib)
            if default_world:
                result["note"] = ("world of 1 node × 1 GPU (no --num-nodes/--num-gpus-per-node/--hostfile given); "
                                  "name your cluster, or --find-min-gpus with --gpu-memory-gib")
        result["config"] = str(config) if config else "defaults"
        result["overrides"] = list(set_ or [])
        show(result)
        if out is not None:
            from ..outputs import write_json

            path = write_json(Path(out) / "memory.json", result)
            typer.echo(f"wrote {path}", err=True)
        if as_json:
            typer.echo(json.dumps(result, indent=2))


def show(result: dict) -> None:
    from ..outputs import console, print_table

    c = result["cluster"]
    t = result["total_per_rank"]
    unit, scale = ("GiB", 2**30) if t["gpu_bytes_upper"] >= 2**30 else ("MiB", 2**20)

    def _gib(x: int) -> float:
        return x / scale

    rows = []
    for r in result["roles"]:
        off = ",".join(k for k, v in (("opt", r["offload_optimizer"]), ("param", r["offload_param"])) if v) or "-"
        rows.append({
            "role": r["role"], "train": "yes" if r["trainable"] else "no", "ZeRO": r["zero_stage"], "offload": off,
            "params M": r["total_params"] / 1e6, "states GPU": _gib(r["model_states_gpu"]),
            "activ GPU": _gib(r["activations_gpu"]), f"GPU {unit}": _gib(r["gpu_bytes"]), f"CPU {unit}": _gib(r["cpu_bytes"]),
        })
    rows.append({"role": "total", "train": "", "ZeRO": "", "offload": "", "params M": "",
                 "states GPU": _gib(t["gpu_bytes_model_states"]), "activ GPU": "",
                 f"GPU {unit}": _gib(t["gpu_bytes_upper"]), f"CPU {unit}": _gib(t["cpu_bytes"])})
    print_table(f"Estimated memory per rank ({c['num_nodes']} node(s) × {c['gpus_per_node']} GPU(s) = world "
                f"{c['world_size']}, {result['precision']})", rows, fmt="{:.3f}")
    console.print(f"peak-phase GPU per rank (resident states + largest phase's activations): "
                  f"{_gib(t['gpu_bytes_peak_phase']):.3f} {unit}", highlight=False)
    if "fits" in result:
        verdict = "fits" if result["fits"] else "does NOT fit"
        console.print(f"{verdict} in {result['gpu_memory_gib']} GiB per GPU (before CUDA context and fragmentation)",
                      highlight=False)
    if result["omitted_roles"]:
        console.print(f"roles without a model in the process group: {', '.join(result['omitted_roles'])}", highlight=False)
    console.print("activations and KV cache are estimates; CPU bytes = DeepSpeed's per-node figure / GPUs per node",
                  highlight=False)
    if "note" in result:
        console.print(f"note: {result['note']}", highlight=False)
    search = result.get("find_min_gpus")
    if search:
        print_table(f"world sizes tried with {search['gpu_memory_gib']} GiB per GPU",
                    [{k: t[k] for k in ("world_size", "num_nodes", "gpus_per_node", "gpu_gib_peak_phase", "fits")}
                     for t in search["tried"]], fmt="{:.3f}")
        if search["min_gpus"] is not None:
            console.print(f"needs {search['min_gpus']} GPU(s) of {search['gpu_memory_gib']} GiB "
                          f"({c['num_nodes']} node(s) × {c['gpus_per_node']}); the plan above is that world's",
                          highlight=False)
        else:
            console.print(f"does not fit: {search['why']}", highlight=False)
