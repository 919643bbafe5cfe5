"""The cache as a stage of the request path: look up before the engine, store after it.

``CacheStage.lookup`` runs once a call's model and final request are known
(after limits and the context check, before a budget is held). A hit becomes a
``CachedCall``: its trace is finished at once, marked with what the hit saved,
and the stored answer is replayed (as a stream when one was asked for). A miss
leaves a ``CacheSlot`` on the call, which stores the answer when the call ends
well; an error, a cut-off answer or one the output checks rejected is never
stored.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError

from powertrain.cache.cache import CacheHit, ResponseCache, header_value
from powertrain.cache.entry import CachedResponse
from powertrain.cache.keys import RequestFingerprint, TaskRef
from powertrain.cache.policy import CacheDecision, CachePolicy
from powertrain.cache.semantic import EmbedFn, engine_embedder
from powertrain.calls import CallView
from powertrain.errors import ConfigError
from powertrain.schemas import ChatChunk, ChatResult, Usage

if TYPE_CHECKING:
    from powertrain.calls import Call, CallContext
    from powertrain.engines.registry import EnginePool

log = logging.getLogger("powertrain.cache")
SEMANTIC_EMBED_TIMEOUT = 2.0  # seconds; a slow embedder makes a miss, not a slow request


@dataclass(frozen=True)
class CacheConfig:
    """``[cache]`` in powertrain.toml: the policy's fields plus where entries live."""

    backend: Literal["memory", "redis"] = "memory"
    policy: CachePolicy = field(default_factory=CachePolicy)

    @classmethod
    def parse(cls, table: Any) -> CacheConfig:
        if not isinstance(table, dict):
            raise ConfigError("[cache] must be a table")
        values = dict(table)
        backend = values.pop("backend", "memory")
        if backend not in ("memory", "redis"):
            raise ConfigError(f"[cache] backend must be 'memory' or 'redis', not {backend!r}")
        try:
            policy = CachePolicy(**values)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"[cache] {where}: {first['msg']}") from None
        return cls(backend=backend, policy=policy)


@dataclass
class CacheSlot:
    """What a missed call needs to store its answer."""

    stage: CacheStage
    fingerprint: RequestFingerprint
    decision: CacheDecision

    async def store(self, call: Call, result: ChatResult) -> None:
        if result.tool_calls or not result.content:
            return  # a replayed stream carries text only
        body = result.to_openai(completion_id=call.completion_id, model=call.trace.model)
        entry = CachedResponse.of(
            body,
            cost_usd=call.trace.cost_usd or 0.0,
            latency_ms=call.trace.latency_ms or 0.0,
            usage=result.usage,
            trace_id=call.trace_id,
        )
        await self.stage.cache.store(
            self.fingerprint, self.decision, entry, embed=await self.stage.embedder(self.decision)
        )


class CacheStage:
    def __init__(self, cache: ResponseCache, engines: EnginePool):
        self.cache = cache
        self.engines = engines

    @classmethod
    def configured(
        cls, config: CacheConfig, redis_url: str | None, engines: EnginePool
    ) -> CacheStage:
        if config.backend == "redis":
            if not redis_url:
                raise ConfigError(
                    "[cache] backend = 'redis' needs the redis_url setting "
                    "(POWERTRAIN_REDIS_URL=redis://host:6379/0)"
                )
            return cls(ResponseCache.redis(redis_url, config.policy), engines)
        return cls(ResponseCache.in_memory(config.policy), engines)

    async def aclose(self) -> None:
        await self.cache.aclose()

    @property
    def policy(self) -> CachePolicy:
        return self.cache.policy

    async def embedder(self, decision: CacheDecision) -> EmbedFn | None:
        if not decision.semantic:
            return None
        alias = self.policy.semantic_model
        engine = self.engines.started(alias) or await self.engines.get(alias)
        return engine_embedder(engine, timeout=SEMANTIC_EMBED_TIMEOUT)

    async def lookup(
        self, call: Call, ctx: CallContext, *, task: TaskRef | None = None
    ) -> CacheHit | None:
        """The stored answer for ``call``'s request, or None (then the call remembers how
        to store its own). ``task`` puts the task's name, version and variant in the key.
        Raises ``InvalidRequest`` for a bypass value it cannot read."""
        assert call.request is not None and call.model is not None
        option = (ctx.raw_request or {}).get("cache")
        # Decided from the request itself, before paying for its canonical form and
        # hash: most traffic samples (no temperature set) and is never cached.
        decision = self.policy.decide(
            temperature=call.request.temperature,
            seed=call.request.seed,
            headers=ctx.headers,
            option=option,
        )
        if not decision.read and not decision.write:
            call.cache_status = header_value(None, decision)
            call.trace.metadata["cache"] = {"status": call.cache_status}
            return None
        fingerprint = self.cache.fingerprint(
            call.request,
            api_key_id=ctx.api_key_id,
            model=call.model.alias,
            model_config=call.model,
            task=task,
        )
        hit = await self.cache.lookup(fingerprint, decision, embed=await self.embedder(decision))
        call.cache_status = header_value(hit, decision)
        call.trace.metadata["cache"] = (
            hit.trace_metadata() if hit is not None else {"status": call.cache_status}
        )
        if hit is None and decision.write:
            call.cache_slot = CacheSlot(self, fingerprint, decision)
        return hit


class CachedCall(CallView):
    """A call answered from the cache: traced as a hit, replayed without an engine."""

    def __init__(self, call: Call, hit: CacheHit):
        self.call = call
        self.hit = hit
        self.answer = hit.response.to_result()
        # Nothing was spent: the trace carries zero tokens and cost, and the hit's
        # metadata says what the original call cost and how long it took.
        call.finish(
            output=self.answer.content,
            finish_reason=self.answer.finish_reason,
            usage=Usage(),
            cost_usd=0.0,
        )

    async def result(self) -> ChatResult:
        return self.answer

    async def stream(self) -> AsyncIterator[ChatChunk]:
        yield ChatChunk(delta=self.answer.content)
        yield ChatChunk(finish_reason=self.answer.finish_reason, usage=self.answer.usage)


def cache_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """The request headers a cache decision reads, decoded (the rest never reach it)."""
    wanted = (b"cache-control", b"x-powertrain-cache")
    return {k.decode(): v.decode("latin-1") for k, v in raw if k.lower() in wanted}
