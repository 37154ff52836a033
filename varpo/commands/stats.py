"""`varpo stats DIR`: the paper's Tables 1–3 and Figs. 5–6 for a population folder, led by the
tests the population declared primary.

Reads DIR/policies/<method>/seed_<k>.json (as `varpo population` writes them) and/or
DIR/policies.jsonl, rows {"method", "seed", "reward", ...}, and DIR/config.yaml when present (the
population's configuration: `evaluation.primary_test`, `evaluation.runaway_margin`); writes
DIR/stats.json, DIR/stats.md and DIR/hist.png.
"""
from __future__ import annotations

from pathlib import Path

import typer

FolderArg = typer.Argument(..., help="population folder (holds policies/ or policies.jsonl)")


def declared_tests(folder: Path) -> tuple[list[str], float, str]:
    """(primary tests, run-away margin, where they came from): FOLDER/config.yaml's evaluation
    section when the population left one, else the schema's defaults."""
    from ..config import EvaluationConfig, load_config

    path = folder / "config.yaml"
    if path.is_file():
        ev = load_config(path).evaluation
        return list(ev.primary_test), ev.runaway_margin, str(path)
    ev = EvaluationConfig()
    return list(ev.primary_test), ev.runaway_margin, f"defaults (no {path})"


def register(app: typer.Typer) -> None:
    @app.command("stats")
    def stats(
        folder: Path = FolderArg,
        reference: str = typer.Option("reference", "--reference", help="method name of the π_ref sampling runs"),
        baseline: str = typer.Option("vanilla", "--baseline", help="method every other method is compared with"),
        model: str = typer.Option("–", "--model", help="label for the tables' Model column"),
        reward_model: str = typer.Option("–", "--reward-model", help="label for the tables' Reward Model column"),
        bins: int = typer.Option(20, "--bins", min=2, help="histogram bins"),
        power_sims: int = typer.Option(400, "--power-sims", min=0, help="resampled populations per power estimate "
                                       "(0: no power lines)"),
    ) -> None:
        """The declared primary test(s) first; then Brown–Forsythe, the BCa interval of the variance
        ratio, run-away rates and risks with Fisher's exact tests, McNemar and Wilcoxon when the
        methods share seeds, Shapiro–Wilk, the F-test, Welch's t-test, the risk's Wilson interval and
        a power line per test: per method and for every pair of methods."""
        from ..config import ConfigError
        from ..evaluation.plots import reward_histograms
        from ..evaluation.stats import (
            compute_stats,
            evaluation_noise,
            group_rewards,
            group_seeds,
            read_population,
            shares_seeds,
            stats_markdown,
        )
        from ..outputs import console, print_table, write_json

        try:
            primary, margin, source = declared_tests(folder) if folder.is_dir() else (["brown_forsythe"], 0.15, "")
            rows = read_population(folder)
            rewards = group_rewards(rows)
            res = compute_stats(rewards, reference=reference, baseline=baseline, eval_noise=evaluation_noise(rows),
                                seeds=group_seeds(rows), shared_seeds=shares_seeds(rows, reference),
                                primary_test=primary, runaway_margin=margin, power_sims=power_sims)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if res["primary_test"] is not None:
            res["primary_test"]["declared_in"] = source
        write_json(folder / "stats.json", res)
        (folder / "stats.md").write_text(stats_markdown(res, model, reward_model))
        shown = {m: rewards[m] for m in (reference, baseline, "variance_aware") if m in rewards}
        reward_histograms(shown, folder / "hist.png", reference=reference, title=f"{folder.name}: per-policy true reward")
        if res["primary_test"] is not None:
            print_table(f"primary test(s), declared in {source}", [
                {"test": r["test"], "a": r["a"], "b": r["b"], "n": f"{r['n'][0]}/{r['n'][1]}", "p": r["pvalue"],
                 **({"p_holm": r["holm_pvalue"]} if "holm_pvalue" in r else {}), "alternative": r["alternative"]}
                for r in res["primary_test"]["results"]])
        print_table("per method (var: ddof=1; risk: fraction below the reference mean; run-away: below it by more "
                    f"than {margin:g})", [
            {"method": k, "n": v["n"], "mean": v["mean"], "var": v["var"], "risk": v["risk"], "runaway": v["runaway_rate"],
             "shapiro_p": v["shapiro_pvalue"],
             "risk_ci95": "–" if v["risk_ci95"] is None else f"[{v['risk_ci95'][0]:.3f}, {v['risk_ci95'][1]:.3f}]"}
            for k, v in res["methods"].items()])
        print_table("comparisons (one-sided, H1: a is the more variable / riskier; Welch and risk z two-sided)", [
            {"a": c["a"], "b": c["b"], "F": c["f_stat"], "p_F": c["f_pvalue"], "p_BF": c["brown_forsythe_pvalue"],
             "ratio_CI": "–" if c["variance_ratio_ci"] is None else f"[{c['variance_ratio_ci'][0]:.2f}, {c['variance_ratio_ci'][1]:.2f}]",
             "p_runaway": c.get("runaway_fisher_pvalue"), "p_risk": c.get("risk_fisher_pvalue"),
             "p_mcnemar": c.get("mcnemar_runaway_pvalue"), "p_wilcoxon": c.get("wilcoxon_pvalue"),
             "p_t": c["welch_pvalue"]} for c in res["comparisons"]])
        if res.get("power"):
            key = "n_for_power_0.8"
            print_table(f"power ({res['primary_comparison'][0]} vs {res['primary_comparison'][1]}, α 0.05, "
                        "resampling the observed policies)", [
                {"test": t, "power_at_n": v["power_at_n"], "n": v["n"], "seeds_per_method_for_0.8": v[key] or "> 2000"}
                for t, v in res["power"]["per_test"].items()])
        console.print(f"stats: wrote {folder / 'stats.json'}, {folder / 'stats.md'}, {folder / 'hist.png'}")
