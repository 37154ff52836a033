"""The deep ensemble (`reward_training.ensemble_kind: deep`; Lakshminarayanan et al. 2017): K members,
each its own backbone and scalar head, initialised from its own seed and trained on its own
bootstrap resample of the pairs. Unlike the heads of `EnsembleRewardModel`, which read one shared
set of features, the members differ in what they learned, so where the data leave them free
(off the pairs' support) they disagree in what they predict, not only in scale.

- Member k's backbone: the backbone's architecture with weights drawn from seed `head_seeds[k]`
  (init "random", the deep ensemble proper), or the pretrained backbone (init "pretrained": the
  members then differ by bootstrap, head seed and data order only). The whole backbone trains,
  or only LoRA adapters on it when `add_lora` is called (each member its own adapters).
- Rewards r_k = w_k · pool(backbone_k(x)) + b_k, then the per-member standardisation of
  `EnsembleRewardModel` (shift/scale set on reference samples) before σ² = Var_k(r_k).
- Same interface as `EnsembleRewardModel`: forward(input_ids, attention_mask, stats_ddof=None),
  `standardize`, `save_pretrained`/`from_pretrained`, `backbone_config`, `num_heads`, `separator`,
  so `EnsembleScorer`, the trainer and the frozen DeepSpeed role serve it unchanged.
- Folder: config.json (model_type varpo_deep_ensemble_reward_model, the member folders),
  heads.safetensors (head weights [K, hidden], biases, member shift/scale), members/NN/ (HF
  backbones, LoRA merged in) and the tokenizer at the top level.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .ensemble import (
    CONFIG_NAME,
    HEADS_NAME,
    RewardEnsemble,
    check_pooling,
    init_heads,
    member_seeds,
    pool,
    read_folder_config,
    takes_position_ids,
    write_head_files,
)

DEEP_MODEL_TYPE = "varpo_deep_ensemble_reward_model"
MEMBERS_DIR = "members"
INITS = ("random", "pretrained")


class MemberHeads(nn.Linear):
    """Member k's scalar head is row k of one [K, hidden] linear map, applied to member k's own
    features: forward(h [K, B, hidden]) → rewards [B, K]. A module of its own so that ZeRO-3
    gathers the head weights when it runs."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.einsum("kbh,kh->bk", h, self.weight) + self.bias


