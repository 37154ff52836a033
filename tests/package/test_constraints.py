"""constraints.txt (the versions CI last passed with) fits pyproject.toml's ranges, and the checker
that CI runs after the plain install catches what it should."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("check_constraints", REPO / "scripts/check_constraints.py")
cc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cc)


def test_the_committed_constraints_fit_pyproject():
    pins = cc.read_pins(REPO / "constraints.txt")
    assert cc.mismatches(pins, cc.direct_requirements(REPO / "pyproject.toml")) == []
    assert pins["torch"].public == pins["torch"].base_version  # no +cpu: the pin must also admit a CUDA build


def test_out_of_range_and_missing_pins_are_named():
    reqs = [Requirement("transformers>=4.56,<6"), Requirement("deepspeed>=0.16")]
    bad = cc.mismatches({"transformers": Version("4.40.0")}, reqs)
    assert bad == ["transformers==4.40.0: outside pyproject.toml's range <6,>=4.56",
                   "deepspeed: required by pyproject.toml (deepspeed>=0.16) but not pinned"]
    assert cc.mismatches({"transformers": Version("5.25.0"), "deepspeed": Version("0.19.8")}, reqs) == []


def test_drift_is_reported_and_local_labels_ignored():
    pins = {"torch": Version("2.13.0"), "transformers": Version("5.24.0"), "gone": Version("1.0")}
    have = {"torch": Version("2.13.0+cpu"), "transformers": Version("5.25.0")}
    assert cc.moved(pins, have) == ["transformers 5.24.0 -> 5.25.0"]


def test_a_malformed_line_names_file_and_line(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("# header\ntorch==2.13.0\ntransformers>=5\n")
    with pytest.raises(SystemExit, match=r"c.txt:3: expected NAME==VERSION, got 'transformers>=5'"):
        cc.read_pins(f)


def test_write_pins_this_environment_without_varpo(tmp_path):
    f = tmp_path / "c.txt"
    cc.write(f, {"varpo": Version("0.1.0"), "torch": Version("2.13.0+cpu"), "pip": Version("24.0")})
    assert cc.read_pins(f) == {"torch": Version("2.13.0")}
