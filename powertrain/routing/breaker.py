"""A circuit breaker per model: stop sending traffic to a model that keeps failing.

``closed`` (traffic flows) → ``open`` after ``failure_threshold`` consecutive
upstream failures (no traffic) → ``half_open`` once ``cooldown`` seconds have
passed, where exactly one caller gets a *probe* permit and everyone else is
refused at once → ``closed`` when the probe succeeds, ``open`` again (a new
cooldown) when it fails.

Consecutive failures rather than a failure rate over a window: a breaker must
trip on a model that is down, and a model that is down fails every call, so
the count trips after exactly N calls whatever the traffic; a rate needs a
minimum volume per window to mean anything and trips late on quiet routes.
One success resets the count, so a model failing one call in three never trips
(its failures are retried and fall back per call instead).

Only upstream-side failures count (see :func:`powertrain.routing.retry.classify`):
5xx, timeouts, unreachable upstreams, a refused key. A 4xx the request caused,
a context overflow and a 429 (the model is up, only busy, and says when to
come back) never do.

Breakers live in each gateway process. Each worker learns that a model is down
from its own N failures, so with W workers the outage costs up to N*W failed
attempts per cooldown instead of N, and each worker probes on its own; in
exchange routing never depends on Redis being up, and a breaker's state is
never older than the worker's own last call. That is the usual choice for
client-side breakers (Envoy's outlier detection is per proxy too).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

Clock = Callable[[], float]

DEFAULT_FAILURE_THRESHOLD = 5
DEFAULT_COOLDOWN = 30.0
DEFAULT_PROBE_LEASE = 600.0


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    failure_threshold: int = DEFAULT_FAILURE_THRESHOLD
    cooldown: float = DEFAULT_COOLDOWN


@dataclass(frozen=True, slots=True)
class Permit:
    """Leave to make one attempt; hand it back with exactly one of success/failure/release."""

    breaker: CircuitBreaker
    generation: int
    probe: bool = False
    forced: bool = False  # taken while the breaker was open (every model of a route was)

    @property
    def kind(self) -> str:
        """How the trace names it: ``closed``, ``probe`` or ``forced``."""
        return "forced" if self.forced else "probe" if self.probe else "closed"

    def success(self) -> None:
        self.breaker.success(self)

    def failure(self) -> None:
        self.breaker.failure(self)

    def release(self) -> None:
        """The attempt ended without telling anything about the model (a caller error,
        the caller left): a probe's slot goes back for the next caller."""
        self.breaker.release(self)


class CircuitBreaker:
    """One model's breaker. Thread-safe; every method is quick and never waits.

    ``clock`` is a monotonic clock in seconds (injectable for tests). A probe
    permit that is never handed back (a bug) stops blocking other probes after
    ``probe_lease`` seconds.
    """

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = DEFAULT_FAILURE_THRESHOLD,
        cooldown: float = DEFAULT_COOLDOWN,
        clock: Clock = time.monotonic,
        probe_lease: float = DEFAULT_PROBE_LEASE,
    ):
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if cooldown <= 0:
            raise ValueError("cooldown must be positive")
        self.name = name
        self.failure_threshold = failure_threshold
        self.cooldown = cooldown
        self.probe_lease = probe_lease
        self._clock = clock
        self._lock = threading.Lock()
        self._open = False
        self._failures = 0  # consecutive, while closed
        self._opened_at: float | None = None
        self._probe_since: float | None = None
        # Bumped on every trip and every recovery, so an attempt that started in an
        # earlier period cannot move this one (a slow call from before the outage
        # that fails after recovery says nothing about the model now).
        self._generation = 0
        self.trips = 0

    # reading --------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._state()

    def _state(self) -> BreakerState:
        if not self._open:
            return BreakerState.CLOSED
        assert self._opened_at is not None
        if self._clock() - self._opened_at >= self.cooldown:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def _probing(self) -> bool:
        return (
            self._probe_since is not None and self._clock() - self._probe_since < self.probe_lease
        )

    def available(self) -> bool:
        """Whether :meth:`acquire` would give a permit now."""
        with self._lock:
            state = self._state()
            return state is BreakerState.CLOSED or (
                state is BreakerState.HALF_OPEN and not self._probing()
            )

    @property
    def opened_at(self) -> float | None:
        """When it last opened (the clock's time), or None while closed."""
        with self._lock:
            return self._opened_at if self._open else None

    def retry_in(self) -> float:
        """Seconds until it lets a probe through (0 when it would now or is closed)."""
        with self._lock:
            if not self._open or self._opened_at is None:
                return 0.0
            return max(0.0, self._opened_at + self.cooldown - self._clock())

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            return {
                "model": self.name,
                "state": str(self._state()),
                "consecutive_failures": self._failures,
                "probing": self._open and self._probing(),
                "trips": self.trips,
            }

    # permits --------------------------------------------------------------

    def acquire(self) -> Permit | None:
        """A permit to try the model, or None: refused (open, or a probe is in flight)."""
        with self._lock:
            state = self._state()
            if state is BreakerState.CLOSED:
                return Permit(self, self._generation)
            if state is BreakerState.HALF_OPEN and not self._probing():
                self._probe_since = self._clock()
                return Permit(self, self._generation, probe=True)
            return None

    def force(self) -> Permit:
        """A permit in spite of the state, for when every model of a route is refused.
        Its outcome counts like a probe's: success closes, failure opens anew."""
        with self._lock:
            return Permit(self, self._generation, probe=self._open, forced=True)

    def success(self, permit: Permit) -> None:
        with self._lock:
            if permit.generation != self._generation:
                return
            if permit.probe:
                self._close()
            elif not self._open:
                self._failures = 0

    def failure(self, permit: Permit) -> None:
        with self._lock:
            if permit.generation != self._generation:
                return
            if permit.probe:
                self._trip()
            elif not self._open:
                self._failures += 1
                if self._failures >= self.failure_threshold:
                    self._trip()

    def release(self, permit: Permit) -> None:
        with self._lock:
            if permit.probe and permit.generation == self._generation and not permit.forced:
                self._probe_since = None

    def _trip(self) -> None:
        self._open = True
        self._opened_at = self._clock()
        self._probe_since = None
        self._failures = 0
        self._generation += 1
        self.trips += 1

    def _close(self) -> None:
        self._open = False
        self._opened_at = None
        self._probe_since = None
        self._failures = 0
        self._generation += 1


class Breakers:
    """Every model's breaker in this process, created on first use.

    ``settings`` gives a model's threshold and cooldown (a route's
    ``RoutingConfig.breaker_settings``); one value applies to every model.
    """

    def __init__(
        self,
        settings: BreakerSettings | Callable[[str], BreakerSettings] | None = None,
        *,
        clock: Clock = time.monotonic,
    ):
        self._settings = settings or BreakerSettings()
        self._clock = clock
        self._breakers: dict[str, CircuitBreaker] = {}
        self._lock = threading.Lock()

    def get(self, alias: str) -> CircuitBreaker:
        breaker = self._breakers.get(alias)
        if breaker is not None:
            return breaker
        with self._lock:
            breaker = self._breakers.get(alias)
            if breaker is None:
                settings = self._settings(alias) if callable(self._settings) else self._settings
                breaker = CircuitBreaker(
                    alias,
                    failure_threshold=settings.failure_threshold,
                    cooldown=settings.cooldown,
                    clock=self._clock,
                )
                self._breakers[alias] = breaker
        return breaker

    def snapshot(self) -> list[dict[str, object]]:
        """Every breaker's state, for an admin endpoint or a health check."""
        return [self._breakers[name].snapshot() for name in sorted(self._breakers)]
