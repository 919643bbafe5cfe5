"""From engine plugins to live engine instances, one per catalog model."""

from __future__ import annotations

import asyncio

from powertrain.catalog import Catalog, ModelConfig
from powertrain.engines.base import Engine
from powertrain.errors import ConfigError
from powertrain.plugins import plugin_manager


def engine_classes() -> dict[str, type[Engine]]:
    """Every registered engine class by name, built-ins and third-party alike."""
    found: dict[str, type[Engine]] = {}

    def register(cls: type[Engine]) -> None:
        if cls.name in found and found[cls.name] is not cls:
            raise ConfigError(f"two plugins register an engine named {cls.name!r}")
        found[cls.name] = cls

    plugin_manager().hook.register_engines(register=register)
    return found


class EnginePool:
    """Creates each model's engine on first use and keeps it (weights load once)."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self._engines: dict[str, Engine] = {}
        self._lock = asyncio.Lock()
        self._classes: dict[str, type[Engine]] | None = None

    def engine_class(self, model: ModelConfig) -> type[Engine]:
        if self._classes is None:
            self._classes = engine_classes()
        try:
            return self._classes[model.engine]
        except KeyError:
            known = ", ".join(sorted(self._classes))
            raise ConfigError(
                f"model {model.alias!r} uses engine {model.engine!r}, which no plugin provides "
                f"(known: {known})"
            ) from None

    def started(self, alias: str) -> Engine | None:
        """The engine if it is already running (the common case, without an await)."""
        return self._engines.get(alias)

    async def get(self, alias: str) -> Engine:
        engine = self._engines.get(alias)
        if engine is not None:
            return engine
        async with self._lock:
            engine = self._engines.get(alias)
            if engine is None:
                model = self.catalog.get(alias)
                engine = self.engine_class(model)(model)
                await engine.start()
                self._engines[alias] = engine
        return engine

    async def aclose(self) -> None:
        engines, self._engines = list(self._engines.values()), {}
        for engine in engines:
            await engine.aclose()
