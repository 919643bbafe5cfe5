"""The response cache as the request path sees it: fingerprint, decide, look up, store.

A call that may use the cache goes::

    fp = cache.fingerprint(request, api_key_id=key_id, model_config=model)
    decision = cache.decide(fp, headers=request_headers, option=body.get("cache"))
    hit = await cache.lookup(fp, decision, embed=embed)
    ...                              # on a miss: route, call the engine, check the output
    await cache.store(fp, decision, CachedResponse.of(body, cost_usd=..., latency_ms=...))
    response.headers[RESPONSE_HEADER] = header_value(hit, decision)

Nothing here raises on a cache failure: a broken backend or embedder is logged
and the call goes on as a miss.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from powertrain.cache.backends import (
    CacheBackend,
    Clock,
    MemoryBackend,
    RedisBackend,
    RedisConnection,
)
from powertrain.cache.entry import CachedResponse
from powertrain.cache.keys import RequestFingerprint, TaskRef, fingerprint
from powertrain.cache.policy import CacheDecision, CachePolicy
from powertrain.cache.semantic import (
    EmbedFn,
    MemorySemanticIndex,
    RedisSemanticIndex,
    SemanticIndex,
    unit,
)
from powertrain.catalog import ModelConfig
from powertrain.schemas import ChatCompletionRequest

log = logging.getLogger("powertrain.cache")

RESPONSE_HEADER = "x-powertrain-cache"
HeaderValue = Literal["hit", "miss", "bypass"]
HitKind = Literal["exact", "semantic"]

# Answers that are not answers: never stored.
_UNCACHEABLE_FINISH = frozenset({"error", "cancelled"})


@dataclass(frozen=True)
class CacheHit:
    """A stored answer served for this call, and what serving it saved."""

    response: CachedResponse
    kind: HitKind
    similarity: float  # 1.0 for an exact hit
    age_s: float  # since the original answer was stored
    lookup_ms: float

    @property
    def saved_cost_usd(self) -> float:
        return self.response.cost_usd

    @property
    def saved_ms(self) -> float:
        """The original call's latency less the time this lookup took."""
        return max(0.0, self.response.latency_ms - self.lookup_ms)

    def trace_metadata(self) -> dict[str, Any]:
        """What a hit's trace records under ``metadata["cache"]``."""
        return {
            "status": "hit",
            "kind": self.kind,
            "similarity": round(self.similarity, 4),
            "saved_cost_usd": self.saved_cost_usd,
            "saved_ms": round(self.saved_ms, 2),
            "lookup_ms": round(self.lookup_ms, 2),
            "age_s": round(self.age_s, 1),
            "original_trace_id": self.response.trace_id,
        }


def header_value(hit: CacheHit | None, decision: CacheDecision | None = None) -> HeaderValue:
    """``x-powertrain-cache`` for a response: ``hit``, ``miss``, or ``bypass`` when the
    cache was neither read nor written (off, a sampled request, or the caller's wish)."""
    if hit is not None:
        return "hit"
    if decision is not None and decision.bypassed:
        return "bypass"
    return "miss"


