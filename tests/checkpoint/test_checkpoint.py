"""The crash-safe checkpoint scheme (varpo.checkpoint) on a world of one: atomic commit under a
real SIGKILL at each phase of a save, fallback from a corrupt checkpoint, keep_last pruning, RNG
states without pickle. DeepSpeed engines are exercised by tests/ppo and tests/reward; here the
engine part of a save writes a plain file, the rest is the real code path."""
from __future__ import annotations

import json
import os
import pickle
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import SafetensorError

from varpo import checkpoint as ckpt


def _engines(step: int):  # the engine part of a save (a real DeepSpeed one in tests/ppo, tests/reward)
    def write(folder: Path) -> None:
        (folder / "engine").mkdir()
        (folder / "engine" / "weights.bin").write_bytes(bytes(range(256)) * 64 * step)

    return write


SAVE = """
import sys
from pathlib import Path
from varpo import checkpoint
root, step = Path(sys.argv[1]), int(sys.argv[2])
def engines(folder):
    (folder / "engine").mkdir()
    (folder / "engine" / "weights.bin").write_bytes(bytes(range(256)) * 64 * step)
checkpoint.save(root, step, engines, {"step": step}, keep_last=2)
"""


def _save(root: Path, step: int, fault: str | None = None) -> int:
    """A save in this process, or with a fault point in a child that the fault kills."""
    if fault is None:
        ckpt.save(root, step, _engines(step), {"step": step}, keep_last=2)
        return 0
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_PORT", ckpt.FAULT_ENV)}
    if fault:
        env[ckpt.FAULT_ENV] = fault
    return subprocess.run([sys.executable, "-c", SAVE, str(root), str(step)], env=env, timeout=300).returncode


def _resolve(root: Path) -> Path | None:
    return ckpt.resolve(root)


@pytest.fixture(scope="module")
def two_saved(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ckpt") / "checkpoints"
    assert _save(root, 1) == 0 and _save(root, 2) == 0
    return root


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("phase", ["engines_written", "state_written", "before_rename", "before_latest"])
def test_kill_inside_a_save_keeps_a_loadable_checkpoint(two_saved, tmp_path, phase):
    root = _copy(two_saved, tmp_path / "checkpoints")
    assert _save(root, 3, fault=phase) == -9  # a real SIGKILL, as kill -9 at that moment
    got = _resolve(root)
    # before the rename, step 3 is only a temporary folder; after it, `latest` still names step 2
    assert got == root / ckpt.name_of(2), phase
    assert ckpt.check(got) is None
    # the next save clears what the killed one left and commits normally
    assert _save(root, 3) == 0
    assert _resolve(root) == root / ckpt.name_of(3)
    assert not list(root.glob(f"{ckpt.TMP}*"))
    assert sorted(p.name for p in root.glob(f"{ckpt.PREFIX}*")) == [ckpt.name_of(2), ckpt.name_of(3)]  # keep_last=2


def test_keep_last_prunes_old_checkpoints(two_saved, tmp_path):
    root = _copy(two_saved, tmp_path / "checkpoints")
    for step in (3, 4):
        assert _save(root, step) == 0
    assert sorted(p.name for p in root.glob(f"{ckpt.PREFIX}*")) == [ckpt.name_of(3), ckpt.name_of(4)]
    assert (root / ckpt.LATEST).read_text() == ckpt.name_of(4)


def _truncate(p: Path):
    p.write_bytes(p.read_bytes()[:-7])


def _flip(p: Path):
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0xFF
    p.write_bytes(bytes(b))


@pytest.mark.parametrize("damage, reason", [
    (lambda f: _truncate(f / "engine" / "weights.bin"), "bytes, the manifest says"),
    (lambda f: (f / "engine" / "weights.bin").unlink(), "missing file engine/weights.bin"),
    (lambda f: _flip(f / "engine" / "weights.bin"), "SHA-256 differs"),
    (lambda f: (f / ckpt.MANIFEST).unlink(), "no manifest.json"),
    (lambda f: (f / ckpt.MANIFEST).write_text("{"), "unreadable manifest.json"),
])
def test_corrupt_checkpoint_falls_back_to_the_previous_with_a_warning(two_saved, tmp_path, damage, reason):
    root = _copy(two_saved, tmp_path / "checkpoints")
    damage(root / ckpt.name_of(2))
    with pytest.warns(RuntimeWarning, match=f"{ckpt.name_of(2)} is skipped: .*{reason}"):
        assert _resolve(root) == root / ckpt.name_of(1)
    assert ckpt.load_state(root / ckpt.name_of(1))[0] == {"step": 1}
    # both damaged: nothing to resume from, said loudly
    _truncate(root / ckpt.name_of(1) / ckpt.STATE)
    with pytest.warns(RuntimeWarning, match=f"{ckpt.name_of(1)} is skipped"):
        assert _resolve(root) is None


def test_missing_pointer_target_uses_the_newest_good_one(two_saved, tmp_path):
    root = _copy(two_saved, tmp_path / "checkpoints")
    (root / ckpt.LATEST).write_text(ckpt.name_of(7))
    with pytest.warns(RuntimeWarning, match="does not exist"):
        assert _resolve(root) == root / ckpt.name_of(2)


def test_rng_states_round_trip_without_pickle(tmp_path):
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    random.random(), np.random.randn(), torch.rand(1)
    np.random.standard_normal()  # leaves a cached Gaussian in NumPy's state
    path = tmp_path / "rng.safetensors"
    ckpt.save_rng(path)
    want = (random.random(), np.random.randn(3).tolist(), torch.rand(3).tolist())
    ckpt.load_rng(path)
    assert (random.random(), np.random.randn(3).tolist(), torch.rand(3).tolist()) == want
    assert path.read_bytes()[:8] != pickle.dumps(0)[:8]  # safetensors: a JSON header, no pickle opcodes


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(os.environ["VARPO_TEST_PWNED"]),))


def test_a_tampered_rng_file_is_refused_without_running_it(tmp_path, monkeypatch):
    """A pickle planted where the RNG states live (what `torch.load(weights_only=False)` would have
    executed) is rejected as not-safetensors, and its payload never runs."""
    pwned = tmp_path / "pwned"
    monkeypatch.setenv("VARPO_TEST_PWNED", str(pwned))
    folder = tmp_path / "step"
    folder.mkdir()
    torch.save({"python": _Payload()}, folder / "rng_rank0.safetensors")
    with pytest.raises(SafetensorError):
        ckpt.restore_rng(folder)
    assert not pwned.exists(), "the planted payload ran"
    (folder / ckpt.STATE).write_text(json.dumps({"step": 1}))
    torch.save({"x": _Payload()}, folder / ckpt.TENSORS)
    with pytest.raises(SafetensorError):
        ckpt.load_state(folder)
    assert not pwned.exists()
