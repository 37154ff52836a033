"""A PPO step beside a competing job: torch's default threads against varpo's choice from the free
cores (runtime.threads=auto, varpo/threads.py), each run started by `varpo train-ppo` as a user
would, on this benchmark's shared inputs (benchmarks/bench_models.py).

    python benchmarks/contention.py --out DIR                     # small preset, 2 busy competitors
    python benchmarks/contention.py --size tiny --competitors 1 --steps 4 --out DIR

Settings, alternated per round:
  default   what varpo did before: torch's own thread count (one per core) and OpenMP's default
            spinning wait policy (runtime.threads = the usable cores)
  auto      runtime.threads=auto: threads from the cores free at start-up, OMP_WAIT_POLICY=PASSIVE
            when the machine is busy
The competing job is `--competitors` processes spinning on pure Python arithmetic (each takes a
whole core), started before and stopped after each run; other processes on the machine add to it
(measured: foreign_cores, host.ForeignCpu). Neither run has OMP_NUM_THREADS set (it would override
both settings). Reported per run: median wall and process-CPU seconds per step after the warm-up
step, the threads varpo chose, and the foreign load. DIR/contention.json, DIR/contention.md.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from host import ForeignCpu, machine

HERE = Path(__file__).resolve().parent
SETTINGS = ("default", "auto")


def _spin(stop) -> None:
    x = 0
    while not stop.is_set():
        for _ in range(100000):
            x = (x * 1103515245 + 12345) % 2147483648


def start_competitors(n: int):
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    procs = [ctx.Process(target=_spin, args=(stop,), daemon=True) for _ in range(n)]
    for p in procs:
        p.start()
    return stop, procs


def stop_competitors(stop, procs) -> None:
    stop.set()
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.terminate()


def run_command(meta: dict, reward_path: str, steps: int, setting: str, out: Path) -> list[str]:
    import ppo_vs_trl

    over = ppo_vs_trl.varpo_overrides(meta, "varpo_vanilla", reward_path, steps, 0, 1e-5, 0.1)
    over["runtime.threads"] = "auto" if setting == "auto" else len(os.sched_getaffinity(0))
    sets = [x for kv in ppo_vs_trl.override_strings(over) for x in ("--set", kv)]
    # the run folder is this benchmark's scratch (OUT/runs/): a rerun of the benchmark replaces it
    return [sys.executable, "-m", "varpo.cli", "train-ppo", *sets, "--out", str(out), "--overwrite"]


def child_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "VARPO_THREADS", "OMP_WAIT_POLICY")}
    env.update({"DS_ACCELERATOR": "cpu", "CUDA_VISIBLE_DEVICES": "", "VARPO_NO_PROGRESS": "1",
                "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"})
    return env


def summarize_run(rows: list[dict], warmup: int) -> dict:
    kept = rows[warmup:]
    return {"step_s": statistics.median(r["time/step"] for r in kept),
            "step_cpu_s": statistics.median(r["time/step_cpu"] for r in kept),
            "steps_wall_s": [r["time/step"] for r in rows], "steps_cpu_s": [r["time/step_cpu"] for r in rows]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--size", default="small", choices=["tiny", "small"])
    ap.add_argument("--competitors", type=int, default=2, help="busy processes beside each run")
    ap.add_argument("--steps", type=int, default=3, help="PPO steps per run (the first is warm-up)")
    ap.add_argument("--rounds", type=int, default=1, help="rounds of (default, auto), order alternating")
    ap.add_argument("--timeout", type=float, default=3600.0,
                    help="seconds per run; a run cut there reports the steps it finished (at least 2)")
    a = ap.parse_args(argv)
    from bench_models import build_inputs
    from ppo_vs_trl import build_ensemble

    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = out / "runs" / "work"  # runs/ is git-ignored: the models and the runs' logs stay out of results
    meta = build_inputs(work, a.size)
    reward = str(build_ensemble(meta["policy_path"], 10, work / "reward_k10", 0))

    def write() -> None:  # after every run: a run cut short keeps what it measured
        res = {"command": "python benchmarks/contention.py " + shlex.join(sys.argv[1:] if argv is None else argv),
               "machine": machine("cpu"), "size": a.size, "competitors": a.competitors, "steps": a.steps, "runs": runs}
        ok = {s: [x for x in runs if x["setting"] == s and "step_s" in x] for s in SETTINGS}
        if ok["default"] and ok["auto"]:
            res["auto_vs_default_step_s"] = statistics.median(x["step_s"] for x in ok["default"]) / \
                statistics.median(x["step_s"] for x in ok["auto"])
        (out / "contention.json").write_text(json.dumps(res, indent=1) + "\n")
        lines = ["# A PPO step beside a competing job", "", f"Command: `{res['command']}`", "",
                 f"{a.competitors} busy competitor process(es) on {res['machine']['cores']} cores, `{a.size}` preset, "
                 f"{a.steps} steps per run (first dropped).", "",
                 "| round | setting | s/step (median) | CPU s/step | foreign cores | threads |", "|---|---|---|---|---|---|"]
        for x in runs:
            cut = f" (cut at --timeout after {len(x['steps_wall_s'])} steps)" if x.get("partial") else ""
            lines.append(f"| {x['round']} | {x['setting']}{cut} | {x.get('step_s', '—')} | {x.get('step_cpu_s', '—')} | "
                         f"{x['foreign_cores']} | {x['threads_line']} |")
        if "auto_vs_default_step_s" in res:
            lines += ["", f"default / auto seconds per step: **{res['auto_vs_default_step_s']:.2f}×**"]
        (out / "contention.md").write_text("\n".join(lines) + "\n")

    runs = []
    for r in range(a.rounds):
        for setting in (SETTINGS if r % 2 == 0 else SETTINGS[::-1]):
            run_dir = out / "runs" / f"r{r}_{setting}"
            cmd = run_command(meta, reward, a.steps, setting, run_dir)
            stop, procs = start_competitors(a.competitors)
            time.sleep(2.0)  # the competitors are running when the run measures its free cores
            watch, t0 = ForeignCpu(), time.perf_counter()
            with open(out / "runs" / f"r{r}_{setting}.log", "w") as log:
                log.write("$ " + shlex.join(cmd) + "\n")
                log.flush()
                try:
                    rc = subprocess.run(cmd, env=child_env(), stdout=log, stderr=subprocess.STDOUT,
                                        timeout=a.timeout).returncode
                except subprocess.TimeoutExpired:
                    rc = "timeout"
            foreign = watch.cores()
            stop_competitors(stop, procs)
            rec = {"round": r, "setting": setting, "rc": rc, "process_s": time.perf_counter() - t0,
                   "foreign_cores": foreign, "command": shlex.join(cmd)}
            chosen = [ln for ln in (out / "runs" / f"r{r}_{setting}.log").read_text().splitlines() if "torch threads" in ln]
            rec["threads_line"] = chosen[-1] if chosen else None
            metrics = run_dir / "metrics.jsonl"
            rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()] if metrics.exists() else []
            if len(rows) > 1:  # a run cut by --timeout still reports the steps it finished
                rec.update(summarize_run(rows, warmup=1), partial=rc != 0)
            runs.append(rec)
            write()
            print(json.dumps({k: rec.get(k) for k in ("setting", "rc", "step_s", "step_cpu_s", "foreign_cores",
                                                       "threads_line")}), flush=True)
    write()
    return 0 if all(x["rc"] == 0 for x in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
