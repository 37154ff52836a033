"""What every reward ensemble shares, whatever its members are: K members' rewards standardised
per member, their statistics over members (σ² at a ddof, with the guard for ≤ ddof members),
member seeds, the pooled backbone features, and the folder format (config.json, heads.safetensors,
the tokenizer). The kinds: `EnsembleRewardModel` (varpo.reward.model: K heads on one backbone,
optionally with random prior heads) and `DeepEnsembleRewardModel` (varpo.reward.deep: K backbones).

A model is a plain nn.Module with forward(input_ids, attention_mask, stats_ddof=None) so that a
DeepSpeed engine can wrap it."""
from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from varpo_kernels import EnsembleStats, ensemble_stats

from ..masks import last_token_index, position_ids_from_mask
from ..models import last_block

CONFIG_NAME = "config.json"
HEADS_NAME = "heads.safetensors"
POOLINGS = ("last", "mean")


def member_seeds(num: int, head_seeds: Sequence[int] | None, head_seed: int) -> list[int]:
    """The K members' seeds: `head_seeds` as given, or head_seed + k; K distinct seeds."""
    seeds = list(head_seeds) if head_seeds is not None else [head_seed + k for k in range(num)]
    if len(seeds) != num or len(set(seeds)) != num:
        raise ValueError(f"head_seeds must be {num} distinct seeds, got {seeds}")
    return seeds


def check_pooling(pooling: str) -> None:
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS} (last: the last non-padding token; "
                         f"mean: the mean over non-padding tokens), got {pooling!r}")


def statistics(r: torch.Tensor, ddof: int) -> EnsembleStats:
    """Mean, variance (ddof), std and min over the members of rewards [B, K]. The spread of
    ≤ ddof members is not measurable: σ² := 0 there."""
    if r.shape[1] <= ddof:
        zero = torch.zeros_like(r[:, 0])
        return EnsembleStats(r.mean(1), zero, zero, r.amin(1))
    return ensemble_stats(r, ddof=ddof)


def takes_position_ids(backbone: nn.Module) -> bool:
    params = inspect.signature(backbone.forward).parameters
    return "position_ids" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def pool(backbone: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, pooling: str,
         with_position_ids: bool) -> torch.Tensor:
    """[B, T] → [B, hidden]: `backbone`'s last hidden state pooled over the real tokens ("last" or
    "mean"); position ids come from the mask, so left and right padding give the same result. "last"
    runs the trunk's last block at each row's last real token only, where it can
    (varpo.models.last_block)."""
    if not bool((attention_mask.sum(-1) > 0).all()):
        raise ValueError("reward model: a row of attention_mask has no real token")
    base = last_block.trunk(backbone) if pooling == "last" else None
    if base is not None:
        last = last_token_index(attention_mask)[:, None]  # [B, 1]
        return last_block.hidden_at(base, last, input_ids, attention_mask, position_ids_from_mask(attention_mask))[:, 0]
    kw = {"position_ids": position_ids_from_mask(attention_mask)} if with_position_ids else {}
    out = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kw)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    if pooling == "mean":
        m = attention_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * m).sum(1) / m.sum(1)
    idx = last_token_index(attention_mask)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]


def init_heads(weight: torch.Tensor, bias: torch.Tensor, seeds: Sequence[int]) -> None:
    """Head k ~ N(0, 1/hidden) from its own torch.Generator(seed_k); biases 0."""
    hidden = weight.shape[1]
    with torch.no_grad():
        for k, seed in enumerate(seeds):
            g = torch.Generator().manual_seed(int(seed))
            weight[k].copy_(torch.randn(hidden, generator=g, dtype=torch.float32) / hidden**0.5)
        bias.zero_()


