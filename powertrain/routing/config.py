"""``[routes.<name>]`` in ``powertrain.toml``: named routes a client calls like a model.

Every mistake is one line naming ``routes.<name>.<field>`` and saying what to
do. Routes name catalog models only (not other routes or tasks), so a route's
candidates are known when the file loads and can be checked then.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from powertrain.catalog import Catalog, ModelConfig
from powertrain.engines._retry import (
    DEFAULT_BACKOFF_BASE,
    DEFAULT_BACKOFF_MAX,
    DEFAULT_MAX_RETRY_AFTER,
)
from powertrain.errors import ConfigError
from powertrain.routing.breaker import DEFAULT_COOLDOWN, DEFAULT_FAILURE_THRESHOLD, BreakerSettings
from powertrain.routing.retry import RetryPolicy

Strategy = Literal["fallback", "split", "cascade", "semantic"]
FallbackOn = Literal["error", "timeout", "rate_limit", "context_overflow"]
EscalateOn = Literal["schema", "guardrail", "confidence"]
Sticky = Literal["user", "api_key"]
WhenAllOpen = Literal["try_oldest", "fail"]

ALL_FALLBACK_ON: tuple[FallbackOn, ...] = ("error", "timeout", "rate_limit", "context_overflow")
ALL_ESCALATE_ON: tuple[EscalateOn, ...] = ("schema", "guardrail", "confidence")
DEFAULT_EMBEDDING_MODEL = "minilm"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+\-/@]{0,127}$")

# The fields each strategy reads; any other strategy-specific field is a mistake.
_COMMON = frozenset(
    {
        "strategy",
        "fallback_on",
        "retries",
        "backoff_base",
        "backoff_max",
        "max_retry_after",
        "failure_threshold",
        "cooldown",
        "timeout",
        "attempt_timeout",
        "when_all_open",
    }
)
_STRATEGY_FIELDS: dict[str, frozenset[str]] = {
    "fallback": _COMMON | {"models"},
    "split": _COMMON | {"weights", "sticky"},
    "cascade": _COMMON | {"models", "escalate_on", "min_confidence"},
    "semantic": _COMMON | {"routes", "default", "threshold", "embedding_model", "top_k"},
}


class SemanticTarget(BaseModel):
    """``[routes.<name>.routes.<target>]``: a model and the queries that should reach it."""

    model_config = ConfigDict(extra="forbid")

    model: str
    examples: list[str] = Field(min_length=1)

    @field_validator("examples")
    @classmethod
    def _no_blank_examples(cls, value: list[str]) -> list[str]:
        if any(not text.strip() for text in value):
            raise ValueError("an example is blank")
        return value


class RouteConfig(BaseModel):
    """One ``[routes.<name>]`` table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    strategy: Strategy
    # fallback and cascade: catalog aliases, in the order they are tried
    models: list[str] = Field(default_factory=list)
    # split
    weights: dict[str, float] = Field(default_factory=dict)
    sticky: Sticky | None = None
    # cascade
    escalate_on: list[EscalateOn] = Field(default_factory=lambda: list(ALL_ESCALATE_ON))
    min_confidence: float = Field(default=0.6, ge=0, le=1)
    # semantic
    routes: dict[str, SemanticTarget] = Field(default_factory=dict)
    default: str | None = None
    threshold: float = Field(default=0.5, ge=-1, le=1)
    embedding_model: str = DEFAULT_EMBEDDING_MODEL
    top_k: int = Field(default=1, ge=1, le=50)
    # every strategy
    fallback_on: list[FallbackOn] = Field(default_factory=lambda: list(ALL_FALLBACK_ON))
    retries: int = Field(default=2, ge=0, le=10)
    backoff_base: float = Field(default=DEFAULT_BACKOFF_BASE, gt=0)
    backoff_max: float = Field(default=DEFAULT_BACKOFF_MAX, gt=0)
    max_retry_after: float = Field(default=DEFAULT_MAX_RETRY_AFTER, ge=0)
    failure_threshold: int = Field(default=DEFAULT_FAILURE_THRESHOLD, ge=1)
    cooldown: float = Field(default=DEFAULT_COOLDOWN, gt=0)
    timeout: float | None = Field(default=None, gt=0)
    attempt_timeout: float | None = Field(default=None, gt=0)
    when_all_open: WhenAllOpen = "try_oldest"

    @property
    def candidates(self) -> list[str]:
        """Every model the route may use, each once, in its configured order."""
        if self.strategy == "split":
            names: Iterable[str] = self.weights
        elif self.strategy == "semantic":
            names = [t.model for t in self.routes.values()] + [self.default or ""]
        else:
            names = self.models
        return list(dict.fromkeys(n for n in names if n))

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            retries=self.retries,
            backoff_base=self.backoff_base,
            backoff_max=self.backoff_max,
            max_retry_after=self.max_retry_after,
        )

    @property
    def breaker(self) -> BreakerSettings:
        return BreakerSettings(failure_threshold=self.failure_threshold, cooldown=self.cooldown)


