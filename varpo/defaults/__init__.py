"""Packaged configurations. EMBEDDED is what every command uses when no --config is given."""
from pathlib import Path

EMBEDDED = Path(__file__).resolve().parent / "embedded.yaml"
OVEROPT = Path(__file__).resolve().parent / "overopt.yaml"
