"""Subcommands of the `varpo` CLI (see varpo/cli.py)."""
