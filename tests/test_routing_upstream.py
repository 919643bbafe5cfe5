"""RELIABILITY 12, 13 and 14 through the routing library, against real OpenAI-protocol servers.

The engines are the real OpenAI engine built with ``single_attempt`` (their own
retries off), so each upstream request is one router attempt: the fake's
request log and the execution's records must agree one to one.

12: 429 with Retry-After waits; 5xx backs off with jitter inside the deadline;
4xx is never retried; nothing is retried after the first streamed byte.
13: a failing model trips its breaker; traffic moves to the fallback; one
probe later closes it again. 14: a hung upstream yields a timeout at the
deadline, and no task or connection is left behind.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from powertrain.catalog import Catalog, ModelConfig
from powertrain.engines.openai import OpenAIEngine
from powertrain.errors import StreamInterrupted, UpstreamError, UpstreamTimeout
from powertrain.routing import (
    Breakers,
    BreakerSettings,
    Candidate,
    Router,
    parse_routes,
    single_attempt,
)
from powertrain.schemas import ChatCompletionRequest
from tests.fakes import FakeOpenAI

REQUEST = ChatCompletionRequest.model_validate(
    {"model": "support", "messages": [{"role": "user", "content": "hello there"}]}
)


class Stack:
    """Two upstreams, their engines, and a router over them."""

    def __init__(self, primary: FakeOpenAI, backup: FakeOpenAI, routes: dict[str, Any]):
        models = [
            ModelConfig(
                alias=alias,
                engine="openai",
                model=f"{alias}-upstream",
                base_url=fake.url,
                api_key="sk-test",
                timeout=30,
            )
            for alias, fake in (("primary", primary), ("backup", backup))
        ]
        self.catalog = Catalog(models)
        self.engines = {m.alias: OpenAIEngine(single_attempt(m)) for m in models}
        config = parse_routes(routes, self.catalog)
        self.breakers = Breakers(config.breaker_settings)
        self.router = Router(config, self.catalog, breakers=self.breakers)

    async def chat(self, name: str, *, within: float = 10.0) -> tuple[Any, Any]:
        plan = await self.router.plan(name)
        execution = self.router.execute(plan, deadline=time.monotonic() + within)

        async def attempt(candidate: Candidate) -> Any:
            return await self.engines[candidate.model].chat(REQUEST, deadline=execution.deadline)

        try:
            return await execution.run(attempt), execution
        except Exception as exc:
            return exc, execution

    async def aclose(self) -> None:
        for engine in self.engines.values():
            await engine.aclose()


def route(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "strategy": "fallback",
        "models": ["primary", "backup"],
        "backoff_base": 0.05,
        "backoff_max": 0.2,
    }
    return {"support": {**base, **fields}}


@pytest.fixture
async def upstreams() -> AsyncIterator[tuple[FakeOpenAI, FakeOpenAI]]:
    async with (
        FakeOpenAI(reply="from primary") as primary,
        FakeOpenAI(reply="from backup") as backup,
    ):
        yield primary, backup


@pytest.fixture
async def stack(upstreams: tuple[FakeOpenAI, FakeOpenAI]) -> AsyncIterator[Stack]:
    made = Stack(*upstreams, route())
    yield made
    await made.aclose()


# ------------------------------------------------------------------ scenario 12


async def test_429_with_retry_after_waits_that_long(
    upstreams: tuple[FakeOpenAI, FakeOpenAI], stack: Stack
) -> None:
    primary, backup = upstreams
    primary.fail(1, status=429, retry_after="0.4")
    result, execution = await stack.chat("support")
    assert result.content == "from primary"
    assert len(primary.requests) == 2 and backup.requests == []
    gap = primary.requests[1].at - primary.requests[0].at
    assert 0.4 <= gap < 0.8
    assert [a["outcome"] for a in execution.attempts] == ["rate_limited", "ok"]
    assert execution.attempts[1]["wait_s"] == 0.4


async def test_5xx_backs_off_with_jitter_and_retries_do_not_multiply(
    upstreams: tuple[FakeOpenAI, FakeOpenAI], stack: Stack
) -> None:
    primary, backup = upstreams
    primary.fail(3, status=503)
    result, execution = await stack.chat("support")
    assert result.content == "from backup"
    # retries = 2: three requests to the primary, one to the backup; the engine added none.
    assert len(primary.requests) == 3 and len(backup.requests) == 1
    assert len(execution.attempts) == 4
    gaps = [b.at - a.at for a, b in zip(primary.requests, primary.requests[1:], strict=False)]
    waits = [a["wait_s"] for a in execution.attempts[1:3]]
    assert 0 <= waits[0] <= 0.05 and 0 <= waits[1] <= 0.1
    assert all(gap >= wait for gap, wait in zip(gaps, waits, strict=True))


async def test_5xx_is_not_retried_past_the_deadline(
    upstreams: tuple[FakeOpenAI, FakeOpenAI],
) -> None:
    primary, backup = upstreams
    primary.fail(5, status=500)
    backup.fail(5, status=500)
    made = Stack(primary, backup, route(backoff_base=5.0, backoff_max=5.0, retries=5))
    try:
        started = time.monotonic()
        # Backoff draws from [0, 5 s]; only draws that end before the 0.5 s deadline are waited.
        result, execution = await made.chat("support", within=0.5)
        assert time.monotonic() - started < 0.6
        assert isinstance(result, UpstreamError | UpstreamTimeout)
        assert all(a["wait_s"] < 0.5 for a in execution.attempts)
    finally:
        await made.aclose()


async def test_4xx_is_never_retried_nor_sent_elsewhere(
    upstreams: tuple[FakeOpenAI, FakeOpenAI], stack: Stack
) -> None:
    primary, backup = upstreams
    primary.fail(1, status=400, message="temperature must be at most 2")
    result, execution = await stack.chat("support")
    assert isinstance(result, UpstreamError) and result.status_code == 400
    assert len(primary.requests) == 1 and backup.requests == []
    assert execution.attempts[0]["outcome"] == "caller_error"
    assert stack.breakers.get("primary").snapshot()["consecutive_failures"] == 0


async def test_nothing_is_retried_after_the_first_streamed_byte(
    upstreams: tuple[FakeOpenAI, FakeOpenAI], stack: Stack
) -> None:
    primary, backup = upstreams
    primary.reply = "one two three four five six"
    primary.die_mid_stream(after_chunks=2)
    plan = await stack.router.plan("support")
    execution = stack.router.execute(plan, deadline=time.monotonic() + 10)
    received: list[str] = []
    with pytest.raises(StreamInterrupted):
        async for chunk in execution.stream(
            lambda c: stack.engines[c.model].stream(REQUEST, deadline=execution.deadline)
        ):
            received.append(chunk.delta)
    assert "".join(received) == "one two "
    assert len(primary.requests) == 1 and backup.requests == []
    [record] = execution.attempts
    assert record["streamed"] is True and record["then"] == "raise"


async def test_a_stream_failing_before_its_first_byte_falls_back(
    upstreams: tuple[FakeOpenAI, FakeOpenAI], stack: Stack
) -> None:
    primary, backup = upstreams
    primary.fail(3, status=502)
    plan = await stack.router.plan("support")
    execution = stack.router.execute(plan, deadline=time.monotonic() + 10)
    text = "".join(
        [
            chunk.delta
            async for chunk in execution.stream(
                lambda c: stack.engines[c.model].stream(REQUEST, deadline=execution.deadline)
            )
        ]
    )
    assert text == "from backup"
    assert len(primary.requests) == 3 and len(backup.requests) == 1


# ------------------------------------------------------------------ scenario 13


async def test_breaker_trips_traffic_moves_and_one_probe_closes_it(
    upstreams: tuple[FakeOpenAI, FakeOpenAI],
) -> None:
    primary, backup = upstreams
    made = Stack(primary, backup, route(retries=0, failure_threshold=2, cooldown=0.3))
    try:
        primary.fail(100, status=500)
        for _ in range(2):
            result, _ = await made.chat("support")
            assert result.content == "from backup"
        assert len(primary.requests) == 2
        assert made.breakers.get("primary").state == "open"

        # Open: the primary is not even asked.
        for _ in range(5):
            result, execution = await made.chat("support")
            assert result.content == "from backup"
            assert execution.plan.skipped[0].model == "primary"
        assert len(primary.requests) == 2

        # After the cooldown, concurrent calls: exactly one probes the (recovered) primary.
        await asyncio.sleep(0.3)
        primary.clear()
        primary.latency = 0.1
        results = await asyncio.gather(*(made.chat("support") for _ in range(10)))
        assert len(primary.requests) == 1
        assert sum(r.content == "from primary" for r, _ in results) == 1
        assert made.breakers.get("primary").state == "closed"

        # Closed again: traffic is back on the primary.
        result, execution = await made.chat("support")
        assert result.content == "from primary"
        assert execution.attempts[0]["breaker"] == "closed"
    finally:
        await made.aclose()


# ------------------------------------------------------------------ scenario 14


def _leftover_tasks() -> list[asyncio.Task[Any]]:
    current = asyncio.current_task()
    return [t for t in asyncio.all_tasks() if t is not current and not t.done()]


async def test_a_hung_upstream_times_out_at_the_deadline_and_leaks_nothing(
    upstreams: tuple[FakeOpenAI, FakeOpenAI], stack: Stack
) -> None:
    primary, backup = upstreams
    primary.hang(10)
    before = len(_leftover_tasks())
    started = time.monotonic()
    result, execution = await stack.chat("support", within=0.5)
    elapsed = time.monotonic() - started
    assert isinstance(result, UpstreamTimeout)
    assert 0.45 <= elapsed < 0.9
    assert execution.attempts[0]["outcome"] == "timeout"
    # The upstream saw its caller leave, and nothing of ours is still running.
    await primary.wait_for_disconnects(1)
    await primary.wait_idle()
    assert len(_leftover_tasks()) <= before
    assert backup.requests == []


async def test_attempt_timeout_moves_a_hung_model_to_the_fallback(
    upstreams: tuple[FakeOpenAI, FakeOpenAI],
) -> None:
    primary, backup = upstreams
    primary.hang(10)
    made = Stack(primary, backup, route(attempt_timeout=0.3, retries=0))
    try:
        started = time.monotonic()
        result, execution = await made.chat("support", within=5)
        assert result.content == "from backup"
        assert 0.3 <= time.monotonic() - started < 1.5
        assert [a["outcome"] for a in execution.attempts] == ["timeout", "ok"]
        await primary.wait_for_disconnects(1)
    finally:
        await made.aclose()


def test_breaker_settings_come_from_the_routes() -> None:
    catalog = Catalog([ModelConfig(alias="m", engine="openai")])
    config = parse_routes(
        {"r": {"strategy": "fallback", "models": ["m"], "failure_threshold": 7}}, catalog
    )
    assert config.breaker_settings("m") == BreakerSettings(7, 30.0)
    assert Router(config, catalog).breakers.get("m").failure_threshold == 7
