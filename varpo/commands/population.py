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
        kl_match: Path | None = typer.Option(None, "--kl-match", help="a kl_match.json (`varpo kl-match`): every method "
                                             "trains at its matched β"),
    ) -> None:
        """Train and evaluate a population; results land in OUT/policies/<method>/seed_<k>.json as they
        finish (a killed run resumes). Then `varpo stats OUT` computes the paper's tables."""
        from ..config import load_config
        from ..defaults import config_or_default
        from ..evaluation.population import run_population, summarize
        from ..outputs import print_table, write_json
        from ..preflight import check_population

        overrides = list(set_ or [])
        config = config_or_default(config)
        if kl_match is not None:
            import shutil

            from ..evaluation.kl_match import read_kl_match

            overrides += read_kl_match(kl_match, load_config(config, overrides).evaluation.methods)
        check_population(load_config(config, overrides))  # paths, before any worker starts or file is written
        if kl_match is not None:
            out.mkdir(parents=True, exist_ok=True)
            if kl_match.resolve() != (out / "kl_match.json").resolve():
                shutil.copy(kl_match, out / "kl_match.json")  # the β per method the population trained with
        rows = run_population(config, overrides, seeds, out, workers=workers, methods=methods, vary=vary)
        summary = summarize(rows)
        write_json(out / "population.json", summary)
        print_table(f"population ({out}/population.json)", [{"method": m, **v} for m, v in summary.items()])
