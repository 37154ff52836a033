"""`varpo train-ppo`: one PPO run in-process (the same code `launch/train_ppo.py` runs per rank)."""
from __future__ import annotations

from pathlib import Path

import typer

from .common import AllowChangeOpt, ConfigOpt, OutOpt, OverwriteOpt, SetOpt, load


def register(app: typer.Typer) -> None:
    @app.command("train-ppo")
    def train_ppo_cmd(config: Path | None = ConfigOpt, set_: list[str] | None = SetOpt, out: Path = OutOpt,
                      overwrite: bool = OverwriteOpt, allow_config_change: bool = AllowChangeOpt) -> None:
        """Train a policy with PPO (vanilla, or variance-aware with ppo.variance.weighting != none).

        Writes OUT/metrics.jsonl (one row per step), OUT/tensorboard, OUT/checkpoints,
        OUT/policy (HF folder) and OUT/summary.json; resumes an interrupted run from
        OUT/checkpoints when its configuration agrees; refuses to replace a finished one."""
        cfg = load(config, set_)
        run(cfg, out, overwrite=overwrite, allow_config_change=allow_config_change)


def run(cfg, out: Path, **folder_opts) -> dict:
    from ..outputs import print_table
    from ..ppo import train_ppo
    from ..preflight import check_ppo
    from ..threads import announce

    check_ppo(cfg, check_reward_source=True)  # light: a bad path is refused before announce loads torch
    announce(cfg.runtime.threads)  # before torch loads: the OpenMP wait policy is read then
    summary = train_ppo(cfg, out, **folder_opts)
    final = summary.get("final", {})
    keys = ["score_mean", "variance_mean", "kl_mean", "weighted_kl_mean", "kl_coef", "entropy", "gold_mean",
            "eval/reward_mean", "eval/variance_mean", "eval/gold_mean", "episodes_per_s", "tokens_per_s"]
    print_table(f"PPO after {summary['steps']} steps ({out}/summary.json)",
                [{"metric": k, "value": float(final[k])} for k in keys if k in final])
    return summary
