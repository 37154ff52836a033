"""`varpo heterogeneity`: the paper's Table 4 — Var(vanilla)/Var(variance-aware) of the per-policy
true rewards while the heterogeneity α of the σ² weights is scaled."""
from __future__ import annotations

import shlex
from pathlib import Path

import typer

from .common import ConfigOpt, OutOpt, SetOpt


def register(app: typer.Typer) -> None:
    @app.command("heterogeneity")
    def heterogeneity(
        out: Path = OutOpt,
        scales: str = typer.Option("0,0.5,1,2", "--scales", help="comma-separated α ≥ 0 (ppo.variance.heterogeneity): "
                                   "0 makes variance-aware PPO vanilla, 1 is unchanged, 2 exaggerates"),
        seeds: int = typer.Option(20, "--seeds", "-n", min=2, help="policies per method and scale (the paper: 80)"),
        config: Path | None = ConfigOpt,
        set_: list[str] | None = SetOpt,
        workers: int | None = typer.Option(None, "--workers", min=1, help="worker processes (default: cores)"),
    ) -> None:
        """Reference runs and the vanilla population once (OUT/base), the variance-aware population
        at each α (OUT/scale_<α>), one shared reward ensemble (OUT/reward); results are saved per
        policy, so a killed sweep resumes. Writes OUT/heterogeneity.json and OUT/heterogeneity.md."""
        from ..config import load_config
        from ..defaults import config_or_default
        from ..evaluation.heterogeneity import (
            heterogeneity_markdown,
            parse_scales,
            run_heterogeneity,
            scale_name,
        )
        from ..outputs import console, print_table, write_json
        from ..preflight import check_population

        alphas = parse_scales(scales)
        check_population(load_config(config_or_default(config), set_ or []))  # paths, before any worker starts
        command = shlex.join([
            "varpo", "heterogeneity", "--scales", ",".join(scale_name(a) for a in alphas), "--seeds", str(seeds),
            "--out", str(out), *(["--config", str(config)] if config else []),
            *[x for o in set_ or [] for x in ("--set", o)], *(["--workers", str(workers)] if workers else []),
        ])
        report = run_heterogeneity(config_or_default(config), set_ or [], alphas, seeds, out, workers=workers)
        report["command"] = command
        write_json(out / "heterogeneity.json", report)
        (out / "heterogeneity.md").write_text(heterogeneity_markdown(report, command))
        a, b = report["a"], report["b"]
        # short headers: a non-terminal console is 80 columns wide; heterogeneity.md has the rest
        print_table(f"heterogeneity: a = {a}, b = {b}; ratio = Var(a)/Var(b) of the per-policy true reward", [
            {"α": r["scale"], "std w": r["spread"], "mean w": r["weight_mean"], "Var a": r[f"var_{a}"],
             "Var b": r[f"var_{b}"], "ratio": r["ratio"], "p": r["f_pvalue"], "KL b": r[f"kl_{b}"]}
            for r in report["rows"]], fmt="{:.3g}")
        console.print(f"heterogeneity: wrote {out / 'heterogeneity.json'}, {out / 'heterogeneity.md'}")
