"""Routing: fallback chains, weighted splits, cost cascades and semantic routes over the
catalog's models, with retries, circuit breakers and one deadline per call.

A route is named in ``powertrain.toml`` (``[routes.<name>]``) and called like a
model (``model="<name>"``). The gateway parses the routes once
(:func:`parse_routes`), keeps one :class:`Router`, and for each call plans
(``await router.plan(name, RequestInfo.of(request))``) and executes
(``router.execute(plan, deadline=...).run(attempt)``); see docs/routing.md.
"""

from powertrain.catalog import Catalog, ModelConfig
from powertrain.routing.breaker import (
    Breakers,
    BreakerSettings,
    BreakerState,
    CircuitBreaker,
    Permit,
)
from powertrain.routing.cascade import (
    CascadeCheck,
    GuardrailFn,
    Verdict,
    confidence_from_logprobs,
    confidence_of,
)
from powertrain.routing.config import RouteConfig, RoutingConfig, parse_routes
from powertrain.routing.execution import RouteExecution, RouteUnavailable
from powertrain.routing.plan import Candidate, RequestInfo, RoutePlan, Skipped
from powertrain.routing.retry import Failure, FailureKind, RetryPolicy, classify
from powertrain.routing.router import EmbedderFactory, Router
from powertrain.routing.semantic import EmbedFn, SemanticChoice, SemanticRouter


def single_attempt(model: ModelConfig) -> ModelConfig:
    """``model`` with its engine's own retries off, for engines the router drives: the
    router's retries replace the engine's, so they do not multiply and each is traced."""
    return model.model_copy(update={"max_retries": 0})


def single_attempt_catalog(catalog: Catalog) -> Catalog:
    """The catalog with every model's engine retries off (see :func:`single_attempt`)."""
    return Catalog([single_attempt(model) for model in catalog])


__all__ = [
    "BreakerSettings",
    "BreakerState",
    "Breakers",
    "Candidate",
    "CascadeCheck",
    "CircuitBreaker",
    "EmbedFn",
    "EmbedderFactory",
    "Failure",
    "FailureKind",
    "GuardrailFn",
    "Permit",
    "RequestInfo",
    "RetryPolicy",
    "RouteConfig",
    "RouteExecution",
    "RoutePlan",
    "RouteUnavailable",
    "Router",
    "RoutingConfig",
    "SemanticChoice",
    "SemanticRouter",
    "Skipped",
    "Verdict",
    "classify",
    "confidence_from_logprobs",
    "confidence_of",
    "parse_routes",
    "single_attempt",
    "single_attempt_catalog",
]