class RewardEnsemble(nn.Module):
    """Base of the ensemble kinds. A subclass sets its members and `heads` (an nn.Linear-shaped
    [K, hidden] map), then calls `_register_standardization()`; its forward computes the raw
    member rewards [B, K] and returns `self._output(raw, stats_ddof)`."""

    def _set_members(self, seeds: list[int], pooling: str, ddof: int, separator: str) -> None:
        check_pooling(pooling)
        self.num_heads, self.head_seeds, self.pooling, self.ddof, self.separator = len(seeds), seeds, pooling, ddof, separator

    def _register_standardization(self) -> None:
        # per-member standardisation (set on reference samples after training, `standardize`): σ² is
        # then a disagreement in units of each member's own spread, not a difference of scales
        self.register_buffer("member_shift", torch.zeros(self.num_heads))
        self.register_buffer("member_scale", torch.ones(self.num_heads))

    def _output(self, raw: torch.Tensor, stats_ddof: int | None):
        """Standardised member rewards [B, K] float32; with stats_ddof, also their EnsembleStats."""
        r = ((raw - self.member_shift) / self.member_scale).float()
        return r if stats_ddof is None else (r, statistics(r, stats_ddof))

    @torch.no_grad()
    def standardize(self, raw: torch.Tensor) -> None:
        """Set the members' shift and scale from their raw rewards [N, K] on reference samples, so
        that each member has mean 0 and standard deviation 1 there."""
        if raw.dim() != 2 or raw.shape[1] != self.num_heads or raw.shape[0] < 2:
            raise ValueError(f"standardize: expected raw rewards [N ≥ 2, {self.num_heads}], got {tuple(raw.shape)}")
        raw = raw.double()
        self.member_shift.copy_(raw.mean(0).to(self.member_shift))
        self.member_scale.copy_(raw.std(0).clamp(min=1e-6).to(self.member_scale))

    def _common_config(self) -> dict:
        return {"backbone_type": self.backbone_config.model_type, "num_heads": self.num_heads,
                "head_seeds": self.head_seeds, "hidden_size": self.heads.in_features, "pooling": self.pooling,
                "ddof": self.ddof, "separator": self.separator}

    def _load_head_state(self, path: Path, state: dict[str, torch.Tensor]) -> None:
        """The heads and the members' standardisation from a folder's heads.safetensors (folders
        saved before standardisation existed have none)."""
        with torch.no_grad():
            for name in ("member_shift", "member_scale"):
                if name in state:
                    getattr(self, name).copy_(state.pop(name))
        if tuple(state["weight"].shape) != tuple(self.heads.weight.shape):
            raise ValueError(f"{path / HEADS_NAME}: head weight {tuple(state['weight'].shape)}, "
                             f"expected {tuple(self.heads.weight.shape)} from {path / CONFIG_NAME}")
        self.heads.load_state_dict(state)


def write_head_files(out: Path, tensors: dict[str, torch.Tensor], conf: dict, tokenizer=None) -> Path:
    """The files every ensemble folder has beside its backbone(s): the head tensors (float32
    safetensors), the config JSON and, if given, the tokenizer."""
    from safetensors.torch import save_file

    save_file({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}, str(out / HEADS_NAME))
    (out / CONFIG_NAME).write_text(json.dumps(conf, indent=2))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    return out


def read_folder_config(path: Path, model_type: str, writer: str) -> dict:
    """An ensemble folder's config, checked to be of `model_type` (written by `writer`)."""
    conf_file = path / CONFIG_NAME
    if not conf_file.exists():
        raise FileNotFoundError(f"{path}: not a reward-ensemble folder (no {CONFIG_NAME}; train one with `varpo train-rm`)")
    conf = json.loads(conf_file.read_text())
    if conf.get("model_type") != model_type:
        raise ValueError(f"{path / CONFIG_NAME}: model_type is {conf.get('model_type')!r}, expected {model_type!r} "
                         f"(a reward-ensemble folder written by {writer}.save_pretrained)")
    return conf


def read_config(path: str | Path) -> dict:
    """The saved ensemble's config.json (K, ddof, separator, training's max_length, ...)."""
    return json.loads((Path(path) / CONFIG_NAME).read_text())
