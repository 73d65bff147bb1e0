"""Where maider keeps its files (platform directories, overridable for tests and power users)."""

from __future__ import annotations

import os
from pathlib import Path

APP_NAME = "maider"


def _dir(env: str, kind: str) -> Path:
    override = os.environ.get(env)
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(getattr(platformdirs, f"user_{kind}_dir")(APP_NAME, appauthor=False))


def config_file_path() -> Path:
    """The user config file: $MAIDER_CONFIG, else config.toml in the platform config dir."""
    override = os.environ.get("MAIDER_CONFIG")
    if override:
        return Path(override).expanduser()
    return _dir("MAIDER_CONFIG_DIR", "config") / "config.toml"


def state_dir() -> Path:
    return _dir("MAIDER_STATE_DIR", "state")


def cache_dir() -> Path:
    return _dir("MAIDER_CACHE_DIR", "cache")


def data_dir() -> Path:
    return _dir("MAIDER_DATA_DIR", "data")
