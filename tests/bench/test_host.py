"""One host description for every benchmark (benchmarks/host.py `machine()`)."""
import ast
import os
from pathlib import Path

import host

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def test_machine_describes_this_host_and_takes_extras():
    import torch

    m = host.machine(threads=3, loadavg_before=[0.5])
    assert m["cpu_model"] == host.cpu_model() and m["cores"] == os.cpu_count()
    assert 1 <= m["usable_cores"] <= m["cores"]
    assert m["torch"] == torch.__version__ and m["torch_threads"] == torch.get_num_threads()
    assert m["device"] == ("cuda" if torch.cuda.is_available() else "cpu") and ("gpu" in m) == torch.cuda.is_available()
    assert m["threads"] == 3 and m["loadavg_before"] == [0.5] and len(m["loadavg"]) == 3
    assert host.machine("cpu")["device"] == "cpu"


def test_machine_names_the_commit_it_ran_from():
    import subprocess

    head = subprocess.run(["git", "-C", str(BENCH), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert host.machine()["commit"] in (head, head + "+dirty")


def test_every_benchmark_uses_the_one_description():
    """No benchmark defines its own machine()/cpu lookup; each that records a machine calls host.machine."""
    for path in sorted(BENCH.glob("*.py")):
        if path.name == "host.py":
            continue
        tree = ast.parse(path.read_text())
        own = [n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name in ("machine", "cpu_model")]
        assert not own, f"{path.name} defines its own {own}"
        src = path.read_text()
        if '"machine"' in src:
            assert "machine(" in src and "from host import" in src, path.name
