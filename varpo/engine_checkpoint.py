"""Checkpoints of a trainer's DeepSpeed engines (weights + optimizer, sharded as trained; one tag per
engine: PPO's actor and critic, reward training's ensemble) with the trainer's own state (JSON, and
tensors if any) and the RNG states, written through the crash-safe scheme of varpo.checkpoint
(atomic folder, manifest, `latest` pointer, fallback to the previous checkpoint, keep_last
pruning). Both trainers save and resume through this module."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .dist import barrier, rank, world_size


def save(ckpt_root: Path, step: int, engines: dict, state: dict, *, keep_last: int = 2, verify: str = "sha256",
         tensors: dict[str, torch.Tensor] | None = None, exclude_frozen: bool = False) -> Path:
    """Collective: every rank calls it. `step` is the number of completed steps; `engines` {tag:
    engine}; `exclude_frozen`: leave frozen parameters out of the engine files (a frozen backbone
    is loaded from its folder again on resume)."""

    def write_engines(folder: Path) -> None:
        for name, engine in engines.items():
            if exclude_frozen:
                engine.save_checkpoint(str(folder), tag=name, exclude_frozen_parameters=True)
            else:
                engine.save_checkpoint(str(folder), tag=name)

    return ckpt.save(ckpt_root, step, write_engines, state, keep_last=keep_last, verify=verify, tensors=tensors)


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


def _optimizer(engine):
    """The torch optimizer inside a DeepSpeed engine (ZeRO wraps it)."""
    opt = getattr(engine, "optimizer", None)
    return getattr(opt, "optimizer", opt)


def _param_groups(engine) -> list[dict]:
    return list(getattr(_optimizer(engine), "param_groups", []))


def _group_hyperparameters(engine) -> list[dict]:
    return [{k: v for k, v in g.items() if k != "params"} for g in _param_groups(engine)]


def load(path: Path, engines: dict, saved_world_size: int | None = None, *,
         strict: bool = True) -> tuple[dict, dict[str, torch.Tensor]]:
    """Restore engines and RNG states; returns the trainer's state and tensors. A checkpoint
    written at another world size (e.g. 2 ranks resumed on 1) goes through DeepSpeed's universal
    checkpoint, which re-partitions the ZeRO shards of weights and optimizer states for the current
    ranks. `strict=False`: engine files saved without their frozen parameters."""
    elastic = saved_world_size is not None and saved_world_size != world_size()
    for name, engine in engines.items():
        tag = name
        if elastic:
            tag = _to_universal(path, name)
            engine._config.load_universal_checkpoint = True  # read by load_checkpoint only
            hyper = _group_hyperparameters(engine)
        load_path, _ = engine.load_checkpoint(str(path), tag=tag, load_module_strict=strict)
        if elastic:
            engine._config.load_universal_checkpoint = False
            # DeepSpeed's universal load gives every optimizer group the hyperparameters of group 0
            # (ZeRO-3: load_hp_checkpoint_state_from_checkpoint_dir_stage3), which would put a
            # shared-trunk value head at the actor's learning rate. varpo has no LR schedule, so the
            # groups' values as built from the config are the ones the checkpoint was trained with.
            for group, h in zip(_param_groups(engine), hyper):
                group.update(h)
            # ...and it assigns one `step` tensor object to the state of every optimizer sub-group,
            # which torch's Adam then increments in place once per sub-group per step: with k
            # sub-groups (two groups with a shared-trunk value head; any model over ZeRO-3's
            # sub_group_size, 1e9 parameters) Adam's step count ran k times too fast after a resume
            for state in _optimizer(engine).state.values():
                if torch.is_tensor(state.get("step")):
                    state["step"] = state["step"].clone()
        if load_path is None:
            raise RuntimeError(f"checkpoint {path}: no state for role {name!r}")
    if not elastic:
        ckpt.restore_rng(path)
    return ckpt.load_state(path)
