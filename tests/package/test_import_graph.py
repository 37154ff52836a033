"""varpo imports without a cycle, at every level: a test that reads every `import` in varpo/ and
kernels/varpo_kernels/ (module level and inside functions alike, since a deferred import hides a
cycle rather than removing it) and fails on a cycle between varpo's parts (a subpackage, or a
top-level module) and on a cycle between modules, inside one package too. A package's __init__
is a module like any other: a submodule that takes a name from it (`from . import name`, `from
.. import name`) depends on it; importing a submodule is not counted as depending on the
packages above it (Python imports those first, before the submodule runs)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import networkx as nx

REPO = Path(__file__).resolve().parents[2]
ROOT = REPO / "varpo"
SOURCES = {"varpo": ROOT, "varpo_kernels": REPO / "kernels" / "varpo_kernels"}


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
    top = next(name for name, root in SOURCES.items() if path.is_relative_to(root))
    bits = [top, *path.relative_to(SOURCES[top]).with_suffix("").parts]
    return ".".join(bits[:-1] if bits[-1] == "__init__" else bits)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for root in SOURCES.values() for p in root.rglob("*.py")}


def imports_of(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every import in `path`, relative imports resolved: `import a.b` is
    ("a.b", []), `from a import x, y` is ("a", ["x", "y"])."""
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((mod, [a.name for a in node.names]))
    return [(m, names) for m, names in out if m.split(".")[0] in SOURCES]


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every varpo module `path` imports, and of every name it imports from one
    (`from .. import dist` imports the module varpo.dist; parts only matter here)."""
    return {x for mod, names in imports_of(path) for x in (mod, *(f"{mod}.{n}" for n in names))}


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


def module_graph() -> nx.DiGraph:
    """Module -> every project module it imports: `from X import n` depends on the module X.n when
    there is one, else on X (whose code defines or re-exports n)."""
    modules = all_modules()
    g = nx.DiGraph()
    for src, path in modules.items():
        g.add_node(src)
        for mod, names in imports_of(path):
            targets = [f"{mod}.{n}" if f"{mod}.{n}" in modules else mod for n in names] or [mod]
            g.add_edges_from((src, t) for t in targets if t in modules and t != src)
    return g


def cycles(g: nx.DiGraph) -> list[list[str]]:
    """Each group of nodes that import one another (a strongly connected component), one cycle through it."""
    out = []
    for comp in nx.strongly_connected_components(g):
        if len(comp) > 1:
            out.append([u for u, _ in nx.find_cycle(g.subgraph(comp))])
    return out


def test_the_graph_is_read_correctly():
    g = part_graph()
    # known edges: the trainer uses engines and config; the reward scorer implements the interface
    assert g.has_edge("ppo", "engines") and g.has_edge("ppo", "config") and g.has_edge("reward", "reward_source")
    assert len(g) >= 15
    m = module_graph()
    # a module, a name re-exported by a package's __init__, a deferred import, the kernels package
    assert m.has_edge("varpo.ppo.trainer", "varpo.ppo.experience_maker")
    assert m.has_edge("varpo.ppo.trainer", "varpo.config")  # VarpoConfig, from varpo/config/__init__.py
    assert m.has_edge("varpo.ppo", "varpo.ppo.trainer")  # inside train_ppo
    assert m.has_edge("varpo.ppo.core", "varpo_kernels.weighted_kl") and len(m) >= 100


def test_no_cycle_between_varpo_parts():
    found = cycles(part_graph())
    assert not found, "import cycles between varpo parts: " + "; ".join(" -> ".join(c + c[:1]) for c in found)


def test_no_cycle_between_modules():
    found = cycles(module_graph())
    assert not found, "import cycles between modules: " + "; ".join(" -> ".join(c + c[:1]) for c in found)


def test_a_cycle_would_be_found():
    g = part_graph()
    g.add_edge("reward_source", "ppo")  # what a careless import in the interface would add
    assert cycles(g)


def test_a_cycle_inside_a_package_would_be_found(tmp_path, monkeypatch):
    """A package whose __init__ imports a submodule that takes a name from the __init__, with the
    submodule's import deferred into a function: the cycle the part graph cannot see."""
    pkg = tmp_path / "varpo" / "pkg"
    pkg.mkdir(parents=True)
    (tmp_path / "varpo" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("from .build import build\nNAME = 1\n")
    (pkg / "build.py").write_text("def build():\n    from . import NAME\n    return NAME\n")
    (pkg / "leaf.py").write_text("from . import build\n")  # a module import: no cycle
    monkeypatch.setitem(SOURCES, "varpo", tmp_path / "varpo")
    assert cycles(module_graph()) == [["varpo.pkg", "varpo.pkg.build"]] or \
        sorted(cycles(module_graph())[0]) == ["varpo.pkg", "varpo.pkg.build"]
    assert not module_graph().has_edge("varpo.pkg.leaf", "varpo.pkg")


def test_the_package_imports_without_help():
    """`import varpo.ppo` alone, and every module of varpo in one fresh interpreter (a cycle that
    module-level imports cannot resolve fails here)."""
    code = ("import importlib, pkgutil, varpo; "
            "[importlib.import_module(m.name) for m in pkgutil.walk_packages(varpo.__path__, 'varpo.')]")
    for c in ("import varpo.ppo", code):
        r = subprocess.run([sys.executable, "-c", c], capture_output=True, text=True)
        assert r.returncode == 0, f"{c} failed:\n{r.stderr[-2000:]}"
