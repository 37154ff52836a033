"""Judged samples per second against the local judge server at several concurrencies.

The server (varpo.judge.local_server, real HTTP on 127.0.0.1) adds a fixed latency per request,
standing in for a remote model; each run uses a fresh answer cache, so every sample costs one
request plus one cache write. Ideal throughput is concurrency / latency.

    python benchmarks/judge_throughput.py --out benchmarks/results/judge
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def run(concurrency: int, n: int, latency: float, srv) -> dict:
    from varpo.config.judge import JudgeConfig
    from varpo.judge import JudgeScorer

    with tempfile.TemporaryDirectory() as tmp:
        cfg = JudgeConfig(judges=[{"base_url": srv.base_url, "model": "bench"}], concurrency=concurrency,
                          cache=str(Path(tmp) / "cache.sqlite"), timeout=30.0)
        scorer = JudgeScorer(cfg)
        prompts = [f"benchmark prompt {i % 17}" for i in range(n)]
        responses = [f"benchmark response {concurrency}-{i}" for i in range(n)]
        before = srv.requests
        t0 = time.perf_counter()
        scores = scorer.score(prompts, responses)
        elapsed = time.perf_counter() - t0
        st = scorer.stats_summary()[0]
        scorer.close()
    assert bool(scores.valid.all()) and srv.requests - before == n
    return {
        "concurrency": concurrency, "samples": n, "server_latency_s": latency, "elapsed_s": round(elapsed, 3),
        "samples_per_s": round(n / elapsed, 2), "ideal_samples_per_s": round(concurrency / latency, 2),
        "efficiency": round(n / elapsed / (concurrency / latency), 3), "max_in_flight": srv.max_inflight,
        "latency_mean_s": round(st["latency_mean_s"], 4), "latency_p95_s": round(st["latency_p95_s"], 4),
        "retries": st["retries"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder for judge_throughput.json / .md")
    ap.add_argument("--latency", type=float, default=0.05, help="seconds the server adds per request")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--seconds", type=float, default=4.0, help="target duration per concurrency (sets the samples)")
    args = ap.parse_args()
    os.environ.setdefault("VARPO_NO_PROGRESS", "1")
    from host import ForeignCpu, describe, machine  # benchmarks/, the script's own folder

    from varpo.judge.local_server import JudgeServer

    watch = ForeignCpu()
    rows = []
    for c in args.concurrency:
        with JudgeServer(latency=args.latency) as srv:
            n = max(16, int(args.seconds * c / args.latency))
            rows.append(run(c, n, args.latency, srv))
            print(json.dumps(rows[-1]), flush=True)
    cmd = "python benchmarks/judge_throughput.py " + " ".join(sys.argv[1:])
    foreign = watch.cores()
    result = {"command": cmd, "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "runs": rows,
              "foreign_cores": foreign, "note": f"client and server share the machine's CPU; {describe(foreign)}"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "judge_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Judge throughput (local OpenAI-compatible server, fixed latency per request)", "",
        f"Command: `{cmd}`  ",
        (f"Machine: {result['machine']['cpu_model']}, {result['machine']['cores']} cores, "
         f"Python {result['machine']['python']}  "), f"Date: {result['date']}  ", f"Note: {result['note']}.", "",
        "| concurrency | samples | server latency (s) | samples/s | ideal samples/s | efficiency | max in flight | p95 latency (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['concurrency']} | {r['samples']} | {r['server_latency_s']} | {r['samples_per_s']} | "
                     f"{r['ideal_samples_per_s']} | {r['efficiency']} | {r['max_in_flight']} | {r['latency_p95_s']} |")
    (out / "judge_throughput.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
