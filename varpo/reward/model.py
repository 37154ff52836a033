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
import inspect
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from varpo_kernels import EnsembleStats, ensemble_head_stats, ensemble_stats

from ..masks import last_token_index, position_ids_from_mask

CONFIG_NAME = "config.json"
HEADS_NAME = "heads.safetensors"
BACKBONE_DIR = "backbone"
MODEL_TYPE = "varpo_ensemble_reward_model"
POOLINGS = ("last", "mean")


def takes_position_ids(backbone: nn.Module) -> bool:
    params = inspect.signature(backbone.forward).parameters
    return "position_ids" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def pool(backbone: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, pooling: str,
         with_position_ids: bool) -> torch.Tensor:
    """[B, T] → [B, hidden]: `backbone`'s last hidden state pooled over the real tokens ("last" or
    "mean"); position ids come from the mask, so left and right padding give the same result."""
    if not bool((attention_mask.sum(-1) > 0).all()):
        raise ValueError("reward model: a row of attention_mask has no real token")
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


class EnsembleHeads(nn.Linear):
    """The K scalar heads as one [K, hidden] linear map. forward(h) gives the per-head rewards
    [B, K]; forward(h, ddof=d) also their mean, variance (ddof d), std and min over heads, fused
    into the same pass (varpo_kernels.ensemble_head_stats: one Triton program per sample on CUDA).
    A module of its own so that ZeRO-3 gathers the head weights when it runs."""

    def forward(self, h: torch.Tensor, ddof: int | None = None):
        if ddof is None:
            return super().forward(h)
        if self.out_features <= ddof:  # the spread of ≤ ddof heads is not measurable: σ² := 0
            r = super().forward(h).float()
            zero = torch.zeros_like(r[:, 0])
            return r, EnsembleStats(r.mean(1), zero, zero, r.amin(1))
        return ensemble_head_stats(h, self.weight, self.bias, ddof=ddof)


