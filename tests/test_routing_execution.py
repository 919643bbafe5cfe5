"""Executing plans: retries, fallbacks, escalation and one deadline, with every attempt recorded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from powertrain.errors import (
    ContextWindowExceeded,
    EngineError,
    InvalidRequest,
    RateLimited,
    StreamInterrupted,
    UpstreamError,
    UpstreamTimeout,
)
from powertrain.routing import Candidate, RequestInfo, Router, RouteUnavailable, Verdict
from powertrain.schemas import ChatChunk, ChatResult, Usage
from powertrain.schemas.trace import TRACE_ADAPTER, Trace
from tests.routing_helpers import FakeClock, breakers, catalog, routes

ROUTES = """
[routes.chain]
strategy = "fallback"
models = ["small", "mini", "big"]
backoff_base = 0.01
backoff_max = 0.05

[routes.overflow]
strategy = "fallback"
models = ["mini", "small", "big"]

[routes.errors_only]
strategy = "fallback"
models = ["mini", "big"]
fallback_on = ["error"]

[routes.no_retries]
strategy = "fallback"
models = ["mini", "big"]
retries = 0

[routes.hasty]
strategy = "fallback"
models = ["mini", "big"]
attempt_timeout = 0.2
retries = 0

[routes.short]
strategy = "fallback"
models = ["mini"]
timeout = 0.3

[routes.cascade]
strategy = "cascade"
models = ["small", "mini", "big"]

