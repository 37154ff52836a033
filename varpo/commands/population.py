"""`varpo population`: N seeded policies per method + N reference runs, evaluated with the true reward."""
from __future__ import annotations

from pathlib import Path

import typer

from .common import ConfigOpt, OutOpt, SetOpt


def register(app: typer.Typer) -> None:
    @app.command("population")
    def population(
        out: Path = OutOpt,
        seeds: int = typer.Option(20, "--seeds", "-n", min=1, help="policies per method (the paper: 80)"),
        config: Path | None = ConfigOpt,
        set_: list[str] | None = SetOpt,
        workers: int | None = typer.Option(None, "--workers", min=1, help="worker processes (default: cores)"),
        methods: list[str] | None = typer.Option(None, "--method", help="only these methods (repeatable)"),
        vary: str = typer.Option("both", "--vary", help="what differs between members: both (training seed and, "
                                 "with reward.type=oracle, the noise draw), training (one noise draw for all), "
                                 "reward (one training seed for all; only the oracle's noise draw differs)"),
    ) -> None:
        """Train and evaluate a population; results land in OUT/policies/<method>/seed_<k>.json as they
        finish (a killed run resumes). Then `varpo stats OUT` computes the paper's tables."""
        from ..config import load_config
        from ..defaults import config_or_default
        from ..evaluation.population import run_population, summarize
        from ..outputs import print_table, write_json
        from ..preflight import check_population

        check_population(load_config(config_or_default(config), set_ or []))  # paths, before any worker starts
        rows = run_population(config_or_default(config), set_ or [], seeds, out, workers=workers, methods=methods,
                              vary=vary)
        summary = summarize(rows)
        write_json(out / "population.json", summary)
        print_table(f"population ({out}/population.json)", [{"method": m, **v} for m, v in summary.items()])
