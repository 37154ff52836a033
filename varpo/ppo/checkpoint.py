"""PPO checkpoints: the actor's and critic's DeepSpeed engine states (weights + optimizer, sharded
as trained) and the trainer's own state (step, KL controller, running σ² mean, counters, RNG
states), written through the crash-safe scheme of varpo.checkpoint (atomic folder, manifest,
`latest` pointer, fallback to the previous checkpoint, keep_last pruning)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from .. import checkpoint as ckpt
from ..dist import barrier, rank, world_size


def save(ckpt_root: Path, step: int, engines: dict, state: dict, *, keep_last: int = 2, verify: str = "sha256") -> Path:
    """Collective: every rank calls it. `step` is the number of completed PPO steps."""

    def write_engines(folder: Path) -> None:
        for name, engine in engines.items():
            engine.save_checkpoint(str(folder), tag=name)

    return ckpt.save(ckpt_root, step, write_engines, state, keep_last=keep_last, verify=verify)


def latest(ckpt_root: Path) -> Path | None:
    """Collective: the newest checkpoint that passes its manifest check (see varpo.checkpoint)."""
    return ckpt.resolve(ckpt_root)


def _to_universal(path: Path, tag: str) -> str:
    """Convert one role's ZeRO checkpoint to DeepSpeed's universal format (world-size free).
    Rank 0 converts once, into a temporary folder renamed when complete; the other ranks wait."""
    from types import SimpleNamespace

    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    out_tag = f"{tag}_universal"
    if rank() == 0 and not (path / out_tag).is_dir():
        tmp = path / f"{ckpt.TMP}{out_tag}"
        shutil.rmtree(tmp, ignore_errors=True)
        ds_to_universal(SimpleNamespace(
            input_folder=str(path / tag), output_folder=str(tmp), num_extract_workers=1,
            num_merge_workers=1, keep_temp_folder=False, strict=True, inject_missing_state=False,
        ))
        os.replace(tmp, path / out_tag)
    barrier()
    return out_tag


def load(path: Path, engines: dict, saved_world_size: int | None = None) -> dict:
    """Restore engines and RNG states; returns the trainer state. A checkpoint written at another
    world size (e.g. 2 ranks resumed on 1) goes through DeepSpeed's universal checkpoint, which
    re-partitions the ZeRO shards of weights and optimizer states for the current ranks."""
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
    if not elastic:
        ckpt.restore_rng(path)
    state, _ = ckpt.load_state(path)
    return state
