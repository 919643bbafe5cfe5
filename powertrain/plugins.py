"""Plugins: every engine, guardrail, assertion and fine-tuning method arrives through a hook.

Built-in engines and guardrails are listed in ``DEFAULT_PLUGINS`` and registered
exactly the way a third-party package's are (from the ``powertrain`` entry-point
group), so the built-ins prove the hooks work.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from powertrain.engines.base import Engine
    from powertrain.evals.assertions import AssertionType
    from powertrain.flywheel.base import Trainer
    from powertrain.guard.base import Guardrail

hookspec = pluggy.HookspecMarker("powertrain")
hookimpl = pluggy.HookimplMarker("powertrain")

DEFAULT_PLUGINS = (
    "powertrain.engines.llamacpp",
    "powertrain.engines.openai",
    "powertrain.engines.anthropic",
    "powertrain.engines.sentence_transformers",
    "powertrain.engines.transformers",
    "powertrain.engines.classifier",
    "powertrain.guard.builtin",
    "powertrain.evals.assertions",
    "powertrain.flywheel.classifier",
    "powertrain.flywheel.lora",
    "powertrain.flywheel.prompt_tuning",
)


class Specs:
    @hookspec
    def register_engines(self, register: Callable[[type[Engine]], None]) -> None:
        """Call ``register(EngineClass)`` once for each engine this plugin provides."""

    @hookspec
    def register_guardrails(self, register: Callable[[type[Guardrail]], None]) -> None:
        """Call ``register(GuardrailClass)`` once for each guardrail type this plugin provides
        (its ``type_name`` is what ``type = "..."`` names in ``[guardrails.<name>]``)."""

    @hookspec
    def register_assertions(self, register: Callable[[AssertionType], None]) -> None:
        """Call ``register(AssertionType(name, check, validate))`` once for each eval
        assertion type this plugin provides (``type: name`` in a suite's ``assert`` list)."""

    @hookspec
    def register_trainers(self, register: Callable[[type[Trainer]], None]) -> None:
        """Call ``register(TrainerClass)`` once for each fine-tuning method this plugin
        provides (its ``name`` is what ``powertrain finetune --method`` names)."""


def make_plugin_manager(load_entry_points: bool = True) -> pluggy.PluginManager:
    pm = pluggy.PluginManager("powertrain")
    pm.add_hookspecs(Specs)
    for name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(name), name=name)
    if load_entry_points:
        pm.load_setuptools_entrypoints("powertrain")
    return pm


_pm: pluggy.PluginManager | None = None


def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager (tests may register temporary plugins on it)."""
    global _pm
    if _pm is None:
        _pm = make_plugin_manager()
    return _pm
