"""Routing as a stage of the request path: a call to a route name runs its plan.

``Gateway.prepare`` plans a call whose model is a route (``[routes.<name>]``)
and hands it a ``CallRoute``. The call's ``complete`` and ``stream`` then go
through the route's execution instead of one engine: each attempt binds a
candidate model (its catalog defaults, the context-window check) and makes one
engine call with the engine's own retries off, so the router's retries replace
them and every attempt lands in the trace. The trace's cost is the sum of every
attempt's, rejected cascade steps included.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, cast

from powertrain.engines.base import Engine
from powertrain.routing.execution import RouteExecution
from powertrain.routing.plan import Candidate, RoutePlan
from powertrain.routing.router import Router
from powertrain.schemas import ChatChunk, ChatCompletionRequest, ChatResult
from powertrain.schemas.trace import Attempt

if TYPE_CHECKING:
    from powertrain.calls import Call
    from powertrain.engines.registry import EnginePool
    from powertrain.gateway import Gateway


class CallRoute:
    """One call's way through a route plan, bound to the gateway's engines."""

    def __init__(
        self, gateway: Gateway, router: Router, engines: EnginePool, call: Call, plan: RoutePlan
    ):
        self.gateway = gateway
        self.router = router
        self.engines = engines
        self.call = call
        self.plan = plan
        self.execution: RouteExecution[Any] = router.execute(
            plan, deadline=call.deadline, on_attempt=self._record
        )

    def _record(self, attempt: dict[str, Any]) -> None:
        self.call.trace.attempts.append(cast(Attempt, attempt))

    @property
    def cost_usd(self) -> float:
        return self.execution.cost_usd

    async def _bind(
        self, candidate: Candidate, request: ChatCompletionRequest
    ) -> tuple[Engine, ChatCompletionRequest]:
        model = self.gateway.config.catalog.get(candidate.model)
        engine = self.engines.started(model.alias) or await self.engines.get(model.alias)
        bound = self.gateway.with_defaults(request, model)
        # Raises ContextWindowExceeded, which moves the call to a larger window.
        self.gateway.check(bound, engine)
        call = self.call
        call.model, call.engine = model, engine
        call.trace.engine = model.engine
        return engine, bound

    async def run(self, request: ChatCompletionRequest) -> ChatResult:
        async def attempt(candidate: Candidate) -> ChatResult:
            engine, bound = await self._bind(candidate, request)
            return await engine.chat(bound, deadline=self.execution.deadline)

        guard = self.call.guard
        accept = self.router.cascade_check(
            self.plan,
            schema=request.json_schema,
            guardrail=guard.objection if guard is not None else None,
        )
        try:
            result: ChatResult = await self.execution.run(attempt, accept=accept)
        finally:
            self._describe()
        return result

    async def stream(self, request: ChatCompletionRequest) -> AsyncIterator[ChatChunk]:
        async def open_stream(candidate: Candidate) -> AsyncIterator[ChatChunk]:
            engine, bound = await self._bind(candidate, request)
            deadline = self.execution.deadline
            async with contextlib.aclosing(engine.stream(bound, deadline=deadline)) as chunks:  # type: ignore[type-var]
                async for chunk in chunks:
                    yield chunk

        chunks = self.execution.stream(open_stream)
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            await chunks.aclose()
            self._describe()

    def _describe(self) -> None:
        self.call.trace.metadata["route"] = self.execution.describe()
