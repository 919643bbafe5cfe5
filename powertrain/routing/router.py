"""The router: a route name (or a plain model alias) in, a plan and its execution out.

``await router.plan(name, info)`` orders the route's models by its strategy,
drops those whose context window is too small for the request and those whose
circuit breaker is open, and says why each remaining model is there;
``router.execute(plan, deadline=...)`` returns the :class:`RouteExecution` the
gateway drives. A plain model alias is a route of one model that keeps the
model's own ``max_retries`` and backoff options, so every chat call can go
through the same path and have every attempt traced.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from powertrain.catalog import Catalog
from powertrain.errors import ConfigError
from powertrain.routing.breaker import Breakers
from powertrain.routing.cascade import CascadeCheck, GuardrailFn
from powertrain.routing.config import RouteConfig, RoutingConfig
from powertrain.routing.execution import (
    AttemptHook,
    RouteExecution,
    Sleep,
    refusal,
    route_unavailable,
)
from powertrain.routing.plan import (
    Candidate,
    Reason,
    RequestInfo,
    RoutePlan,
    Skipped,
    cascade_order,
    split_order,
)
from powertrain.routing.retry import FailureKind, RetryPolicy
from powertrain.routing.semantic import EmbedFn, SemanticChoice, SemanticRouter

# An embedding model alias in, an EmbedFn over that model out (the gateway's engines).
EmbedderFactory = Callable[[str], EmbedFn]


class Router:
    """Plans and executes routes. One per gateway process; safe to share between tasks.

    ``engine_retries``: whether the engines this router's attempts call retry
    on their own (the HTTP engines do, ``max_retries`` times, unless built from
    :func:`powertrain.routing.single_attempt`). When true, the router never
    retries a model itself and only falls back, so attempts do not multiply;
    when false (the intended wiring), the router's retries replace the
    engine's and every attempt is in the trace.
    """

    def __init__(
        self,
        config: RoutingConfig,
        catalog: Catalog,
        *,
        breakers: Breakers | None = None,
        embedder: EmbedderFactory | None = None,
        engine_retries: bool = False,
        rng: random.Random | None = None,
    ):
        self.config = config
        self.catalog = catalog
        self.breakers = breakers or Breakers(config.breaker_settings)
        self.engine_retries = engine_retries
        self._embedder = embedder
        self._rng = rng
        self._semantic: dict[str, SemanticRouter] = {}

    def __contains__(self, name: object) -> bool:
        """Whether ``name`` is a route (rather than a model alias or a task)."""
        return name in self.config

    def route(self, name: str) -> RouteConfig | None:
        return self.config.get(name)

    async def prepare(self) -> None:
        """Embed every semantic route's examples now rather than on its first call."""
        for route in self.config:
            if route.strategy == "semantic":
                await self._semantic_router(route).prepare()

    # -- planning -------------------------------------------------------------

    async def plan(self, name: str, info: RequestInfo | None = None) -> RoutePlan:
        """The ordered candidates for one call to route (or model alias) ``name``.

        Raises ``ModelNotFound`` for a name that is neither, and
        :class:`RouteUnavailable` when every model's breaker is open and the
        route says ``when_all_open = "fail"``.
        """
        info = info or RequestInfo()
        route = self.config.get(name)
        scores: dict[str, float] = {}
        if route is None:
            model = self.catalog.get(name)  # ModelNotFound names the known models
            ordered: list[Candidate] = [self._candidate(model.alias, "primary")]
            plan = RoutePlan(route=name, strategy="model", candidates=())
        else:
            ordered, scores = await self._order(route, info)
            plan = RoutePlan(
                route=name,
                strategy=route.strategy,
                candidates=(),
                fallback_on=frozenset(FailureKind(k) for k in route.fallback_on),
                when_all_open=route.when_all_open,
                escalate_on=(
                    frozenset(route.escalate_on) if route.strategy == "cascade" else frozenset()
                ),
                min_confidence=route.min_confidence if route.strategy == "cascade" else None,
            )
        candidates, skipped = self._filter(ordered, info, plan.when_all_open, name)
        return replace(
            plan,
            candidates=tuple(candidates),
            skipped=tuple(skipped),
            needed_tokens=info.needed_tokens,
            semantic_scores=scores,
        )

    async def _order(
        self, route: RouteConfig, info: RequestInfo
    ) -> tuple[list[Candidate], dict[str, float]]:
        if route.strategy == "fallback":
            return [
                self._candidate(alias, "primary" if i == 0 else "fallback")
                for i, alias in enumerate(route.models)
            ], {}
        if route.strategy == "split":
            sticky_key = None
            if route.sticky == "user":
                sticky_key = info.user
            elif route.sticky == "api_key":
                sticky_key = info.api_key_id
            order = split_order(route.name, route.weights, sticky_key=sticky_key, rng=self._rng)
            return [
                self._candidate(alias, "split" if i == 0 else "fallback", detail)
                for i, (alias, detail) in enumerate(order)
            ], {}
        if route.strategy == "cascade":
            return [
                self._candidate(alias, "cascade", detail)
                for alias, detail in cascade_order(route.models)
            ], {}
        return await self._semantic_order(route, info)

    async def _semantic_order(
        self, route: RouteConfig, info: RequestInfo
    ) -> tuple[list[Candidate], dict[str, float]]:
        assert route.default is not None
        choice: SemanticChoice | None = None
        why = "no user message to classify"
        if info.text and info.text.strip():
            try:
                choice = await self._semantic_router(route).classify(info.text)
            except asyncio.CancelledError:
                raise
            except ConfigError:
                raise
            except Exception as exc:
                # The embedder failing must not fail the call: the default model serves it.
                why = f"the embedding model failed ({type(exc).__name__}); using the default"
        if choice is not None and choice.target is not None:
            first = self._candidate(
                choice.model,
                "semantic",
                f"{choice.target} {choice.similarity:.2f} >= {route.threshold:g}",
                similarity=choice.similarity,
            )
            ordered = [first]
            if route.default != choice.model:
                ordered.append(self._candidate(route.default, "fallback"))
            return ordered, choice.scores
        if choice is not None:
            why = f"best {choice.best} {choice.similarity:.2f} < {route.threshold:g}"
        default = self._candidate(
            route.default,
            "semantic_default",
            why,
            similarity=choice.similarity if choice is not None else None,
        )
        return [default], choice.scores if choice is not None else {}

    def _semantic_router(self, route: RouteConfig) -> SemanticRouter:
        router = self._semantic.get(route.name)
        if router is None:
            if self._embedder is None:
                raise ConfigError(
                    f"routes.{route.name}: a semantic route needs an embedder; build the "
                    "Router with embedder=<alias -> embed function>"
                )
            assert route.default is not None
            router = SemanticRouter.from_routes(
                {name: (t.model, t.examples) for name, t in route.routes.items()},
                default=route.default,
                threshold=route.threshold,
                embed=self._embedder(route.embedding_model),
                top_k=route.top_k,
            )
            self._semantic[route.name] = router
        return router

    def _candidate(
        self, alias: str, reason: Reason, detail: str = "", *, similarity: float | None = None
    ) -> Candidate:
        model = self.catalog.get(alias)
        return Candidate(
            model=alias,
            reason=reason,
            detail=detail,
            engine=model.engine,
            context_window=model.context_window,
            price_input=model.price_input,
            price_output=model.price_output,
            similarity=similarity,
        )

    def _filter(
        self, ordered: list[Candidate], info: RequestInfo, when_all_open: str, name: str
    ) -> tuple[list[Candidate], list[Skipped]]:
        skipped: list[Skipped] = []
        needed = info.needed_tokens
        seen: set[str] = set()
        fitting: list[Candidate] = []
        for candidate in ordered:
            if candidate.model in seen:
                continue
            seen.add(candidate.model)
            if candidate.fits(needed):
                fitting.append(candidate)
            else:
                skipped.append(
                    Skipped(
                        candidate.model,
                        f"context window {candidate.context_window} < {needed} tokens "
                        "(prompt estimate plus max_tokens)",
                    )
                )
        if not fitting:
            # None fits by the estimate: keep the largest, whose own check gives the caller
            # a 400 naming both sizes (the estimate may also be wrong).
            largest = max(ordered, key=lambda c: c.context_window or 0)
            fitting = [largest]
            skipped = [s for s in skipped if s.model != largest.model]
        available = []
        for candidate in fitting:
            breaker = self.breakers.get(candidate.model)
            if breaker.available():
                available.append(candidate)
            else:
                skipped.append(Skipped(candidate.model, refusal(breaker)))
        if available:
            return available, skipped
        if when_all_open == "fail":
            raise route_unavailable(name, [self.breakers.get(c.model) for c in fitting])
        oldest = min(fitting, key=lambda c: self.breakers.get(c.model).opened_at or 0.0)
        forced = replace(
            oldest,
            reason="forced",
            detail="every model's circuit breaker was open; trying the one open longest",
            forced=True,
        )
        return [forced], [s for s in skipped if s.model != oldest.model]

    # -- execution --------------------------------------------------------------

    def policy(self, plan: RoutePlan, alias: str) -> RetryPolicy:
        """How the router retries ``alias`` within ``plan``."""
        route = self.config.get(plan.route)
        policy = (
            route.retry_policy
            if route is not None
            else RetryPolicy.for_model(self.catalog.get(alias))
        )
        return policy.without_retries() if self.engine_retries else policy

    def execute(
        self,
        plan: RoutePlan,
        *,
        deadline: float | None = None,
        on_attempt: AttemptHook | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> RouteExecution[Any]:
        """The execution of ``plan`` under ``deadline`` (a :func:`time.monotonic`
        instant: the call's), shortened by the route's own ``timeout``."""
        route = self.config.get(plan.route)
        attempt_timeout = None
        if route is not None:
            if route.timeout is not None:
                mine = time.monotonic() + route.timeout
                deadline = mine if deadline is None else min(deadline, mine)
            attempt_timeout = route.attempt_timeout
        return RouteExecution(
            plan,
            breakers=self.breakers,
            policy_for=lambda alias: self.policy(plan, alias),
            deadline=deadline,
            attempt_timeout=attempt_timeout,
            on_attempt=on_attempt,
            sleep=sleep,
        )

    def cascade_check(
        self,
        plan: RoutePlan,
        *,
        schema: dict[str, Any] | None = None,
        guardrail: GuardrailFn | None = None,
    ) -> CascadeCheck | None:
        """The ``accept`` for ``RouteExecution.run`` of a cascade plan (None otherwise):
        ``schema`` is the request's (``ChatCompletionRequest.json_schema``), ``guardrail``
        the gateway's output check."""
        if plan.strategy != "cascade":
            return None
        return CascadeCheck(
            plan.escalate_on,
            min_confidence=plan.min_confidence,
            schema=schema,
            guardrail=guardrail,
        )
