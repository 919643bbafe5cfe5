"""The built-in guardrail types, registered through the same hook as a plugin's."""

from __future__ import annotations

from collections.abc import Callable

from powertrain.guard.base import Guardrail
from powertrain.guard.injection import InjectionGuardrail
from powertrain.guard.pii import PiiGuardrail
from powertrain.guard.rules import BannedTerms, BannedTopics, OutputSchema, SizeLimit
from powertrain.plugins import hookimpl

BUILTIN_TYPES: tuple[type[Guardrail], ...] = (
    PiiGuardrail,
    InjectionGuardrail,
    BannedTerms,
    BannedTopics,
    SizeLimit,
    OutputSchema,
)


@hookimpl
def register_guardrails(register: Callable[[type[Guardrail]], None]) -> None:
    for cls in BUILTIN_TYPES:
        register(cls)
