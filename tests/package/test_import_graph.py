"""varpo's parts import each other without a cycle: a test that reads every `import` in varpo/
(module level and inside functions alike, since a deferred import hides a cycle rather than
removing it) and fails on a cycle between its parts (a subpackage, or a top-level module)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[2] / "varpo"


PARTS = {p.stem for p in ROOT.glob("*.py") if p.name != "__init__.py"} | {
    p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()}


def part_of(module: str) -> str | None:
    """'varpo.ppo.trainer' -> 'ppo', 'varpo.dist' -> 'dist'; None outside varpo's parts (a name
    imported from a part, `from varpo import __version__`, belongs to no part)."""
    bits = module.split(".")
    if bits[0] != "varpo" or len(bits) < 2 or bits[1] not in PARTS:
        return None
    return bits[1]


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    bits = list(rel.parts)
    return ".".join(bits[:-1] if bits[-1] == "__init__" else bits)


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every varpo module `path` imports (relative imports resolved)."""
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from .. import dist` imports the module varpo.dist: keep both names, parts only matter
            out |= {mod} | {f"{mod}.{a.name}" for a in node.names}
    return {m for m in out if m == "varpo" or m.startswith("varpo.")}


def part_graph() -> nx.DiGraph:
    g = nx.DiGraph()
    for path in ROOT.rglob("*.py"):
        src = part_of(module_name(path))
        if src is None:
            continue
        g.add_node(src)
        for mod in imported_modules(path):
            dst = part_of(mod)
            if dst is not None and dst != src:
                g.add_edge(src, dst)
    return g


def test_the_graph_is_read_correctly():
    g = part_graph()
    # known edges: the trainer uses engines and config; the reward scorer implements the interface
    assert g.has_edge("ppo", "engines") and g.has_edge("ppo", "config") and g.has_edge("reward", "reward_source")
    assert len(g) >= 15


def test_no_cycle_between_varpo_parts():
    cycles = list(nx.simple_cycles(part_graph()))
    assert not cycles, "import cycles between varpo parts: " + "; ".join(" -> ".join(c + c[:1]) for c in cycles)


def test_a_cycle_would_be_found(tmp_path):
    g = part_graph()
    g.add_edge("reward_source", "ppo")  # what a careless import in the interface would add
    assert list(nx.simple_cycles(g))


def test_the_package_imports_without_help():
    """`import varpo.ppo` alone, and every module of varpo in one fresh interpreter (a cycle that
    module-level imports cannot resolve fails here)."""
    code = ("import importlib, pkgutil, varpo; "
            "[importlib.import_module(m.name) for m in pkgutil.walk_packages(varpo.__path__, 'varpo.')]")
    for c in ("import varpo.ppo", code):
        r = subprocess.run([sys.executable, "-c", c], capture_output=True, text=True)
        assert r.returncode == 0, f"{c} failed:\n{r.stderr[-2000:]}"
