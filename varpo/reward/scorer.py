"""The ensemble as a reward source (`varpo.reward_source.Scorer`): texts in; score s (an aggregation of
the K heads), σ² (variance over heads, `ddof`), the head mean for evaluation and the per-head
rewards out."""
from __future__ import annotations

from pathlib import Path

import torch
from varpo_kernels import EnsembleStats

from ..reward_source import Scores
from .aggregate import AGGREGATIONS, aggregate_from_stats
from .encode import encode


def _module(model_or_engine) -> torch.nn.Module:
    return getattr(model_or_engine, "module", model_or_engine)


class EnsembleScorer:
    """Scores `prompt + separator + response` with a trained ensemble (a module, or a DeepSpeed
    engine around one). Texts longer than `max_length` lose the start of their prompt; how many
    were cut is in `Scores.extras["truncated"]` and accumulated in `self.truncated`."""

    def __init__(self, model_or_engine, tokenizer, *, aggregation: str = "mean", ddof: int = 1, lam: float = 1.0,
                 k: float = 1.0, max_length: int = 96, batch_size: int = 64, device=None, separator: str | None = None):
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        self.model, self.tokenizer = model_or_engine, tokenizer
        self.aggregation, self.ddof, self.lam, self.k = aggregation, ddof, lam, k
        self.max_length, self.batch_size = max_length, batch_size
        module = _module(model_or_engine)
        if device is None:
            device = getattr(model_or_engine, "device", None) or next(module.parameters()).device
        self.device = torch.device(device)
        self.separator = separator if separator is not None else getattr(module, "separator", " ")
        self.truncated = 0
        self._warned = False

    def head_rewards(self, prompts: list[str], responses: list[str]) -> tuple[torch.Tensor, int]:
        """Per-head rewards [B, K] (float32, CPU) and how many texts were truncated."""
        r, _stats, cut = self.head_rewards_and_stats(prompts, responses)
        return r, cut

    @torch.no_grad()
    def head_rewards_and_stats(self, prompts: list[str], responses: list[str]) -> tuple[torch.Tensor, EnsembleStats, int]:
        """Per-head rewards [B, K], their EnsembleStats (mean, variance at `ddof`, std, min; from the
        reward heads' fused pass, varpo_kernels.ensemble_head_stats) on the CPU, and how many texts
        were truncated."""
        out, stats, cut = [], [], 0
        for s in range(0, len(prompts), self.batch_size):
            ids, mask, n = encode(self.tokenizer, prompts[s : s + self.batch_size], responses[s : s + self.batch_size],
                                  self.max_length, self.device, self.separator)
            cut += n
            r, st = self.model(ids, mask, stats_ddof=self.ddof)
            out.append(r.float().cpu())
            stats.append([x.float().cpu() for x in st])
        self.truncated += cut
        if cut and not self._warned:
            from ..outputs import console

            console.print(f"[yellow]reward scorer: {cut} of {len(prompts)} texts exceeded max_length={self.max_length} "
                          "tokens and lost the start of their prompt (counted in Scores.extras['truncated'])[/]")
            self._warned = True
        if not out:
            empty = torch.zeros(0)
            return torch.zeros(0, _module(self.model).num_heads), EnsembleStats(empty, empty, empty, empty), 0
        return torch.cat(out, 0), EnsembleStats(*(torch.cat(c, 0) for c in zip(*stats))), cut

    def score(self, prompts: list[str], responses: list[str]) -> Scores:
        r, st, cut = self.head_rewards_and_stats(prompts, responses)
        s = aggregate_from_stats(r, st, self.aggregation, lam=self.lam, k=self.k)
        return Scores(score=s, variance=st.var, eval_reward=st.mean, extras={"per_head": r, "truncated": cut})


def load_scorer(path: str | Path, cfg=None, ds_cfg=None, *, device=None, load_kw: dict | None = None,
                **overrides) -> EnsembleScorer:
    """An EnsembleScorer for a saved ensemble folder (`EnsembleRewardModel.save_pretrained` or, for
    ensemble_kind deep, `DeepEnsembleRewardModel.save_pretrained`).
    `cfg` (a RewardConfig) gives aggregation, λ, k, ddof, max_length, batch_size; keyword
    `overrides` replace single ones. With `ds_cfg` (a DeepSpeedConfig) the model is wrapped in a
    frozen DeepSpeed engine, which ZeRO-3 shards across ranks when configured. `load_kw`: backbone
    `from_pretrained` options (attn_implementation)."""
    from transformers import AutoTokenizer

    from ..config import RewardConfig
    from .encode import model_max_length
    from .ensemble import read_config
    from .load import load_reward_model

    saved = read_config(path) if (Path(path) / "config.json").exists() else {}
    cfg = cfg or RewardConfig(ddof=saved.get("ddof", 1))
    opts = {"aggregation": cfg.aggregation, "ddof": cfg.ddof, "lam": cfg.lam, "k": cfg.k,
            "max_length": cfg.max_length, "batch_size": cfg.batch_size, **overrides}
    if ds_cfg is not None:
        from ..dist import join
        from ..engines import build_model, ds_config, inference_engine

        join(ds_cfg)  # a no-op inside a launched job
        conf = ds_config(ds_cfg, "reward", opts["batch_size"], trainable=False)
        # under ZeRO-3 the backbone is partitioned while it loads: no rank ever holds all of it
        model = build_model(lambda: load_reward_model(path, load_kw=load_kw), conf)
        opts["max_length"] = model_max_length(model.backbone_config, opts["max_length"])
        model = inference_engine(model, conf)
    else:
        from ..activations import fuse_activations

        model = fuse_activations(load_reward_model(path, load_kw=load_kw))  # as build_model does
        opts["max_length"] = model_max_length(model.backbone_config, opts["max_length"])
        if device is not None:
            model = model.to(device)
    tok = AutoTokenizer.from_pretrained(str(path))
    return EnsembleScorer(model, tok, device=device, **opts)
