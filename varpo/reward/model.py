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

CONFIG_NAME = "config.json"
HEADS_NAME = "heads.safetensors"
BACKBONE_DIR = "backbone"
MODEL_TYPE = "varpo_ensemble_reward_model"
POOLINGS = ("last", "mean")


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] 0/1 mask → [B] index of the last 1 in each row (left or right padding alike).
    A row with no 1 at all is an error the caller must not make (checked in forward)."""
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(-1)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so a left-padded text sees the same positions as
    the same text right-padded (pads get 0; they are masked anyway)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def init_heads(weight: torch.Tensor, bias: torch.Tensor, seeds: Sequence[int]) -> None:
    """Head k ~ N(0, 1/hidden) from its own torch.Generator(seed_k); biases 0."""
    hidden = weight.shape[1]
    with torch.no_grad():
        for k, seed in enumerate(seeds):
            g = torch.Generator().manual_seed(int(seed))
            weight[k].copy_(torch.randn(hidden, generator=g, dtype=torch.float32) / hidden**0.5)
        bias.zero_()


class EnsembleRewardModel(nn.Module):
    """forward(input_ids [B, T], attention_mask [B, T]) → per-head rewards [B, K] (float32)."""

    def __init__(self, backbone: nn.Module, num_heads: int = 10, *, head_seeds: Sequence[int] | None = None,
                 head_seed: int = 0, pooling: str = "last", ddof: int = 1, separator: str = " ",
                 freeze_backbone: bool = True):
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
        self.heads = nn.Linear(hidden, num_heads, dtype=torch.float32)
        init_heads(self.heads.weight, self.heads.bias, seeds)
        if freeze_backbone:
            self.backbone.requires_grad_(False)
        params = inspect.signature(backbone.forward).parameters
        self._takes_position_ids = "position_ids" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_backbone(cls, path_or_config, num_heads: int = 10, *, dtype: torch.dtype = torch.float32, **kw) -> EnsembleRewardModel:
        """Backbone via `AutoModel` from a local HF folder (a CausalLM checkpoint loads its base
        model) or from a `PretrainedConfig` (random weights; tests and benchmarks)."""
        from transformers import AutoModel, PretrainedConfig

        if isinstance(path_or_config, PretrainedConfig):
            backbone = AutoModel.from_config(copy.deepcopy(path_or_config), dtype=dtype)
        else:
            backbone = AutoModel.from_pretrained(str(path_or_config), dtype=dtype)
        return cls(backbone, num_heads, **kw)

    def add_lora(self, r: int = 8, alpha: int = 16, dropout: float = 0.0, target_modules: Sequence[str] | None = None) -> None:
        """Attach LoRA adapters to the backbone: afterwards only the adapters and the heads train."""
        from peft import LoraConfig, get_peft_model

        conf = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                          target_modules=list(target_modules) if target_modules else None)
        try:
            self.backbone = get_peft_model(self.backbone, conf)
        except ValueError as err:  # peft names the missing modules; add which ones exist
            names = sorted({n.rsplit(".", 1)[-1] for n, m in self.backbone.named_modules()
                            if type(m).__name__ in ("Linear", "Conv1D")})  # Conv1D: GPT-2's projections
            raise ValueError(f"reward_training.lora.target_modules={list(target_modules or [])}: {err}; "
                             f"linear modules in this backbone: {names}") from None

    @property
    def is_lora(self) -> bool:
        return hasattr(self.backbone, "peft_config")

    # ------------------------------------------------------------------ forward
    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, T] → [B, hidden]: the backbone's last hidden state, pooled over the real tokens."""
        if not bool((attention_mask.sum(-1) > 0).all()):
            raise ValueError("EnsembleRewardModel: a row of attention_mask has no real token")
        kw = {"position_ids": position_ids_from_mask(attention_mask)} if self._takes_position_ids else {}
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kw)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        if self.pooling == "mean":
            m = attention_mask.to(hidden.dtype).unsqueeze(-1)
            return (hidden * m).sum(1) / m.sum(1)
        idx = last_token_index(attention_mask)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.pooled(input_ids, attention_mask)
        return self.heads(h.to(self.heads.weight.dtype)).float()

    # ------------------------------------------------------------------ persistence
    def config_dict(self) -> dict:
        return {"model_type": MODEL_TYPE, "backbone": BACKBONE_DIR, "backbone_type": self.backbone_config.model_type,
                "num_heads": self.num_heads, "head_seeds": self.head_seeds, "hidden_size": self.heads.in_features,
                "pooling": self.pooling, "ddof": self.ddof, "separator": self.separator}

    @property
    def backbone_config(self):
        """The HF config of the backbone (under LoRA, of the wrapped base model)."""
        return self.backbone.get_base_model().config if self.is_lora else self.backbone.config

    def save_pretrained(self, out_dir: str | Path, tokenizer=None, extra: dict | None = None) -> Path:
        """Write the self-contained folder (see module doc). With LoRA, a merged copy of the
        backbone is saved; the model being trained is left as it is."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        backbone = copy.deepcopy(self.backbone).merge_and_unload() if self.is_lora else self.backbone
        backbone.save_pretrained(str(out / BACKBONE_DIR), safe_serialization=True)
        save_file({"weight": self.heads.weight.detach().float().cpu().contiguous(),
                   "bias": self.heads.bias.detach().float().cpu().contiguous()}, str(out / HEADS_NAME))
        (out / CONFIG_NAME).write_text(json.dumps({**self.config_dict(), **(extra or {})}, indent=2))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(out))
        return out

    @classmethod
    def from_pretrained(cls, path: str | Path, *, dtype: torch.dtype = torch.float32) -> EnsembleRewardModel:
        from safetensors.torch import load_file
        from transformers import AutoModel

        path = Path(path)
        conf_file = path / CONFIG_NAME
        if not conf_file.exists():
            raise FileNotFoundError(f"{path}: not a reward-ensemble folder (no {CONFIG_NAME}; train one with `varpo train-rm`)")
        conf = json.loads(conf_file.read_text())
        if conf.get("model_type") != MODEL_TYPE:
            raise ValueError(f"{conf_file}: model_type is {conf.get('model_type')!r}, expected {MODEL_TYPE!r} "
                             "(a reward-ensemble folder written by EnsembleRewardModel.save_pretrained)")
        backbone = AutoModel.from_pretrained(str(path / conf["backbone"]), dtype=dtype)
        model = cls(backbone, conf["num_heads"], head_seeds=conf["head_seeds"], pooling=conf["pooling"],
                    ddof=conf["ddof"], separator=conf.get("separator", " "))
        state = load_file(str(path / HEADS_NAME))
        if tuple(state["weight"].shape) != tuple(model.heads.weight.shape):
            raise ValueError(f"{path / HEADS_NAME}: head weight {tuple(state['weight'].shape)}, "
                             f"expected {tuple(model.heads.weight.shape)} from {conf_file}")
        model.heads.load_state_dict(state)
        return model.eval()


def read_config(path: str | Path) -> dict:
    """The saved ensemble's config.json (K, ddof, separator, training's max_length, ...)."""
    return json.loads((Path(path) / CONFIG_NAME).read_text())
