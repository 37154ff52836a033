"""runtime.keep_freed_memory on against off (varpo/allocator.py): `varpo train-ppo` on the shared
inputs of ppo_vs_trl.py (varpo_vanilla's settings), one fresh process per run, the two settings
alternated (on, off, off, on, ...), one torch thread each.

    python benchmarks/allocator_ab.py --out DIR                    # small preset, 4 runs x 4 steps
    python benchmarks/allocator_ab.py --size tiny --runs 2 --steps 2 --out DIR

Reported per run, over the steps after the first: median wall seconds of the update phase and of the
step, and the step's process CPU seconds; per setting the median over its runs, and off / on.
DIR/allocator_ab.json, DIR/allocator_ab.md (models and run folders under DIR/runs, git-ignored).
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

from host import ForeignCpu, describe, machine

SETTINGS = (True, False)


def run_command(meta: dict, reward_path: str, steps: int, keep: bool, out: Path) -> list[str]:
    import ppo_vs_trl

    over = ppo_vs_trl.varpo_overrides(meta, "varpo_vanilla", reward_path, steps, 0, 1e-5, 0.1)
    over["runtime.keep_freed_memory"] = keep
    sets = [x for kv in ppo_vs_trl.override_strings(over) for x in ("--set", kv)]
    # the run folder is this benchmark's scratch (OUT/runs/): a rerun of the benchmark replaces it
    return [sys.executable, "-m", "varpo.cli", "train-ppo", *sets, "--out", str(out), "--overwrite"]


def summarize_run(rows: list[dict], warmup: int = 1) -> dict:
    kept = rows[warmup:]
    return {key: statistics.median(r[f"time/{name}"] for r in kept)
            for key, name in (("update_s", "update"), ("step_s", "step"), ("step_cpu_s", "step_cpu"))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--size", default="small", choices=["tiny", "small"])
    ap.add_argument("--runs", type=int, default=4, help="runs in all, settings alternated (on, off, off, on, ...)")
    ap.add_argument("--steps", type=int, default=4, help="PPO steps per run (the first is warm-up)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    a = ap.parse_args(argv)
    if a.steps < 2:
        ap.error("--steps must be at least 2 (the first is warm-up)")
    from bench_models import build_inputs
    from ppo_vs_trl import build_ensemble, foreign_env

    out = a.out.resolve()
    work = out / "runs" / "work"
    meta = build_inputs(work, a.size)
    reward = str(build_ensemble(meta["policy_path"], 10, work / "reward_k10", 0))
    # foreign_env: the interpreter's venv sets its own DeepSpeed JIT cache
    env = {**foreign_env(dict(os.environ)), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu",
           "CUDA_VISIBLE_DEVICES": "", "VARPO_NO_PROGRESS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    runs = []
    for i in range(a.runs):
        keep = SETTINGS[(i + 1) // 2 % 2]  # on, off, off, on, on, off, ...: each setting early and late
        run_dir = out / "runs" / f"run{i}_{'on' if keep else 'off'}"
        cmd = run_command(meta, reward, a.steps, keep, run_dir)
        watch, t0 = ForeignCpu(), time.perf_counter()
        with open(run_dir.with_suffix(".log"), "w") as log:
            log.write("$ " + shlex.join(cmd) + "\n")
            log.flush()
            rc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=a.timeout).returncode
        rec = {"run": i, "keep_freed_memory": keep, "rc": rc, "process_s": time.perf_counter() - t0,
               "foreign_cores": watch.cores()}
        if rc == 0:
            rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
            rec.update(summarize_run(rows))
        runs.append(rec)
        print(json.dumps(rec), flush=True)
    res = {"command": "python benchmarks/allocator_ab.py " + shlex.join(sys.argv[1:] if argv is None else argv),
           "machine": machine("cpu", threads=1), "size": a.size, "steps": a.steps, "runs": runs, "per_setting": {}}
    for keep in SETTINGS:
        ok = [r for r in runs if r["keep_freed_memory"] is keep and r["rc"] == 0]
        if ok:
            res["per_setting"]["on" if keep else "off"] = {k: statistics.median(r[k] for r in ok)
                                                           for k in ("update_s", "step_s", "step_cpu_s")}
    if len(res["per_setting"]) == 2:
        on, off = res["per_setting"]["on"], res["per_setting"]["off"]
        res["off_vs_on"] = {k: off[k] / on[k] for k in on}
    foreign = [r["foreign_cores"] for r in runs if r["foreign_cores"] is not None]
    res["load"] = describe(max(foreign) if foreign else None)
    (out / "allocator_ab.json").write_text(json.dumps(res, indent=1) + "\n")
    lines = ["# runtime.keep_freed_memory: on against off", "", f"Command: `{res['command']}`", "",
             f"`{a.size}` preset, {a.steps} steps per run (first dropped), 1 torch thread; {res['load']}.", "",
             "| run | keep_freed_memory | update s (median) | step s | step CPU s | foreign cores |",
             "|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['run']} | {r['keep_freed_memory']} | {r.get('update_s', '—')} | {r.get('step_s', '—')} | "
                     f"{r.get('step_cpu_s', '—')} | {r['foreign_cores']} |")
    if "off_vs_on" in res:
        lines += ["", "off / on (median over runs): " + ", ".join(f"{k} {v:.3f}" for k, v in res["off_vs_on"].items())]
    (out / "allocator_ab.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(r["rc"] == 0 for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
