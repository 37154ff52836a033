"""The reward source named by the config (`build_scorer`), and the embedded task's default
reward ensemble. The interface itself (`Scores`, `Scorer`) lives in the leaf module
varpo.reward_source, which every source imports; it is re-exported here for convenience."""
from __future__ import annotations

from .reward_source import Scorer, Scores

__all__ = ["Scorer", "Scores", "build_scorer", "default_reward_model", "describe_reward"]


def build_scorer(cfg) -> Scorer:
    """The reward source named by `cfg.reward.type` (SCORERS), ready to score texts."""
    kind = cfg.reward.type
    if kind not in SCORERS:
        from .config import ConfigError

        raise ConfigError(f"reward.type={kind!r}: no reward source of that type (known: {', '.join(SCORERS)})")
    return SCORERS[kind](cfg)


def _ensemble(cfg) -> Scorer:
    path = cfg.reward.path or default_reward_model(cfg)
    from .models.loading import attn_kwargs
    from .reward.scorer import load_scorer

    scorer = load_scorer(path, cfg=cfg.reward, ds_cfg=cfg.deepspeed, load_kw=attn_kwargs(cfg.model))
    scorer.source_path = str(path)  # the folder it came from (the embedded default's, when reward.path is unset)
    return scorer


def _judge(cfg) -> Scorer:
    from .judge import JudgeScorer

    return JudgeScorer.from_config(cfg.judge)


def _gold(cfg) -> Scorer:
    from .testbed import GoldScorer

    return GoldScorer(cfg.testbed.task, cfg.testbed.overopt_threshold)


def _oracle(cfg) -> Scorer:
    from .reward.oracle import OracleScorer

    return OracleScorer.from_config(cfg)


def _sequence_classifier(cfg) -> Scorer:
    from .models.loading import attn_kwargs
    from .reward.sequence_classifier import load_sequence_classifier

    return load_sequence_classifier(cfg.reward.path, cfg=cfg.reward, ds_cfg=cfg.deepspeed,
                                    separator=cfg.reward_training.separator, load_kw=attn_kwargs(cfg.model))


def _remote(cfg) -> Scorer:
    from .reward.remote import RemoteRewardScorer

    return RemoteRewardScorer.from_config(cfg)


# reward.type -> the function that builds its source from the whole config (imports deferred: each
# source loads only when used). A new type is its function and one line here.
SCORERS = {
    "ensemble": _ensemble,
    "judge": _judge,
    "gold": _gold,
    "oracle": _oracle,
    "sequence_classifier": _sequence_classifier,
    "remote": _remote,
}


def describe_reward(cfg, scorer) -> dict:
    """What a run was scored by, for its summary.json and log: the type, where it came from and
    what its σ² is. `scorer` is the one the run used (a caller's own when it passed one)."""
    r = cfg.reward
    from .reward.scorer import EnsembleScorer
    from .reward.sequence_classifier import SequenceClassifierScorer

    if isinstance(scorer, EnsembleScorer):
        path = getattr(scorer, "source_path", r.path)
        module = getattr(scorer.model, "module", scorer.model)
        K = module.num_heads
        out = {"type": "ensemble", "path": path, "default": r.path is None, "num_heads": K,
               "sigma2": f"variance over the {K} members (ddof {scorer.ddof})"}
        if r.path is None:
            out["note"] = "the embedded task's default ensemble (testbed sentiment), reward.path unset"
        return out
    if isinstance(scorer, SequenceClassifierScorer):
        return {"type": "sequence_classifier", "path": r.path,
                "sigma2": "0: one reward model has no uncertainty estimate (variance weighting is off)"}
    name = type(scorer).__name__
    if r.type == "judge" and name == "JudgeScorer":
        return {"type": "judge", "judges": [f"{j.model}@{j.base_url}" for j in cfg.judge.judges],
                "sigma2": "(b - a)^2 / 12 of the judges' intervals"
                          + (" and their disagreement" if len(cfg.judge.judges) > 1 else "")}
    if r.type == "gold" and name == "GoldScorer":
        return {"type": "gold", "task": cfg.testbed.task, "sigma2": "0: the testbed's true reward"}
    if r.type == "remote" and name == "RemoteRewardScorer":
        rr = r.remote
        return {"type": "remote", "backend": rr.backend, "server": rr.base_url, "model": rr.model,
                "heads": r.path if rr.backend == "vllm" and rr.output == "hidden" else None,
                "sigma2": "from the server (direct)" if rr.backend == "direct"
                          else f"variance over the ensemble's members (ddof {r.ddof})"}
    if r.type == "oracle" and name == "OracleScorer":
        return {"type": "oracle", "task": cfg.testbed.task, "sigma2": "known: the oracle's noise variance"}
    return {"type": "custom", "scorer": f"{type(scorer).__module__}.{type(scorer).__qualname__}",
            "note": f"passed by the caller (reward.type={r.type} in the config was not used)"}


def default_reward_model(cfg) -> str:
    """The embedded task's reward ensemble, trained once per (testbed, reward config) and cached
    beside the testbed. Rank 0 trains it in a child process (a world of one, whatever the
    launcher started); the other ranks wait at a barrier, then everyone loads the same folder."""
    import json
    import os
    import subprocess
    import sys

    from filelock import FileLock

    from . import dist
    from .config import config_hash
    from .testbed import build_testbed

    if cfg.data.pairs_path is not None:
        from .config import ConfigError

        raise ConfigError("reward.path: required when data.pairs_path is set (train it with `varpo train-rm`)")
    tb = build_testbed(cfg.testbed, progress=False)
    key = config_hash({"reward": cfg.reward, "reward_training": cfg.reward_training})
    out = tb.dir.parent / f"{tb.dir.name}-reward-{key}"
    # a cache made before the key had config_hash's length is named by its first 12 characters:
    # used where it is (other checkouts sharing the cache may still look for it there)
    legacy = out.with_name(f"{tb.dir.name}-reward-{key[:12]}")
    if not (out / "rm_report.json").exists() and (legacy / "rm_report.json").exists():
        out = legacy
    if dist.rank() == 0 and not (out / "rm_report.json").exists():
        with FileLock(str(out) + ".lock"):
            if not (out / "rm_report.json").exists():
                from .config import save_resolved

                cfg_file = save_resolved(cfg, out.with_name(out.name + "-config"))
                env = {k: v for k, v in os.environ.items()
                       if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
                subprocess.run([sys.executable, "-m", "varpo.cli", "train-rm", "--config", str(cfg_file), "--out", str(out)],
                               check=True, env=env)
    dist.barrier()
    return json.loads((out / "rm_report.json").read_text())["model_path"]

