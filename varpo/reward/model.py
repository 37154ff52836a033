"""The multi-head reward ensemble (docs/design.md §1 "Ensemble reward model"; paper Appendix B): one
HF backbone, K scalar linear heads evaluated in a single forward pass.

- Heads: one `nn.Linear(hidden, K)`; column k of the head matrix (row k of `weight`) is drawn from
  its own seed `head_seeds[k]`, so the heads start apart and, trained on the same features,
  disagree where the data leave them free to.
- Pooling "last" (default, as the paper's reward models): the hidden state of the last position
  whose attention-mask entry is 1; "mean": the mean over positions whose entry is 1. Either way
  left- and right-padded batches give the same rewards (position ids are derived from the mask).
- The backbone is frozen unless LoRA adapters (peft) are attached with `add_lora`.
- `save_pretrained(dir)` writes a self-contained folder: `config.json` (this model's: backbone
  subfolder, K, pooling, ddof, seeds, text separator), `heads.safetensors`, `backbone/` (the HF
  backbone, LoRA merged in) and, when given, the tokenizer at the top level.
The model stays a plain nn.Module with forward(input_ids, attention_mask) so a DeepSpeed
inference engine can wrap it (ZeRO-3 shards the backbone like any HF model).
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from varpo_kernels import ensemble_head_stats

from ..moved import moved_names
from ..seeds import derive_seed
from .ensemble import (
    HEADS_NAME,
    RewardEnsemble,
    init_heads,
    member_seeds,
    pool,
    read_folder_config,
    statistics,
    takes_position_ids,
    write_head_files,
)

BACKBONE_DIR = "backbone"
MODEL_TYPE = "varpo_ensemble_reward_model"


class EnsembleHeads(nn.Linear):
    """The K scalar heads as one [K, hidden] linear map. forward(h) gives the per-head rewards
    [B, K]; forward(h, ddof=d) also their mean, variance (ddof d), std and min over heads, fused
    into the same pass (varpo_kernels.ensemble_head_stats: one Triton program per sample on CUDA).
    A module of its own so that ZeRO-3 gathers the head weights when it runs."""

    def forward(self, h: torch.Tensor, ddof: int | None = None):
        if ddof is None:
            return super().forward(h)
        if self.out_features <= ddof:  # the spread of ≤ ddof heads is not measurable (ensemble.statistics)
            r = super().forward(h).float()
            return r, statistics(r, ddof)
        return ensemble_head_stats(h, self.weight, self.bias, ddof=ddof)


class EnsembleRewardModel(RewardEnsemble):
    """forward(input_ids [B, T], attention_mask [B, T]) → per-head rewards [B, K] (float32), or
    with stats_ddof the rewards and their EnsembleStats."""

    def __init__(self, backbone: nn.Module, num_heads: int = 10, *, head_seeds: Sequence[int] | None = None,
                 head_seed: int = 0, pooling: str = "last", ddof: int = 1, separator: str = " ",
                 freeze_backbone: bool = True, prior_scale: float = 0.0):
        super().__init__()
        if num_heads < 1:
            raise ValueError(f"num_heads must be ≥ 1, got {num_heads}")
        self._set_members(member_seeds(num_heads, head_seeds, head_seed), pooling, ddof, separator)
        seeds = self.head_seeds
        self.backbone = backbone
        hidden = backbone.config.hidden_size
        self.heads = EnsembleHeads(hidden, num_heads, dtype=torch.float32)
        init_heads(self.heads.weight, self.heads.bias, seeds)
        # randomized prior functions (Osband et al. 2018): member k adds prior_scale · p_k(h), p_k a
        # fixed random head from its own seed, never trained, so members keep disagreeing where the
        # data do not pull them together; prior_scale 0 is the plain ensemble
        self.prior_scale = float(prior_scale)
        self.prior = nn.Linear(hidden, num_heads, dtype=torch.float32)
        init_heads(self.prior.weight, self.prior.bias, [derive_seed("prior_head", x) for x in seeds])
        self.prior.requires_grad_(False)
        self._register_standardization()
        if freeze_backbone:
            self.backbone.requires_grad_(False)
        self._takes_position_ids = takes_position_ids(backbone)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_backbone(cls, path_or_config, num_heads: int = 10, *, dtype: torch.dtype = torch.float32,
                      load_kw: dict | None = None, **kw) -> EnsembleRewardModel:
        """Backbone via `AutoModel` from a local HF folder (a CausalLM checkpoint loads its base
        model) or from a `PretrainedConfig` (random weights; tests and benchmarks). `load_kw`:
        further `from_pretrained` options (e.g. attn_implementation)."""
        from transformers import AutoModel, PretrainedConfig

        if isinstance(path_or_config, PretrainedConfig):
            backbone = AutoModel.from_config(copy.deepcopy(path_or_config), dtype=dtype, **(load_kw or {}))
        else:
            backbone = AutoModel.from_pretrained(str(path_or_config), dtype=dtype, **(load_kw or {}))
        return cls(backbone, num_heads, **kw)

    def add_lora(self, r: int = 8, alpha: int = 16, dropout: float = 0.0,
                 target_modules: str | Sequence[str] | None = "auto") -> None:
        """Attach LoRA adapters to the backbone: afterwards only the adapters and the heads train.
        `target_modules`: names, "all-linear", or "auto"/None (per architecture, varpo.models.lora)."""
        from ..models.lora import attach_lora

        self.backbone = attach_lora(self.backbone, r, alpha, dropout, target_modules or "auto",
                                    field="reward_training.lora.target_modules")

    @property
    def is_lora(self) -> bool:
        return hasattr(self.backbone, "peft_config")

    # ------------------------------------------------------------------ forward
    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, T] → [B, hidden]: the backbone's last hidden state, pooled over the real tokens."""
        return pool(self.backbone, input_ids, attention_mask, self.pooling, self._takes_position_ids)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, stats_ddof: int | None = None):
        """Per-head rewards [B, K] (float32); with `stats_ddof` = d, (rewards, EnsembleStats) with
        the variance over heads at ddof d. A plain ensemble computes heads and statistics in one
        fused pass; prior heads or member standardisation add terms after the heads, so there the
        statistics come from the [B, K] rewards (varpo_kernels.ensemble_stats)."""
        h = self.pooled(input_ids, attention_mask).to(self.heads.weight.dtype)
        if stats_ddof is not None and self._is_plain():
            return self.heads(h, ddof=stats_ddof)
        return self._output(self._raw_from_pooled(h), stats_ddof)

    def rewards_from_pooled(self, h: torch.Tensor) -> torch.Tensor:
        """[B, hidden] pooled states (from this backbone, or from a server running it: varpo.reward.remote)
        → per-head rewards [B, K] float32: heads, prior heads, member standardisation."""
        return self._output(self._raw_from_pooled(h.to(self.heads.weight.dtype)), None)

    def _raw_from_pooled(self, h: torch.Tensor) -> torch.Tensor:
        r = self.heads(h)
        if self.prior_scale:
            r = r + self.prior_scale * self.prior(h)
        return r

    def _is_plain(self) -> bool:
        return not self.prior_scale and bool((self.member_shift == 0).all() and (self.member_scale == 1).all())

    # ------------------------------------------------------------------ persistence
    def config_dict(self) -> dict:
        return {"model_type": MODEL_TYPE, "backbone": BACKBONE_DIR, **self._common_config(), "prior_scale": self.prior_scale}

    @property
    def backbone_config(self):
        """The HF config of the backbone (under LoRA, of the wrapped base model)."""
        return self.backbone.get_base_model().config if self.is_lora else self.backbone.config

    def save_pretrained(self, out_dir: str | Path, tokenizer=None, extra: dict | None = None) -> Path:
        """Write the self-contained folder (see module doc). With LoRA, a merged copy of the
        backbone is saved; the model being trained is left as it is."""

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        backbone = copy.deepcopy(self.backbone).merge_and_unload() if self.is_lora else self.backbone
        backbone.save_pretrained(str(out / BACKBONE_DIR), safe_serialization=True)
        tensors = {"weight": self.heads.weight, "bias": self.heads.bias, "prior_weight": self.prior.weight,
                   "prior_bias": self.prior.bias, "member_shift": self.member_shift, "member_scale": self.member_scale}
        return write_head_files(out, tensors, {**self.config_dict(), **(extra or {})}, tokenizer)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, dtype: torch.dtype = torch.float32,
                        load_kw: dict | None = None, backbone_weights: bool = True) -> EnsembleRewardModel:
        """The saved ensemble. `backbone_weights=False`: the backbone is built from its config on the
        meta device (no weights read or allocated), for callers that get its hidden states elsewhere
        (a server running it, varpo.reward.remote) and use `rewards_from_pooled` only."""
        from safetensors.torch import load_file
        from transformers import AutoConfig, AutoModel

        path = Path(path)
        conf = read_folder_config(path, MODEL_TYPE, "EnsembleRewardModel")
        if backbone_weights:
            from transformers.integrations import is_deepspeed_zero3_enabled

            from ..models.zero3_load import checkpoint_files, zero3_from_pretrained

            folder = path / conf["backbone"]
            if is_deepspeed_zero3_enabled() and checkpoint_files(folder):
                # partitioned from the start, filled one tensor at a time (transformers' own ZeRO-3
                # path maps the whole checkpoint on rank 0: a reward larger than a rank would not load)
                backbone = zero3_from_pretrained(AutoModel, folder, dtype=dtype, **(load_kw or {}))
            else:
                backbone = AutoModel.from_pretrained(str(folder), dtype=dtype, **(load_kw or {}))
        else:
            from ..memory import on_meta

            bconf = AutoConfig.from_pretrained(str(path / conf["backbone"]))
            backbone = on_meta(lambda: AutoModel.from_config(bconf))
        model = cls(backbone, conf["num_heads"], head_seeds=conf["head_seeds"], pooling=conf["pooling"],
                    ddof=conf["ddof"], separator=conf.get("separator", " "), prior_scale=conf.get("prior_scale", 0.0))
        state = load_file(str(path / HEADS_NAME))
        with torch.no_grad():  # folders saved before priors existed have none
            if "prior_weight" in state:
                model.prior.weight.copy_(state.pop("prior_weight"))
                model.prior.bias.copy_(state.pop("prior_bias"))
        model._load_head_state(path, state)
        return model.eval()


# names that moved out: an import of one names its new home (varpo.moved)
__getattr__ = moved_names(__name__, {"read_config": "varpo.reward.ensemble", "CONFIG_NAME": "varpo.reward.ensemble",
                                     "POOLINGS": "varpo.reward.ensemble", "load_reward_model": "varpo.reward.load"})
