"""The `varpo` command line. Each subcommand lives in varpo/commands/<name>.py and exposes
`register(app)`; heavy imports (torch, deepspeed) happen inside the commands, so `--help` is instant."""
from __future__ import annotations

import importlib
import sys

import typer

from .config import ConfigError

app = typer.Typer(
    name="varpo",
    help="Variance-aware RLHF: reward ensembles, interval judges, uncertainty-weighted PPO.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # click passes help_option_names down to every subcommand's context
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"varpo {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True,
                                       help="print varpo's version and exit")) -> None:
    """Variance-aware RLHF: reward ensembles, interval judges, uncertainty-weighted PPO."""

# One module per subcommand (or group of subcommands).
COMMAND_MODULES = [
    "config_cmd",
    "testbed",
    "train_rm",
    "train_ppo",
    "quickstart",
    "population",
    "heterogeneity",
    "kl_sweep",
    "kl_match",
    "stats",
    "theory",
    "score",
    "estimate_memory",
]

for _name in COMMAND_MODULES:
    _spec = importlib.util.find_spec(f"varpo.commands.{_name}")
    if _spec is not None:
        importlib.import_module(f"varpo.commands.{_name}").register(app)


def main() -> None:
    from .quiet import quiet_third_party

    quiet_third_party()
    try:
        app()
    except ConfigError as exc:
        from rich.console import Console
        from rich.markup import escape

        # soft_wrap: one message, one line, whatever the terminal's width (scripts grep it); escaped:
        # a message quoting user text in brackets is not markup
        Console(stderr=True).print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, markup=True,
                                   soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
