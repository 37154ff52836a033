"""`varpo stats DIR`: the paper's Tables 1–3 and Figs. 5–6 for a population folder.

Reads DIR/policies/<method>/seed_<k>.json (as `varpo population` writes them) and/or
DIR/policies.jsonl, rows {"method", "seed", "reward", ...}; writes DIR/stats.json, DIR/stats.md
and DIR/hist.png.
"""
from __future__ import annotations

from pathlib import Path

import typer

FolderArg = typer.Argument(..., help="population folder (holds policies/ or policies.jsonl)")


def register(app: typer.Typer) -> None:
    @app.command("stats")
    def stats(
        folder: Path = FolderArg,
        reference: str = typer.Option("reference", "--reference", help="method name of the π_ref sampling runs"),
        baseline: str = typer.Option("vanilla", "--baseline", help="method every other method is compared with"),
        model: str = typer.Option("–", "--model", help="label for the tables' Model column"),
        reward_model: str = typer.Option("–", "--reward-model", help="label for the tables' Reward Model column"),
        bins: int = typer.Option(20, "--bins", min=2, help="histogram bins"),
    ) -> None:
        """F-test of variances, Welch's t-test of means, empirical risk P(R(π) < R(π_ref)) with a
        Wilson interval and a two-proportion test: per method and for every pair of methods."""
        from ..config import ConfigError
        from ..evaluation.plots import reward_histograms
        from ..evaluation.stats import (
            compute_stats,
            evaluation_noise,
            group_rewards,
            read_population,
            stats_markdown,
        )
        from ..outputs import console, print_table, write_json

        try:
            rows = read_population(folder)
            rewards = group_rewards(rows)
            res = compute_stats(rewards, reference=reference, baseline=baseline, eval_noise=evaluation_noise(rows))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        write_json(folder / "stats.json", res)
        (folder / "stats.md").write_text(stats_markdown(res, model, reward_model))
        shown = {m: rewards[m] for m in (reference, baseline, "variance_aware") if m in rewards}
        reward_histograms(shown, folder / "hist.png", reference=reference, title=f"{folder.name}: per-policy true reward")
        print_table("per method (var: ddof=1; risk: fraction below the reference mean)", [
            {"method": k, "n": v["n"], "mean": v["mean"], "var": v["var"], "risk": v["risk"],
             "risk_ci95": "–" if v["risk_ci95"] is None else f"[{v['risk_ci95'][0]:.3f}, {v['risk_ci95'][1]:.3f}]"}
            for k, v in res["methods"].items()])
        print_table("comparisons (F one-sided var(a) > var(b); Welch two-sided; risk z two-sided)", [
            {"a": c["a"], "b": c["b"], "F": c["f_stat"], "F_crit": c["f_crit"], "p_F": c["f_pvalue"],
             "t": c["welch_t"], "t_crit": c["welch_crit"], "p_t": c["welch_pvalue"],
             "risk_z": c.get("risk_z"), "p_risk": c.get("risk_pvalue")} for c in res["comparisons"]])
        console.print(f"stats: wrote {folder / 'stats.json'}, {folder / 'stats.md'}, {folder / 'hist.png'}")
