"""Matching by meaning: unit vectors per scope, and the nearest entry above a threshold.

A scope (see ``keys.fingerprint``) holds everything about a request except the
last user message: model, task and version, parameters, tenant, the earlier
messages including the system prompt, and the embedding model. Vectors are
only ever compared within one scope, so a match can differ from the request in
that one message and nowhere else.

Search is exact (a matrix product over the scope's vectors), which is right for
the hundreds to few thousands of vectors a scope holds. Measured on 2 cores with
384-dimensional vectors: in process, 0.08 ms per lookup at 1,000 vectors and
0.3 ms at 5,000; in Redis, which sends every vector of the scope to the worker,
9 ms at 1,000 and 86 ms at 5,000. Keep ``semantic_max_entries`` near its
default of 1,000 with Redis.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from powertrain.cache.backends import Clock, RedisConnection

# The embedding function the gateway injects (texts in, one row per text out);
# the cache never loads a model itself.
EmbedFn = Callable[[list[str]], Awaitable[Any]]


class _Embeds(Protocol):
    async def embed(self, inputs: list[str], *, deadline: float | None = None) -> Any: ...


def engine_embedder(engine: _Embeds, *, timeout: float | None = None) -> EmbedFn:
    """An ``EmbedFn`` over an embedding engine (``minilm`` by default), each call bounded
    by ``timeout`` seconds so a slow embedder cannot hold a request for long."""

    async def embed(texts: list[str]) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        result = await engine.embed(texts, deadline=deadline)
        return result.vectors

    return embed


@dataclass(frozen=True)
class SemanticMatch:
    key: str  # the exact key of the entry whose request was this close
    similarity: float


class SemanticIndex(Protocol):
    async def add(
        self, scope: str, key: str, vector: np.ndarray, *, ttl: float, max_entries: int
    ) -> None: ...

    async def search(
        self, scope: str, vector: np.ndarray, *, threshold: float, limit: int = 3
    ) -> list[SemanticMatch]: ...

    async def remove(self, scope: str, key: str) -> None: ...

    async def clear(self) -> None: ...


def unit(vector: Any) -> np.ndarray | None:
    """``vector`` as float32 of length 1, or ``None`` when it has no direction."""
    array = np.asarray(vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(array))
    if not np.isfinite(norm) or norm == 0.0:
        return None
    return array / norm


def best_matches(
    keys: Sequence[str], matrix: np.ndarray, query: np.ndarray, threshold: float, limit: int
) -> list[SemanticMatch]:
    """The ``limit`` rows most similar to ``query`` that reach ``threshold``, best first."""
    if not keys or matrix.shape[1] != query.shape[0]:
        return []
    scores = matrix @ query
    above = np.flatnonzero(scores >= threshold)
    if above.size == 0:
        return []
    order = above[np.argsort(-scores[above], kind="stable")][:limit]
    return [SemanticMatch(keys[i], float(scores[i])) for i in order]


@dataclass
class _Scope:
    rows: OrderedDict[str, tuple[np.ndarray, float]] = field(default_factory=OrderedDict)
    _stacked: tuple[list[str], np.ndarray] | None = None

    def stacked(self) -> tuple[list[str], np.ndarray]:
        if self._stacked is None:
            keys = list(self.rows)
            self._stacked = (keys, np.stack([self.rows[k][0] for k in keys]))
        return self._stacked

    def changed(self) -> None:
        self._stacked = None


class MemorySemanticIndex:
    """Vectors in this process: per scope at most ``max_entries`` (oldest go first), and
    at most ``max_vectors`` in all (the least recently searched scope gives one up)."""

    def __init__(self, *, max_vectors: int, clock: Clock = time.monotonic):
        self.max_vectors = max_vectors
        self._clock = clock
        self._scopes: OrderedDict[str, _Scope] = OrderedDict()
        self._count = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._count

    async def add(
        self, scope: str, key: str, vector: np.ndarray, *, ttl: float, max_entries: int
    ) -> None:
        with self._lock:
            bucket = self._scopes.get(scope)
            if bucket is None:
                bucket = self._scopes[scope] = _Scope()
            self._scopes.move_to_end(scope)
            if bucket.rows and next(iter(bucket.rows.values()))[0].shape != vector.shape:
                self._count -= len(bucket.rows)  # another embedder's vectors: start over
                bucket.rows.clear()
            if key in bucket.rows:
                del bucket.rows[key]
                self._count -= 1
            bucket.rows[key] = (vector, self._clock() + ttl)
            self._count += 1
            while len(bucket.rows) > max_entries:
                bucket.rows.popitem(last=False)
                self._count -= 1
            bucket.changed()
            while self._count > self.max_vectors:
                self._evict_one()

    async def search(
        self, scope: str, vector: np.ndarray, *, threshold: float, limit: int = 3
    ) -> list[SemanticMatch]:
        with self._lock:
            bucket = self._scopes.get(scope)
            if bucket is None:
                return []
            self._scopes.move_to_end(scope)
            self._expire(scope, bucket)
            if not bucket.rows:
                return []
            keys, matrix = bucket.stacked()
        return best_matches(keys, matrix, vector, threshold, limit)

    async def remove(self, scope: str, key: str) -> None:
        with self._lock:
            bucket = self._scopes.get(scope)
            if bucket is not None and bucket.rows.pop(key, None) is not None:
                self._count -= 1
                bucket.changed()
                if not bucket.rows:
                    del self._scopes[scope]

    async def clear(self) -> None:
        with self._lock:
            self._scopes.clear()
            self._count = 0

    def _expire(self, scope: str, bucket: _Scope) -> None:
        now = self._clock()
        expired = [k for k, (_, expires) in bucket.rows.items() if expires <= now]
        for k in expired:
            del bucket.rows[k]
        if expired:
            self._count -= len(expired)
            bucket.changed()

    def _evict_one(self) -> None:
        scope, bucket = next(iter(self._scopes.items()))
        if bucket.rows:
            bucket.rows.popitem(last=False)
            self._count -= 1
            bucket.changed()
        if not bucket.rows:
            del self._scopes[scope]


# HSET the vector, move its key to the end of the scope's order list, trim both
# to max entries (oldest first), and keep the scope alive for one TTL after its
# newest vector. The list makes LREM O(n): fine for a few thousand per scope.
_ADD_SCRIPT = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('LREM', KEYS[2], 0, ARGV[1])
redis.call('RPUSH', KEYS[2], ARGV[1])
local over = redis.call('LLEN', KEYS[2]) - tonumber(ARGV[4])
for _ = 1, over do
  local old = redis.call('LPOP', KEYS[2])
  redis.call('HDEL', KEYS[1], old)
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return over
"""


