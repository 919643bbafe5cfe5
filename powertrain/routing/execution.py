"""Running a route plan: attempts, retries, fallbacks, escalation, one deadline.

The gateway hands :meth:`RouteExecution.run` (or :meth:`RouteExecution.stream`)
a function that makes **one** attempt on one candidate model; the execution
decides everything else — which model next, whether and how long to wait, when
to stop — and records every attempt as a plain dict for the trace.

For each candidate, in the plan's order:

1. take a permit from the model's circuit breaker (refused: skip it);
2. make the attempt, bounded by the time left to the deadline (and by the
   route's ``attempt_timeout``, so a hung model leaves time for a fallback);
3. on success: a cascade asks ``accept``; an answer not good enough escalates
   to the next candidate, otherwise it is returned;
4. on failure (:func:`~powertrain.routing.retry.classify`): the caller's
   fault is raised at once; otherwise wait and retry the same model while the
   policy allows (``Retry-After``, backoff with jitter, within the deadline,
   never after a streamed byte); then move to the next candidate if the
   failure's kind is in the route's ``fallback_on`` — after a context overflow,
   to the next one with a larger window — or raise.

When every candidate failed, the last error is raised; when a cascade ran out
of steps, the last answer is returned even though it was not accepted.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from powertrain.errors import EngineOverloaded, PowertrainError, UpstreamTimeout
from powertrain.routing.breaker import Breakers, CircuitBreaker, Permit
from powertrain.routing.cascade import Verdict
from powertrain.routing.plan import Candidate, RoutePlan, Skipped
from powertrain.routing.retry import Failure, FailureKind, RetryPolicy, classify

T = TypeVar("T")

AttemptFn = Callable[[Candidate], Awaitable[T]]
StreamFn = Callable[[Candidate], AsyncIterator[T]]
AcceptFn = Callable[[T], Awaitable[Verdict | tuple[bool, str | None]] | Verdict]
Sleep = Callable[[float], Awaitable[None]]
AttemptHook = Callable[[dict[str, Any]], None]

_OUTCOMES = {
    FailureKind.ERROR: "error",
    FailureKind.TIMEOUT: "timeout",
    FailureKind.RATE_LIMIT: "rate_limited",
    FailureKind.CONTEXT_OVERFLOW: "context_overflow",
    FailureKind.CALLER: "caller_error",
}


class RouteUnavailable(EngineOverloaded):
    """Every model of a route is refused by its circuit breaker (``when_all_open = "fail"``)."""

    code = "route_unavailable"


class _Retry(Exception):
    def __init__(self, delay: float):
        self.delay = delay


class _Next(Exception):
    """Move on to the next candidate."""


class RouteExecution(Generic[T]):
    """One call's way through a plan. Use it once: ``run`` or ``stream``.

    ``attempts`` holds a record per attempt (also passed to ``on_attempt`` as it
    is made); ``answered_by`` is the candidate whose answer was returned and
    ``verdict`` the cascade's judgement of it; ``prompt_tokens``,
    ``completion_tokens`` and ``cost_usd`` add up every attempt that reported
    usage, rejected cascade steps included (they were paid for).
    """

    def __init__(
        self,
        plan: RoutePlan,
        *,
        breakers: Breakers,
        policy_for: Callable[[str], RetryPolicy],
        deadline: float | None = None,
        attempt_timeout: float | None = None,
        on_attempt: AttemptHook | None = None,
        sleep: Sleep = asyncio.sleep,
    ):
        self.plan = plan
        self.deadline = deadline
        self.attempt_timeout = attempt_timeout
        self.attempts: list[dict[str, Any]] = []
        self.skipped: list[Skipped] = []
        self.answered_by: Candidate | None = None
        self.verdict: Verdict | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cost_usd = 0.0
        self._breakers = breakers
        self._policy_for = policy_for
        self._on_attempt = on_attempt
        self._sleep = sleep
        self._index = -1
        self._refused: list[Candidate] = []
        self._forced = False
        self._used = False

    # -- the public drivers -------------------------------------------------

    async def run(self, attempt: AttemptFn[T], *, accept: AcceptFn[T] | None = None) -> T:
        """The first good answer; ``attempt(candidate)`` makes one engine attempt.

        ``accept(result)`` (cascades) returns a :class:`Verdict` or ``(ok, reason)``;
        it is not asked about the last candidate's answer, which is returned as is.
        """
        self._start()
        last_error: BaseException | None = None
        rejected: tuple[T, Candidate, Verdict] | None = None
        candidate = self._advance()
        while candidate is not None:
            tries, wait, after = 0, 0.0, None
            while True:
                if self._past_deadline():
                    if rejected is not None:
                        break
                    raise self._deadline_error()
                permit = self._permit(candidate)
                if permit is None:
                    break
                tries += 1
                started = time.perf_counter()
                try:
                    result = await self._bounded(attempt(candidate), candidate)
                except asyncio.CancelledError:
                    permit.release()
                    self._record(candidate, tries, wait, started, permit, status="cancelled")
                    raise
                except Exception as exc:
                    try:
                        self._failed(candidate, tries, wait, started, permit, exc)
                    except _Retry as retry:
                        await self._sleep(retry.delay)
                        wait = retry.delay
                        continue
                    except _Next:
                        last_error = after = exc
                        break
                    except Exception:
                        if rejected is None:
                            raise
                        break  # an answer that was not good enough beats no answer
                permit.success()
                usage = getattr(result, "usage", None)
                verdict = None
                if accept is not None and self._has_next(candidate):
                    try:
                        verdict = await _judge(accept, result)
                    except BaseException:
                        self._record(candidate, tries, wait, started, permit, usage=usage)
                        raise
                if verdict is not None and not verdict.accepted:
                    self._record(
                        candidate, tries, wait, started, permit, usage=usage,
                        outcome="rejected", verdict=verdict, then="escalate",
                    )  # fmt: skip
                    rejected = (result, candidate, verdict)
                    break
                self._record(candidate, tries, wait, started, permit, usage=usage, verdict=verdict)
                self.answered_by, self.verdict = candidate, verdict
                return result
            if rejected is not None and self._past_deadline():
                break
            candidate = self._advance(after=after)
        if rejected is not None:
            result, self.answered_by, self.verdict = rejected
            return result
        raise self._exhausted(last_error)

    async def stream(self, open_stream: StreamFn[T]) -> AsyncGenerator[T, None]:
        """The chunks of the first candidate that gets as far as its first chunk.

        ``open_stream(candidate)`` returns the engine's chunk iterator. Failures
        before the first chunk are retried and fall back like :meth:`run`'s;
        after it, nothing is retried and the error reaches the caller. Only the
        wait for the first chunk is bounded here: the gateway bounds the whole
        stream by the call's deadline, as it does for a plain model.
        """
        self._start()
        last_error: BaseException | None = None
        candidate = self._advance()
        while candidate is not None:
            tries, wait, after = 0, 0.0, None
            while True:
                if self._past_deadline():
                    raise self._deadline_error()
                permit = self._permit(candidate)
                if permit is None:
                    break
                tries += 1
                started = time.perf_counter()
                chunks: AsyncIterator[T] | None = None
                try:
                    chunks = open_stream(candidate)
                    first = await self._bounded(anext(chunks), candidate)
                except StopAsyncIteration:
                    permit.success()
                    self._record(candidate, tries, wait, started, permit)
                    self.answered_by = candidate
                    return
                except asyncio.CancelledError:
                    await _close(chunks)
                    permit.release()
                    self._record(candidate, tries, wait, started, permit, status="cancelled")
                    raise
                except Exception as exc:
                    await _close(chunks)
                    try:
                        self._failed(candidate, tries, wait, started, permit, exc)
                    except _Retry as retry:
                        await self._sleep(retry.delay)
                        wait = retry.delay
                        continue
                    except _Next:
                        last_error = after = exc
                        break
                assert chunks is not None
                self.answered_by = candidate
                passing = self._pass_through(chunks, first, candidate, tries, wait, started, permit)
                try:
                    async for chunk in passing:
                        yield chunk
                finally:
                    await passing.aclose()
                return
            candidate = self._advance(after=after)
        raise self._exhausted(last_error)

    # -- streaming after the first chunk --------------------------------------

    async def _pass_through(
        self,
        chunks: AsyncIterator[T],
        first: T,
        candidate: Candidate,
        tries: int,
        wait: float,
        started: float,
        permit: Permit,
    ) -> AsyncGenerator[T, None]:
        usage = getattr(first, "usage", None)
        try:
            yield first
            async for chunk in chunks:
                usage = getattr(chunk, "usage", None) or usage
                yield chunk
        except (asyncio.CancelledError, GeneratorExit):
            permit.release()
            self._record(candidate, tries, wait, started, permit, status="cancelled", usage=usage)
            raise
        except Exception as exc:
            # Part of the answer is with the caller: never retried, never another model.
            failure = classify(exc)
            (permit.failure if failure.upstream_fault else permit.release)()
            usage = getattr(exc, "usage", None) or usage
            self._record(
                candidate, tries, wait, started, permit, error=exc, failure=failure,
                usage=usage, streamed=True, then="raise",
            )  # fmt: skip
            raise
        finally:
            await _close(chunks)
        permit.success()
        self._record(candidate, tries, wait, started, permit, usage=usage)

    # -- decisions -------------------------------------------------------------

    def _start(self) -> None:
        if self._used:
            raise RuntimeError("a RouteExecution runs once; plan and execute the route again")
        self._used = True

    def _failed(
        self,
        candidate: Candidate,
        tries: int,
        wait: float,
        started: float,
        permit: Permit,
        error: BaseException,
    ) -> None:
        """Record a failed attempt; raise ``_Retry``, ``_Next`` or the error itself."""
        failure = classify(error)
        (permit.failure if failure.upstream_fault else permit.release)()
        then = "raise"
        delay: float | None = None
        if not failure.caller_fault and not self._past_deadline():
            delay = self._policy_for(candidate.model).delay(tries, error, deadline=self.deadline)
            if delay is not None and self._breakers.get(candidate.model).available():
                then = "retry"
            elif failure.kind in self.plan.fallback_on and self._has_next(candidate):
                then = "fallback"
        self._record(
            candidate, tries, wait, started, permit, error=error, failure=failure, then=then
        )
        if then == "retry":
            assert delay is not None
            raise _Retry(delay)
        if then == "fallback":
            raise _Next
        if self._past_deadline() and not isinstance(error, UpstreamTimeout):
            raise self._deadline_error() from error
        raise error

    def _has_next(self, candidate: Candidate) -> bool:
        return self._index + 1 < len(self.plan.candidates) and not candidate.forced

    def _advance(self, after: BaseException | None = None) -> Candidate | None:
        """The next candidate to try; after a context overflow, the next with a larger
        window than the one that overflowed (and room for the request, when known)."""
        overflowed: Candidate | None = None
        if after is not None and classify(after).kind is FailureKind.CONTEXT_OVERFLOW:
            overflowed = self.plan.candidates[self._index]
        while self._index + 1 < len(self.plan.candidates):
            self._index += 1
            candidate = self.plan.candidates[self._index]
            if overflowed is not None and not _larger(candidate, overflowed, self.plan):
                self.skipped.append(
                    Skipped(
                        candidate.model,
                        f"context window {candidate.context_window} is no larger than "
                        f"{overflowed.model!r}'s, which overflowed",
                    )
                )
                continue
            return candidate
        return self._force_one()

    def _permit(self, candidate: Candidate) -> Permit | None:
        breaker = self._breakers.get(candidate.model)
        if candidate.forced:
            return breaker.force()
        permit = breaker.acquire()
        if permit is None:
            self._refused.append(candidate)
            self.skipped.append(Skipped(candidate.model, refusal(breaker)))
        return permit

    def _force_one(self) -> Candidate | None:
        """Every candidate was refused by its breaker and nothing was tried: the one open
        longest gets one forced attempt (or, with ``when_all_open = "fail"``, none)."""
        if self.attempts or not self._refused or self._forced:
            return None
        self._forced = True
        if self.plan.when_all_open == "fail":
            raise self._unavailable()
        oldest = min(
            self._refused,
            key=lambda c: self._breakers.get(c.model).opened_at or float("-inf"),
        )
        return Candidate(
            model=oldest.model,
            reason="forced",
            detail="every model's circuit breaker was open",
            engine=oldest.engine,
            context_window=oldest.context_window,
            price_input=oldest.price_input,
            price_output=oldest.price_output,
            forced=True,
        )

    def _unavailable(self) -> RouteUnavailable:
        return route_unavailable(
            self.plan.route, [self._breakers.get(c.model) for c in self._refused]
        )

    def _exhausted(self, last_error: BaseException | None) -> BaseException:
        if last_error is not None:
            return last_error
        return self._unavailable()

    # -- time --------------------------------------------------------------------

    def _remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def _past_deadline(self) -> bool:
        remaining = self._remaining()
        return remaining is not None and remaining <= 0

    def _deadline_error(self) -> UpstreamTimeout:
        if self.plan.strategy == "model":
            return UpstreamTimeout(
                f"model {self.plan.route!r} did not answer before the call's deadline "
                "(setting request_timeout)"
            )
        return UpstreamTimeout(
            f"route {self.plan.route!r} did not answer before the call's deadline "
            "(setting request_timeout, or the route's timeout)"
        )

    async def _bounded(self, step: Awaitable[T], candidate: Candidate) -> T:
        remaining = self._remaining()
        budget = remaining
        if self.attempt_timeout is not None and (budget is None or self.attempt_timeout < budget):
            budget = self.attempt_timeout
        if budget is None:
            return await step
        try:
            async with asyncio.timeout(budget):
                return await step
        except TimeoutError:
            if self._past_deadline():
                raise self._deadline_error() from None
            raise UpstreamTimeout(
                f"model {candidate.model!r} did not answer within the route's "
                f"attempt_timeout of {budget:g} s"
            ) from None

    # -- records ---------------------------------------------------------------

    def _record(
        self,
        candidate: Candidate,
        tries: int,
        wait: float,
        started: float,
        permit: Permit,
        *,
        status: str | None = None,
        outcome: str | None = None,
        error: BaseException | None = None,
        failure: Failure | None = None,
        usage: Any = None,
        verdict: Verdict | None = None,
        streamed: bool = False,
        then: str | None = None,
    ) -> None:
        if status is None:
            status = "error" if error is not None else "ok"
        if outcome is None:
            if status == "cancelled":
                outcome = "cancelled"
            elif failure is not None:
                outcome = _OUTCOMES[failure.kind]
            else:
                outcome = "ok"
        record: dict[str, Any] = {
            "model": candidate.model,
            "engine": candidate.engine or "unknown",
            "status": status,
            "latency_ms": (time.perf_counter() - started) * 1000,
            "error": _message(error) if error is not None else None,
            "route": self.plan.route,
            "n": len(self.attempts) + 1,
            "attempt": tries,
            "reason": candidate.reason if tries == 1 else "retry",
            "outcome": outcome,
            "error_type": type(error).__name__ if error is not None else None,
            "wait_s": round(wait, 4),
            "breaker": permit.kind,
        }
        if candidate.detail:
            record["detail"] = candidate.detail
        if candidate.similarity is not None:
            record["similarity"] = round(candidate.similarity, 4)
        if usage is not None:
            prompt = int(getattr(usage, "prompt_tokens", 0) or 0)
            completion = int(getattr(usage, "completion_tokens", 0) or 0)
            cost = candidate.cost(prompt, completion)
            record.update(prompt_tokens=prompt, completion_tokens=completion, cost_usd=cost)
            self.prompt_tokens += prompt
            self.completion_tokens += completion
            self.cost_usd += cost
        if verdict is not None:
            record["verdict"] = verdict.describe()
        if streamed:
            record["streamed"] = True
        if then is not None:
            record["then"] = then
        self.attempts.append(record)
        if self._on_attempt is not None:
            self._on_attempt(record)

    def describe(self) -> dict[str, Any]:
        """The plan, what was skipped while running it, and which model answered."""
        out = self.plan.describe()
        skipped = [s.describe() for s in (*self.plan.skipped, *self.skipped)]
        if skipped:
            out["skipped"] = skipped
        out["answered_by"] = self.answered_by.model if self.answered_by else None
        if self.verdict is not None:
            out["verdict"] = self.verdict.describe()
        return out


# ------------------------------------------------------------------ helpers


def _larger(candidate: Candidate, overflowed: Candidate, plan: RoutePlan) -> bool:
    if candidate.context_window is None:
        return True  # unknown: its own check (or the upstream) decides
    if overflowed.context_window is not None and candidate.context_window <= (
        overflowed.context_window
    ):
        return False
    return candidate.fits(plan.needed_tokens)


def refusal(breaker: CircuitBreaker) -> str:
    """Why a plan or an execution skipped a model, for the trace."""
    retry_in = breaker.retry_in()
    if retry_in > 0:
        return f"circuit breaker open (a probe in {retry_in:.0f} s)"
    return "circuit breaker half-open, its one probe already in flight"


def route_unavailable(route: str, refused: Sequence[CircuitBreaker]) -> RouteUnavailable:
    waits = [breaker.retry_in() for breaker in refused] or [1.0]
    return RouteUnavailable(
        f"every model of route {route!r} is failing and its circuit breaker is open; "
        "try again shortly",
        retry_after=max(1.0, min(waits)),
    )


def _message(error: BaseException) -> str:
    if isinstance(error, PowertrainError):
        return error.message
    return str(error) or type(error).__name__


async def _judge(accept: AcceptFn[T], result: T) -> Verdict:
    verdict: Any = accept(result)
    if inspect.isawaitable(verdict):
        verdict = await verdict
    if isinstance(verdict, Verdict):
        return verdict
    accepted, reason = verdict
    return Verdict(bool(accepted), reason)


async def _close(chunks: AsyncIterator[Any] | None) -> None:
    close = getattr(chunks, "aclose", None)
    if close is not None:
        await close()
