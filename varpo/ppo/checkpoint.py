"""Resumable checkpoints: DeepSpeed engine states (weights + optimizer, sharded as trained) and
the trainer's own state (step, KL controller, running σ² mean, counters, RNG states).

A checkpoint is complete only once `COMPLETE` is written, last: a kill mid-save leaves an
incomplete folder that resume ignores, so at most the steps since the previous one are lost."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from ..dist import barrier, rank

MARKER = "COMPLETE"


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(s: dict) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])


def save(ckpt_root: Path, step: int, engines: dict, state: dict, keep: int = 2) -> Path:
    """Collective: every rank calls it. `step` is the number of completed PPO steps."""
    path = ckpt_root / f"step_{step:06d}"
    for name, engine in engines.items():
        engine.save_checkpoint(str(path), tag=name)
    torch.save(_rng_state(), path / f"rng_rank{rank()}.pt")
    barrier()
    if rank() == 0:
        (path / "trainer_state.json").write_text(json.dumps(state, indent=2))
        (path / MARKER).write_text(str(step))
        complete = sorted(p for p in ckpt_root.glob("step_*") if (p / MARKER).exists())
        for old in complete[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return path


def latest(ckpt_root: Path) -> Path | None:
    done = sorted(p for p in ckpt_root.glob("step_*") if (p / MARKER).exists())
    return done[-1] if done else None


def load(path: Path, engines: dict) -> dict:
    for name, engine in engines.items():
        load_path, _ = engine.load_checkpoint(str(path), tag=name, load_module_strict=True)
        if load_path is None:
            raise RuntimeError(f"checkpoint {path}: no state for role {name!r}")
    rng = path / f"rng_rank{rank()}.pt"
    if rng.exists():
        _set_rng_state(torch.load(rng, weights_only=False))
    return json.loads((path / "trainer_state.json").read_text())
