"""Circuit breakers: closed → open → half-open (one probe) → closed or open, on a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from powertrain.routing import Breakers, BreakerSettings, BreakerState, CircuitBreaker, Permit


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        permit = breaker.acquire()
        assert permit is not None
        permit.failure()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def breaker(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker("gpt", failure_threshold=3, cooldown=10.0, clock=clock)


def test_opens_after_n_consecutive_failures(breaker: CircuitBreaker) -> None:
    fail(breaker, 2)
    assert breaker.state is BreakerState.CLOSED and breaker.available()
    fail(breaker, 1)
    assert breaker.state is BreakerState.OPEN
    assert breaker.acquire() is None and not breaker.available()
    assert breaker.retry_in() == 10.0 and breaker.trips == 1


def test_a_success_resets_the_count(breaker: CircuitBreaker) -> None:
    fail(breaker, 2)
    permit = breaker.acquire()
    assert permit is not None
    permit.success()
    fail(breaker, 2)
    assert breaker.state is BreakerState.CLOSED


def test_released_permits_do_not_count(breaker: CircuitBreaker) -> None:
    for _ in range(10):
        permit = breaker.acquire()
        assert permit is not None
        permit.release()  # a caller error or a caller who left says nothing about the model
    assert breaker.state is BreakerState.CLOSED


def test_half_open_after_cooldown_then_a_probe_success_closes(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    fail(breaker, 3)
    clock.advance(9.9)
    assert breaker.state is BreakerState.OPEN and breaker.acquire() is None
    clock.advance(0.1)
    assert breaker.state is BreakerState.HALF_OPEN and breaker.retry_in() == 0
    probe = breaker.acquire()
    assert probe is not None and probe.probe and probe.kind == "probe"
    assert breaker.acquire() is None  # one probe at a time
    assert not breaker.available()
    probe.success()
    assert breaker.state is BreakerState.CLOSED
    permit = breaker.acquire()
    assert permit is not None and not permit.probe


def test_a_failed_probe_opens_it_for_another_cooldown(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    fail(breaker, 3)
    clock.advance(10)
    probe = breaker.acquire()
    assert probe is not None
    clock.advance(2)
    probe.failure()
    assert breaker.state is BreakerState.OPEN and breaker.trips == 2
    assert breaker.retry_in() == 10.0  # counted from the probe's failure
    clock.advance(10)
    assert breaker.acquire() is not None


def test_an_abandoned_probe_lets_the_next_caller_probe(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    fail(breaker, 3)
    clock.advance(10)
    probe = breaker.acquire()
    assert probe is not None
    probe.release()  # the caller left mid-probe
    assert breaker.state is BreakerState.HALF_OPEN
    again = breaker.acquire()
    assert again is not None and again.probe


def test_a_lost_probe_stops_blocking_after_its_lease(clock: FakeClock) -> None:
    breaker = CircuitBreaker("m", failure_threshold=1, cooldown=1, clock=clock, probe_lease=30)
    fail(breaker, 1)
    clock.advance(1)
    assert breaker.acquire() is not None  # never handed back
    clock.advance(29)
    assert breaker.acquire() is None
    clock.advance(1)
    assert breaker.acquire() is not None


def test_stale_permits_from_before_a_trip_change_nothing(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    slow = breaker.acquire()  # in flight when the model goes down
    assert slow is not None
    fail(breaker, 3)
    clock.advance(10)
    probe = breaker.acquire()
    assert probe is not None
    slow.success()  # from the earlier period: does not close it
    assert breaker.state is BreakerState.HALF_OPEN and breaker.acquire() is None
    probe.success()
    slow.failure()  # nor count against the recovered model
    fail(breaker, 2)
    assert breaker.state is BreakerState.CLOSED


async def test_exactly_one_probe_under_concurrency(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    fail(breaker, 3)
    clock.advance(10)
    release = asyncio.Event()
    outcomes: list[str] = []

    async def caller() -> None:
        permit = breaker.acquire()
        if permit is None:
            outcomes.append("refused")
            return
        outcomes.append("probe" if permit.probe else "closed")
        await release.wait()  # the probe's upstream call
        permit.success()

    async def finish_probe() -> None:
        await asyncio.sleep(0)
        release.set()

    await asyncio.gather(*(caller() for _ in range(50)), finish_probe())
    assert outcomes.count("probe") == 1
    assert outcomes.count("refused") == 49
    assert breaker.state is BreakerState.CLOSED
    # once closed, everyone gets through again
    await asyncio.gather(*(caller() for _ in range(5)))
    assert outcomes[-5:] == ["closed"] * 5


def test_forced_permits_count_like_a_probe(breaker: CircuitBreaker, clock: FakeClock) -> None:
    fail(breaker, 3)
    forced = breaker.force()
    assert forced.forced and forced.kind == "forced"
    forced.success()
    assert breaker.state is BreakerState.CLOSED
    fail(breaker, 3)
    clock.advance(5)
    breaker.force().failure()
    assert breaker.retry_in() == 10.0  # opened anew


def test_permit_reports_go_to_its_breaker(breaker: CircuitBreaker) -> None:
    permit = breaker.acquire()
    assert isinstance(permit, Permit) and permit.breaker is breaker


def test_registry_creates_one_breaker_per_model_with_its_settings(clock: FakeClock) -> None:
    settings = {"a": BreakerSettings(1, 5.0)}
    breakers = Breakers(lambda alias: settings.get(alias, BreakerSettings()), clock=clock)
    a = breakers.get("a")
    assert breakers.get("a") is a and a.failure_threshold == 1 and a.cooldown == 5.0
    b = breakers.get("b")
    assert b.failure_threshold == 5 and b.cooldown == 30.0
    fail(a, 1)
    snapshot = breakers.snapshot()
    assert [s["model"] for s in snapshot] == ["a", "b"]
    assert snapshot[0]["state"] == "open" and snapshot[1]["state"] == "closed"
    assert Breakers(BreakerSettings(2, 1.0)).get("x").failure_threshold == 2


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        CircuitBreaker("m", failure_threshold=0)
    with pytest.raises(ValueError, match="cooldown"):
        CircuitBreaker("m", cooldown=0)
