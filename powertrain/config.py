"""Reading ``powertrain.toml``: settings, the model catalog and tasks."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from powertrain.cache.stage import CacheConfig
from powertrain.catalog import Catalog
from powertrain.errors import ConfigError, PowertrainError
from powertrain.guard.config import GuardrailsConfig
from powertrain.routing.config import RoutingConfig, parse_routes
from powertrain.settings import Settings, load_settings
from powertrain.tasks.definition import TaskDefinition, check_models

CONFIG_FILE_NAME = "powertrain.toml"


@dataclass
class Config:
    settings: Settings
    catalog: Catalog
    path: Path | None = None
    raw: dict[str, Any] = field(default_factory=dict)
    tasks: dict[str, TaskDefinition] = field(default_factory=dict)
    cache: CacheConfig = field(default_factory=CacheConfig)
    guardrails: GuardrailsConfig = field(default_factory=lambda: GuardrailsConfig({}, ()))
    routes: RoutingConfig = field(default_factory=RoutingConfig)

    def secrets(self) -> list[str]:
        """Every secret value configured, so they can be scrubbed from any text we emit."""
        values = [self.settings.admin_key, url_password(self.settings.redis_url)]
        for model in self.catalog:
            values.append(model.api_key)
            if model.api_key_env:
                values.append(os.environ.get(model.api_key_env))
        return [v for v in values if v and len(v) >= 6]


def url_password(url: str | None) -> str | None:
    """The password in a URL such as redis://:secret@host:6379/0, if any."""
    if not url:
        return None
    try:
        return urlsplit(url).password
    except ValueError:
        return None


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
    known = {"settings", "models", "tasks", "collections", "keys", "cache", "guardrails", "routes"}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{file}: unknown top-level table(s): {', '.join(sorted(unknown))}")
    settings = load_settings(raw.get("settings", {}), environ)
    catalog = Catalog.from_config(raw.get("models", {}))
    base_dir = file.parent if file is not None else Path.cwd()
    try:
        cache = CacheConfig.parse(raw.get("cache", {}))
        guardrails = GuardrailsConfig.parse(raw.get("guardrails"), base_dir=base_dir)
        routes = parse_routes(raw.get("routes"), catalog)
    except ConfigError as exc:
        raise ConfigError(f"{file}: {exc.message}") from None
    tasks = _load_tasks(raw.get("tasks", {}), catalog, file, guardrails, routes)
    return Config(
        settings=settings,
        catalog=catalog,
        path=file,
        raw=raw,
        tasks=tasks,
        cache=cache,
        guardrails=guardrails,
        routes=routes,
    )


def _load_tasks(
    table: Any,
    catalog: Catalog,
    file: Path | None,
    guardrails: GuardrailsConfig,
    routes: RoutingConfig,
) -> dict[str, TaskDefinition]:
    if not isinstance(table, dict):
        raise ConfigError(f"{file}: [tasks] must be a table of tasks")
    base_dir = file.parent if file is not None else Path.cwd()
    tasks: dict[str, TaskDefinition] = {}
    for name, entry in table.items():
        where = f"[tasks.{name}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{file}: {where} must be a table")
        try:
            definition = TaskDefinition.parse(name, entry, base_dir=base_dir, where=where)
            check_models(definition.settings, catalog, where, routes.routes)
            guardrails.check_names(definition.settings.guardrails, where=f"{where}.guardrails")
        except PowertrainError as exc:
            raise ConfigError(f"{file}: {exc.message}") from None
        tasks[name] = definition
    return tasks
