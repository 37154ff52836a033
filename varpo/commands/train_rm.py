"""`varpo train-rm`: train a multi-head reward ensemble and report how its heads disagree."""
from __future__ import annotations

from pathlib import Path

import typer

from .common import AllowChangeOpt, ConfigOpt, OutOpt, OverwriteOpt, SetOpt, load


def register(app: typer.Typer) -> None:
    @app.command("train-rm")
    def train_rm(config: Path | None = ConfigOpt, set_: list[str] | None = SetOpt, out: Path = OutOpt,
                 overwrite: bool = OverwriteOpt, allow_config_change: bool = AllowChangeOpt) -> None:
        """Train a K-member reward ensemble, a Bradley–Terry loss each (the embedded task's pairs by
        default): K linear heads on one backbone (reward_training.ensemble_kind heads or prior) or K
        backbones of their own (deep). Writes OUT/rm_report.json, OUT/disagreement.png, OUT/reward_model/
        (point reward.path at it), OUT/train_log.jsonl and the resolved config."""
        run(load(config, set_), out, overwrite=overwrite, allow_config_change=allow_config_change)


def run(cfg, out: Path, *, overwrite: bool = False, allow_config_change: bool = False) -> dict:
    """Check the backbone and the output folder before anything starts (varpo.preflight,
    varpo.run_folder: a finished run is refused unless `overwrite`, an interrupted one resumed only
    with the configuration it was started with unless `allow_config_change`), then train."""
    from .. import dist
    from ..outputs import print_table, write_json
    from ..preflight import check_reward_training
    from ..reward.train import train_reward_model
    from ..run_folder import REWARD, decide

    check_reward_training(cfg)
    decision = decide(out, cfg, REWARD, overwrite=overwrite, allow_config_change=allow_config_change,
                      has_checkpoint=None if cfg.reward_training.resume else False)
    r = train_reward_model(cfg, out, decision=decision)
    if dist.rank() != 0:
        return r
    rows = [{"head": str(k), "eval_accuracy": a} for k, a in enumerate(r["head_accuracy"])]
    rows.append({"head": "ensemble mean", "eval_accuracy": r["ensemble_accuracy"]})
    if "head_gold_accuracy" in r:
        for row, g in zip(rows, [*r["head_gold_accuracy"], r["ensemble_gold_accuracy"]]):
            row["gold_order_accuracy"] = g
    write_json(out / "rm_accuracy_table.json", rows)
    print_table(f"reward ensemble: held-out accuracy ({out}/rm_report.json)", rows)
    q = [{"quantity": "σ² of a response's reward", **r["variance_quantiles"]},
         {"quantity": "σ² of r(chosen) − r(rejected)", **r["diff_variance_quantiles"]}]
    write_json(out / "rm_variance_table.json", q)
    print_table(f"disagreement across {r['num_heads']} heads (ddof={r['ddof']}); plot: {r['plot']}", q)
    cal = [{"order": name, **{f"acc_q{i + 1}": a for i, a in enumerate(c["accuracy_by_diff_variance_group"])},
            "spearman_rho": c["spearman_diff_variance_vs_correct"], "p": c["spearman_pvalue"]}
           for name, c in (("labels", r["uncertainty_calibration"]), ("gold", r.get("uncertainty_calibration_gold")))
           if c is not None]
    write_json(out / "rm_calibration_table.json", cal)
    print_table("is σ² informative? accuracy by quartile of σ²(chosen − rejected), lowest first "
                "(informative: falling accuracy, ρ < 0)", cal)
    from ..outputs import console

    console.print(f"reward model: {r['model_path']}  ({r['steps']} steps, {r['seconds']:.1f} s; "
                  f"{r['truncated_train_pairs']} training pairs truncated)")
    return r
