"""The request path: one call in, one answer (or stream) out, and exactly one trace.

Stages run in order — resolve the model, apply its defaults, check limits and
the context window, call the engine under a deadline — and every outcome,
success, error, timeout or a caller who left, ends in ``Call.finish`` which
submits one trace to the writer. Later stages (guardrails, cache, routing,
tasks) slot in here; the server, the CLI and the Python API all go through it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from powertrain.catalog import ModelConfig, ModelRef
from powertrain.config import Config
from powertrain.engines.base import Engine, estimate_tokens
from powertrain.engines.registry import EnginePool
from powertrain.errors import (
    ContextWindowExceeded,
    InvalidRequest,
    ModelNotFound,
    PowertrainError,
    UpstreamTimeout,
)
from powertrain.redact import SecretScrubber
from powertrain.schemas import ChatChunk, ChatCompletionRequest, ChatResult, EmbeddingResult, Usage
from powertrain.schemas.embeddings import EmbeddingRequest
from powertrain.schemas.trace import Trace
from powertrain.store import Database, TraceStore
from powertrain.tracing import TraceWriter

T = TypeVar("T")

# Request fields a catalog entry's ``params`` may default.
_DEFAULTABLE = (
    "temperature",
    "top_p",
    "max_tokens",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
)


@dataclass
class CallContext:
    """Who is calling and how; recorded on the trace."""

    api_key_id: str | None = None
    source: str = "api"  # api | cli | python
    raw_request: dict[str, Any] | None = None  # the body as sent, to store without re-dumping


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
        self._timer = loop.call_at(loop.time() + seconds, self._expire)

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
    _finished: bool = False

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
    ) -> None:
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
        if usage is not None:
            t.prompt_tokens, t.completion_tokens = usage.prompt_tokens, usage.completion_tokens
        if usage_estimated:
            t.metadata["usage_estimated"] = True
        if self.model is not None:
            t.cost_usd = self.model.cost(t.prompt_tokens, t.completion_tokens)
        t.compute_seconds = compute_seconds
        if error is None:
            t.status, t.http_status = "ok", 200
        else:
            scrub = self.gateway.scrubber.text
            if isinstance(error, asyncio.CancelledError | GeneratorExit):
                t.status, t.error_type, t.http_status = "cancelled", "client_disconnected", 499
                t.error_message = "the client disconnected before the answer was complete"
            elif isinstance(error, PowertrainError):
                t.status, t.error_type = "error", error.error_type
                t.error_message, t.http_status = scrub(error.message), error.status_code
            else:
                t.status, t.error_type, t.http_status = "error", type(error).__name__, 500
                t.error_message = scrub(str(error)) or type(error).__name__
        if self.engine is not None:
            t.attempts.append(
                {
                    "model": t.model,
                    "engine": self.engine.name,
                    "status": t.status,
                    "latency_ms": t.latency_ms,
                    "error": t.error_message,
                }
            )
        self.gateway.traces.submit(t)

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
        assert self.engine is not None and self.request is not None
        parts: list[str] = []
        last = ChatChunk()
        timeout = self.gateway.config.settings.request_timeout
        deadline = _StreamDeadline(timeout)
        chunks = self.engine.stream(self.request, deadline=time.monotonic() + timeout)
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
                output=text, usage=self._usage_of_partial(text), usage_estimated=True, error=error
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
        usage = last.usage
        self.finish(
            output=text,
            finish_reason=last.finish_reason or "stop",
            usage=usage or self._usage_of_partial(text),
            usage_estimated=usage is None,
            compute_seconds=last.compute_seconds,
        )

    async def result(self) -> ChatResult:
        """The whole answer at once (not streamed)."""
        assert self.engine is not None and self.request is not None
        timeout = self.gateway.config.settings.request_timeout
        deadline = time.monotonic() + timeout
        try:
            if self.engine.capabilities.chat_honours_deadline:
                result = await self.engine.chat(self.request, deadline=deadline)
            else:
                async with asyncio.timeout(timeout):
                    result = await self.engine.chat(self.request, deadline=deadline)
        except TimeoutError:
            error = UpstreamTimeout(self._deadline_message())
            self.finish(error=error)
            raise error from None
        except BaseException as exc:
            self.finish(error=exc)
            raise
        self.first_token_at = time.perf_counter()
        self.finish(
            output=result.content,
            finish_reason=result.finish_reason,
            usage=result.usage,
            compute_seconds=result.compute_seconds,
        )
        return result

    def _deadline_message(self) -> str:
        timeout = self.gateway.config.settings.request_timeout
        return (
            f"model {self.trace.model!r} did not answer within the {timeout:g} s deadline "
            "(setting request_timeout)"
        )


class Gateway:
    """Owns the catalog's engines, the store and the trace writer."""

    def __init__(self, config: Config, *, database: Database | None = None):
        self.config = config
        settings = config.settings
        self._owns_database = database is None
        self.database = database or Database(settings.resolved_database_url)
        self.trace_store = TraceStore(self.database)
        self.scrubber = SecretScrubber(config.secrets())
        self.traces = TraceWriter(
            self.trace_store,
            spill_path=settings.home / "traces-spill.jsonl",
            batch_size=settings.trace_batch_size,
            flush_interval=settings.trace_flush_interval,
            buffer_limit=settings.trace_buffer_limit,
            scrubber=self.scrubber,
        )
        self.engines = EnginePool(config.catalog)
        self._started = False

    async def start(self) -> None:
        if not self._started:
            await self.traces.start()
            self._started = True

    async def aclose(self) -> None:
        await self.engines.aclose()
        await self.traces.aclose()
        if self._owns_database:
            # Close pooled connections now (after the last trace is written), not at exit.
            self.database.dispose()
        self._started = False

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- chat ---------------------------------------------------------------
    async def prepare(self, request: ChatCompletionRequest, ctx: CallContext | None = None) -> Call:
        """Resolve and check a request; any refusal here is traced and raised."""
        ctx = ctx or CallContext()
        raw = (
            ctx.raw_request
            if ctx.raw_request is not None
            else request.model_dump(exclude_none=True)
        )
        call = Call(
            self,
            Trace(
                model=request.model,
                request=raw,
                stream=request.stream,
                api_key_id=ctx.api_key_id,
                metadata={"source": ctx.source},
            ),
        )
        try:
            ref = ModelRef.parse(request.model)
            if ref.kind == "task":
                raise ModelNotFound(f"no task named {ref.name!r} is defined", param="model")
            call.model = self.config.catalog.get(ref.name)
            call.trace.engine = call.model.engine
            call.engine = self.engines.started(ref.name) or await self.engines.get(ref.name)
            call.request = self._with_defaults(request, call.model)
            self._check(call.request, call.engine)
        except BaseException as exc:
            call.finish(error=exc)
            if isinstance(exc, PowertrainError):
                exc.trace_id = call.trace_id
            raise
        return call

    async def chat(
        self,
        request: ChatCompletionRequest,
        ctx: CallContext | None = None,
    ) -> tuple[Call, ChatResult]:
        call = await self.prepare(request, ctx)
        return call, await call.result()

    def _with_defaults(
        self, request: ChatCompletionRequest, model: ModelConfig
    ) -> ChatCompletionRequest:
        if not model.params:
            return request
        updates = {
            k: model.params[k]
            for k in _DEFAULTABLE
            if k in model.params and getattr(request, k) is None
        }
        return request.model_copy(update=updates) if updates else request

    def _check(self, request: ChatCompletionRequest, engine: Engine) -> None:
        limit = self.config.settings.max_messages
        if len(request.messages) > limit:
            raise InvalidRequest(
                f"{len(request.messages)} messages is over the limit of {limit} "
                "(setting max_messages)",
                param="messages",
            )
        engine.check_supported(request)
        window = engine.context_window
        if not window:
            return
        prompt = engine.count_tokens(request)
        alias = engine.model.alias
        if prompt > window:
            raise ContextWindowExceeded(
                f"the prompt is {prompt} tokens but model {alias!r} has a context window of "
                f"{window} tokens; shorten the messages or choose a model with a larger window",
                param="messages",
            )
        wanted = request.max_output_tokens
        if wanted is not None and prompt + wanted > window:
            raise ContextWindowExceeded(
                f"the prompt ({prompt} tokens) plus max_tokens ({wanted}) is {prompt + wanted} "
                f"tokens, over model {alias!r}'s context window of {window} tokens; "
                "lower max_tokens or shorten the messages",
                param="max_tokens",
            )

    # -- embeddings -----------------------------------------------------------
    async def embed(
        self,
        request: EmbeddingRequest,
        ctx: CallContext | None = None,
    ) -> tuple[Trace, EmbeddingResult]:
        ctx = ctx or CallContext()
        call = Call(
            self,
            Trace(
                model=request.model,
                request=ctx.raw_request or request.model_dump(exclude_none=True),
                api_key_id=ctx.api_key_id,
                metadata={"source": ctx.source, "kind": "embeddings"},
            ),
        )
        try:
            call.model = self.config.catalog.get(request.model)
            call.trace.engine = call.model.engine
            call.engine = await self.engines.get(request.model)
            timeout = self.config.settings.request_timeout
            async with asyncio.timeout(timeout):
                result = await call.engine.embed(
                    request.inputs, deadline=time.monotonic() + timeout
                )
        except BaseException as exc:
            call.finish(error=exc)
            raise
        call.finish(output=f"{len(result.vectors)} vectors", usage=result.usage)
        return call.trace, result
