"""The reward source named by the config (`build_scorer`), and the embedded task's default
reward ensemble. The interface itself (`Scores`, `Scorer`) lives in the leaf module
varpo.reward_source, which every source imports; it is re-exported here for convenience."""
from __future__ import annotations

from .reward_source import Scorer, Scores

__all__ = ["Scorer", "Scores", "build_scorer", "default_reward_model"]


def build_scorer(cfg) -> Scorer:
    """The reward source named by `cfg.reward.type`, ready to score texts."""
    kind = cfg.reward.type
    if kind == "gold":
        from .testbed import GoldScorer

        return GoldScorer(cfg.testbed.task, cfg.testbed.overopt_threshold)
    if kind == "oracle":
        from .reward.oracle import OracleScorer

        return OracleScorer.from_config(cfg)
    if kind == "judge":
        from .judge import JudgeScorer

        return JudgeScorer.from_config(cfg.judge)
    if kind == "remote":
        from .reward.remote import RemoteRewardScorer

        return RemoteRewardScorer.from_config(cfg)
    path = cfg.reward.path or default_reward_model(cfg)
    from .adapters import attn_kwargs
    from .reward.scorer import load_scorer

    return load_scorer(path, cfg=cfg.reward, ds_cfg=cfg.deepspeed, load_kw=attn_kwargs(cfg.model))


def default_reward_model(cfg) -> str:
    """The embedded task's reward ensemble, trained once per (testbed, reward config) and cached
    beside the testbed. Rank 0 trains it in a child process (a world of one, whatever the
    launcher started); the other ranks wait at a barrier, then everyone loads the same folder."""
    import hashlib
    import json
    import os
    import subprocess
    import sys

    from filelock import FileLock

    from . import dist
    from .config import redacted_dict
    from .testbed import build_testbed

    if cfg.data.pairs_path is not None:
        from .config import ConfigError

        raise ConfigError("reward.path: required when data.pairs_path is set (train it with `varpo train-rm`)")
    tb = build_testbed(cfg.testbed, progress=False)
    spec = {"reward": redacted_dict(cfg.reward), "reward_training": redacted_dict(cfg.reward_training)}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    out = tb.dir.parent / f"{tb.dir.name}-reward-{key}"
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
