"""A Hugging Face sequence-classification reward model (AutoModelForSequenceClassification with
one label: what TRL's RewardTrainer writes and what OpenRLHF's --reward_pretrain takes) as a
single reward source (`reward.type: sequence_classifier`).

One model gives one score and no spread: σ² = 0 for every sample, so variance-aware PPO has
nothing to weight by (the config refuses the combination). The paper's setting, K heads trained
on a reward model's representation, is `varpo train-rm --set reward_training.backbone_path=<this
folder>`: the ensemble's backbone is this model's trunk, frozen, and head 0 starts from its score
head (varpo.reward.model).

A text is scored as its owner scores it: `prompt + separator + response` (a prompt rendered by a
chat template: no separator, no special tokens added again) tokenized with the model's tokenizer
and its own special tokens, right-padded, and read by the model's own forward at the last
non-padding token. Texts longer than `reward.max_length` (capped at the model's positions) lose
the start of their prompt, counted as with the ensemble."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..reward_source import Scores


def is_sequence_classifier(conf) -> bool:
    """Whether an HF config is a sequence-classification model's (what its architectures say)."""
    return any(str(a).endswith("ForSequenceClassification") for a in getattr(conf, "architectures", None) or [])


class SequenceClassifierReward(nn.Module):
    """forward(input_ids [B, T], attention_mask [B, T]) → rewards [B] (float32): the HF model's
    single logit. A plain module, so a frozen DeepSpeed engine (ZeRO-3 included) can wrap it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        if model.config.num_labels != 1:
            raise ValueError(f"a reward model has one label, this one has {model.config.num_labels}")
        self.model = model

    @classmethod
    def from_pretrained(cls, path: str | Path, *, pad_token_id: int | None = None, load_kw: dict | None = None,
                        dtype: torch.dtype = torch.float32) -> SequenceClassifierReward:
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(str(path), dtype=dtype, **(load_kw or {}))
        if model.config.pad_token_id is None and pad_token_id is not None:
            # the model finds each text's last token by its padding id; batches need one
            model.config.pad_token_id = pad_token_id
        return cls(model)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, 0].float()


class SequenceClassifierScorer:
    """Scores texts with a `SequenceClassifierReward` (or a DeepSpeed engine around one): the
    score, σ² = 0, the score again as the evaluation reward."""

    def __init__(self, model_or_engine, tokenizer, *, max_length: int = 96, batch_size: int = 64,
                 separator: str = " ", device=None):
        self.model, self.tokenizer = model_or_engine, tokenizer
        self.max_length, self.batch_size, self.separator = max_length, batch_size, separator
        module = getattr(model_or_engine, "module", model_or_engine)
        if device is None:
            device = getattr(model_or_engine, "device", None) or next(module.parameters()).device
        self.device = torch.device(device)
        self.truncated = 0
        self._warned = False

    @torch.no_grad()
    def rewards(self, prompts: list[str], responses: list[str]) -> tuple[torch.Tensor, int]:
        from .encode import collate, pad_id, token_ids, truncate_left

        out, cut = [], 0
        pad = pad_id(self.tokenizer)
        for s in range(0, len(prompts), self.batch_size):
            ids = token_ids(self.tokenizer, prompts[s : s + self.batch_size], responses[s : s + self.batch_size],
                            self.separator, append_eos=False)
            kept = [truncate_left(x, self.max_length, self.tokenizer.bos_token_id) for x in ids]
            cut += sum(c for _, c in kept)
            input_ids, mask = collate([x for x, _ in kept], pad, self.device)
            out.append(self.model(input_ids, mask).float().cpu())
        self.truncated += cut
        if cut and not self._warned:
            from ..outputs import console

            console.print(f"[yellow]reward model: {cut} of {len(prompts)} texts exceeded max_length="
                          f"{self.max_length} tokens and lost the start of their prompt[/]")
            self._warned = True
        return (torch.cat(out) if out else torch.zeros(0)), cut

    def score(self, prompts: list[str], responses: list[str]) -> Scores:
        r, cut = self.rewards(prompts, responses)
        return Scores(score=r, variance=torch.zeros_like(r), eval_reward=r, extras={"truncated": cut})


def load_sequence_classifier(path: str | Path, cfg=None, ds_cfg=None, *, separator: str = " ", device=None,
                             load_kw: dict | None = None) -> SequenceClassifierScorer:
    """A scorer for a sequence-classification reward-model folder. `cfg` (a RewardConfig) gives
    max_length and batch_size; with `ds_cfg` (a DeepSpeedConfig) the model is a frozen DeepSpeed
    engine, sharded under ZeRO-3 like every role (`deepspeed.reward`)."""
    from transformers import AutoTokenizer

    from ..config import RewardConfig
    from .encode import model_max_length, pad_id

    cfg = cfg or RewardConfig(type="sequence_classifier", path=str(path))
    tok = AutoTokenizer.from_pretrained(str(path))
    tok.padding_side = "right"

    def make() -> SequenceClassifierReward:
        return SequenceClassifierReward.from_pretrained(path, pad_token_id=pad_id(tok), load_kw=load_kw)

    if ds_cfg is not None:
        from ..dist import join
        from ..engines import build_model, ds_config, inference_engine

        join(ds_cfg)  # a no-op inside a launched job
        conf = ds_config(ds_cfg, "reward", cfg.batch_size, trainable=False)
        model = build_model(make, conf)  # under ZeRO-3 partitioned while it loads
        max_length = model_max_length(model.model.config, cfg.max_length)
        model = inference_engine(model, conf)
    else:
        model = make().eval()
        max_length = model_max_length(model.model.config, cfg.max_length)
        if device is not None:
            model = model.to(device)
    return SequenceClassifierScorer(model, tok, max_length=max_length, batch_size=cfg.batch_size,
                                    separator=separator, device=device)


def score_head_weights(path: str | Path) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """The score head (weight [1, hidden], bias [1] or None) of a sequence-classification
    checkpoint, read from its safetensors files without loading the model; None when the
    folder has no `score.*` tensors (another head name, or .bin weights)."""
    import json

    from safetensors import safe_open

    folder = Path(path)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = [f.name for f in folder.glob("*.safetensors")]
    found: dict[str, torch.Tensor] = {}
    for name in files:
        with safe_open(str(folder / name), framework="pt") as f:
            for key in f.keys():
                if key in ("score.weight", "score.bias"):
                    found[key] = f.get_tensor(key).float()
    if "score.weight" not in found or found["score.weight"].shape[0] != 1:
        return None
    return found["score.weight"], found.get("score.bias")
