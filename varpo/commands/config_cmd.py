"""`varpo config show|check`: print the resolved configuration or validate a file."""
from __future__ import annotations

from pathlib import Path

import typer

from .common import ConfigOpt, SetOpt, load


def register(app: typer.Typer) -> None:
    grp = typer.Typer(help="Inspect and validate configurations.", no_args_is_help=True)

    @grp.command("show")
    def show(config: Path | None = ConfigOpt, set_: list[str] | None = SetOpt,
             doc: bool = typer.Option(False, "--doc", help="each field's description and allowed values as a "
                                      "comment above it")) -> None:
        """Print the fully resolved config (defaults + file + overrides) as YAML, secrets redacted."""
        import yaml

        from ..config import documented_yaml, redacted_dict

        cfg = load(config, set_)
        typer.echo(documented_yaml(cfg) if doc else yaml.safe_dump(redacted_dict(cfg), sort_keys=False))

    @grp.command("check")
    def check(config: Path = typer.Argument(..., help="YAML config file"), set_: list[str] | None = SetOpt) -> None:
        """Validate a config file; exit 2 with the failing field paths if it is wrong."""
        load(config, set_)
        typer.echo(f"{config}: ok")

    app.add_typer(grp, name="config")
