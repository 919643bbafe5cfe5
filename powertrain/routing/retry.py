"""What a failed attempt means for routing, and how long to wait before trying again.

One function, :func:`classify`, reads an error once: is it the caller's fault
(never retried, never a reason to fall back), an upstream failure worth
another try, a rate limit with its ``Retry-After``, a timeout, or a prompt too
big for the model (a reason to fall back to a larger window, never to retry).
:class:`RetryPolicy` turns that into a wait, reusing the engines' own backoff
(:mod:`powertrain.engines._retry`) so both compute delays the same way.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from enum import StrEnum

from powertrain.catalog import ModelConfig
from powertrain.engines._retry import (
    DEFAULT_BACKOFF_BASE,
    DEFAULT_BACKOFF_MAX,
    DEFAULT_MAX_RETRY_AFTER,
)
from powertrain.engines._retry import RetryPolicy as _EngineRetryPolicy
from powertrain.errors import (
    BudgetExceeded,
    ContextWindowExceeded,
    EngineError,
    EngineOverloaded,
    KeyRateLimited,
    OutputInvalid,
    PowertrainError,
    RateLimited,
    StreamInterrupted,
    UpstreamError,
    UpstreamTimeout,
)


class FailureKind(StrEnum):
    """Why an attempt failed, in the words ``fallback_on`` uses."""

    ERROR = "error"  # the upstream failed (5xx, unreachable, refused our key, a bug)
    TIMEOUT = "timeout"
    RATE_LIMIT = "rate_limit"  # 429, or a local model's full queue
    CONTEXT_OVERFLOW = "context_overflow"  # the prompt does not fit this model's window
    CALLER = "caller"  # the request itself is wrong: no retry, no fallback


FALLBACK_KINDS = frozenset(
    {
        FailureKind.ERROR,
        FailureKind.TIMEOUT,
        FailureKind.RATE_LIMIT,
        FailureKind.CONTEXT_OVERFLOW,
    }
)


@dataclass(frozen=True, slots=True)
class Failure:
    """One error, read once."""

    kind: FailureKind
    retryable: bool  # another attempt on the same model may succeed
    upstream_fault: bool  # counts against the model's circuit breaker
    retry_after: float | None = None  # what the upstream asked us to wait

    @property
    def caller_fault(self) -> bool:
        return self.kind is FailureKind.CALLER


def classify(error: BaseException) -> Failure:
    """What ``error`` from one attempt means for retries, fallbacks and the breaker.

    - Our own limits (an API key's rate limit or budget) and 4xx that are the
      request's fault (bad parameters, a capability the model lacks) are the
      caller's: never retried, never a reason to fall back.
    - A context overflow is not retried (it would fail again) but may fall back.
    - 429 and a full local queue are retried after their ``Retry-After`` and do
      not count against the breaker: the model is healthy, just busy, and says
      when to come back.
    - 5xx, timeouts and unreachable upstreams are retried and count.
    - 401/403 from the upstream (our key is refused), a missing engine package
      and unexpected exceptions count but are not retried: they will not fix
      themselves in a second.
    - A stream that broke after its first chunk counts, and is never retried
      (the caller already has part of the answer; see ``RetryPolicy.delay``).
    - Invalid output (after a task's repairs) is not the upstream's fault and
      not retried; it may fall back as an ``error``.
    """
    if isinstance(error, KeyRateLimited | BudgetExceeded):
        return Failure(FailureKind.CALLER, retryable=False, upstream_fault=False)
    if isinstance(error, ContextWindowExceeded):
        return Failure(FailureKind.CONTEXT_OVERFLOW, retryable=False, upstream_fault=False)
    if isinstance(error, RateLimited | EngineOverloaded):
        return Failure(
            FailureKind.RATE_LIMIT,
            retryable=True,
            upstream_fault=False,
            retry_after=error.retry_after,
        )
    if isinstance(error, UpstreamTimeout | TimeoutError):
        return Failure(FailureKind.TIMEOUT, retryable=True, upstream_fault=True)
    if isinstance(error, UpstreamError):
        if error.upstream_status == 429:
            return Failure(
                FailureKind.RATE_LIMIT,
                retryable=True,
                upstream_fault=False,
                retry_after=error.retry_after,
            )
        if error.status_code == 400:  # a 4xx other than 401/403: the request's fault
            return Failure(FailureKind.CALLER, retryable=False, upstream_fault=False)
        return Failure(
            FailureKind.ERROR,
            retryable=error.retryable,
            upstream_fault=True,
            retry_after=error.retry_after,
        )
    if isinstance(error, OutputInvalid):
        return Failure(FailureKind.ERROR, retryable=False, upstream_fault=False)
    if isinstance(error, StreamInterrupted):
        return Failure(FailureKind.ERROR, retryable=False, upstream_fault=True)
    if isinstance(error, EngineError):
        # Failed connections are the only other failure an engine itself would retry.
        return Failure(
            FailureKind.ERROR,
            retryable=error.code == "upstream_unreachable",
            upstream_fault=True,
        )
    if isinstance(error, PowertrainError) and error.status_code < 500:
        return Failure(FailureKind.CALLER, retryable=False, upstream_fault=False)
    if isinstance(error, asyncio.CancelledError):  # pragma: no cover - callers re-raise first
        return Failure(FailureKind.CALLER, retryable=False, upstream_fault=False)
    return Failure(FailureKind.ERROR, retryable=False, upstream_fault=True)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How many times to try one model again, and how long to wait before each try.

    ``retries`` is the number of extra attempts on the same model after its
    first (0: fall back at once). Waits are exponential with full jitter
    (uniform in ``[0, min(backoff_max, backoff_base * 2**n)]``), or exactly the
    upstream's ``Retry-After`` when it sent one; a ``Retry-After`` longer than
    ``max_retry_after`` is not waited for (the router falls back instead).
    """

    retries: int = 2
    backoff_base: float = DEFAULT_BACKOFF_BASE
    backoff_max: float = DEFAULT_BACKOFF_MAX
    max_retry_after: float = DEFAULT_MAX_RETRY_AFTER
    _engine: _EngineRetryPolicy = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # The engines' policy holds the backoff formula and the deadline rule; this one
        # adds what only the router knows (what an error means, whether bytes were sent).
        object.__setattr__(
            self,
            "_engine",
            _EngineRetryPolicy(
                max_retries=self.retries,
                backoff_base=self.backoff_base,
                backoff_max=self.backoff_max,
                max_retry_after=self.max_retry_after,
            ),
        )

    @classmethod
    def for_model(cls, model: ModelConfig) -> RetryPolicy:
        """A plain model alias keeps its own ``max_retries`` and ``retry_*`` options."""
        engine = _EngineRetryPolicy.for_model(model)
        return cls(
            retries=engine.max_retries,
            backoff_base=engine.backoff_base,
            backoff_max=engine.backoff_max,
            max_retry_after=engine.max_retry_after,
        )

    def without_retries(self) -> RetryPolicy:
        return RetryPolicy(0, self.backoff_base, self.backoff_max, self.max_retry_after)

    def backoff(self, attempt: int) -> float:
        """A jittered wait after ``attempt`` failed attempts (1-based)."""
        return self._engine.backoff(attempt - 1)

    def delay(
        self,
        attempt: int,
        error: BaseException,
        *,
        deadline: float | None = None,
        streamed: bool = False,
    ) -> float | None:
        """Seconds to wait before trying the same model again after ``attempt`` failed
        attempts on it (1-based), or None: do not retry it.

        None when the error is not worth a retry (see :func:`classify`), when any
        part of the answer was already streamed to the caller, when the retries
        are used up, when the upstream asked for a longer wait than
        ``max_retry_after``, or when the wait would reach ``deadline`` (a
        :func:`time.monotonic` instant).
        """
        if streamed:
            return None
        failure = classify(error)
        if not failure.retryable:
            return None
        return self._engine.wait(attempt - 1, failure.retry_after, deadline)
