"""Engines: backends that generate or embed. Each one is a plugin (see plugins.py)."""

from powertrain.engines.base import Capabilities, Engine
from powertrain.engines.registry import EnginePool, engine_classes

__all__ = ["Capabilities", "Engine", "EnginePool", "engine_classes"]
