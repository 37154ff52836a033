"""`varpo quickstart`: an embedded task end to end — testbed, reward ensemble, vanilla and
variance-aware PPO for a few seeds each, gold-reward evaluation — and what it shows. Default: the
over-optimization task with the settings of its 80-seed deep-ensemble population."""
from __future__ import annotations

import time
from pathlib import Path

import typer

from .common import ConfigOpt, OutOpt, SetOpt


def register(app: typer.Typer) -> None:
    @app.command("quickstart")
    def quickstart(
        out: Path = OutOpt,
        seeds: int = typer.Option(3, "--seeds", min=1, help="policies per method"),
        config: Path | None = ConfigOpt,
        set_: list[str] | None = SetOpt,
        task: str = typer.Option("overopt", "--task", help="embedded task when no --config is given: overopt (the "
                                 "default: the over-optimization task, varpo/defaults/overopt.yaml, with the deep "
                                 "ensemble and the per-method β of its 80-seed population) or sentiment (a faithful "
                                 "proxy where nothing over-optimizes, varpo/defaults/embedded.yaml)"),
    ) -> None:
        """Run the whole pipeline on an embedded task (testbed, reward ensemble, vanilla and
        variance-aware PPO × seeds, the reference, gold-reward evaluation) and say what it shows: gold
        and KL per method, run-aways, the declared primary test. Writes OUT/report.json, OUT/stats.json."""
        from ..config import ConfigError
        from ..defaults import EMBEDDED, OVEROPT, config_or_default

        tasks = {"sentiment": EMBEDDED, "overopt": OVEROPT}
        if task not in tasks:
            raise ConfigError(f"--task {task!r}: expected one of {sorted(tasks)}")
        run(out, seeds, config_or_default(config, tasks[task]), set_ or [])


def run(out: Path, seeds: int, config, overrides: list[str]) -> dict:
    from ..config import load_config, save_resolved
    from ..evaluation.population import ensure_reward_model, run_population, summarize
    from ..outputs import console, print_table, write_json
    from ..testbed import build_testbed

    t_start = time.perf_counter()
    from ..defaults import config_or_default

    config = config_or_default(config)
    cfg = load_config(config, overrides)
    from ..preflight import check_population

    check_population(cfg)  # model, tokenizer and reward paths, before anything is written
    out.mkdir(parents=True, exist_ok=True)
    save_resolved(cfg, out)
    console.rule("1/3 testbed")
    build_testbed(cfg.testbed)
    console.rule("2/3 reward ensemble")
    overrides = [*overrides, *ensure_reward_model(cfg, out)]
    console.rule(f"3/3 PPO ({', '.join(cfg.evaluation.methods)}) × {seeds} seeds, and the reference")
    rows = run_population(config, overrides, seeds, out)
    report = summarize(rows)
    report["reference"] = {k: report["reference"][k] for k in ("gold_reward_mean", "gold_reward_var", "n_policies")}
    import json

    rm = json.loads((out / "reward" / "rm_report.json").read_text()) if (out / "reward" / "rm_report.json").exists() else {}
    report["reward_model"] = {k: rm[k] for k in ("num_heads", "ensemble_accuracy", "head_accuracy") if k in rm}
    report["seconds"] = time.perf_counter() - t_start
    from ..evaluation.stats import compute_stats, group_rewards, group_seeds, shares_seeds
    from ..evaluation.verdict import population_table, verdict

    stats = compute_stats(group_rewards(rows), seeds=group_seeds(rows), shared_seeds=shares_seeds(rows),
                          primary_test=cfg.evaluation.primary_test, runaway_margin=cfg.evaluation.runaway_margin,
                          power_sims=200)
    report["verdict"] = verdict(stats)
    report["primary_test"] = stats["primary_test"]
    write_json(out / "report.json", report)
    write_json(out / "stats.json", stats)
    beta = {m: r["beta"] for r in rows if r.get("beta") is not None for m in [r["method"]]}
    print_table(f"quickstart ({cfg.testbed.task} task, reward {_reward_label(cfg)}, {cfg.ppo.steps} PPO steps, "
                f"β {', '.join(f'{m} {b:g}' for m, b in beta.items())}): gold reward per policy (mean over evaluation "
                f"prompts); KL(π‖π_ref) per sequence; run-away: gold more than {cfg.evaluation.runaway_margin:g} below "
                f"the reference's mean {stats['reference_mean']:.3f}", population_table(stats, rows))
    for line in report["verdict"]:
        console.print(line)
    console.print(f"report: {out / 'report.json'}, stats: {out / 'stats.json'} ({report['seconds']:.0f} s); "
                  f"every test: varpo stats {out}")
    return report


def _reward_label(cfg) -> str:
    if cfg.reward.type != "ensemble":
        return cfg.reward.type
    rt = cfg.reward_training
    return f"{rt.ensemble_kind} ensemble of {rt.num_heads}" if not cfg.reward.path else f"ensemble {cfg.reward.path}"
