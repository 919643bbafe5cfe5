"""The connection half of the hosted-API engines: pool, key, timeouts, retries, SSE.

An engine module knows one API's wire format; an :class:`HTTPProvider` knows
where that API lives, how to authenticate, how long to wait and when to try
again. The retry policy is deliberately narrow: 429, 5xx and failed
connections are retried with backoff, nothing else is, and nothing is retried
once a streamed chunk has reached the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import orjson

from powertrain.catalog import ModelConfig
from powertrain.errors import (
    ConfigError,
    ContextWindowExceeded,
    EngineError,
    PowertrainError,
    RateLimited,
    StreamInterrupted,
    UpstreamError,
    UpstreamTimeout,
)
from powertrain.schemas import ChatChunk, Usage

DEFAULT_TIMEOUT = 60.0
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_MAX_CONNECTIONS = 100
DEFAULT_KEEPALIVE = 30.0
DEFAULT_BACKOFF_BASE = 0.5
DEFAULT_BACKOFF_MAX = 8.0
DEFAULT_MAX_RETRY_AFTER = 60.0
USER_AGENT = "powertrain/0.1"

_MAX_MESSAGE_CHARS = 2000

# Anthropic names its errors instead of relying on the status alone (an SSE
# ``error`` event has no status); these are the statuses it documents for them.
ERROR_TYPE_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


# --------------------------------------------------------------------------- SSE


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched server-sent event."""

    data: str
    event: str = "message"
    id: str | None = None


class SSEDecoder:
    """An incremental ``text/event-stream`` parser, fed raw bytes as they arrive.

    Follows the WHATWG rules: ``\\n``, ``\\r\\n`` and ``\\r`` end lines, ``data:``
    lines accumulate (joined by newlines), a blank line dispatches, lines
    starting with ``:`` are comments, one space after the colon is dropped.
    An event not terminated by a blank line when the stream ends is discarded.
    """

    __slots__ = ("_buffer", "_data", "_event", "_id", "_pending_cr")

    def __init__(self) -> None:
        self._buffer = b""
        self._pending_cr = False
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if self._pending_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # the second half of a \r\n split across reads
        self._pending_cr = chunk.endswith(b"\r")
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buffer = self._buffer + chunk if self._buffer else chunk
        events: list[SSEEvent] = []
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            event = self._line(buffer[start:end].decode("utf-8", errors="replace"))
            if event is not None:
                events.append(event)
            start = end + 1
        self._buffer = buffer[start:]
        return events

    def _line(self, line: str) -> SSEEvent | None:
        if not line:
            if not self._data:
                self._event = ""
                return None
            event = SSEEvent("\n".join(self._data), self._event or "message", self._id)
            self._data = []
            self._event = ""
            return event
        if line[0] == ":":
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        return None  # "retry" and unknown fields are ignored


async def _drain(response: aiohttp.ClientResponse) -> None:
    """Read what follows an end-of-stream marker so the connection can be reused."""
    if response.content.is_eof():
        return
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with asyncio.timeout(1.0):
            await response.content.read()


# ------------------------------------------------------------------ stream decode


