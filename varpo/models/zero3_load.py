"""A Hugging Face checkpoint loaded into a model that ZeRO-3 partitions as it is built, one tensor at a time.

transformers' own ZeRO-3 path merges the state dicts of every checkpoint shard on rank 0 before it
copies anything (modeling_utils, `is_deepspeed_zero3_enabled` branch of loading): rank 0 then maps
the whole checkpoint at once, so a model larger than a rank's memory cannot be loaded even when its
ZeRO-3 shard fits (measured: benchmarks/reward_over_budget.py). Here the model is built from its
config under zero.Init (partitioned from the start), and each tensor of each checkpoint file is
gathered, filled on rank 0 and released before the next: a rank holds its shard, one file's mapping
and one gathered parameter."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def checkpoint_files(folder: str | Path) -> list[Path]:
    """The safetensors files of an HF model folder (one file, or the shards of an index)."""
    return sorted(Path(folder).glob("*.safetensors"))


def zero3_from_pretrained(auto_cls, folder: str | Path, *, dtype: torch.dtype, **load_kw) -> nn.Module:
    """`auto_cls.from_pretrained(folder)` for a model built under transformers' ZeRO-3 switch
    (HfDeepSpeedConfig alive: varpo.engines.build_model), loading one tensor at a time."""
    from transformers import AutoConfig

    conf = AutoConfig.from_pretrained(str(folder))
    model = auto_cls.from_config(conf, dtype=dtype, **load_kw)  # zero.Init: partitioned, HF's init
    load_into_zero3(model, folder)
    return model


def load_into_zero3(model: nn.Module, folder: str | Path) -> None:
    """Copy the checkpoint in `folder` into `model`'s ZeRO-3 partitioned parameters (and its
    buffers). Every rank walks the same files and keys in the same order (each gather is a
    collective); only rank 0 reads values. Raises naming the folder on a missing or unexpected key."""
    import deepspeed
    import torch.distributed as dist
    from safetensors import safe_open

    files = checkpoint_files(folder)
    if not files:
        raise FileNotFoundError(f"{folder}: no *.safetensors checkpoint to load under ZeRO-3")
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    prefix = getattr(model, "base_model_prefix", "") or ""
    reads = not dist.is_initialized() or dist.get_rank() == 0
    loaded, unexpected = set(), []
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            for key in sorted(fh.keys()):
                name = key if (key in params or key in buffers or not prefix) else key.removeprefix(prefix + ".")
                if name in params:
                    p = params[name]
                    with torch.no_grad(), deepspeed.zero.GatheredParameters([p], modifier_rank=0):
                        if reads:
                            p.data.copy_(_checked(fh.get_tensor(key), p.shape, key, f))
                elif name in buffers:  # buffers are not partitioned: every rank reads its own copy
                    with torch.no_grad():
                        buffers[name].copy_(_checked(fh.get_tensor(key), buffers[name].shape, key, f))
                else:
                    unexpected.append(key)
                    continue
                loaded.add(name)
    tied = {n for n, _ in model.named_parameters(remove_duplicate=False)} - set(params)  # aliases of loaded ones
    missing = sorted(set(params) - loaded - tied)
    if unexpected or missing:
        raise ValueError(f"{folder}: the checkpoint does not match the model built from its config.json "
                         f"(unexpected keys {unexpected[:5]}, missing parameters {missing[:5]})")


def _checked(t: torch.Tensor, shape, key: str, f: Path) -> torch.Tensor:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{f}: {key} has shape {tuple(t.shape)}, the model built from config.json {tuple(shape)}")
    return t
