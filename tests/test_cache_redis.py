"""The Redis cache: one store for every worker, bounded, and never a reason for a request to fail."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from powertrain.cache import (
    CachedResponse,
    CachePolicy,
    RedisBackend,
    RedisConnection,
    RedisSemanticIndex,
    ResponseCache,
)
from powertrain.schemas import ChatCompletionRequest

REDIS_ENV = "POWERTRAIN_TEST_REDIS_URL"


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get(REDIS_ENV)
    if not url:
        pytest.skip(f"{REDIS_ENV} is not set")
    return url


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[Redis]:
    """A plain client, to look at what the cache wrote."""
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def workers(redis_url: str) -> AsyncIterator[Callable[..., ResponseCache]]:
    """Makes caches (each its own client, as separate worker processes have) under one
    prefix unique to this test, and deletes everything under it afterwards."""
    prefix = f"pt-test:{uuid.uuid4().hex[:12]}"
    made: list[ResponseCache] = []

    def make(policy: CachePolicy | None = None, **kwargs: Any) -> ResponseCache:
        kwargs.setdefault("prefix", prefix)
        cache = ResponseCache.redis(redis_url, policy, **kwargs)
        made.append(cache)
        return cache

    yield make
    if made:
        await made[0].clear()
    for cache in made:
        await cache.aclose()


def request(text: str = "What is the capital of France?", **fields: Any) -> ChatCompletionRequest:
    body: dict[str, Any] = {
        "model": "gpt",
        "messages": [{"role": "user", "content": text}],
        "temperature": 0,
    }
    body.update(fields)
    return ChatCompletionRequest.model_validate(body)


def answer(content: str = "Paris.") -> CachedResponse:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
    }
    return CachedResponse.of(body, cost_usd=0.001, latency_ms=400.0)


def connection_of(cache: ResponseCache) -> RedisConnection:
    assert isinstance(cache.backend, RedisBackend)
    return cache.backend.connection


async def test_two_workers_share_entries(workers: Callable[..., ResponseCache]) -> None:
    one, two = workers(), workers()
    fp = one.fingerprint(request(), api_key_id="k")
    assert await one.lookup(fp, one.decide(fp)) is None
    original = answer()
    assert await one.store(fp, one.decide(fp), original)

    fp2 = two.fingerprint(request(), api_key_id="k")
    hit = await two.lookup(fp2, two.decide(fp2))
    assert hit is not None and hit.kind == "exact"
    assert hit.response == original

    other_tenant = two.fingerprint(request(), api_key_id="someone-else")
    assert await two.lookup(other_tenant, two.decide(other_tenant)) is None

    await two.invalidate(fp2)
    assert await one.lookup(fp, one.decide(fp)) is None


async def test_entries_carry_the_policy_ttl(
    workers: Callable[..., ResponseCache], raw: Redis
) -> None:
    cache = workers(CachePolicy(ttl=0.3))
    fp = cache.fingerprint(request(), api_key_id="k")
    await cache.store(fp, cache.decide(fp), answer())
    pttl = await raw.pttl(connection_of(cache).key("e", fp.exact_key))
    assert 0 < pttl <= 300
    assert await cache.lookup(fp, cache.decide(fp)) is not None
    await asyncio.sleep(0.4)
    assert await cache.lookup(fp, cache.decide(fp)) is None


async def test_entries_are_bounded_per_prefix(
    workers: Callable[..., ResponseCache], raw: Redis
) -> None:
    one = workers(CachePolicy(max_entries=3))
    two = workers(CachePolicy(max_entries=3))
    fps = [one.fingerprint(request(f"question {i}"), api_key_id="k") for i in range(5)]
    for i, fp in enumerate(fps):
        cache = one if i % 2 else two  # both workers write into the same bounded namespace
        assert await cache.store(fp, cache.decide(fp), answer(f"answer {i}"))
    present = [await one.lookup(fp, one.decide(fp)) is not None for fp in fps]
    assert present == [False, False, True, True, True]
    assert await raw.zcard(connection_of(one).key("index")) == 3


async def test_semantic_matches_are_shared_and_bounded(
    workers: Callable[..., ResponseCache], raw: Redis
) -> None:
    vectors = {
        "What is the capital of France?": [1.0, 0.0, 0.0],
        "Which city is the capital of France?": [0.98, 0.199, 0.0],
        "What is the capital of Germany?": [0.8, 0.6, 0.0],
    }

    async def embed(texts: list[str]) -> np.ndarray:
        return np.array([vectors[t] for t in texts], dtype=np.float32)

    policy = CachePolicy(semantic=True, semantic_max_entries=2)
    one, two = workers(policy), workers(policy)
    fp = one.fingerprint(request("What is the capital of France?"), api_key_id="k")
    await one.store(fp, one.decide(fp), answer(), embed=embed)

    close = two.fingerprint(request("Which city is the capital of France?"), api_key_id="k")
    hit = await two.lookup(close, two.decide(close), embed=embed)
    assert hit is not None and hit.kind == "semantic"
    assert hit.similarity == pytest.approx(0.98, abs=1e-3)
    far = two.fingerprint(request("What is the capital of Germany?"), api_key_id="k")
    assert await two.lookup(far, two.decide(far), embed=embed) is None

    # Per scope, the oldest vectors go beyond semantic_max_entries.
    for fp_more in (close, far):
        await two.store(fp_more, two.decide(fp_more), answer(), embed=embed)
    index = one.index
    assert isinstance(index, RedisSemanticIndex)
    vectors_key, order_key = index._keys(fp.semantic_scope)
    assert await raw.hlen(vectors_key) == 2
    assert await raw.llen(order_key) == 2
    assert fp.exact_key.encode() not in await raw.hkeys(vectors_key)


async def test_a_vector_whose_entry_is_gone_is_dropped(
    workers: Callable[..., ResponseCache], raw: Redis
) -> None:
    async def embed(texts: list[str]) -> np.ndarray:
        return np.ones((len(texts), 4), dtype=np.float32)

    cache = workers(CachePolicy(semantic=True))
    fp = cache.fingerprint(request("first"), api_key_id="k")
    await cache.store(fp, cache.decide(fp), answer(), embed=embed)
    await cache.backend.delete(fp.exact_key)
    other = cache.fingerprint(request("second"), api_key_id="k")
    assert await cache.lookup(other, cache.decide(other), embed=embed) is None
    assert isinstance(cache.index, RedisSemanticIndex)
    assert await raw.hlen(cache.index._keys(fp.semantic_scope)[0]) == 0


async def test_clear_deletes_only_its_own_prefix(
    workers: Callable[..., ResponseCache], raw: Redis
) -> None:
    mine = workers()
    neighbour = workers(prefix=f"pt-test-other:{uuid.uuid4().hex[:12]}")
    fp = mine.fingerprint(request(), api_key_id="k")
    await mine.store(fp, mine.decide(fp), answer())
    await neighbour.store(fp, neighbour.decide(fp), answer())
    await mine.clear()
    assert await mine.lookup(fp, mine.decide(fp)) is None
    assert await neighbour.lookup(fp, neighbour.decide(fp)) is not None
    await neighbour.clear()
    assert await raw.exists(connection_of(neighbour).key("index")) == 0


async def test_unreachable_redis_is_a_miss_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    async def embed(texts: list[str]) -> np.ndarray:
        return np.ones((len(texts), 4), dtype=np.float32)

    cache = ResponseCache.redis(
        "redis://:secret@127.0.0.1:1/0", CachePolicy(semantic=True), timeout=0.2
    )
    fp = cache.fingerprint(request(), api_key_id="k")
    decision = cache.decide(fp)
    with caplog.at_level(logging.WARNING, logger="powertrain.cache"):
        assert await cache.lookup(fp, decision, embed=embed) is None
        assert not await cache.store(fp, decision, answer(), embed=embed)
        assert await cache.lookup(fp, decision, embed=embed) is None
        await cache.clear()
    connection = connection_of(cache)
    assert not connection.available  # paused: the next calls do not even try
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1, warnings
    assert "127.0.0.1:1" in warnings[0] and "secret" not in warnings[0]
    await cache.aclose()


async def test_a_redis_that_comes_back_is_used_again(
    redis_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = ResponseCache.redis(redis_url, prefix=f"pt-test:{uuid.uuid4().hex[:12]}")
    connection = connection_of(cache)
    fp = cache.fingerprint(request(), api_key_id="k")

    async def refused(*args: Any, **kwargs: Any) -> None:
        raise RedisConnectionError("Connection refused")

    with caplog.at_level(logging.WARNING, logger="powertrain.cache"):
        monkeypatch.setattr(connection.client, "get", refused)
        assert await cache.lookup(fp, cache.decide(fp)) is None
        monkeypatch.undo()
        assert not await cache.store(fp, cache.decide(fp), answer())  # still paused
        connection._down_until = 0.0  # the pause is over
        assert await cache.store(fp, cache.decide(fp), answer())
        assert await cache.lookup(fp, cache.decide(fp)) is not None
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and "reachable again" in messages[1], messages
    await cache.clear()
    await cache.aclose()
