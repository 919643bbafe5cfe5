"""One call in flight: engine attempts under one deadline, and exactly one trace.

A ``Call`` is opened by the gateway once the model is resolved. ``result`` and
``stream`` make one engine attempt and finish the call; a task that repairs
invalid output makes several attempts with ``complete`` and then ``finish``es
itself. Every outcome — success, error, timeout or a caller who left — ends in
``finish``, which submits the trace to the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from powertrain.catalog import ModelConfig
from powertrain.engines._retry import retry_observer
from powertrain.engines.base import Engine, estimate_tokens
from powertrain.errors import PowertrainError, UpstreamTimeout
from powertrain.schemas import ChatChunk, ChatCompletionRequest, ChatResult, Usage
from powertrain.schemas.trace import Attempt, Trace

if TYPE_CHECKING:
    from powertrain.access import Admission
    from powertrain.cache.stage import CacheSlot
    from powertrain.gateway import Gateway
    from powertrain.guard.stage import GuardSlot
    from powertrain.routing.stage import CallRoute
    from powertrain.store.keys import ApiKeyRecord

T = TypeVar("T")


@dataclass
class CallContext:
    """Who is calling and how; recorded on the trace."""

    api_key_id: str | None = None
    source: str = "api"  # api | cli | python
    raw_request: dict[str, Any] | None = None  # the body as sent, to store without re-dumping
    key: ApiKeyRecord | None = None  # a virtual API key: its limits and budget apply
    headers: dict[str, str] = field(default_factory=dict)  # those a stage reads (cache control)


class _StreamDeadline:
    """One timer for a whole stream, which interrupts only a wait on the engine.

    A timeout scope cannot span an async generator's yields (it would fire in the
    caller's own awaits between chunks), and a scope per chunk costs a timer per
    chunk; this arms one timer and cancels the task only while it waits in
    ``wait``, turning that cancellation into ``TimeoutError``.
    """

    def __init__(self, seconds: float):
        self.expired = False
        self._waiting: asyncio.Task[Any] | None = None
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(loop.time() + max(0.0, seconds), self._expire)

    def _expire(self) -> None:
        self.expired = True
        if self._waiting is not None:
            self._waiting.cancel()

    async def wait(self, step: Awaitable[T]) -> T:
        if self.expired:
            close = getattr(step, "close", None)
            if close is not None:
                close()  # never started: release it without a "never awaited" warning
            raise TimeoutError
        task = asyncio.current_task()
        assert task is not None
        cancelling = task.cancelling()
        self._waiting = task
        try:
            return await step
        except asyncio.CancelledError:
            if self.expired and task.uncancel() <= cancelling:
                raise TimeoutError from None
            raise
        finally:
            self._waiting = None

    def close(self) -> None:
        self._timer.cancel()


@dataclass
class Call:
    """One call in flight. ``finish`` records its trace exactly once."""

    gateway: Gateway
    trace: Trace
    started: float = field(default_factory=time.perf_counter)
    engine: Engine | None = None
    model: ModelConfig | None = None
    request: ChatCompletionRequest | None = None
    first_token_at: float | None = None
    usage: Usage = field(default_factory=Usage)  # summed over attempts
    compute_seconds: float | None = None
    admission: Admission | None = None  # what a keyed call was charged up front
    cache_status: str = "bypass"  # hit | miss | bypass, for the x-powertrain-cache header
    cache_slot: CacheSlot | None = None  # set on a cache miss: stores a good answer
    guard: GuardSlot | None = None  # output guardrails, when any apply
    route: CallRoute | None = None  # a call to a route: its plan picks the models
    _finished: bool = False
    _attempt_started: float = 0.0  # when the engine's current attempt began
    _waited: float | None = None  # the engine's wait before its current attempt (a retry)
    _final_recorded: bool = False  # complete() recorded the attempt that ended the call

    def __post_init__(self) -> None:
        # One deadline for the whole call: repairs and retries share it.
        self.deadline = time.monotonic() + self.timeout

    @property
    def timeout(self) -> float:
        return self.gateway.config.settings.request_timeout

    @property
    def trace_id(self) -> str:
        return self.trace.id

    @property
    def completion_id(self) -> str:
        return "chatcmpl-" + self.trace.id[3:]

    def finish(
        self,
        *,
        output: str | None = None,
        finish_reason: str | None = None,
        usage: Usage | None = None,
        usage_estimated: bool = False,
        compute_seconds: float | None = None,
        error: BaseException | None = None,
        cost_usd: float | None = None,
    ) -> None:
        """Record the outcome and submit the trace (once). ``cost_usd`` overrides the
        price of the usage (a cache hit spent nothing)."""
        if self._finished:
            return
        self._finished = True
        now = time.perf_counter()
        t = self.trace
        t.latency_ms = (now - self.started) * 1000
        if self.first_token_at is not None:
            t.ttft_ms = (self.first_token_at - self.started) * 1000
        t.output = output
        t.finish_reason = finish_reason
        usage = usage or (self.usage if self.trace.attempts else None)
        if usage is not None:
            t.prompt_tokens, t.completion_tokens = usage.prompt_tokens, usage.completion_tokens
        if usage_estimated:
            t.metadata["usage_estimated"] = True
        if cost_usd is not None:
            t.cost_usd = cost_usd
        elif self.route is not None:  # every attempt's tokens at its own model's prices
            t.cost_usd = self.route.cost_usd
        elif self.model is not None:
            t.cost_usd = self.model.cost(t.prompt_tokens, t.completion_tokens)
        t.compute_seconds = compute_seconds if compute_seconds is not None else self.compute_seconds
        if error is None:
            t.status, t.http_status = "ok", 200
        else:
            t.status, t.error_type, t.http_status, t.error_message = self._describe(error)
        if self.engine is not None and self.route is None and not self._final_recorded:
            latency = _ms_since(self._attempt_started) if self._attempt_started else t.latency_ms
            self._record_attempt(latency, error=t.error_message, status=t.status)
        if self.admission is not None:
            self.gateway.access.settle_soon(
                self.admission,
                tokens=t.prompt_tokens + t.completion_tokens,
                cost_usd=t.cost_usd,
            )
        self.gateway.traces.submit(t)

    def _describe(self, error: BaseException) -> tuple[Any, str, int, str]:
        scrub = self.gateway.scrubber.text
        if isinstance(error, asyncio.CancelledError | GeneratorExit):
            return (
                "cancelled",
                "client_disconnected",
                499,
                "the client disconnected before the answer was complete",
            )
        if isinstance(error, PowertrainError):
            return "error", error.error_type, error.status_code, scrub(error.message)
        return "error", type(error).__name__, 500, scrub(str(error)) or type(error).__name__

    def _record_attempt(self, latency_ms: float, *, error: str | None, status: Any) -> None:
        assert self.engine is not None
        attempt: Attempt = {
            "model": self.model.alias if self.model else self.trace.model,
            "engine": self.engine.name,
            "status": status,
            "latency_ms": latency_ms,
            "error": error,
        }
        if self._waited is not None:
            attempt["wait_s"] = self._waited
        self.trace.attempts.append(attempt)
        self._waited = None

    def _engine_retried(self, error: PowertrainError, wait: float) -> None:
        """An engine's own retry inside this call: its failed attempt goes in the trace."""
        self._record_attempt(
            _ms_since(self._attempt_started),
            error=self.gateway.scrubber.text(error.message),
            status="error",
        )
        self._waited = wait
        self._attempt_started = time.perf_counter() + wait

    @contextlib.contextmanager
    def _observing_retries(self) -> Iterator[None]:
        self._attempt_started = time.perf_counter()
        token = retry_observer.set(self._engine_retried)
        try:
            yield
        finally:
            with contextlib.suppress(ValueError):  # a stream closed from another context
                retry_observer.reset(token)

    def _usage_of_partial(self, text: str) -> Usage:
        prompt = 0
        if self.engine is not None and self.request is not None:
            try:
                prompt = self.engine.count_tokens(self.request)
            except Exception:
                prompt = 0
        return Usage(prompt_tokens=prompt, completion_tokens=estimate_tokens(text) if text else 0)

    async def stream(self) -> AsyncIterator[ChatChunk]:
        """The engine's chunks, traced; cancelling or abandoning it stops the engine."""
        assert self.request is not None
        parts: list[str] = []
        last = ChatChunk()
        deadline = _StreamDeadline(self.deadline - time.monotonic())
        if self.route is not None:
            chunks = self.route.stream(self.request)
        else:
            assert self.engine is not None
            chunks = self.engine.stream(self.request, deadline=self.deadline)
        if self.guard is not None:
            chunks = self.guard.guard_stream(self, chunks)
        with self._observing_retries():
            try:
                while True:
                    try:
                        chunk = await deadline.wait(anext(chunks))
                    except StopAsyncIteration:
                        break
                    if self.first_token_at is None:
                        self.first_token_at = time.perf_counter()
                    if chunk.delta:
                        parts.append(chunk.delta)
                    last = chunk
                    yield chunk
            except TimeoutError:
                text = "".join(parts)
                error = UpstreamTimeout(self._deadline_message())
                self.finish(
                    output=text,
                    usage=self._usage_of_partial(text),
                    usage_estimated=True,
                    error=error,
                )
                raise error from None
            except BaseException as exc:
                text = "".join(parts)
                self.finish(
                    output=text, usage=self._usage_of_partial(text), usage_estimated=True, error=exc
                )
                raise
            finally:
                deadline.close()
                await chunks.aclose()  # type: ignore[attr-defined]
        text = "".join(parts)
        usage = last.usage or self._usage_of_partial(text)
        finish_reason = last.finish_reason or "stop"
        self._note_confidence(last.confidence)
        self.finish(
            output=text,
            finish_reason=finish_reason,
            usage=usage,
            usage_estimated=last.usage is None,
            compute_seconds=last.compute_seconds,
        )
        if self.cache_slot is not None:
            answer = ChatResult(content=text, finish_reason=finish_reason, usage=usage)
            await self.cache_slot.store(self, answer)

    async def complete(self, request: ChatCompletionRequest | None = None) -> ChatResult:
        """One engine attempt (or a route's attempts), recorded on the trace; the call
        stays open."""
        request = request or self.request
        assert request is not None
        if self.route is not None:
            result = await self.route.run(request)  # it records each attempt itself
            return self._answered(result)
        assert self.engine is not None
        remaining = self.deadline - time.monotonic()
        self._final_recorded = True  # every way out of here records its attempt
        try:
            with self._observing_retries():
                if remaining <= 0:
                    raise TimeoutError
                if self.engine.capabilities.chat_honours_deadline:
                    result = await self.engine.chat(request, deadline=self.deadline)
                else:
                    async with asyncio.timeout(remaining):
                        result = await self.engine.chat(request, deadline=self.deadline)
        except TimeoutError:
            error = UpstreamTimeout(self._deadline_message())
            self._record_attempt(
                _ms_since(self._attempt_started), error=error.message, status="error"
            )
            raise error from None
        except BaseException as exc:
            status, _, _, message = self._describe(exc)
            self._record_attempt(_ms_since(self._attempt_started), error=message, status=status)
            raise
        self._record_attempt(_ms_since(self._attempt_started), error=None, status="ok")
        return self._answered(result)

    def _answered(self, result: ChatResult) -> ChatResult:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.usage = Usage(
            prompt_tokens=self.usage.prompt_tokens + result.usage.prompt_tokens,
            completion_tokens=self.usage.completion_tokens + result.usage.completion_tokens,
        )
        if result.compute_seconds is not None:
            self.compute_seconds = (self.compute_seconds or 0.0) + result.compute_seconds
        self._note_confidence(result.confidence)
        return result

    def _note_confidence(self, confidence: float | None) -> None:
        """An engine's calibrated confidence in its answer goes in the trace (the last
        attempt's, as the answer is)."""
        if confidence is not None:
            self.trace.metadata["confidence"] = round(confidence, 6)

    async def result(self) -> ChatResult:
        """The whole answer at once (not streamed)."""
        try:
            result = await self.complete()
            if self.guard is not None:
                result = self.guard.check_result(self, result)
        except BaseException as exc:
            self.finish(error=exc)
            raise
        self.finish(
            output=result.content,
            finish_reason=result.finish_reason,
            usage=result.usage,
            compute_seconds=result.compute_seconds,
        )
        if self.cache_slot is not None:
            await self.cache_slot.store(self, result)
        return result

    def _deadline_message(self) -> str:
        return (
            f"model {self.trace.model!r} did not answer within the {self.timeout:g} s deadline "
            "(setting request_timeout)"
        )


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


class CallView:
    """What a ``ChatCall`` that answers for an open ``Call`` shows of it (a task call,
    a cache hit): its trace id, completion id and cache status."""

    call: Call

    @property
    def trace_id(self) -> str:
        return self.call.trace_id

    @property
    def completion_id(self) -> str:
        return self.call.completion_id

    @property
    def cache_status(self) -> str:
        return self.call.cache_status
