"""benchmarks/ holds speed, memory and fault benchmarks and their helpers, each listed once in the
one table of benchmarks/README.md, and each script answers `--help` in the main environment
(`python benchmarks/<script>.py --help`: imports that need a GPU, vLLM or TRL stay inside main)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def table_scripts() -> list[str]:
    """The script named in each row of benchmarks/README.md's table, in order."""
    rows = [line for line in (BENCH / "README.md").read_text().splitlines() if line.startswith("| `")]
    return [re.search(r"benchmarks/([\w.]+\.(?:py|sh))", row).group(1) for row in rows]


def scripts() -> list[str]:
    return sorted(p.name for p in BENCH.iterdir() if p.suffix in (".py", ".sh"))


def test_every_script_is_listed_once_in_the_table():
    listed = table_scripts()
    assert len(listed) == len(set(listed)), f"listed twice: {sorted({s for s in listed if listed.count(s) > 1})}"
    assert sorted(listed) == scripts(), (f"not listed: {sorted(set(scripts()) - set(listed))}; "
                                         f"listed but missing: {sorted(set(listed) - set(scripts()))}")


def test_every_python_script_answers_help():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def run(name: str):
        r = subprocess.run([sys.executable, str(BENCH / name), "--help"], capture_output=True, text=True, env=env,
                           timeout=300)
        return name, r

    names = [n for n in scripts() if n.endswith(".py")]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(run, names))
    bad = {n: (r.returncode, (r.stderr or r.stdout)[-800:]) for n, r in results
           if r.returncode != 0 or "usage:" not in r.stdout}
    assert not bad, bad
    assert len(results) >= 14
