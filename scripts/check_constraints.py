"""constraints.txt against pyproject.toml and this environment.

    python scripts/check_constraints.py constraints.txt            # CI, after the plain install
    python scripts/check_constraints.py constraints.txt --write    # pin this environment (after a green CI)

constraints.txt holds the versions CI last passed with, for `pip install -e ".[dev]" -c constraints.txt`
(a reproducible install); the plain install takes the newest versions pyproject.toml's ranges allow.
This script fails when the file no longer fits pyproject.toml (a pin outside its range, a dependency
without a pin), and prints what the plain install resolved differently, so that a dependency which moved
under the project is named in CI's log next to the test that broke.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]


def read_pins(path: Path) -> dict[str, Version]:
    pins = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not name.strip() or not version.strip():
            raise SystemExit(f"{path}:{n}: expected NAME==VERSION, got {line!r}")
        pins[canonicalize_name(name)] = Version(version.strip())
    return pins


def direct_requirements(pyproject: Path, extras: tuple[str, ...] = ("dev",)) -> list[Requirement]:
    project = tomllib.loads(pyproject.read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"][extra]
    return [Requirement(r) for r in reqs]


def mismatches(pins: dict[str, Version], reqs: list[Requirement]) -> list[str]:
    """Every direct requirement pinned, each pin inside its range (local labels such as +cpu ignored)."""
    out = []
    for req in reqs:
        pin = pins.get(canonicalize_name(req.name))
        if pin is None:
            out.append(f"{req.name}: required by pyproject.toml ({req}) but not pinned")
        elif not req.specifier.contains(pin, prereleases=True):
            out.append(f"{req.name}=={pin}: outside pyproject.toml's range {req.specifier}")
    return out


def installed() -> dict[str, Version]:
    return {canonicalize_name(d.metadata["Name"]): Version(d.version) for d in importlib.metadata.distributions()}


def moved(pins: dict[str, Version], have: dict[str, Version]) -> list[str]:
    return [f"{name} {pins[name]} -> {have[name]}" for name in sorted(pins)
            if name in have and have[name].public != pins[name].public]


def write(path: Path, have: dict[str, Version]) -> None:
    own = {canonicalize_name(n) for n in ("varpo", "pip", "setuptools", "wheel")}
    lines = [f"{name}=={v.public}" for name, v in sorted(have.items()) if name not in own]
    path.write_text("# The versions CI last passed with (Python 3.11, CPU): pip install -e \".[dev]\" -c constraints.txt\n"
                    "# Regenerate after a green CI: python scripts/check_constraints.py constraints.txt --write\n"
                    + "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("constraints", type=Path)
    ap.add_argument("--pyproject", type=Path, default=REPO / "pyproject.toml")
    ap.add_argument("--write", action="store_true", help="pin every package of this environment into the file")
    a = ap.parse_args(argv)
    if a.write:
        write(a.constraints, installed())
    pins = read_pins(a.constraints)
    bad = mismatches(pins, direct_requirements(a.pyproject))
    for line in bad:
        print(f"{a.constraints}: {line}", file=sys.stderr)
    drift = moved(pins, installed())
    print(f"{a.constraints}: {len(pins)} pins; the plain install differs in {len(drift)}"
          + "".join(f"\n  {d}" for d in drift))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
