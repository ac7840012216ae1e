"""Where settings come from: flags > CIVIC_* environment > config file > defaults.

Every piece of local state (config file, embedded database, citizen homes) lives under one home
directory: ``CIVIC_HOME``, else the platform's user data directory. Two homes never see each other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs
import yaml

from civic.errors import UsageError

CONFIG_FILE = "config.yaml"


@dataclass(frozen=True)
class Settings:
    """The settings every command works from."""

    home: Path
    database_url: str | None = None
    debug: bool = False
    instance: str = "civic"  # prefix and label of everything CIVIC creates in Docker

    @property
    def citizens_dir(self) -> Path:
        return self.home / "citizens"


def default_home() -> Path:
    return Path(os.environ.get("CIVIC_HOME") or platformdirs.user_data_dir("civic")).expanduser()


def read_config(home: Path) -> dict[str, Any]:
    """The config file's mapping, or {} when there is none."""
    path = home / CONFIG_FILE
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"{path}: cannot read the config file: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: the config file must be a mapping of keys to values")
    return data


def write_config(home: Path, data: dict[str, Any]) -> Path:
    """Replace the config file atomically, readable by its owner only (it may hold passwords)."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / CONFIG_FILE
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    os.replace(tmp, path)
    return path


def load_settings(*, home: Path | None = None, database_url: str | None = None,
                  debug: bool = False) -> Settings:
    """Build Settings from flags, then the environment, then the config file."""
    home = (home or default_home()).absolute()
    config = read_config(home)
    url = database_url or os.environ.get("CIVIC_DATABASE_URL") or config.get("database_url")
    instance = os.environ.get("CIVIC_INSTANCE") or config.get("instance") or "civic"
    return Settings(home=home, database_url=url or None, debug=debug, instance=instance)