class RedisSemanticIndex:
    """Vectors in Redis (float32 bytes in a hash per scope, plus an order list), searched
    here with numpy. A vector whose entry has expired is dropped when a lookup finds it."""

    def __init__(self, connection: RedisConnection):
        self.connection = connection

    def _keys(self, scope: str) -> tuple[str, str]:
        return self.connection.key("s", scope, "v"), self.connection.key("s", scope, "o")

    async def add(
        self, scope: str, key: str, vector: np.ndarray, *, ttl: float, max_entries: int
    ) -> None:
        vectors, order = self._keys(scope)
        script = self.connection.script(_ADD_SCRIPT)
        data = np.asarray(vector, dtype="<f4").tobytes()
        ttl_ms = max(1, round(ttl * 1000))
        await self.connection.run(
            "semantic add",
            lambda: script(keys=[vectors, order], args=[key, data, ttl_ms, max_entries]),
            None,
        )

    async def search(
        self, scope: str, vector: np.ndarray, *, threshold: float, limit: int = 3
    ) -> list[SemanticMatch]:
        vectors, _ = self._keys(scope)
        client = self.connection.client
        rows: dict[bytes, bytes] = await self.connection.run(
            "semantic search", lambda: client.hgetall(vectors), {}
        )
        width = vector.shape[0] * 4
        keys = [k.decode() for k, v in rows.items() if len(v) == width]
        if not keys:
            return []
        matrix = np.frombuffer(
            b"".join(v for v in rows.values() if len(v) == width), dtype="<f4"
        ).reshape(len(keys), -1)
        return best_matches(keys, matrix, vector, threshold, limit)

    async def remove(self, scope: str, key: str) -> None:
        vectors, order = self._keys(scope)

        async def drop() -> None:
            async with self.connection.client.pipeline(transaction=True) as pipe:
                pipe.hdel(vectors, key)
                pipe.lrem(order, 0, key)
                await pipe.execute()

        await self.connection.run("semantic remove", drop, None)

    async def clear(self) -> None:
        await self.connection.clear()
