"""Collect one `varpo kl-sweep --out runs/kls_seedS --seed S` run (with its defaults) into
kl_sweep_default/seed_S/: kl_sweep.json, kl_sweep.png, curves.png, policies.jsonl (one row per
policy, local paths dropped), runs_context.jsonl and the wall time and load that runs/kls_one.sh
logged (its log's start/paused/resumed/end lines).

    python experiments/overoptimization/kl_sweep_default/collect_sweep.py runs/kls_seed0 runs/kls_seed0.log 0
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path


def main(src: str, log: str, seed: str) -> None:
    src_p = Path(src)
    dst = Path(__file__).parent / f"seed_{seed}"
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("kl_sweep.json", "kl_sweep.png", "curves.png"):
        shutil.copy(src_p / name, dst / name)
    shutil.copy(src_p / "population" / "runs_context.jsonl", dst / "runs_context.jsonl")
    rows = []
    for path in sorted((src_p / "population" / "policies").glob("*/seed_*.json")):
        row = json.loads(path.read_text())
        row.pop("policy_path", None)
        rows.append(row)
    (dst / "policies.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = [x for x in Path(log).read_text().splitlines() if x.split(" ", 1)[0] in ("start", "paused", "resumed", "end")]
    (dst / "wall_time.txt").write_text("\n".join(lines) + "\n")
    print(f"wrote {dst} ({len(rows)} policies)")


if __name__ == "__main__":
    main(*sys.argv[1:])
