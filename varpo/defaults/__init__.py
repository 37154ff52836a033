"""Packaged configurations. EMBEDDED is what every command uses when no --config is given."""
from pathlib import Path

EMBEDDED = Path(__file__).resolve().parent / "embedded.yaml"
OVEROPT = Path(__file__).resolve().parent / "overopt.yaml"


def is_empty_config(path) -> bool:
    """A config file with no settings at all (empty, or only comments and blank lines)."""
    import yaml

    try:
        return Path(path).is_file() and yaml.safe_load(Path(path).read_text(encoding="utf-8")) is None
    except (yaml.YAMLError, UnicodeDecodeError):
        return False  # the loader reports what is wrong with it


def config_or_default(path, default: Path = EMBEDDED) -> Path:
    """The config file a command runs with: `path`, or `default` when none is given or the file
    is empty, which then means what no --config means (not the schema's bare defaults, which
    differ from the embedded task's: 20 steps at lr 1e-5 against 30 at 3e-4)."""
    if path is None:
        return default
    if is_empty_config(path):
        from ..outputs import console

        console.print(f"{path}: empty config file: using the defaults, as without --config ({default.name})",
                      highlight=False, soft_wrap=True)
        return default
    return Path(path)