class ResponseCache:
    """Exact and semantic response caching over one backend and one semantic index.

    ``policy`` is the default; a task with its own cache policy passes it per
    call. Size bounds (entries, bytes, vectors) belong to the backend and are
    taken from the default policy.
    """

    def __init__(
        self,
        backend: CacheBackend,
        index: SemanticIndex,
        policy: CachePolicy | None = None,
        *,
        clock: Clock = time.time,
    ):
        self.backend = backend
        self.index = index
        self.policy = policy or CachePolicy()
        self._clock = clock
        self._warned: set[str] = set()

    @classmethod
    def in_memory(
        cls, policy: CachePolicy | None = None, *, clock: Clock | None = None
    ) -> ResponseCache:
        """A cache in this process (one worker's alone). ``clock`` is for tests."""
        policy = policy or CachePolicy()
        return cls(
            MemoryBackend(
                max_entries=policy.max_entries,
                max_bytes=policy.max_bytes,
                clock=clock or time.monotonic,
            ),
            MemorySemanticIndex(max_vectors=policy.max_entries, clock=clock or time.monotonic),
            policy,
            clock=clock or time.time,
        )

    @classmethod
    def redis(
        cls,
        url: str,
        policy: CachePolicy | None = None,
        *,
        prefix: str = "powertrain:cache",
        timeout: float = 0.5,
        client: Any = None,
    ) -> ResponseCache:
        """A cache in Redis, shared by every worker that uses the same URL and prefix.

        Nothing connects until the first call; an unreachable Redis makes every
        lookup a miss. Create and use it within one event loop (the server's).
        """
        policy = policy or CachePolicy()
        connection = RedisConnection(url, prefix=prefix, timeout=timeout, client=client)
        return cls(
            RedisBackend(connection, max_entries=policy.max_entries),
            RedisSemanticIndex(connection),
            policy,
        )

    # -- per request ----------------------------------------------------------
    def fingerprint(
        self,
        request: ChatCompletionRequest,
        *,
        api_key_id: str | None,
        model: str | None = None,
        model_config: ModelConfig | None = None,
        task: TaskRef | None = None,
        policy: CachePolicy | None = None,
    ) -> RequestFingerprint:
        """The request's keys (see ``keys.fingerprint``), under this policy's tenancy."""
        policy = policy or self.policy
        return fingerprint(
            request,
            api_key_id=api_key_id,
            model=model,
            model_config=model_config,
            task=task,
            shared_across_keys=policy.shared_across_keys,
            semantic_model=policy.semantic_model,
        )

    def decide(
        self,
        fp: RequestFingerprint,
        *,
        headers: Mapping[str, str] | None = None,
        option: object = None,
        policy: CachePolicy | None = None,
        temperature: float | None = None,
    ) -> CacheDecision:
        """Read? write? match by meaning? Raises ``InvalidRequest`` for a bypass header or
        body option it does not understand. ``temperature`` overrides the request's when
        the caller knows better (a task whose variants set it)."""
        policy = policy or self.policy
        return policy.decide(
            temperature=fp.temperature if temperature is None else temperature,
            seed=fp.seed,
            headers=headers,
            option=option,
        )

    async def lookup(
        self,
        fp: RequestFingerprint,
        decision: CacheDecision,
        *,
        embed: EmbedFn | None = None,
        policy: CachePolicy | None = None,
    ) -> CacheHit | None:
        """The stored answer for this request (exact first, then by meaning), or ``None``."""
        if not decision.read:
            return None
        policy = policy or self.policy
        started = time.perf_counter()
        try:
            entry = await self._load(fp.exact_key, decision)
            if entry is not None:
                return self._hit(entry, "exact", 1.0, started)
            if not self._semantic_applies(fp, decision, policy, embed):
                return None
            assert embed is not None
            vector = await self._vector(fp, embed)
            if vector is None:
                return None
            matches = await self.index.search(
                fp.semantic_scope, vector, threshold=policy.semantic_threshold
            )
            for match in matches:
                entry = await self._load(match.key, decision)
                if entry is None:
                    await self.index.remove(fp.semantic_scope, match.key)
                    continue
                return self._hit(entry, "semantic", match.similarity, started)
        except Exception as exc:
            self._warn("lookup", exc)
        return None

    async def store(
        self,
        fp: RequestFingerprint,
        decision: CacheDecision,
        response: CachedResponse,
        *,
        embed: EmbedFn | None = None,
        policy: CachePolicy | None = None,
    ) -> bool:
        """Remember ``response`` for this request; whether it was stored.

        Call it only for an answer that passed the output checks. An answer
        over ``max_entry_bytes``, or one that ended in an error, is not kept.
        """
        if not decision.write:
            return False
        policy = policy or self.policy
        try:
            if _finish_reason(response) in _UNCACHEABLE_FINISH:
                return False
            data = response.to_bytes()
            if len(data) > policy.max_entry_bytes:
                return False
            if not await self.backend.set(fp.exact_key, data, policy.ttl):
                return False
        except Exception as exc:
            self._warn("store", exc)
            return False
        if self._semantic_applies(fp, decision, policy, embed):
            assert embed is not None
            try:
                vector = await self._vector(fp, embed)
                if vector is not None:
                    await self.index.add(
                        fp.semantic_scope,
                        fp.exact_key,
                        vector,
                        ttl=policy.ttl,
                        max_entries=policy.semantic_max_entries,
                    )
            except Exception as exc:  # the exact entry is stored; only matching by meaning fails
                self._warn("semantic store", exc)
        return True

    async def invalidate(self, fp: RequestFingerprint) -> None:
        """Forget this request's exact entry (its vector goes when a lookup next finds it)."""
        try:
            await self.backend.delete(fp.exact_key)
        except Exception as exc:
            self._warn("invalidate", exc)

    async def clear(self) -> None:
        """Forget every entry and vector."""
        await self.backend.clear()
        await self.index.clear()

    async def aclose(self) -> None:
        await self.backend.aclose()

    # -- internals --------------------------------------------------------------
    async def _load(self, key: str, decision: CacheDecision) -> CachedResponse | None:
        data = await self.backend.get(key)
        if data is None:
            return None
        entry = CachedResponse.from_bytes(data)
        if entry is None:
            return None
        if decision.max_age is not None and self._clock() - entry.created_at > decision.max_age:
            return None
        return entry

    def _hit(
        self, entry: CachedResponse, kind: HitKind, similarity: float, started: float
    ) -> CacheHit:
        return CacheHit(
            response=entry,
            kind=kind,
            similarity=similarity,
            age_s=max(0.0, self._clock() - entry.created_at),
            lookup_ms=(time.perf_counter() - started) * 1000,
        )

    @staticmethod
    def _semantic_applies(
        fp: RequestFingerprint,
        decision: CacheDecision,
        policy: CachePolicy,
        embed: EmbedFn | None,
    ) -> bool:
        return (
            decision.semantic
            and policy.semantic
            and embed is not None
            and fp.semantic_text is not None
            and len(fp.semantic_text) <= policy.semantic_max_chars
        )

    async def _vector(self, fp: RequestFingerprint, embed: EmbedFn) -> np.ndarray | None:
        """The unit embedding of the request's last user message, computed once per call."""
        if fp.vector is None:
            assert fp.semantic_text is not None
            rows = await embed([fp.semantic_text])
            fp.vector = unit(np.asarray(rows, dtype=np.float32)[0])
        return fp.vector

    def _warn(self, what: str, exc: Exception) -> None:
        # Once per kind of failure: a cache must not flood the log on every request.
        label = f"{what}:{type(exc).__name__}"
        if label in self._warned:
            log.debug("cache %s failed", what, exc_info=exc)
            return
        self._warned.add(label)
        log.warning("cache %s failed; serving as a miss (%s)", what, exc, exc_info=exc)


def _finish_reason(response: CachedResponse) -> str | None:
    choices = response.body.get("choices") or [{}]
    reason = choices[0].get("finish_reason") if isinstance(choices[0], dict) else None
    return reason if isinstance(reason, str) else None
