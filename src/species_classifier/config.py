"""Project config files: one TOML file can hold the flags of every stage.

Each command reads the table named after it (`[collect]`, `[download]`, `[train]`,
`[serve]`, ...). Keys are the long flag names with `-` or `_`; a flag given on the
command line wins over the file.

```toml
[train]
dataset = "data/baltimore/manifest.csv"
targets = ["Lycorma delicatula", "Acer rubrum"]
folds = 3
out = "runs/baltimore"
```
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config file that cannot be read or names unknown settings."""


def load_section(path: str | Path, section: str) -> dict[str, Any]:
    """Read one table of a TOML config file; returns {} when the table is absent."""
    path = Path(path)
    try:
        document = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: file not found") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"--config {path}: invalid TOML ({error})") from None
    values = document.get(section, {})
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path}: [{section}] must be a table")
    return {key.replace("-", "_"): value for key, value in values.items()}


def apply_config_defaults(subparser: argparse.ArgumentParser, path: str | Path, section: str) -> None:
    """Make the file's values the defaults of `subparser`, so explicit flags still win."""
    values = load_section(path, section)
    known = {action.dest: action for action in subparser._actions}
    unknown = sorted(set(values) - set(known))
    if unknown:
        valid = sorted(dest for dest in known if dest not in ("help", "config", "func"))
        raise ConfigError(f"--config {path}: unknown key(s) in [{section}]: {', '.join(unknown)}; valid: {', '.join(valid)}")
    for dest, value in values.items():
        if isinstance(value, list) and known[dest].nargs in (None, "?"):
            # A TOML list for a comma-separated flag such as --targets.
            value = ",".join(str(item) for item in value)
        subparser.set_defaults(**{dest: value})