class DeepEnsembleRewardModel(RewardEnsemble):
    """forward(input_ids [B, T], attention_mask [B, T]) → member rewards [B, K] (float32), or with
    stats_ddof the rewards and their EnsembleStats (variance over members at that ddof)."""

    def __init__(self, backbones: Sequence[nn.Module], *, head_seeds: Sequence[int], pooling: str = "mean",
                 ddof: int = 1, separator: str = " ", init: str = "random"):
        super().__init__()
        if len(backbones) < 1:
            raise ValueError("a deep ensemble needs at least one member")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        self._set_members(member_seeds(len(backbones), head_seeds, 0), pooling, ddof, separator)
        hidden = {b.config.hidden_size for b in backbones}
        if len(hidden) != 1:
            raise ValueError(f"deep-ensemble members must share one hidden size, got {sorted(hidden)}")
        self.members = nn.ModuleList(backbones)
        self.init = init
        self.prior_scale = 0.0  # no prior functions: the members' own initialisations play that part
        self.heads = MemberHeads(hidden.pop(), self.num_heads, dtype=torch.float32)
        init_heads(self.heads.weight, self.heads.bias, self.head_seeds)
        self._register_standardization()
        self._takes_position_ids = takes_position_ids(backbones[0])

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_backbone(cls, path_or_config, num_members: int = 5, *, init: str = "random", head_seed: int = 0,
                      head_seeds: Sequence[int] | None = None, dtype: torch.dtype = torch.float32,
                      load_kw: dict | None = None, **kw) -> DeepEnsembleRewardModel:
        """K members of the architecture at `path_or_config` (a local HF folder or a
        `PretrainedConfig`). init "random": member k's weights are drawn after
        torch.manual_seed(seed_k); "pretrained": every member starts from the folder's weights."""
        from transformers import AutoConfig, AutoModel, PretrainedConfig

        if num_members < 1:
            raise ValueError(f"num_members must be ≥ 1, got {num_members}")
        if init not in INITS:
            raise ValueError(f"reward_training.deep_init must be one of {INITS}, got {init!r}")
        check_pooling(kw.get("pooling", "mean"))  # before any member is built
        seeds = member_seeds(num_members, head_seeds, head_seed)
        is_config = isinstance(path_or_config, PretrainedConfig)
        if init == "pretrained" and is_config:
            raise ValueError("init='pretrained' needs a backbone folder, not a config")
        backbones = []
        for seed in seeds:
            if init == "pretrained":
                backbones.append(AutoModel.from_pretrained(str(path_or_config), dtype=dtype, **(load_kw or {})))
                continue
            conf = copy.deepcopy(path_or_config) if is_config else AutoConfig.from_pretrained(str(path_or_config))
            state = torch.random.get_rng_state()
            torch.manual_seed(int(seed))  # member k's initial weights are a function of its seed alone
            backbones.append(AutoModel.from_config(conf, dtype=dtype, **(load_kw or {})))
            torch.random.set_rng_state(state)
        return cls(backbones, head_seeds=seeds, init=init, **kw)

    def add_lora(self, r: int = 8, alpha: int = 16, dropout: float = 0.0,
                 target_modules: str | Sequence[str] | None = "auto") -> None:
        """LoRA adapters on every member (each drawn from its member's seed); afterwards only the
        adapters and the heads train."""
        from ..models.lora import attach_lora

        for k, seed in enumerate(self.head_seeds):
            torch.manual_seed(int(seed))
            self.members[k] = attach_lora(self.members[k], r, alpha, dropout, target_modules or "auto",
                                          field="reward_training.lora.target_modules")

    @property
    def is_lora(self) -> bool:
        return hasattr(self.members[0], "peft_config")

    @property
    def backbone_config(self):
        m = self.members[0]
        return m.get_base_model().config if self.is_lora else m.config

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, stats_ddof: int | None = None):
        h = torch.stack([pool(m, input_ids, attention_mask, self.pooling, self._takes_position_ids)
                         for m in self.members]).to(self.heads.weight.dtype)
        return self._output(self.heads(h), stats_ddof)

    # ------------------------------------------------------------------ persistence
    def member_dirs(self) -> list[str]:
        return [f"{MEMBERS_DIR}/{k:02d}" for k in range(self.num_heads)]

    def config_dict(self) -> dict:
        return {"model_type": DEEP_MODEL_TYPE, "members": self.member_dirs(), **self._common_config(),
                "init": self.init, "prior_scale": 0.0}

    def save_pretrained(self, out_dir: str | Path, tokenizer=None, extra: dict | None = None) -> Path:

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for m, sub in zip(self.members, self.member_dirs()):
            (copy.deepcopy(m).merge_and_unload() if self.is_lora else m).save_pretrained(str(out / sub), safe_serialization=True)
        tensors = {"weight": self.heads.weight, "bias": self.heads.bias, "member_shift": self.member_shift,
                   "member_scale": self.member_scale}
        return write_head_files(out, tensors, {**self.config_dict(), **(extra or {})}, tokenizer)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, dtype: torch.dtype = torch.float32,
                        load_kw: dict | None = None) -> DeepEnsembleRewardModel:
        from safetensors.torch import load_file
        from transformers import AutoModel

        path = Path(path)
        conf = read_folder_config(path, DEEP_MODEL_TYPE, "DeepEnsembleRewardModel")
        missing = [d for d in conf["members"] if not (path / d / "config.json").is_file()]
        if missing:
            raise FileNotFoundError(f"{path}: member folder(s) {missing} listed in {path / CONFIG_NAME} are missing")
        backbones = [AutoModel.from_pretrained(str(path / d), dtype=dtype, **(load_kw or {})) for d in conf["members"]]
        model = cls(backbones, head_seeds=conf["head_seeds"], pooling=conf["pooling"], ddof=conf["ddof"],
                    separator=conf.get("separator", " "), init=conf.get("init", "random"))
        model._load_head_state(path, load_file(str(path / HEADS_NAME)))
        return model.eval()
