"""No module of the repository carries the top-level name of a package that Python could import
instead: `python benchmarks/x.py` puts benchmarks/ first on sys.path, so a benchmarks/kernels.py
hid Hugging Face's `kernels` from transformers 5.25 (which requires it) and every model load died
with `cannot import name 'CUDAProperties' from 'kernels'`.

Protected names: the standard library, every installed distribution's top-level modules, the
optional packages transformers probes for (read from its own source, so the list follows its
version), and varpo's own optional extras (pyproject), installed or not."""
from __future__ import annotations

import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = REPO / "pyproject.toml"
SKIP_DIRS = {".git", "__pycache__", ".pytest_cache", ".ruff_cache", "build", "dist", "runs", "out", "results"}


def path_roots() -> list[Path]:
    """Every folder that can stand first on sys.path: the repository root (the working directory of
    `python -m ...`), the package root kernels/, and each folder holding a script that is run by path
    (benchmarks/, launch/, scripts/, the test workers under tests/)."""
    roots = [REPO, REPO / "kernels"]
    for top in ("benchmarks", "launch", "scripts", "tests"):
        if not (REPO / top).is_dir():
            continue
        for d in [REPO / top, *(REPO / top).rglob("*")]:
            parts = d.relative_to(REPO).parts  # no virtual environment (.venv-trl, ...) or cache below a dot folder
            if d.is_dir() and not (SKIP_DIRS & set(parts)) and not any(x.startswith(".") for x in parts) \
                    and any(d.glob("*.py")):
                roots.append(d)
    return roots


def top_level_names(root: Path) -> dict[str, Path]:
    """Names `import NAME` resolves to in `root`: modules and regular packages (a folder without
    __init__.py is a namespace portion, which never wins over a regular package elsewhere)."""
    if not root.is_dir():
        return {}
    names = {p.stem: p for p in root.glob("*.py")}
    names |= {p.name: p for p in root.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    return names


def transformers_probes() -> set[str]:
    """The optional packages transformers looks for (`_is_package_available("x")`)."""
    import transformers.utils.import_utils as iu

    src = Path(iu.__file__).read_text()
    return {m.split(".")[0] for m in re.findall(r'_is_package_available\(\s*"([A-Za-z_0-9.]+)"', src)}


def extras() -> set[str]:
    """varpo's optional dependencies (pyproject), as import names."""
    data = tomllib.loads(PYPROJECT.read_text())
    out = set()
    for reqs in data["project"]["optional-dependencies"].values():
        for r in reqs:
            out.add(re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].replace("-", "_").lower())
    return out


def protected() -> dict[str, str]:
    names = {n: "the standard library" for n in sys.stdlib_module_names}
    names |= {n: f"installed ({', '.join(d)})" for n, d in importlib.metadata.packages_distributions().items()}
    names |= {n: "probed by transformers" for n in transformers_probes()}
    names |= {n: "a varpo extra (pyproject)" for n in extras()}
    names |= {"kernels": "Hugging Face kernels, required by transformers >= 5.25"}
    return names


OURS = {"varpo", "varpo_kernels"}  # the project's own installed packages


def shadows() -> list[str]:
    prot = protected()
    found = []
    for root in path_roots():
        for name, path in top_level_names(root).items():
            if name in prot and name not in OURS and not name.startswith("_"):
                found.append(f"{path.relative_to(REPO)} shadows `{name}` ({prot[name]})")
    return sorted(found)


def test_the_protected_names_are_read():
    prot = protected()
    # installed, probed, an extra, the standard library
    assert {"transformers", "deepspeed", "flash_attn", "vllm", "trl", "json", "kernels"} <= set(prot)
    assert "conftest" in top_level_names(REPO / "tests")
    assert REPO / "benchmarks" in path_roots() and REPO / "tests" / "ppo" in path_roots()


def test_no_repository_module_shadows_an_installed_or_probed_package():
    found = shadows()
    assert not found, "rename these:\n" + "\n".join(found)


@pytest.mark.parametrize("name", ["kernels.py", "trl.py", "profile.py"])
def test_a_shadowing_module_is_caught(tmp_path, monkeypatch, name):
    """The check itself: a module named like a protected package in benchmarks/ is reported."""
    bench = tmp_path / "benchmarks"
    bench.mkdir()
    (bench / "host.py").write_text("")
    (bench / name).write_text("")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert shadows() == [f"benchmarks/{name} shadows `{name[:-3]}` ({protected()[name[:-3]]})"]
