"""The request path: one call in, one answer (or stream) out, and exactly one trace.

Stages run in order — resolve the model (or hand ``task:<name>`` to the task
runner), apply its defaults, check limits and the context window, call the
engine under a deadline — and every outcome ends in ``Call.finish``, which
submits one trace to the writer. Later stages (guardrails, cache, routing)
slot in here; the server, the CLI and the Python API all go through it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Protocol

from powertrain.access import AccessGate, KeyService, Limiter, MemoryLimiter, RedisLimiter
from powertrain.cache.stage import CachedCall, CacheStage
from powertrain.calls import Call, CallContext
from powertrain.catalog import ModelConfig, ModelRef
from powertrain.catalog_sync import RegisteredModels
from powertrain.config import Config
from powertrain.engines.base import Engine, estimate_tokens
from powertrain.engines.registry import EnginePool
from powertrain.errors import (
    ContextWindowExceeded,
    InvalidRequest,
    ModelNotFound,
    PowertrainError,
    UpstreamTimeout,
)
from powertrain.guard.stage import GuardStage
from powertrain.rag.ingest import Ingester
from powertrain.rag.library import Collections
from powertrain.rag.search import Searcher
from powertrain.redact import SecretScrubber
from powertrain.routing import RequestInfo, Router, single_attempt_catalog
from powertrain.routing.semantic import EmbedFn
from powertrain.routing.stage import CallRoute
from powertrain.schemas import ChatChunk, ChatCompletionRequest, ChatResult, EmbeddingResult
from powertrain.schemas.embeddings import EmbeddingRequest
from powertrain.schemas.trace import Trace
from powertrain.store import CollectionStore, Database, KeyStore, TaskStore, TraceStore
from powertrain.store.finetune import FineTuneStore
from powertrain.tasks.registry import TaskRegistry
from powertrain.tasks.runner import TaskRunner
from powertrain.tracing import TraceWriter

__all__ = ["Call", "CallContext", "ChatCall", "Gateway"]

_ROUTE_EMBED_TIMEOUT = 5.0  # seconds for a semantic route to embed the query

# Request fields a catalog entry's ``params`` may default.
_DEFAULTABLE = (
    "temperature",
    "top_p",
    "max_tokens",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
)


class ChatCall(Protocol):
    """What ``Gateway.prepare`` hands back: a model call, or a task call shaped like one."""

    @property
    def trace_id(self) -> str: ...

    @property
    def completion_id(self) -> str: ...

    @property
    def cache_status(self) -> str: ...  # hit | miss | bypass

    async def result(self) -> ChatResult: ...

    def stream(self) -> AsyncIterator[ChatChunk]: ...


class Gateway:
    """Owns the catalog's engines, the store and the trace writer."""

    def __init__(self, config: Config, *, database: Database | None = None):
        self.config = config
        settings = config.settings
        self._owns_database = database is None
        self.database = database or Database(settings.resolved_database_url)
        self.trace_store = TraceStore(self.database)
        self.scrubber = SecretScrubber(config.secrets())
        self.traces = TraceWriter(
            self.trace_store,
            spill_path=settings.home / "traces-spill.jsonl",
            batch_size=settings.trace_batch_size,
            flush_interval=settings.trace_flush_interval,
            buffer_limit=settings.trace_buffer_limit,
            scrubber=self.scrubber,
        )
        self.engines = EnginePool(config.catalog)
        self.registered = RegisteredModels(config.catalog, FineTuneStore(self.database))
        self.task_store = TaskStore(self.database)
        self.tasks = TaskRunner(
            self,
            TaskRegistry(
                self.task_store, config.tasks, refresh_interval=settings.task_refresh_interval
            ),
        )
        self.collections = Collections(
            CollectionStore(self.database), self.engines, config.catalog, settings.home
        )
        self.ingester = Ingester(self.collections)
        self.searcher = Searcher(self.collections)
        self.keys = KeyService(KeyStore(self.database))
        limiter: Limiter = (
            RedisLimiter(settings.redis_url) if settings.redis_url else MemoryLimiter()
        )
        self.access = AccessGate(self.keys, limiter)
        self.guard = GuardStage(config.guardrails)
        self.router = Router(config.routes, config.catalog, embedder=self._embedder_for)
        # Engines a route drives make one attempt each: the router's retries replace
        # theirs, so they do not multiply and each one is traced.
        self.route_engines = EnginePool(single_attempt_catalog(config.catalog))
        self.cache = CacheStage.configured(config.cache, settings.redis_url, self.engines)
        self._started = False

    async def start(self) -> None:
        if not self._started:
            # Tasks from powertrain.toml reach the store before the first call can name one.
            await asyncio.to_thread(self.tasks.registry.sync_config)
            await asyncio.to_thread(self.registered.load)
            await self.traces.start()
            self._started = True

    async def aclose(self) -> None:
        await self.engines.aclose()
        await self.route_engines.aclose()
        await self.access.aclose()  # every finished call's spend is recorded
        await self.cache.aclose()
        await self.traces.aclose()
        if self._owns_database:
            # Close pooled connections now (after the last trace is written), not at exit.
            self.database.dispose()
        self._started = False

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- chat ---------------------------------------------------------------
    async def prepare(
        self, request: ChatCompletionRequest, ctx: CallContext | None = None
    ) -> ChatCall:
        """Resolve and check a request; any refusal here is traced and raised."""
        ctx = ctx or CallContext()
        if request.model.startswith("task:") and request.model != "task:":
            return await self.tasks.prepare_chat(ModelRef.parse(request.model).name, request, ctx)
        raw = (
            ctx.raw_request
            if ctx.raw_request is not None
            else request.model_dump(exclude_none=True)
        )
        call = Call(
            self,
            Trace(
                model=request.model,
                request=raw,
                stream=request.stream,
                api_key_id=ctx.api_key_id,
                metadata={"source": ctx.source},
            ),
        )
        try:
            ref = ModelRef.parse(request.model)
            if request.task_fields:
                raise InvalidRequest(
                    f'{request.task_fields[0]!r} is only for task models (model="task:<name>")',
                    param=request.task_fields[0],
                )
            if ctx.key is not None:
                self.keys.check_model(ctx.key, ref.name)
                await self.access.count_request(ctx.key)
            if ref.name in self.router:
                await self._route(call, request, ctx, ref.name)
                return call
            await self.attach(call, ref.name)
            assert call.model is not None and call.engine is not None
            call.request = self.with_defaults(request, call.model)
            self.check(call.request, call.engine)
            self.guard.check_request(call)  # before the cache: a hit is checked input too
            hit = await self.cache.lookup(call, ctx)
            if hit is not None:
                return CachedCall(call, hit)  # nothing spent, so no budget held
            await self.admit(call, ctx)
        except BaseException as exc:
            call.finish(error=exc)
            if isinstance(exc, PowertrainError):
                exc.trace_id = call.trace_id
            raise
        return call

    async def chat(
        self,
        request: ChatCompletionRequest,
        ctx: CallContext | None = None,
    ) -> tuple[ChatCall, ChatResult]:
        call = await self.prepare(request, ctx)
        return call, await call.result()

    async def attach(self, call: Call, alias: str) -> None:
        """Bind a call to a catalog model and its (started) engine."""
        call.model = await self.model(alias)
        call.trace.engine = call.model.engine
        call.engine = self.engines.started(alias) or await self.engines.get(alias)

    async def model(self, alias: str) -> ModelConfig:
        """The catalog entry for ``alias``, looking for newly registered models on a miss."""
        try:
            return self.config.catalog.get(alias)
        except ModelNotFound:
            if not await self.registered.refresh():
                raise
            return self.config.catalog.get(alias)

    async def _route(
        self, call: Call, request: ChatCompletionRequest, ctx: CallContext, name: str
    ) -> None:
        """Plan a call to route ``name``; its attempts run when the call does."""
        call.request = request
        self.guard.check_request(call)
        checked = call.request  # each attempt applies its own model's defaults to it
        assert checked is not None
        await self.plan_route(call, name, ctx.api_key_id)
        if ctx.key is not None:
            # A keyed call holds budget as if every candidate were tried on the priciest.
            await self.attach(call, self.priciest(name))
            assert call.model is not None
            call.request = self.with_defaults(checked, call.model)
            assert call.route is not None
            await self.admit(call, ctx, attempts=max(1, len(call.route.plan.candidates)))
            call.request = checked

    async def plan_route(self, call: Call, name: str, api_key_id: str | None) -> None:
        """Give ``call`` (its request made) the plan of route ``name``."""
        assert call.request is not None
        info = RequestInfo.of(call.request, api_key_id=api_key_id)
        plan = await self.router.plan(name, info)
        call.route = CallRoute(self, self.router, self.route_engines, call, plan)

    def priciest(self, route: str) -> str:
        """The route's most expensive model: budgets are held at its prices."""
        config = self.router.config.get(route)
        assert config is not None
        models = [self.config.catalog.get(alias) for alias in config.candidates]
        return max(models, key=lambda m: m.price_input + m.price_output).alias

    def _embedder_for(self, alias: str) -> EmbedFn:
        """Embeddings for a semantic route's examples and queries, bounded in time."""

        async def embed(texts: list[str]) -> list[list[float]]:
            engine = self.engines.started(alias) or await self.engines.get(alias)
            result = await engine.embed(texts, deadline=time.monotonic() + _ROUTE_EMBED_TIMEOUT)
            return result.vectors

        return embed

    async def admit(self, call: Call, ctx: CallContext, *, attempts: int = 1) -> None:
        """Tokens per minute and budget of a keyed call, once its model and request are final
        (``AccessGate.count_request`` came first, before any work was spent on it)."""
        if ctx.key is None:
            return
        engine, request, model = call.engine, call.request, call.model
        assert engine is not None and request is not None and model is not None
        call.admission = await self.access.admit(
            ctx.key,
            model,
            prompt_tokens=lambda: engine.count_tokens(request),
            max_output_tokens=request.max_output_tokens,
            window=engine.context_window,
            attempts=attempts,
        )

    def with_defaults(
        self, request: ChatCompletionRequest, model: ModelConfig
    ) -> ChatCompletionRequest:
        if not model.params:
            return request
        updates = {
            k: model.params[k]
            for k in _DEFAULTABLE
            if k in model.params and getattr(request, k) is None
        }
        return request.model_copy(update=updates) if updates else request

    def check(self, request: ChatCompletionRequest, engine: Engine) -> None:
        """Limits, engine capabilities and the context window, before any work is spent."""
        limit = self.config.settings.max_messages
        if len(request.messages) > limit:
            raise InvalidRequest(
                f"{len(request.messages)} messages is over the limit of {limit} "
                "(setting max_messages)",
                param="messages",
            )
        engine.check_supported(request)
        window = engine.context_window
        if not window:
            return
        prompt = engine.count_tokens(request)
        alias = engine.model.alias
        if prompt > window:
            raise ContextWindowExceeded(
                f"the prompt is {prompt} tokens but model {alias!r} has a context window of "
                f"{window} tokens; shorten the messages or choose a model with a larger window",
                param="messages",
            )
        wanted = request.max_output_tokens
        if wanted is not None and prompt + wanted > window:
            raise ContextWindowExceeded(
                f"the prompt ({prompt} tokens) plus max_tokens ({wanted}) is {prompt + wanted} "
                f"tokens, over model {alias!r}'s context window of {window} tokens; "
                "lower max_tokens or shorten the messages",
                param="max_tokens",
            )

    # -- embeddings -----------------------------------------------------------
    async def embed(
        self,
        request: EmbeddingRequest,
        ctx: CallContext | None = None,
    ) -> tuple[Trace, EmbeddingResult]:
        ctx = ctx or CallContext()
        call = Call(
            self,
            Trace(
                model=request.model,
                request=ctx.raw_request or request.model_dump(exclude_none=True),
                api_key_id=ctx.api_key_id,
                metadata={"source": ctx.source, "kind": "embeddings"},
            ),
        )
        try:
            if ctx.key is not None:
                self.keys.check_model(ctx.key, request.model)
                await self.access.count_request(ctx.key)
            call.model = self.config.catalog.get(request.model)
            call.trace.engine = call.model.engine
            call.engine = await self.engines.get(request.model)
            if ctx.key is not None:
                inputs = request.inputs
                call.admission = await self.access.admit(
                    ctx.key,
                    call.model,
                    prompt_tokens=lambda: sum(estimate_tokens(text) for text in inputs),
                    max_output_tokens=0,
                    window=None,
                )
            timeout = self.config.settings.request_timeout
            async with asyncio.timeout(timeout):
                result = await call.engine.embed(
                    request.inputs,
                    deadline=time.monotonic() + timeout,
                    dimensions=request.dimensions,
                )
        except TimeoutError:
            error = UpstreamTimeout(
                f"model {request.model!r} did not embed within the {timeout:g} s deadline "
                "(setting request_timeout)"
            )
            call.finish(error=error)
            raise error from None
        except BaseException as exc:
            call.finish(error=exc)
            raise
        call.finish(output=f"{len(result.vectors)} vectors", usage=result.usage)
        return call.trace, result
