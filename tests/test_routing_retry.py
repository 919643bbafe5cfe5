"""Retries are honest (RELIABILITY 12) at the policy level: what is retried, and after how long."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from powertrain.catalog import ModelConfig
from powertrain.engines._sse import UpstreamStreamInterrupted
from powertrain.errors import (
    BudgetExceeded,
    ContextWindowExceeded,
    EngineError,
    EngineOverloaded,
    EngineUnavailable,
    InvalidRequest,
    KeyRateLimited,
    OutputInvalid,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
)
from powertrain.routing import FailureKind, RetryPolicy, classify


def upstream(status: int, retry_after: float | None = None) -> UpstreamError:
    return UpstreamError(f"HTTP {status}", upstream_status=status, retry_after=retry_after)


@pytest.mark.parametrize(
    ("error", "kind", "retryable", "counts"),
    [
        (upstream(500), FailureKind.ERROR, True, True),
        (upstream(503), FailureKind.ERROR, True, True),
        (upstream(401), FailureKind.ERROR, False, True),  # our key: the fallback may work
        (upstream(403), FailureKind.ERROR, False, True),
        (upstream(400), FailureKind.CALLER, False, False),
        (upstream(404), FailureKind.CALLER, False, False),
        (upstream(422), FailureKind.CALLER, False, False),
        (upstream(429), FailureKind.RATE_LIMIT, True, False),
        (RateLimited("429", retry_after=2), FailureKind.RATE_LIMIT, True, False),
        (EngineOverloaded("queue full"), FailureKind.RATE_LIMIT, True, False),
        (UpstreamTimeout("slow"), FailureKind.TIMEOUT, True, True),
        (TimeoutError(), FailureKind.TIMEOUT, True, True),
        (ContextWindowExceeded("too long"), FailureKind.CONTEXT_OVERFLOW, False, False),
        (InvalidRequest("bad temperature"), FailureKind.CALLER, False, False),
        (KeyRateLimited("key over rpm", retry_after=3), FailureKind.CALLER, False, False),
        (BudgetExceeded("no budget"), FailureKind.CALLER, False, False),
        (
            EngineError("no route to host", code="upstream_unreachable"),
            FailureKind.ERROR,
            True,
            True,
        ),
        (EngineError("unreadable body"), FailureKind.ERROR, False, True),
        (EngineUnavailable("pip install x"), FailureKind.ERROR, False, True),
        (OutputInvalid("not json"), FailureKind.ERROR, False, False),
        (
            UpstreamStreamInterrupted("cut", chunks=3, chars=9, usage=None),
            FailureKind.ERROR,
            False,
            True,
        ),
        (KeyError("bug"), FailureKind.ERROR, False, True),
    ],
)
def test_classify(error: BaseException, kind: FailureKind, retryable: bool, counts: bool) -> None:
    failure = classify(error)
    assert (failure.kind, failure.retryable, failure.upstream_fault) == (kind, retryable, counts)


def test_retry_after_is_honoured_exactly() -> None:
    policy = RetryPolicy(retries=3)
    assert policy.delay(1, RateLimited("429", retry_after=1.5)) == 1.5
    assert policy.delay(1, upstream(429, retry_after=0.0)) == 0.0
    assert policy.delay(2, upstream(503, retry_after=2.0)) == 2.0
    assert policy.delay(1, EngineOverloaded("busy", retry_after=4.0)) == 4.0


def test_a_retry_after_longer_than_max_retry_after_is_not_waited_for() -> None:
    policy = RetryPolicy(retries=3, max_retry_after=10)
    assert policy.delay(1, RateLimited("429", retry_after=11)) is None
    assert policy.delay(1, RateLimited("429", retry_after=10)) == 10


def test_backoff_has_full_jitter_within_exponential_bounds() -> None:
    random.seed(7)
    policy = RetryPolicy(retries=10, backoff_base=0.5, backoff_max=4.0)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 4.0), (8, 4.0)]:
        delays = [policy.delay(attempt, upstream(502)) for _ in range(400)]
        assert all(d is not None and 0.0 <= d <= ceiling for d in delays)
        values = [d for d in delays if d is not None]
        # full jitter: spread over the whole range, not bunched at the ceiling
        assert min(values) < 0.1 * ceiling and max(values) > 0.9 * ceiling
        assert abs(sum(values) / len(values) - ceiling / 2) < 0.1 * ceiling


def test_retries_are_counted_per_model() -> None:
    policy = RetryPolicy(retries=2)
    assert policy.delay(1, upstream(500)) is not None
    assert policy.delay(2, upstream(500)) is not None
    assert policy.delay(3, upstream(500)) is None
    assert RetryPolicy(retries=0).delay(1, upstream(500)) is None
    assert RetryPolicy(retries=2).without_retries().delay(1, upstream(500)) is None


def test_no_wait_may_reach_the_deadline() -> None:
    policy = RetryPolicy(retries=3)
    soon = time.monotonic() + 1.0
    assert policy.delay(1, RateLimited("429", retry_after=5), deadline=soon) is None
    assert policy.delay(1, RateLimited("429", retry_after=0.2), deadline=soon) == 0.2
    later = time.monotonic() + 60
    assert policy.delay(1, RateLimited("429", retry_after=5), deadline=later) == 5
    passed = time.monotonic() - 1
    assert policy.delay(1, upstream(500), deadline=passed) is None


@pytest.mark.parametrize(
    "error",
    [
        upstream(400),
        upstream(404),
        upstream(401),
        ContextWindowExceeded("too long"),
        InvalidRequest("bad"),
        KeyRateLimited("ours", retry_after=1),
        OutputInvalid("bad json"),
        EngineError("unreadable"),
    ],
)
def test_caller_errors_and_hopeless_failures_are_never_retried(error: Exception) -> None:
    assert RetryPolicy(retries=5).delay(1, error) is None


def test_nothing_is_retried_after_the_first_streamed_byte() -> None:
    policy = RetryPolicy(retries=5)
    for error in (upstream(503), RateLimited("429", retry_after=0), UpstreamTimeout("slow")):
        assert policy.delay(1, error, streamed=False) is not None
        assert policy.delay(1, error, streamed=True) is None


def test_a_plain_model_keeps_its_own_retry_settings() -> None:
    model = ModelConfig(
        alias="gpt",
        engine="openai",
        max_retries=4,
        options={"retry_backoff_base": 0.1, "retry_backoff_max": 0.3, "max_retry_after": 5},
    )
    assert RetryPolicy.for_model(model) == RetryPolicy(
        retries=4, backoff_base=0.1, backoff_max=0.3, max_retry_after=5
    )


def test_cancellation_is_never_something_to_retry() -> None:
    assert RetryPolicy(retries=5).delay(1, asyncio.CancelledError()) is None