class EnsembleRewardModel(nn.Module):
    """forward(input_ids [B, T], attention_mask [B, T]) → per-head rewards [B, K] (float32), or
    with stats_ddof the rewards and their EnsembleStats."""

    def __init__(self, backbone: nn.Module, num_heads: int = 10, *, head_seeds: Sequence[int] | None = None,
                 head_seed: int = 0, pooling: str = "last", ddof: int = 1, separator: str = " ",
                 freeze_backbone: bool = True, prior_scale: float = 0.0):
        super().__init__()
        if num_heads < 1:
            raise ValueError(f"num_heads must be ≥ 1, got {num_heads}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS} (last: the last non-padding token; "
                             f"mean: the mean over non-padding tokens), got {pooling!r}")
        seeds = list(head_seeds) if head_seeds is not None else [head_seed + k for k in range(num_heads)]
        if len(seeds) != num_heads or len(set(seeds)) != num_heads:
            raise ValueError(f"head_seeds must be {num_heads} distinct seeds, got {seeds}")
        self.backbone = backbone
        self.num_heads, self.head_seeds, self.pooling, self.ddof, self.separator = num_heads, seeds, pooling, ddof, separator
        hidden = backbone.config.hidden_size
        self.heads = EnsembleHeads(hidden, num_heads, dtype=torch.float32)
        init_heads(self.heads.weight, self.heads.bias, seeds)
        # randomized prior functions (Osband et al. 2018): member k adds prior_scale · p_k(h), p_k a
        # fixed random head from its own seed, never trained, so members keep disagreeing where the
        # data do not pull them together; prior_scale 0 is the plain ensemble
        self.prior_scale = float(prior_scale)
        self.prior = nn.Linear(hidden, num_heads, dtype=torch.float32)
        init_heads(self.prior.weight, self.prior.bias, [1_000_003 + x for x in seeds])
        self.prior.requires_grad_(False)
        # per-member standardisation (set on reference samples after training, `standardize`): σ² is
        # then a disagreement in units of each member's own spread, not a difference of scales
        self.register_buffer("member_shift", torch.zeros(num_heads))
        self.register_buffer("member_scale", torch.ones(num_heads))
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
        `target_modules`: names, "all-linear", or "auto"/None (per architecture, varpo.adapters)."""
        from ..adapters import attach_lora

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
        r = self.rewards_from_pooled(h)
        if stats_ddof is None:
            return r
        if self.num_heads <= stats_ddof:  # the spread of ≤ ddof heads is not measurable: σ² := 0
            zero = torch.zeros_like(r[:, 0])
            return r, EnsembleStats(r.mean(1), zero, zero, r.amin(1))
        return r, ensemble_stats(r, ddof=stats_ddof)

    def rewards_from_pooled(self, h: torch.Tensor) -> torch.Tensor:
        """[B, hidden] pooled states (from this backbone, or from a server running it: varpo.reward.remote)
        → per-head rewards [B, K] float32: heads, prior heads, member standardisation."""
        h = h.to(self.heads.weight.dtype)
        r = self.heads(h)
        if self.prior_scale:
            r = r + self.prior_scale * self.prior(h)
        return ((r - self.member_shift) / self.member_scale).float()

    def _is_plain(self) -> bool:
        return not self.prior_scale and bool((self.member_shift == 0).all() and (self.member_scale == 1).all())

    @torch.no_grad()
    def standardize(self, raw: torch.Tensor) -> None:
        """Set the members' shift and scale from their raw rewards [N, K] on reference samples, so
        that each member has mean 0 and standard deviation 1 there."""
        if raw.dim() != 2 or raw.shape[1] != self.num_heads or raw.shape[0] < 2:
            raise ValueError(f"standardize: expected raw rewards [N ≥ 2, {self.num_heads}], got {tuple(raw.shape)}")
        raw = raw.double()
        self.member_shift.copy_(raw.mean(0).to(self.member_shift))
        self.member_scale.copy_(raw.std(0).clamp(min=1e-6).to(self.member_scale))

    # ------------------------------------------------------------------ persistence
    def config_dict(self) -> dict:
        return {"model_type": MODEL_TYPE, "backbone": BACKBONE_DIR, "backbone_type": self.backbone_config.model_type,
                "num_heads": self.num_heads, "head_seeds": self.head_seeds, "hidden_size": self.heads.in_features,
                "pooling": self.pooling, "ddof": self.ddof, "separator": self.separator, "prior_scale": self.prior_scale}

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
            backbone = AutoModel.from_pretrained(str(path / conf["backbone"]), dtype=dtype, **(load_kw or {}))
        else:
            from ..memory import on_meta

            bconf = AutoConfig.from_pretrained(str(path / conf["backbone"]))
            backbone = on_meta(lambda: AutoModel.from_config(bconf))
        model = cls(backbone, conf["num_heads"], head_seeds=conf["head_seeds"], pooling=conf["pooling"],
                    ddof=conf["ddof"], separator=conf.get("separator", " "), prior_scale=conf.get("prior_scale", 0.0))
        state = load_file(str(path / HEADS_NAME))
        with torch.no_grad():  # folders saved before priors and standardisation existed have neither
            if "prior_weight" in state:
                model.prior.weight.copy_(state.pop("prior_weight"))
                model.prior.bias.copy_(state.pop("prior_bias"))
            for name in ("member_shift", "member_scale"):
                if name in state:
                    getattr(model, name).copy_(state.pop(name))
        if tuple(state["weight"].shape) != tuple(model.heads.weight.shape):
            raise ValueError(f"{path / HEADS_NAME}: head weight {tuple(state['weight'].shape)}, "
                             f"expected {tuple(model.heads.weight.shape)} from {path / CONFIG_NAME}")
        model.heads.load_state_dict(state)
        return model.eval()



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


def load_reward_model(path: str | Path, *, dtype: torch.dtype = torch.float32, load_kw: dict | None = None):
    """A saved reward ensemble of either layout: the shared-backbone heads (`EnsembleRewardModel`,
    kinds heads and prior) or the deep ensemble (`varpo.reward.deep.DeepEnsembleRewardModel`),
    chosen by the folder's config.json."""
    conf_file = Path(path) / CONFIG_NAME
    if conf_file.exists():
        from .deep import DEEP_MODEL_TYPE, DeepEnsembleRewardModel

        if json.loads(conf_file.read_text()).get("model_type") == DEEP_MODEL_TYPE:
            return DeepEnsembleRewardModel.from_pretrained(path, dtype=dtype, load_kw=load_kw)
    return EnsembleRewardModel.from_pretrained(path, dtype=dtype, load_kw=load_kw)
