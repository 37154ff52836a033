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


def _to_universal(path: Path, tag: str) -> str:
    """Convert one role's ZeRO checkpoint to DeepSpeed's universal format (world-size free).
    Rank 0 converts once; the other ranks wait."""
    from types import SimpleNamespace

    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    out_tag = f"{tag}_universal"
    if rank() == 0 and not (path / out_tag / MARKER).exists():
        shutil.rmtree(path / out_tag, ignore_errors=True)
        ds_to_universal(SimpleNamespace(
            input_folder=str(path / tag), output_folder=str(path / out_tag), num_extract_workers=1,
            num_merge_workers=1, keep_temp_folder=False, strict=True, inject_missing_state=False,
        ))
        (path / out_tag / MARKER).write_text("")
    barrier()
    return out_tag


def load(path: Path, engines: dict, saved_world_size: int | None = None) -> dict:
    """Restore engines and RNG states. A checkpoint written at another world size (e.g. 2 ranks
    resumed on 1) goes through DeepSpeed's universal checkpoint, which re-partitions the ZeRO
    shards of weights and optimizer states for the current ranks."""
    from ..dist import world_size

    elastic = saved_world_size is not None and saved_world_size != world_size()
    for name, engine in engines.items():
        tag = name
        if elastic:
            tag = _to_universal(path, name)
            engine._config.load_universal_checkpoint = True  # read by load_checkpoint only
        load_path, _ = engine.load_checkpoint(str(path), tag=tag, load_module_strict=True)
        if elastic:
            engine._config.load_universal_checkpoint = False
        if load_path is None:
            raise RuntimeError(f"checkpoint {path}: no state for role {name!r}")
    rng = path / f"rng_rank{rank()}.pt"
    if rng.exists() and not elastic:
        _set_rng_state(torch.load(rng, weights_only=False))
    return json.loads((path / "trainer_state.json").read_text())