@dataclass(frozen=True)
class RoutingConfig:
    """Every route in the file, by name."""

    routes: Mapping[str, RouteConfig] = field(default_factory=dict)

    def __contains__(self, name: object) -> bool:
        return name in self.routes

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.routes.values())

    def __len__(self) -> int:
        return len(self.routes)

    def get(self, name: str) -> RouteConfig | None:
        return self.routes.get(name)

    def breaker_settings(self, alias: str) -> BreakerSettings:
        """One breaker per model, shared by every route that names it: the most cautious
        of their settings (the lowest threshold, the longest cooldown)."""
        using = [r for r in self.routes.values() if alias in r.candidates]
        if not using:
            return BreakerSettings()
        return BreakerSettings(
            failure_threshold=min(r.failure_threshold for r in using),
            cooldown=max(r.cooldown for r in using),
        )


def parse_routes(table: Any, catalog: Catalog) -> RoutingConfig:
    """``raw["routes"]`` from ``powertrain.toml``, checked against the model catalog.

    Raises :class:`ConfigError` with one line naming ``routes.<name>.<field>``.
    """
    if table is None:
        return RoutingConfig()
    if not isinstance(table, dict):
        raise ConfigError("[routes] must be a table of routes ([routes.<name>])")
    routes: dict[str, RouteConfig] = {}
    for name, entry in table.items():
        routes[name] = parse_route(name, entry, catalog)
    return RoutingConfig(routes)


def parse_route(name: str, entry: Any, catalog: Catalog) -> RouteConfig:
    where = f"routes.{name}"
    if not _NAME.match(name) or ".." in name or name.startswith("task:"):
        raise ConfigError(
            f"{where}: a route name must be letters, digits and ._:+-/@ (and not task:…)"
        )
    if name in catalog:
        raise ConfigError(
            f"{where}: {name!r} is already a model alias in [models]; a client could not "
            "tell them apart, so rename the route"
        )
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a table")
    strategy = entry.get("strategy")
    if strategy not in _STRATEGY_FIELDS:
        raise ConfigError(
            f"{where}.strategy: {strategy!r} is not a strategy "
            f"(use one of: {', '.join(_STRATEGY_FIELDS)})"
        )
    allowed = _STRATEGY_FIELDS[strategy]
    for key in entry:
        if key not in allowed:
            if key in RouteConfig.model_fields and key != "name":
                raise ConfigError(
                    f"{where}.{key}: not a field of a {strategy} route "
                    f"(its fields: {', '.join(sorted(allowed))})"
                )
            raise ConfigError(
                f"{where}.{key}: unknown field (a {strategy} route has: "
                f"{', '.join(sorted(allowed))})"
            )
    try:
        route = RouteConfig(name=name, **entry)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{where}.{loc}: {first['msg']}") from None
    _check_strategy(route, catalog, where)
    return route


def _check_strategy(route: RouteConfig, catalog: Catalog, where: str) -> None:
    if route.strategy in ("fallback", "cascade"):
        if not route.models:
            raise ConfigError(f"{where}.models: list at least one catalog model, in order")
        if len(set(route.models)) != len(route.models):
            raise ConfigError(f"{where}.models: a model is listed twice")
        for alias in route.models:
            _known(alias, catalog, f"{where}.models")
    if route.strategy == "cascade":
        _check_cascade_order(route, catalog, where)
    if route.strategy == "split":
        if not route.weights:
            raise ConfigError(f'{where}.weights: give each model a weight, e.g. {{ "a" = 90 }}')
        for alias, weight in route.weights.items():
            _known(alias, catalog, f"{where}.weights")
            if weight < 0:
                raise ConfigError(f"{where}.weights.{alias}: {weight:g} is negative; use >= 0")
        if not any(weight > 0 for weight in route.weights.values()):
            raise ConfigError(f"{where}.weights: at least one weight must be above 0")
    if route.strategy == "semantic":
        if not route.routes:
            raise ConfigError(
                f"{where}.routes: add at least one [{where}.routes.<target>] with a model "
                "and examples"
            )
        if route.default is None:
            raise ConfigError(
                f"{where}.default: name the model that serves queries no target matches"
            )
        _known(route.default, catalog, f"{where}.default")
        for target, spec in route.routes.items():
            _known(spec.model, catalog, f"{where}.routes.{target}.model")
        _known(route.embedding_model, catalog, f"{where}.embedding_model")
    if route.backoff_max < route.backoff_base:
        raise ConfigError(
            f"{where}.backoff_max: {route.backoff_max:g} is below backoff_base "
            f"{route.backoff_base:g}"
        )


def _known(alias: str, catalog: Catalog, where: str) -> ModelConfig:
    if alias not in catalog:
        known = ", ".join(m.alias for m in catalog) or "none"
        raise ConfigError(
            f"{where}: {alias!r} is not a model in the catalog (known: {known}); "
            "add it under [models] or fix the name"
        )
    return catalog.get(alias)


def price(model: ModelConfig) -> float:
    """What the cascade orders by: USD per 1M input plus 1M output tokens."""
    return model.price_input + model.price_output


def _check_cascade_order(route: RouteConfig, catalog: Catalog, where: str) -> None:
    # An error, not a warning: a cascade is only cost-aware if its order is right, and a
    # warning at load is easy to miss. Equal prices (two local models) are fine.
    models = [catalog.get(alias) for alias in route.models]
    for before, after in itertools.pairwise(models):
        if price(after) < price(before):
            wanted = ", ".join(f'"{m.alias}"' for m in sorted(models, key=price))
            raise ConfigError(
                f"{where}.models: {before.alias!r} (${price(before):g} per 1M in+out) comes "
                f"before the cheaper {after.alias!r} (${price(after):g}); a cascade runs "
                f"cheapest first, so list them as [{wanted}] (or fix the prices in [models])"
            )
