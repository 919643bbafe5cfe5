"""Token buckets: in process (a fake clock) and in Redis, shared by two "workers"."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import AsyncIterator

import pytest

from powertrain.access import MemoryLimiter, RedisLimiter

REDIS_ENV = "POWERTRAIN_TEST_REDIS_URL"


def redis_url() -> str:
    url = os.environ.get(REDIS_ENV)
    if not url:
        pytest.skip(f"{REDIS_ENV} is not set")
    return url


@pytest.fixture
async def two_workers() -> AsyncIterator[tuple[RedisLimiter, RedisLimiter]]:
    """Two limiters with their own connections to one Redis, as two gateway workers have."""
    url = redis_url()
    first, second = RedisLimiter(url), RedisLimiter(url)
    yield first, second
    await first.aclose()
    await second.aclose()


async def test_memory_bucket_bursts_then_refills_at_the_steady_rate() -> None:
    now = [100.0]
    limiter = MemoryLimiter(clock=lambda: now[0])
    for _ in range(5):
        assert (await limiter.take("k:rpm", 5)).allowed
    refused = await limiter.take("k:rpm", 5)
    assert not refused.allowed and refused.retry_after == pytest.approx(12.0)
    now[0] += 6
    assert (await limiter.take("k:rpm", 5)).retry_after == pytest.approx(6.0)
    now[0] += 6
    assert (await limiter.take("k:rpm", 5)).allowed
    assert (await limiter.take("other:rpm", 5)).allowed  # buckets are separate


async def test_memory_bucket_corrections_allow_a_bounded_debt() -> None:
    now = [0.0]
    limiter = MemoryLimiter(clock=lambda: now[0])
    assert (await limiter.take("k:tpm", 600, 600)).allowed
    await limiter.adjust("k:tpm", 600, 300)  # the call used 300 tokens more than it took
    refused = await limiter.take("k:tpm", 600, 10)
    assert refused.retry_after == pytest.approx(31.0)  # (300 debt + 10) at 10 tokens/s
    await limiter.adjust("k:tpm", 600, 10_000)  # debt never goes below one minute's worth
    assert (await limiter.take("k:tpm", 600, 1)).retry_after == pytest.approx(60.1)
    await limiter.adjust("k:tpm", 600, -10_000)  # and credit never above a full bucket
    assert (await limiter.take("k:tpm", 600, 600)).allowed
    too_big = await limiter.take("k:tpm", 600, 601)
    assert not too_big.allowed and too_big.retry_after is None  # never fits


async def test_redis_buckets_are_shared_by_workers(
    two_workers: tuple[RedisLimiter, RedisLimiter],
) -> None:
    """RELIABILITY 16: one limit, whichever worker a request reaches."""
    first, second = two_workers
    bucket = f"test-{uuid.uuid4().hex}:rpm"
    for limiter in (first, second, first, second, first):
        assert (await limiter.take(bucket, 5)).allowed
    for limiter in (first, second):
        refused = await limiter.take(bucket, 5)
        assert not refused.allowed
        assert refused.retry_after is not None and 11.0 < refused.retry_after <= 12.0
    ttl = await first._redis.ttl("powertrain:limit:" + bucket)
    assert 0 < ttl <= 125  # idle buckets expire


async def test_redis_token_corrections_are_shared(
    two_workers: tuple[RedisLimiter, RedisLimiter],
) -> None:
    first, second = two_workers
    bucket = f"test-{uuid.uuid4().hex}:tpm"
    assert (await first.take(bucket, 600, 500)).allowed
    await second.adjust(bucket, 600, -400)  # the call used 100 tokens, not 500
    assert (await first.take(bucket, 600, 490)).allowed
    await first.adjust(bucket, 600, 300)
    refused = await second.take(bucket, 600, 100)
    assert not refused.allowed and refused.retry_after is not None
    assert 38.0 < refused.retry_after <= 39.0  # (290 debt + 100) at 10 tokens/s
    assert (await second.take(bucket, 600, 601)).retry_after is None


async def test_redis_down_falls_back_to_per_worker_limits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limiter = RedisLimiter("redis://127.0.0.1:1/0")  # nothing listens on port 1
    try:
        with caplog.at_level(logging.WARNING, logger="powertrain.access"):
            assert (await limiter.take("k:rpm", 2)).allowed
            assert (await limiter.take("k:rpm", 2)).allowed
            assert not (await limiter.take("k:rpm", 2)).allowed
        warnings = [r for r in caplog.records if "Redis is unreachable" in r.getMessage()]
        assert len(warnings) == 1  # said once, not per call
    finally:
        await limiter.aclose()
