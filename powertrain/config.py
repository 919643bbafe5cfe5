"""Reading ``powertrain.toml``: settings, the model catalog and (later) tasks."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from powertrain.catalog import Catalog
from powertrain.errors import ConfigError
from powertrain.settings import Settings, load_settings

CONFIG_FILE_NAME = "powertrain.toml"


@dataclass
class Config:
    settings: Settings
    catalog: Catalog
    path: Path | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    def secrets(self) -> list[str]:
        """Every secret value configured, so they can be scrubbed from any text we emit."""
        values = [self.settings.admin_key]
        for model in self.catalog:
            values.append(model.api_key)
            if model.api_key_env:
                values.append(os.environ.get(model.api_key_env))
        return [v for v in values if v and len(v) >= 6]


def find_config_file(explicit: str | Path | None = None) -> Path | None:
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        return path
    env = os.environ.get("POWERTRAIN_CONFIG")
    if env:
        return find_config_file(env)
    local = Path.cwd() / CONFIG_FILE_NAME
    return local if local.is_file() else None


def load_config(path: str | Path | None = None, environ: dict[str, str] | None = None) -> Config:
    """Load the config file (if any) and the environment into one typed Config."""
    file = find_config_file(path)
    raw: dict[str, Any] = {}
    if file is not None:
        try:
            raw = tomllib.loads(file.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: not valid TOML ({exc})") from None
    unknown = set(raw) - {"settings", "models", "tasks", "collections", "keys"}
    if unknown:
        raise ConfigError(f"{file}: unknown top-level table(s): {', '.join(sorted(unknown))}")
    settings = load_settings(raw.get("settings", {}), environ)
    catalog = Catalog.from_config(raw.get("models", {}))
    return Config(settings=settings, catalog=catalog, path=file, raw=raw)
