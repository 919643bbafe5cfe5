"""The connection half of the hosted-API engines: pool, key, timeouts, retries.

An engine module knows one API's wire format; an :class:`HTTPProvider` knows
where that API lives, how to authenticate, how long to wait and when to try
again. The retry policy is deliberately narrow: 429, 5xx and failed
connections are retried with backoff, nothing else is, and nothing is retried
once a streamed chunk has reached the caller. Reading errors and the retry
policy live in ``_retry``, the SSE protocol in ``_sse``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp
import orjson

from powertrain.catalog import ModelConfig
from powertrain.engines._retry import (
    RetryPolicy,
    _Retry,
    error_for_status,
    is_retryable_status,
    parse_retry_after,
    retry_observer,
)
from powertrain.engines._sse import (
    SSEDecoder,
    StreamDecoder,
    StreamErrorEvent,
    StreamTruncated,
    UpstreamStreamInterrupted,
    _drain,
)
from powertrain.errors import (
    ConfigError,
    EngineError,
    UpstreamTimeout,
)
from powertrain.schemas import ChatChunk, Usage

DEFAULT_TIMEOUT = 60.0
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_MAX_CONNECTIONS = 100
DEFAULT_KEEPALIVE = 30.0
USER_AGENT = "powertrain/0.1"

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
                f"in the {budget:.3g} s left before the request's deadline "
                "(setting request_timeout)"
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
        observer = retry_observer.get()
        if observer is not None:
            observer(failure.error, delay)
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