class StreamErrorEvent(Exception):
    """The upstream reported an error inside a stream (an SSE ``error`` event)."""

    def __init__(self, message: str, *, upstream_status: int = 500, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.upstream_status = upstream_status
        self.code = code


class StreamTruncated(Exception):
    """The stream ended before the upstream said it was complete."""


class StreamDecoder(Protocol):
    """Turns one API's stream events into chunks; one instance per attempt."""

    @property
    def done(self) -> bool:
        """The upstream's end-of-stream marker has arrived; stop reading."""

    @property
    def usage(self) -> Usage | None:
        """Usage seen so far (kept on an interrupted stream)."""

    def feed(self, event: SSEEvent) -> ChatChunk | None:
        """A chunk to deliver now, if this event carries one.

        Raises :class:`StreamErrorEvent` for an upstream error event.
        """

    def finish(self) -> ChatChunk:
        """The last chunk (finish reason, usage); :class:`StreamTruncated` if incomplete."""


class UpstreamStreamInterrupted(StreamInterrupted):
    """A stream broke after chunks reached the caller; says how much got through."""

    def __init__(self, message: str, *, chunks: int, chars: int, usage: Usage | None):
        super().__init__(message)
        self.chunks = chunks
        self.chars = chars
        self.usage = usage


# ------------------------------------------------------------------------ errors


def upstream_message(body: bytes, fallback: str) -> tuple[str, str | None, str | None]:
    """``(message, type, code)`` from an upstream error body.

    Reads OpenAI's ``{"error": {"message", "type", "code"}}``, Anthropic's
    ``{"type": "error", "error": {"type", "message"}}`` and the looser shapes
    OpenAI-compatible servers use (``{"error": "..."}``, ``{"message": ...}``,
    ``{"detail": ...}``); otherwise the start of the body.
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", errors="replace").strip()
        return (text[:_MAX_MESSAGE_CHARS] or fallback), None, None
    if not isinstance(data, dict):
        return fallback, None, None
    error = data.get("error")
    if isinstance(error, dict):
        message = error.get("message") or fallback
        kind = error.get("type")
        code = error.get("code")
        return (
            str(message)[:_MAX_MESSAGE_CHARS],
            kind if isinstance(kind, str) else None,
            code if isinstance(code, str) else None,
        )
    if isinstance(error, str) and error:
        return error[:_MAX_MESSAGE_CHARS], None, None
    for key in ("message", "detail"):
        value = data.get(key)
        if isinstance(value, str) and value:
            kind = data.get("type")
            return value[:_MAX_MESSAGE_CHARS], kind if isinstance(kind, str) else None, None
    return fallback, None, None


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds the upstream asked us to wait: ``retry-after-ms``, or ``Retry-After``
    as delta-seconds or an HTTP-date."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _is_context_error(message: str, code: str | None) -> bool:
    if code == "context_length_exceeded":
        return True
    lowered = message.lower()
    return "prompt is too long" in lowered or "maximum context length" in lowered


def error_for_status(
    engine: str, status: int, body: bytes, headers: Mapping[str, str]
) -> PowertrainError:
    """The error an upstream's non-2xx answer becomes (not yet raised)."""
    message, kind, code = upstream_message(body, f"HTTP {status}")
    retry_after = parse_retry_after(headers)
    if status == 429:
        return RateLimited(
            f"the {engine} upstream is rate limiting (HTTP 429): {message}",
            retry_after=retry_after,
        )
    if 400 <= status < 500 and _is_context_error(message, code):
        return ContextWindowExceeded(message, param="messages")
    return UpstreamError(
        f"the {engine} upstream answered HTTP {status}: {message}",
        upstream_status=status,
        retry_after=retry_after,
        code=code or kind,
    )


def is_retryable_status(status: int) -> bool:
    return status == 429 or status >= 500


class _Retry(Exception):
    """An attempt failed in a way worth another attempt; ``error`` if we give up."""

    def __init__(self, error: PowertrainError, retry_after: float | None = None):
        super().__init__(error.message)
        self.error = error
        self.retry_after = retry_after


# ------------------------------------------------------------------- retry policy


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When and how long to wait before trying an upstream again.

    ``max_retries`` comes from the model; the rest from its ``options``
    (``retry_backoff_base``, ``retry_backoff_max``, ``max_retry_after``). A
    ``Retry-After`` longer than ``max_retry_after`` is not waited for: the
    error goes back at once so the gateway can fall back instead.
    """

    max_retries: int = 2
    backoff_base: float = DEFAULT_BACKOFF_BASE
    backoff_max: float = DEFAULT_BACKOFF_MAX
    max_retry_after: float = DEFAULT_MAX_RETRY_AFTER

    @classmethod
    def for_model(cls, model: ModelConfig) -> RetryPolicy:
        options = model.options
        return cls(
            max_retries=model.max_retries,
            backoff_base=float(options.get("retry_backoff_base", DEFAULT_BACKOFF_BASE)),
            backoff_max=float(options.get("retry_backoff_max", DEFAULT_BACKOFF_MAX)),
            max_retry_after=float(options.get("max_retry_after", DEFAULT_MAX_RETRY_AFTER)),
        )

    def backoff(self, retry: int) -> float:
        """Exponential backoff with full jitter for retry number ``retry`` (0-based)."""
        return random.uniform(0.0, min(self.backoff_max, self.backoff_base * 2**retry))

    def wait(self, retry: int, retry_after: float | None, deadline: float | None) -> float | None:
        """Seconds to sleep before retry number ``retry``, or None to give up now."""
        if retry >= self.max_retries:
            return None
        if retry_after is not None:
            if retry_after > self.max_retry_after:
                return None
            delay = retry_after
        else:
            delay = self.backoff(retry)
        if deadline is not None and time.monotonic() + delay >= deadline:
            return None
        return delay


# ----------------------------------------------------------------------- provider


def resolve_api_key(
    model: ModelConfig, *, engine: str, default_env: str, default_host: bool
) -> str | None:
    """The key to send, or None when this upstream needs none.

    ``api_key`` wins, then the variable named by ``api_key_env``. The engine's
    default variable (``OPENAI_API_KEY`` …) is only read for the engine's own
    default host, so a key for one provider is never sent to another; an
    OpenAI-compatible local server (llama-server, vLLM, Ollama) gets no key.
    """
    if model.api_key:
        return model.api_key
    if model.api_key_env:
        value = os.environ.get(model.api_key_env)
        if not value:
            raise ConfigError(
                f"model {model.alias!r} reads its API key from ${model.api_key_env}, "
                "which is not set; export it or fix api_key_env in "
                f"[models.{model.alias}]"
            )
        return value
    if not default_host:
        return None
    value = os.environ.get(default_env)
    if not value:
        raise ConfigError(
            f"model {model.alias!r} (engine {engine}) needs an API key: export "
            f"{default_env}, or set api_key_env in [models.{model.alias}]"
        )
    return value


class HTTPProvider:
    """Where one hosted model lives and how to talk to it.

    Holds the base URL, the key, one pooled :class:`aiohttp.ClientSession`
    (opened by :meth:`start`, closed by :meth:`aclose`), the timeouts and the
    retry policy. ``deadline`` arguments are :func:`time.monotonic` instants no
    wait or new attempt may run past.
    """

    def __init__(
        self,
        model: ModelConfig,
        *,
        engine: str,
        default_base_url: str,
        default_key_env: str,
        auth_headers: Callable[[str], dict[str, str]],
        headers: Mapping[str, str] | None = None,
    ):
        self.model = model
        self.engine = engine
        self.base_url = (model.base_url or default_base_url).rstrip("/")
        self._default_host = self.base_url == default_base_url.rstrip("/")
        self._default_key_env = default_key_env
        self._auth_headers = auth_headers
        self._static_headers = dict(headers or {})
        extra = model.options.get("headers") or {}
        if not isinstance(extra, dict):
            raise ConfigError(f"[models.{model.alias}] options.headers must be a table")
        self._static_headers.update({str(k): str(v) for k, v in extra.items()})
        self.timeout = model.timeout or DEFAULT_TIMEOUT
        self.connect_timeout = float(model.options.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT))
        self.retry = RetryPolicy.for_model(model)
        self._session: aiohttp.ClientSession | None = None

    # lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        self._ensure_session()

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is not None:
            return self._session
        key = resolve_api_key(
            self.model,
            engine=self.engine,
            default_env=self._default_key_env,
            default_host=self._default_host,
        )
        headers = {"User-Agent": USER_AGENT, "Content-Type": "application/json"}
        headers.update(self._static_headers)
        if key is not None:
            headers.update(self._auth_headers(key))
        options = self.model.options
        connector = aiohttp.TCPConnector(
            limit=int(options.get("max_connections", DEFAULT_MAX_CONNECTIONS)),
            keepalive_timeout=float(options.get("keepalive_timeout", DEFAULT_KEEPALIVE)),
            ttl_dns_cache=300,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=headers,
            # sock_read bounds each silence, so a long stream that keeps talking lives on;
            # whole attempts are bounded separately (see _budget).
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=self.connect_timeout, sock_read=self.timeout
            ),
            trust_env=bool(options.get("trust_env", False)),
            raise_for_status=False,
        )
        return self._session

    def _budget(self, deadline: float | None) -> float:
        if deadline is None:
            return self.timeout
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise UpstreamTimeout(
                f"the deadline for model {self.model.alias!r} passed before the "
                f"{self.engine} upstream could be asked"
            )
        return min(self.timeout, remaining)

    def _timeout_error(self, budget: float) -> UpstreamTimeout:
        if budget < self.timeout:
            return UpstreamTimeout(
                f"the {self.engine} upstream for model {self.model.alias!r} did not answer "
                f"in the {budget:.3g} s left before the request's deadline"
            )
        return UpstreamTimeout(
            f"the {self.engine} upstream for model {self.model.alias!r} did not answer "
            f"within {budget:g} s (raise timeout in [models.{self.model.alias}] if it "
            "is just slow)"
        )

    def _unreachable(self, exc: BaseException) -> _Retry:
        error = EngineError(
            f"could not reach the {self.engine} upstream for model {self.model.alias!r} "
            f"({type(exc).__name__})",
            code="upstream_unreachable",
        )
        # Connection errors carry the host, never headers; ClientResponseError
        # (which does carry the request headers, key included) is never chained.
        error.__cause__ = exc
        return _Retry(error)

    def _status_failure(self, status: int, body: bytes, headers: Mapping[str, str]) -> Exception:
        error = error_for_status(self.engine, status, body, headers)
        if is_retryable_status(status):
            return _Retry(error, parse_retry_after(headers))
        return error

    async def _sleep_or_give_up(self, retry: int, failure: _Retry, deadline: float | None) -> None:
        delay = self.retry.wait(retry, failure.retry_after, deadline)
        if delay is None:
            raise failure.error from failure.error.__cause__
        await asyncio.sleep(delay)

    # requests -------------------------------------------------------------

    async def post_json(
        self, path: str, body: dict[str, Any], *, deadline: float | None = None
    ) -> Any:
        """POST a JSON body and return the parsed JSON answer, retrying as the policy allows."""
        session = self._ensure_session()
        url = self.base_url + path
        payload = orjson.dumps(body)
        retry = 0
        while True:
            try:
                return await self._post_once(session, url, payload, deadline)
            except _Retry as failure:
                await self._sleep_or_give_up(retry, failure, deadline)
                retry += 1

    async def _post_once(
        self, session: aiohttp.ClientSession, url: str, payload: bytes, deadline: float | None
    ) -> Any:
        budget = self._budget(deadline)
        try:
            async with asyncio.timeout(budget), session.post(url, data=payload) as response:
                status = response.status
                headers = response.headers
                raw = await response.read()
        except aiohttp.ConnectionTimeoutError as exc:
            raise self._unreachable(exc) from None
        except TimeoutError:
            raise self._timeout_error(budget) from None
        except aiohttp.ClientError as exc:
            raise self._unreachable(exc) from None
        if not 200 <= status < 300:
            raise self._status_failure(status, raw, headers)
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise EngineError(
                f"the {self.engine} upstream answered HTTP {status} with a body that is not JSON"
            ) from None

    async def stream(
        self,
        path: str,
        body: dict[str, Any],
        decoder: Callable[[], StreamDecoder],
        *,
        deadline: float | None = None,
    ) -> AsyncIterator[ChatChunk]:
        """POST a JSON body and yield the chunks ``decoder`` makes of the SSE answer.

        Failures before the first chunk reaches the caller are retried like
        :meth:`post_json`; after it, any failure raises
        :class:`UpstreamStreamInterrupted` and nothing is retried. The deadline
        bounds the waits and each attempt's time to its response headers, not
        a stream already flowing; a silence longer than the timeout ends it.
        """
        session = self._ensure_session()
        url = self.base_url + path
        payload = orjson.dumps(body)
        retry = 0
        while True:
            state = decoder()
            chunks = 0
            chars = 0
            try:
                response = await self._open_stream(session, url, payload, deadline)
                try:
                    sse = SSEDecoder()
                    async for raw in response.content.iter_any():
                        for event in sse.feed(raw):
                            chunk = state.feed(event)
                            if chunk is not None:
                                chunks += 1
                                chars += len(chunk.delta)
                                yield chunk
                            if state.done:
                                break
                        if state.done:
                            await _drain(response)
                            break
                    final = state.finish()
                finally:
                    response.release()
            except _Retry as failure:
                await self._sleep_or_give_up(retry, failure, deadline)
                retry += 1
                continue
            except (aiohttp.ClientError, StreamTruncated, TimeoutError) as exc:
                if chunks:
                    raise self._interrupted(exc, chunks, chars, state.usage) from None
                if isinstance(exc, TimeoutError) and not isinstance(
                    exc, aiohttp.ConnectionTimeoutError
                ):
                    raise self._timeout_error(self.timeout) from None
                await self._sleep_or_give_up(retry, self._unreachable(exc), deadline)
                retry += 1
                continue
            except StreamErrorEvent as exc:
                if chunks:
                    raise self._interrupted(exc, chunks, chars, state.usage) from None
                error = error_for_status(
                    self.engine,
                    exc.upstream_status,
                    orjson.dumps({"error": {"message": exc.message, "code": exc.code}}),
                    {},
                )
                if not is_retryable_status(exc.upstream_status):
                    raise error from None
                await self._sleep_or_give_up(retry, _Retry(error), deadline)
                retry += 1
                continue
            except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
                if chunks:
                    raise self._interrupted(exc, chunks, chars, state.usage) from None
                raise EngineError(
                    f"the {self.engine} upstream sent a stream event powertrain cannot read "
                    f"({type(exc).__name__})"
                ) from None
            yield final
            return

    async def _open_stream(
        self, session: aiohttp.ClientSession, url: str, payload: bytes, deadline: float | None
    ) -> aiohttp.ClientResponse:
        """Send the request and wait for a 2xx status line, within the attempt's budget."""
        budget = self._budget(deadline)
        try:
            async with asyncio.timeout(budget):
                response = await session.post(
                    url, data=payload, headers={"Accept": "text/event-stream"}
                )
                if 200 <= response.status < 300:
                    return response
                try:
                    raw = await response.read()
                finally:
                    response.release()
        except aiohttp.ConnectionTimeoutError as exc:
            raise self._unreachable(exc) from None
        except TimeoutError:
            raise self._timeout_error(budget) from None
        except aiohttp.ClientError as exc:
            raise self._unreachable(exc) from None
        raise self._status_failure(response.status, raw, response.headers)

    def _interrupted(
        self, exc: BaseException, chunks: int, chars: int, usage: Usage | None
    ) -> UpstreamStreamInterrupted:
        if isinstance(exc, StreamErrorEvent):
            reason = exc.message
        elif isinstance(exc, StreamTruncated):
            reason = "the stream ended before the upstream finished it"
        elif isinstance(exc, TimeoutError):
            reason = f"the upstream went silent for {self.timeout:g} s"
        else:
            reason = type(exc).__name__
        return UpstreamStreamInterrupted(
            f"the {self.engine} upstream stream for model {self.model.alias!r} broke after "
            f"{chunks} chunk(s): {reason}",
            chunks=chunks,
            chars=chars,
            usage=usage,
        )