[routes.strict]
strategy = "fallback"
models = ["mini", "big"]
when_all_open = "fail"
"""


def upstream(status: int, retry_after: float | None = None) -> UpstreamError:
    return UpstreamError(f"HTTP {status}", upstream_status=status, retry_after=retry_after)


def answer(text: str, prompt: int = 100, completion: int = 10) -> ChatResult:
    return ChatResult(content=text, usage=Usage(prompt_tokens=prompt, completion_tokens=completion))


class Script:
    """Per model, what each attempt does in turn: raise an error, hang, or answer."""

    def __init__(self, **outcomes: list[Any]):
        self.outcomes = {model: list(steps) for model, steps in outcomes.items()}
        self.calls: list[str] = []

    async def __call__(self, candidate: Candidate) -> ChatResult:
        self.calls.append(candidate.model)
        steps = self.outcomes.get(candidate.model) or [answer(f"from {candidate.model}")]
        step = steps.pop(0) if len(steps) > 1 else steps[0]
        if step == "hang":
            await asyncio.Event().wait()
        if isinstance(step, BaseException):
            raise step
        assert isinstance(step, ChatResult)
        return step


class Sleeps:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def router(clock: FakeClock) -> Router:
    return Router(routes(ROUTES), catalog(), breakers=breakers(clock, threshold=3))


async def run(
    router: Router,
    name: str,
    script: Script,
    *,
    sleeps: Sleeps | None = None,
    deadline: float | None = None,
    info: RequestInfo | None = None,
    accept: Any = None,
) -> tuple[Any, Any]:
    plan = await router.plan(name, info)
    execution = router.execute(plan, deadline=deadline, sleep=sleeps or Sleeps())
    try:
        result = await execution.run(script, accept=accept)
    except Exception as exc:
        return exc, execution
    return result, execution


def summary(execution: Any) -> list[tuple[str, int, str, str]]:
    return [(a["model"], a["attempt"], a["reason"], a["outcome"]) for a in execution.attempts]


async def test_one_good_attempt_is_one_record(router: Router) -> None:
    seen: list[dict[str, Any]] = []
    plan = await router.plan("chain")
    execution = router.execute(plan, on_attempt=seen.append)
    result = await execution.run(Script())
    assert result.content == "from small" and execution.answered_by is not None
    assert execution.answered_by.model == "small"
    [record] = execution.attempts
    assert seen == [record]
    assert record["model"] == "small" and record["engine"] == "llamacpp"
    assert record["status"] == "ok" and record["outcome"] == "ok" and record["error"] is None
    assert record["attempt"] == 1 and record["n"] == 1 and record["reason"] == "primary"
    assert record["wait_s"] == 0 and record["breaker"] == "closed" and record["route"] == "chain"
    assert record["prompt_tokens"] == 100 and record["completion_tokens"] == 10
    assert record["latency_ms"] >= 0 and record["cost_usd"] == 0.0
    assert execution.describe()["answered_by"] == "small"


async def test_5xx_is_retried_with_backoff_then_succeeds(router: Router) -> None:
    sleeps = Sleeps()
    script = Script(small=[upstream(502), upstream(503), answer("ok")])
    result, execution = await run(router, "chain", script, sleeps=sleeps)
    assert result.content == "ok" and script.calls == ["small"] * 3
    assert summary(execution) == [
        ("small", 1, "primary", "error"),
        ("small", 2, "retry", "error"),
        ("small", 3, "retry", "ok"),
    ]
    assert len(sleeps.waits) == 2
    assert 0 <= sleeps.waits[0] <= 0.01 and 0 <= sleeps.waits[1] <= 0.02
    assert [a["wait_s"] for a in execution.attempts][1:] == [round(w, 4) for w in sleeps.waits]
    assert execution.attempts[0]["error_type"] == "UpstreamError"
    assert execution.attempts[0]["then"] == "retry"


async def test_429_waits_for_retry_after(router: Router) -> None:
    sleeps = Sleeps()
    script = Script(small=[RateLimited("slow down", retry_after=1.25), answer("ok")])
    result, execution = await run(router, "chain", script, sleeps=sleeps)
    assert result.content == "ok" and sleeps.waits == [1.25]
    assert execution.attempts[0]["outcome"] == "rate_limited"
    assert execution.attempts[1]["wait_s"] == 1.25


async def test_a_retry_after_past_the_deadline_falls_back_at_once(router: Router) -> None:
    sleeps = Sleeps()
    script = Script(small=[RateLimited("slow down", retry_after=30)])
    deadline = time.monotonic() + 5
    result, execution = await run(router, "chain", script, sleeps=sleeps, deadline=deadline)
    assert result.content == "from mini" and sleeps.waits == []
    assert execution.attempts[0]["then"] == "fallback"


async def test_caller_errors_are_raised_at_once(router: Router) -> None:
    for error in (upstream(400), InvalidRequest("temperature too high")):
        script = Script(small=[error])
        result, execution = await run(router, "chain", script)
        assert result is error and script.calls == ["small"]
        assert execution.attempts[0]["outcome"] == "caller_error"
        assert execution.attempts[0]["then"] == "raise"
    assert router.breakers.get("small").available()


async def test_retries_then_fallback_in_order(router: Router) -> None:
    script = Script(small=[upstream(500)] * 3, mini=[EngineError("bug")])
    result, execution = await run(router, "chain", script)
    assert result.content == "from big"
    assert summary(execution) == [
        ("small", 1, "primary", "error"),
        ("small", 2, "retry", "error"),
        ("small", 3, "retry", "error"),
        ("mini", 1, "fallback", "error"),  # not retryable: straight on
        ("big", 1, "fallback", "ok"),
    ]
    assert [a["n"] for a in execution.attempts] == [1, 2, 3, 4, 5]


async def test_a_failure_outside_fallback_on_is_raised(router: Router) -> None:
    error = RateLimited("quota", retry_after=100)
    script = Script(mini=[error])
    result, _ = await run(router, "errors_only", script, deadline=time.monotonic() + 10)
    assert result is error and script.calls == ["mini"]


async def test_every_model_failing_raises_the_last_error(router: Router) -> None:
    last = upstream(503)
    script = Script(mini=[upstream(500)], big=[last])
    result, execution = await run(router, "no_retries", script)
    assert result is last and script.calls == ["mini", "big"]
    assert execution.attempts[-1]["then"] == "raise"


async def test_context_overflow_falls_back_to_a_larger_window(router: Router) -> None:
    # mini (16k) overflows: small (4k) cannot help, big (128k) can.
    script = Script(mini=[ContextWindowExceeded("prompt is too long")])
    result, execution = await run(router, "overflow", script)
    assert result.content == "from big" and script.calls == ["mini", "big"]
    assert execution.attempts[0]["outcome"] == "context_overflow"
    assert execution.attempts[0]["attempt"] == 1  # never retried
    assert [s.model for s in execution.skipped] == ["small"]
    assert "no larger than 'mini'" in execution.skipped[0].why
    assert execution.describe()["skipped"][0]["model"] == "small"


async def test_context_overflow_with_a_known_estimate_skips_too_small_windows(
    router: Router,
) -> None:
    script = Script(small=[ContextWindowExceeded("maximum context length")])
    # The estimate (3,000) fit small's window, but the exact count did not.
    result, _ = await run(router, "chain", script, info=RequestInfo(prompt_tokens=3000))
    assert result.content == "from mini"
    result, _ = await run(
        router, "chain", Script(mini=[ContextWindowExceeded("too long")]),
        info=RequestInfo(prompt_tokens=15000),
    )  # fmt: skip
    assert result.content == "from big"


async def test_the_breaker_trips_traffic_moves_and_one_probe_closes_it(
    router: Router, clock: FakeClock
) -> None:
    script = Script(small=[upstream(500)] * 3)
    result, execution = await run(router, "chain", script)
    assert result.content == "from mini"
    assert router.breakers.get("small").state == "open"
    # Next call: small is skipped without being tried.
    script = Script()
    result, execution = await run(router, "chain", script)
    assert script.calls == ["mini"] and execution.plan.skipped[0].model == "small"
    # After the cooldown one call probes small; it works and small is closed again.
    clock.advance(10)
    script = Script()
    result, execution = await run(router, "chain", script)
    assert script.calls == ["small"] and execution.attempts[0]["breaker"] == "probe"
    assert router.breakers.get("small").state == "closed"


async def test_a_breaker_that_trips_mid_call_stops_the_retries(clock: FakeClock) -> None:
    router = Router(routes(ROUTES), catalog(), breakers=breakers(clock, threshold=2))
    script = Script(small=[upstream(500)] * 5)
    _, execution = await run(router, "chain", script)
    assert script.calls == ["small", "small", "mini"]  # no third try on a tripped model
    assert execution.attempts[1]["then"] == "fallback"


async def test_a_failed_probe_falls_back(router: Router, clock: FakeClock) -> None:
    await run(router, "chain", Script(small=[upstream(500)] * 3))
    clock.advance(10)
    script = Script(small=[upstream(500)])
    result, execution = await run(router, "chain", script)
    assert script.calls == ["small", "mini"] and result.content == "from mini"
    assert execution.attempts[0]["breaker"] == "probe"
    assert router.breakers.get("small").state == "open"


async def test_all_refused_at_execution_forces_the_oldest(router: Router, clock: FakeClock) -> None:
    plan = await router.plan("no_retries")
    for alias in ("big", "mini"):  # they trip between planning and execution
        breaker = router.breakers.get(alias)
        for _ in range(3):
            permit = breaker.acquire()
            assert permit is not None
            permit.failure()
        clock.advance(1)
    script = Script()
    execution = router.execute(plan)
    result = await execution.run(script)
    assert script.calls == ["big"] and result.content == "from big"
    assert execution.attempts[0]["reason"] == "forced"
    assert execution.attempts[0]["breaker"] == "forced"
    assert router.breakers.get("big").state == "closed"
    assert [s.model for s in execution.skipped] == ["mini", "big"]


async def test_all_refused_with_when_all_open_fail(router: Router, clock: FakeClock) -> None:
    plan = await router.plan("strict")
    for alias in ("big", "mini"):
        breaker = router.breakers.get(alias)
        for _ in range(3):
            permit = breaker.acquire()
            assert permit is not None
            permit.failure()
    with pytest.raises(RouteUnavailable, match="circuit breaker is open") as info:
        await router.execute(plan).run(Script())
    assert info.value.retry_after == 10.0


async def test_a_hung_model_times_out_at_the_deadline(router: Router) -> None:
    script = Script(small=["hang"])
    started = time.monotonic()
    result, execution = await run(router, "chain", script, deadline=started + 0.3)
    elapsed = time.monotonic() - started
    assert isinstance(result, UpstreamTimeout) and "deadline" in result.message
    assert 0.29 <= elapsed < 0.6
    assert script.calls == ["small"]  # no time left for a fallback
    assert execution.attempts[0]["outcome"] == "timeout"
    assert execution.attempts[0]["then"] == "raise"


async def test_attempt_timeout_leaves_time_for_the_fallback(router: Router) -> None:
    script = Script(mini=["hang"])
    started = time.monotonic()
    result, execution = await run(router, "hasty", script, deadline=started + 5)
    assert result.content == "from big"
    assert 0.19 <= time.monotonic() - started < 1
    assert "attempt_timeout of 0.2 s" in execution.attempts[0]["error"]


async def test_the_routes_own_timeout_shortens_the_deadline(router: Router) -> None:
    started = time.monotonic()
    result, _ = await run(router, "short", Script(mini=["hang"]), deadline=started + 60)
    assert isinstance(result, UpstreamTimeout)
    assert time.monotonic() - started < 1


async def test_a_deadline_already_past_tries_nothing(router: Router) -> None:
    script = Script()
    result, _ = await run(router, "chain", script, deadline=time.monotonic() - 1)
    assert isinstance(result, UpstreamTimeout) and script.calls == []


async def test_cancellation_releases_the_probe_and_is_recorded(
    router: Router, clock: FakeClock
) -> None:
    await run(router, "chain", Script(small=[upstream(500)] * 3))
    clock.advance(10)
    plan = await router.plan("chain")
    execution = router.execute(plan)
    task = asyncio.create_task(execution.run(Script(small=["hang"])))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert execution.attempts[0]["status"] == "cancelled"
    assert execution.attempts[0]["breaker"] == "probe"
    probe = router.breakers.get("small").acquire()  # the slot went back
    assert probe is not None and probe.probe


async def test_engine_retries_mean_the_router_only_falls_back(clock: FakeClock) -> None:
    router = Router(routes(ROUTES), catalog(), breakers=breakers(clock), engine_retries=True)
    script = Script(small=[upstream(500)])
    _ = await run(router, "chain", script)
    assert script.calls == ["small", "mini"]


async def test_a_plain_model_keeps_its_max_retries(router: Router) -> None:
    script = Script(big=[upstream(500), upstream(500), answer("third time")])
    result, execution = await run(router, "big", script)
    assert result.content == "third time" and len(execution.attempts) == 3


async def test_an_execution_runs_once(router: Router) -> None:
    execution = router.execute(await router.plan("chain"))
    await execution.run(Script())
    with pytest.raises(RuntimeError, match="runs once"):
        await execution.run(Script())


# ------------------------------------------------------------------ cascade


def accept_unless(bad: str) -> Any:
    def accept(result: ChatResult) -> tuple[bool, str | None]:
        return (bad not in result.content, "looks bad" if bad in result.content else None)

    return accept


async def test_cascade_escalates_until_an_answer_is_accepted(router: Router) -> None:
    script = Script(small=[answer("bad", 100, 10)], mini=[answer("good", 100, 20)])
    result, execution = await run(router, "cascade", script, accept=accept_unless("bad"))
    assert result.content == "good" and script.calls == ["small", "mini"]
    assert summary(execution) == [("small", 1, "cascade", "rejected"), ("mini", 1, "cascade", "ok")]
    assert execution.attempts[0]["verdict"] == {"accepted": False, "reason": "looks bad"}
    assert execution.attempts[0]["then"] == "escalate"
    assert execution.attempts[1]["verdict"] == {"accepted": True}
    # Both steps were paid for.
    assert execution.prompt_tokens == 200 and execution.completion_tokens == 30
    assert execution.cost_usd == pytest.approx((100 * 0.15 + 20 * 0.60) / 1e6)
    assert execution.verdict == Verdict(True, None)


async def test_cascade_returns_the_last_step_unchecked(router: Router) -> None:
    checked: list[str] = []

    async def accept(result: ChatResult) -> Verdict:
        checked.append(result.content)
        return Verdict(False, "never good enough")

    script = Script(small=[answer("a")], mini=[answer("b")], big=[answer("c")])
    result, execution = await run(router, "cascade", script, accept=accept)
    assert result.content == "c" and checked == ["a", "b"]
    assert execution.answered_by.model == "big"


async def test_a_rejected_answer_beats_a_later_failure(router: Router) -> None:
    script = Script(
        small=[answer("bad")], mini=[EngineError("down")], big=[UpstreamTimeout("slow")] * 3
    )
    sleeps = Sleeps()
    result, execution = await run(
        router, "cascade", script, accept=accept_unless("bad"), sleeps=sleeps
    )
    assert result.content == "bad" and execution.answered_by.model == "small"
    assert execution.verdict.reason == "looks bad"


async def test_cascade_errors_fall_back_like_a_chain(router: Router) -> None:
    script = Script(small=[EngineError("broken")])
    result, _ = await run(router, "cascade", script, accept=accept_unless("bad"))
    assert result.content == "from mini"


# ------------------------------------------------------------------ streams


def stream_of(*pieces: Any, usage: Usage | None = None) -> Any:
    async def chunks() -> AsyncIterator[ChatChunk]:
        for piece in pieces:
            if isinstance(piece, BaseException):
                raise piece
            if piece == "hang":
                await asyncio.Event().wait()
            yield ChatChunk(delta=piece)
        yield ChatChunk(finish_reason="stop", usage=usage)

    return chunks()


class StreamScript:
    def __init__(self, **outcomes: list[Any]):
        self.outcomes = outcomes
        self.calls: list[str] = []
        self.closed: list[str] = []

    def __call__(self, candidate: Candidate) -> AsyncIterator[ChatChunk]:
        self.calls.append(candidate.model)
        steps = self.outcomes.get(candidate.model) or [("hello", " world")]
        step = steps.pop(0) if len(steps) > 1 else steps[0]
        inner = stream_of(*step, usage=Usage(prompt_tokens=5, completion_tokens=2))
        script = self

        class Tracked:
            def __aiter__(self) -> Tracked:
                return self

            async def __anext__(self) -> ChatChunk:
                return await inner.__anext__()

            async def aclose(self) -> None:
                script.closed.append(candidate.model)
                await inner.aclose()

        return Tracked()


async def collect(router: Router, name: str, script: StreamScript, **kw: Any) -> tuple[Any, Any]:
    plan = await router.plan(name)
    execution = router.execute(plan, sleep=Sleeps(), **kw)
    out: list[str] = []
    try:
        async for chunk in execution.stream(script):
            out.append(chunk.delta)
    except Exception as exc:
        return (out, exc), execution
    return (out, None), execution


async def test_a_stream_is_passed_through_and_recorded(router: Router) -> None:
    script = StreamScript()
    (out, error), execution = await collect(router, "chain", script)
    assert out == ["hello", " world", ""] and error is None
    [record] = execution.attempts
    assert record["outcome"] == "ok" and record["completion_tokens"] == 2
    assert script.closed == ["small"]


async def test_a_stream_failing_before_its_first_chunk_is_retried_and_falls_back(
    router: Router,
) -> None:
    script = StreamScript(
        small=[(upstream(503),), (upstream(503),), (upstream(503),)], mini=[("ok",)]
    )
    (out, error), _ = await collect(router, "chain", script)
    assert out == ["ok", ""] and error is None
    assert script.calls == ["small", "small", "small", "mini"]
    assert script.closed == ["small", "small", "small", "mini"]


async def test_nothing_is_retried_after_the_first_streamed_chunk(router: Router) -> None:
    broken = StreamInterrupted("cut after 1 chunk")
    script = StreamScript(small=[("first", broken)])
    (out, error), execution = await collect(router, "chain", script)
    assert out == ["first"] and error is broken
    assert script.calls == ["small"]  # no retry, no fallback
    [record] = execution.attempts
    assert record["streamed"] is True and record["outcome"] == "error"
    assert record["then"] == "raise"
    assert router.breakers.get("small").snapshot()["consecutive_failures"] == 1


async def test_a_consumer_leaving_mid_stream_is_a_cancelled_attempt(router: Router) -> None:
    script = StreamScript(small=[("a", "b", "c")])
    execution = router.execute(await router.plan("chain"))
    stream = execution.stream(script)
    assert (await anext(stream)).delta == "a"
    await stream.aclose()
    assert execution.attempts[0]["status"] == "cancelled"
    assert script.closed == ["small"]


async def test_a_stream_hanging_before_its_first_chunk_times_out(router: Router) -> None:
    script = StreamScript(mini=[("hang",)])
    (out, _error), execution = await collect(router, "hasty", script, deadline=time.monotonic() + 5)
    assert out == ["hello", " world", ""] and script.calls == ["mini", "big"]
    assert execution.attempts[0]["outcome"] == "timeout"


async def test_records_survive_the_trace_round_trip(router: Router) -> None:
    trace = Trace(model="cascade", request={})
    plan = await router.plan("cascade")
    execution = router.execute(plan, on_attempt=trace.attempts.append, sleep=Sleeps())
    script = Script(small=[upstream(503), answer("bad")], mini=[answer("good")])
    await execution.run(script, accept=accept_unless("bad"))
    trace.metadata["route"] = execution.describe()
    assert len(trace.attempts) == 3
    back = TRACE_ADAPTER.validate_python(trace.to_json())
    assert back.attempts == execution.attempts
    assert back.metadata["route"]["answered_by"] == "mini"
    assert [a["reason"] for a in back.attempts] == ["cascade", "retry", "cascade"]
    assert [a.get("then") for a in back.attempts] == ["retry", "escalate", None]
