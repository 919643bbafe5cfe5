"""Guardrails: checks on what goes into a model and what comes out of it.

Build a pipeline from the ``[guardrails]`` config (``GuardrailsConfig``) or from
guardrail instances (``GuardPipeline``), run ``check_input`` on a request's
messages and ``check_output`` on the answer (``stream()`` for a streamed one).
New guardrail types arrive through the ``register_guardrails`` plugin hook.
See docs/guardrails.md.
"""

from powertrain.guard.base import (
    Action,
    Finding,
    Guardrail,
    GuardrailBlocked,
    Match,
    Stage,
)
from powertrain.guard.config import GuardrailsConfig, Options, build_guardrail, guardrail_types
from powertrain.guard.injection import InjectionGuardrail, InjectionReport, score_injection
from powertrain.guard.pii import PiiGuardrail, find_pii
from powertrain.guard.pipeline import GuardOutcome, GuardPipeline, Placeholders
from powertrain.guard.rules import BannedTerms, BannedTopics, OutputSchema, SizeLimit
from powertrain.guard.streaming import StreamGuard

__all__ = [
    "Action",
    "BannedTerms",
    "BannedTopics",
    "Finding",
    "GuardOutcome",
    "GuardPipeline",
    "Guardrail",
    "GuardrailBlocked",
    "GuardrailsConfig",
    "InjectionGuardrail",
    "InjectionReport",
    "Match",
    "Options",
    "OutputSchema",
    "PiiGuardrail",
    "Placeholders",
    "SizeLimit",
    "Stage",
    "StreamGuard",
    "build_guardrail",
    "find_pii",
    "guardrail_types",
    "score_injection",
]
