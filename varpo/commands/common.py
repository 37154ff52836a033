"""Options shared by subcommands: a config file plus dotted overrides."""
from __future__ import annotations

from pathlib import Path

import typer

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file (default: varpo/defaults/embedded.yaml)")
SetOpt = typer.Option(
    None, "--set", "-s", help="dotted override KEY=VALUE, repeatable (e.g. --set ppo.kl.beta=0.05)"
)
OutOpt = typer.Option(..., "--out", "-o", help="output folder (created if missing)")
OverwriteOpt = typer.Option(False, "--overwrite", help="replace the run already in --out (finished or not): its "
                            "outputs are removed first")
AllowChangeOpt = typer.Option(False, "--allow-config-change", help="resume the interrupted run in --out even though "
                              "fields that change what is trained differ from its saved config.yaml (listed)")


def load(config: Path | None, overrides: list[str] | None):
    """The validated config: the file given (an empty one counts as none), else the embedded
    default task's, plus overrides."""
    from ..config import load_config
    from ..defaults import config_or_default

    return load_config(config_or_default(config), overrides or [])
