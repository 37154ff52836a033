"""What users import keeps working, and what moved says where it went: the public names of varpo.ppo,
and a clear error naming the new home for every module that was split or renamed and for names
that left a module that still exists."""
from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from varpo.moved import MOVED


def test_the_public_imports_of_varpo_ppo():
    code = ("from varpo.ppo import PPOTrainer, Roles, TrainerCallback, TrainerControl, build_roles, train_ppo; "
            "from varpo.ppo.callbacks import CallbackList, TrainerCallback as T; "
            "from varpo.ppo.trainer import NonFiniteError, PPOTrainer as P; "
            "from varpo.reward.train import NonFiniteLossError, train_reward_model; "
            "assert T is TrainerCallback and P is PPOTrainer and NonFiniteLossError is NonFiniteError")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


def test_import_varpo_ppo_stays_light():
    """The trainer (torch, DeepSpeed, transformers) loads only when one of its names is used."""
    r = subprocess.run([sys.executable, "-c", "import sys, varpo.ppo; print('varpo.ppo.trainer' in sys.modules)"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr[-2000:]


@pytest.mark.parametrize("old", sorted(MOVED))
def test_a_removed_module_names_its_new_home(old):
    with pytest.raises(ModuleNotFoundError, match=f"{old} no longer exists; .*varpo\\."):
        importlib.import_module(old)


@pytest.mark.parametrize(("module", "name", "home"), [
    ("varpo.engines", "generation_gather", "varpo.ppo.generation.zero3_gather"),
    ("varpo.engines", "GroupedGather", "varpo.ppo.generation.zero3_gather"),
    ("varpo.reward.model", "load_reward_model", "varpo.reward.load"),
    ("varpo.reward.model", "read_config", "varpo.reward.ensemble"),
    ("varpo.testbed.gold", "gold_fn", "varpo.testbed.tasks"),
    ("varpo.testbed.gold", "GoldScorer", "varpo.testbed.tasks"),
])
def test_a_moved_name_names_its_new_home(module, name, home):
    with pytest.raises(ImportError, match=f"{module}.{name} moved to {home}.{name}"):
        exec(f"from {module} import {name}", {})
    assert hasattr(importlib.import_module(home), name)


def test_an_unknown_module_is_still_a_plain_error():
    with pytest.raises(ModuleNotFoundError, match="No module named 'varpo.nothing_here'"):
        importlib.import_module("varpo.nothing_here")
