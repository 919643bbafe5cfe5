"""Local servers that speak the real wire protocols of OpenAI's and Anthropic's APIs.

Each fake is a real aiohttp server on ``127.0.0.1`` (a free port), so engines,
the gateway and benchmarks talk to it exactly as they would to the real API:
same paths, headers, JSON bodies, SSE framing and error shapes. Behaviour is
scripted per test::

    async with FakeOpenAI() as upstream:
        upstream.reply = "Paris."                      # what the model "says"
        upstream.fail(2, status=429, retry_after="1")   # the next 2 calls get a 429
        model = ModelConfig(alias="gpt", engine="openai", model="gpt-4o-mini",
                            base_url=upstream.url, api_key="sk-test")
        ...
        assert len(upstream.requests) == 3
        assert upstream.requests[-1].json["model"] == "gpt-4o-mini"

Scripting (each queues faults consumed one per request, in arrival order):

- ``fail(times, status, retry_after=, message=, error_type=, code=)``: answer
  with an error status and the API's own error body (and ``Retry-After``).
- ``hang(times)``: accept the request and never answer (until the fake closes
  or the client gives up).
- ``drop_connection(times)``: close the connection without any answer.
- ``die_mid_stream(after_chunks, times)``: send ``after_chunks`` content chunks,
  then cut the connection (a truncated chunked body). A non-streamed call gets
  a truncated JSON body.
- ``error_mid_stream(after_chunks, times, error_type=, message=)``: send that
  many chunks, then the API's in-stream error event, then end the stream.
- ``faults`` is the queue itself (:class:`Fault` objects) for anything else.

Settings (plain attributes): ``reply`` (a string, or a function of the
:class:`RecordedRequest` returning one), ``finish_reason`` /
``stop_reason``, ``usage`` (``(prompt, completion)``, default: words in the
messages and number of streamed chunks), ``latency`` (seconds before
answering), ``chunk_delay`` (seconds between streamed chunks),
``api_key`` (when set, calls without it get the API's 401), ``context_window``
(prompts with more words than this get the API's context-length 400).

``requests`` records every call (method, path, headers, raw and parsed body,
arrival time on :func:`time.monotonic`, the caller's port); ``clear()``
forgets requests and faults.

Observing the caller (for cancellation and leak tests): ``active`` is the
number of calls being handled right now; ``disconnects`` records the calls
whose caller closed the connection before the answer was complete (the
handler was cancelled, or a write found the socket closed). Await
``wait_for_requests(n)``, ``wait_for_disconnects(n)`` or ``wait_idle()``
instead of sleeping.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import orjson
from aiohttp import web

__all__ = ["FakeAnthropic", "FakeOpenAI", "FakeUpstream", "Fault", "RecordedRequest"]

_PIECES = re.compile(r"\S+\s*|\s+")


@dataclass
class RecordedRequest:
    """One request as the fake received it."""

    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    json: Any  # the parsed body, or None if it was not JSON
    at: float  # time.monotonic() on arrival
    client_port: int | None = None  # the caller's TCP port: equal ports mean a reused connection

    @property
    def stream(self) -> bool:
        return isinstance(self.json, dict) and bool(self.json.get("stream"))


_RECORDED = web.RequestKey("recorded", RecordedRequest)


@dataclass
class Fault:
    """What one call does instead of answering normally."""

    status: int | None = None  # answer with this error status
    retry_after: str | None = None  # sent as the Retry-After header
    message: str | None = None  # error message (a realistic default per status)
    error_type: str | None = None  # error "type" in the body / error event
    code: str | None = None  # OpenAI error "code"
    hang: bool = False  # never answer
    drop: bool = False  # close the connection without answering
    die_after: int | None = None  # cut the connection after this many chunks
    error_event_after: int | None = None  # send an error event after this many chunks


def split_reply(text: str) -> list[str]:
    """How a reply is cut into streamed chunks: words with their trailing space."""
    return _PIECES.findall(text) or [""]


def fake_embedding(text: str, dim: int) -> list[float]:
    """A deterministic unit vector for ``text`` (same text, same vector)."""
    digest = b""
    counter = 0
    while len(digest) < dim:
        digest += hashlib.sha256(f"{counter}:{text}".encode()).digest()
        counter += 1
    raw = [(b - 127.5) / 127.5 for b in digest[:dim]]
    norm = sum(x * x for x in raw) ** 0.5 or 1.0
    return [x / norm for x in raw]


def _words(value: Any) -> int:
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_words(part.get("text") if isinstance(part, dict) else part) for part in value)
    return 0


class FakeUpstream:
    """The scripting, recording and server plumbing the protocol fakes share."""

    default_reply = "Hello from the fake upstream."

    def __init__(self, *, reply: str | Callable[[RecordedRequest], str] | None = None) -> None:
        self.reply: str | Callable[[RecordedRequest], str] = reply or self.default_reply
        self.usage: tuple[int, int] | None = None
        self.latency = 0.0
        self.chunk_delay = 0.0
        self.api_key: str | None = None
        self.context_window: int | None = None
        self.requests: list[RecordedRequest] = []
        self.faults: deque[Fault] = deque()
        self.active = 0
        self.disconnects: list[RecordedRequest] = []
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._closing = asyncio.Event()

    # lifecycle ------------------------------------------------------------

    def routes(self, app: web.Application) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:<port>``."""
        if self._port is None:
            raise RuntimeError("the fake upstream is not started; use `async with`")
        return f"http://127.0.0.1:{self._port}"

    @property
    def url(self) -> str:
        """The base URL to configure as the model's ``base_url``."""
        return self.origin

    async def start(self) -> Self:
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self._observe])
        self.routes(app)
        runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        return self

    async def close(self) -> None:
        self._closing.set()  # releases hung handlers
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # scripting ------------------------------------------------------------

    def fail(
        self,
        times: int = 1,
        status: int = 500,
        *,
        retry_after: str | float | None = None,
        message: str | None = None,
        error_type: str | None = None,
        code: str | None = None,
    ) -> None:
        """The next ``times`` calls answer ``status`` with the API's error body."""
        ra = None if retry_after is None else str(retry_after)
        for _ in range(times):
            self.faults.append(
                Fault(
                    status=status, retry_after=ra, message=message, error_type=error_type, code=code
                )
            )

    def hang(self, times: int = 1) -> None:
        """The next ``times`` calls are accepted and never answered."""
        self.faults.extend(Fault(hang=True) for _ in range(times))

    def drop_connection(self, times: int = 1) -> None:
        """The next ``times`` calls have their connection closed with no answer."""
        self.faults.extend(Fault(drop=True) for _ in range(times))

    def die_mid_stream(self, after_chunks: int, times: int = 1) -> None:
        """The next ``times`` calls stream ``after_chunks`` chunks, then lose the connection."""
        self.faults.extend(Fault(die_after=after_chunks) for _ in range(times))

    def error_mid_stream(
        self,
        after_chunks: int,
        times: int = 1,
        *,
        error_type: str | None = None,
        message: str | None = None,
    ) -> None:
        """The next ``times`` calls stream ``after_chunks`` chunks, then an error event."""
        self.faults.extend(
            Fault(error_event_after=after_chunks, error_type=error_type, message=message)
            for _ in range(times)
        )

    def clear(self) -> None:
        """Forget recorded requests, disconnects and queued faults."""
        self.requests.clear()
        self.disconnects.clear()
        self.faults.clear()

    @property
    def last_request(self) -> RecordedRequest:
        return self.requests[-1]

    # observing the caller ---------------------------------------------------

    @web.middleware
    async def _observe(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        self.active += 1
        self._notify()
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except (asyncio.CancelledError, ConnectionResetError):
            recorded = request.get(_RECORDED)
            if recorded is not None and not self._closing.is_set():
                self.disconnects.append(recorded)
            raise
        finally:
            self.active -= 1
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait(self, done: Callable[[], bool], within: float, what: str) -> None:
        async def until() -> None:
            while not done():
                await self._changed.wait()

        try:
            await asyncio.wait_for(until(), within)
        except TimeoutError:
            raise AssertionError(f"the fake upstream saw no {what} within {within:g} s") from None

    async def wait_for_requests(self, n: int = 1, within: float = 5.0) -> None:
        """Return once ``n`` calls have arrived (fails the test after ``within`` s)."""
        await self._wait(lambda: len(self.requests) >= n, within, f"{n} request(s)")

    async def wait_for_disconnects(self, n: int = 1, within: float = 5.0) -> None:
        """Return once ``n`` callers have gone away mid-answer (fails after ``within`` s)."""
        await self._wait(lambda: len(self.disconnects) >= n, within, f"{n} disconnect(s)")

    async def wait_idle(self, within: float = 5.0) -> None:
        """Return once no call is being handled (fails the test after ``within`` s)."""
        await self._wait(lambda: self.active == 0, within, "idle moment")

    # plumbing for the protocol fakes ---------------------------------------

    async def _record(self, request: web.Request) -> RecordedRequest:
        body = await request.read()
        try:
            parsed = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            parsed = None
        recorded = RecordedRequest(
            method=request.method,
            path=request.path,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            json=parsed,
            at=time.monotonic(),
            client_port=_client_port(request),
        )
        request[_RECORDED] = recorded
        self.requests.append(recorded)
        self._notify()
        return recorded

    def _next_fault(self) -> Fault | None:
        return self.faults.popleft() if self.faults else None

    def reply_text(self, recorded: RecordedRequest) -> str:
        return self.reply(recorded) if callable(self.reply) else self.reply

    async def _before_answer(self, request: web.Request, fault: Fault | None) -> bool:
        """Apply latency and connection-level faults; False when no answer must follow."""
        if fault is not None and fault.hang:
            await self._closing.wait()
            return False
        if self.latency:
            await asyncio.sleep(self.latency)
        if fault is not None and fault.drop:
            _cut(request)
            return False
        return True

    @staticmethod
    def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
        return web.Response(
            body=orjson.dumps(obj), status=status, content_type="application/json", headers=headers
        )

    async def _truncated_json(self, request: web.Request, obj: Any) -> web.StreamResponse:
        raw = orjson.dumps(obj)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(raw)
        await response.prepare(request)
        await response.write(raw[: len(raw) // 2])
        _cut(request)
        return response

    async def _open_sse(self, request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **headers}
        )
        await response.prepare(request)
        return response


def _client_port(request: web.Request) -> int | None:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return int(peer[1]) if isinstance(peer, tuple) and len(peer) >= 2 else None


def _cut(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.close()


def _sse(data: Any, event: str | None = None) -> bytes:
    payload = data if isinstance(data, bytes) else orjson.dumps(data)
    if event is None:
        return b"data: " + payload + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + payload + b"\n\n"


# ---------------------------------------------------------------------- OpenAI

_OPENAI_ERRORS: dict[int, tuple[str, str | None, str]] = {
    # status: (type, code, message)
    400: ("invalid_request_error", None, "Invalid request."),
    401: (
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
    ),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Forbidden."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist."),
    429: (
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for requests per min (RPM): Limit 3, Used 3, Requested 1.",
    ),
    500: (
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}


class FakeOpenAI(FakeUpstream):
    """OpenAI's API: ``POST /v1/chat/completions`` (JSON and SSE), ``POST /v1/embeddings``,
    ``GET /v1/models``. ``url`` ends in ``/v1``, like OpenAI's own base URL."""

    def __init__(self, *, reply: str | Callable[[RecordedRequest], str] | None = None) -> None:
        super().__init__(reply=reply)
        self.finish_reason = "stop"
        self.tool_calls: list[dict[str, Any]] | None = None  # non-streamed replies only
        self.embedding_dim = 8
        self.models = ["gpt-4o-mini"]
        self._counter = 0

    @property
    def url(self) -> str:
        return self.origin + "/v1"

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)

    def error_response(self, fault: Fault) -> web.Response:
        status = fault.status or 500
        kind, code, message = _OPENAI_ERRORS.get(
            status,
            ("server_error" if status >= 500 else "invalid_request_error", None, f"HTTP {status}"),
        )
        headers = {"retry-after": fault.retry_after} if fault.retry_after is not None else None
        body = {
            "error": {
                "message": fault.message or message,
                "type": fault.error_type or kind,
                "param": None,
                "code": fault.code or code,
            }
        }
        return self._json(body, status, headers)

    def _refuse(self, recorded: RecordedRequest) -> web.Response | None:
        """The checks OpenAI makes before generating, with its error shapes."""
        authorization = recorded.headers.get("authorization")
        if self.api_key is not None and authorization != f"Bearer {self.api_key}":
            return self.error_response(Fault(status=401))
        body = recorded.json
        if not isinstance(body, dict):
            return self.error_response(
                Fault(status=400, message="We could not parse the JSON body of your request.")
            )
        if recorded.path.endswith("/embeddings"):
            if not body.get("model") or not body.get("input"):
                return self.error_response(
                    Fault(status=400, message="'input' and 'model' are required properties.")
                )
            return None
        if not body.get("model"):
            return self.error_response(
                Fault(status=400, message="you must provide a model parameter")
            )
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return self.error_response(Fault(status=400, message="[] is too short - 'messages'"))
        if "stream_options" in body and not body.get("stream"):
            return self.error_response(
                Fault(
                    status=400,
                    message="The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                )
            )
        if self.context_window is not None:
            used = sum(_words(m.get("content")) for m in messages if isinstance(m, dict))
            if used > self.context_window:
                return self.error_response(
                    Fault(
                        status=400,
                        code="context_length_exceeded",
                        message=f"This model's maximum context length is {self.context_window} "
                        f"tokens. However, your messages resulted in {used} tokens. Please "
                        "reduce the length of the messages.",
                    )
                )
        return None

    def _usage(self, recorded: RecordedRequest, completion: int) -> dict[str, int]:
        if self.usage is not None:
            prompt, completion = self.usage
        else:
            messages = recorded.json.get("messages") or []
            prompt = sum(_words(m.get("content")) for m in messages if isinstance(m, dict))
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        recorded = await self._record(request)
        fault = self._next_fault()
        if not await self._before_answer(request, fault):
            return web.Response(status=503)
        if fault is not None and fault.status is not None:
            return self.error_response(fault)
        refused = self._refuse(recorded)
        if refused is not None:
            return refused
        self._counter += 1
        completion_id = f"chatcmpl-fake{self._counter:06d}"
        model = recorded.json["model"]
        text = self.reply_text(recorded)
        pieces = split_reply(text)
        if recorded.stream:
            return await self._stream(request, recorded, fault, completion_id, model, pieces)
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
        finish = self.finish_reason
        if self.tool_calls:
            message = {"role": "assistant", "content": None, "tool_calls": self.tool_calls}
            finish = "tool_calls"
        body = {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_fake",
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            ],
            "usage": self._usage(recorded, len(pieces)),
        }
        if fault is not None and fault.die_after is not None:
            return await self._truncated_json(request, body)
        return self._json(body, headers={"x-request-id": f"req_fake{self._counter}"})

    async def _stream(
        self,
        request: web.Request,
        recorded: RecordedRequest,
        fault: Fault | None,
        completion_id: str,
        model: str,
        pieces: list[str],
    ) -> web.StreamResponse:
        options = recorded.json.get("stream_options") or {}
        include_usage = bool(options.get("include_usage"))
        created = int(time.time())
        response = await self._open_sse(request, {"x-request-id": f"req_fake{self._counter}"})

        def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
            obj: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            if include_usage:
                obj["usage"] = None
            return _sse(obj)

        await response.write(chunk({"role": "assistant", "content": "", "refusal": None}, None))
        for index, piece in enumerate(pieces):
            if fault is not None and fault.die_after == index:
                _cut(request)
                return response
            if fault is not None and fault.error_event_after == index:
                error = {
                    "error": {
                        "message": fault.message
                        or "The server had an error while processing "
                        "your request. Sorry about that!",
                        "type": fault.error_type or "server_error",
                        "param": None,
                        "code": None,
                    }
                }
                await response.write(_sse(error))
                await response.write_eof()
                return response
            await response.write(chunk({"content": piece}, None))
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
        await response.write(chunk({}, self.finish_reason))
        if include_usage:
            usage_chunk = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": [],
                "usage": self._usage(recorded, len(pieces)),
            }
            await response.write(_sse(usage_chunk))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        recorded = await self._record(request)
        fault = self._next_fault()
        if not await self._before_answer(request, fault):
            return web.Response(status=503)
        if fault is not None and fault.status is not None:
            return self.error_response(fault)
        refused = self._refuse(recorded)
        if refused is not None:
            return refused
        inputs = recorded.json["input"]
        texts = [inputs] if isinstance(inputs, str) else [str(x) for x in inputs]
        tokens = sum(len(t.split()) for t in texts)
        body = {
            "object": "list",
            "data": [
                {
                    "object": "embedding",
                    "index": i,
                    "embedding": fake_embedding(t, self.embedding_dim),
                }
                for i, t in enumerate(texts)
            ],
            "model": recorded.json["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        if fault is not None and fault.die_after is not None:
            return await self._truncated_json(request, body)
        return self._json(body)

    async def _models(self, request: web.Request) -> web.Response:
        await self._record(request)
        return self._json(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 0, "owned_by": "fake"}
                    for m in self.models
                ],
            }
        )


# ------------------------------------------------------------------- Anthropic

_ANTHROPIC_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    403: (
        "permission_error",
        "Your API key does not have permission to use the specified resource.",
    ),
    404: ("not_found_error", "The requested resource could not be found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit."),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}


class FakeAnthropic(FakeUpstream):
    """Anthropic's Messages API: ``POST /v1/messages`` (JSON and its SSE event stream).
    ``url`` is the origin, like Anthropic's own base URL."""

    def __init__(self, *, reply: str | Callable[[RecordedRequest], str] | None = None) -> None:
        super().__init__(reply=reply)
        self.stop_reason = "end_turn"
        self.ping = True  # send a ping event early in each stream, as the API does
        self._counter = 0

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/messages", self._messages)

    def error_body(
        self, status: int, error_type: str | None, message: str | None
    ) -> dict[str, Any]:
        kind, default = _ANTHROPIC_ERRORS.get(
            status, ("api_error" if status >= 500 else "invalid_request_error", f"HTTP {status}")
        )
        return {
            "type": "error",
            "error": {"type": error_type or kind, "message": message or default},
            "request_id": f"req_fake{self._counter}",
        }

    def error_response(self, fault: Fault) -> web.Response:
        status = fault.status or 500
        headers = {"retry-after": fault.retry_after} if fault.retry_after is not None else None
        return self._json(self.error_body(status, fault.error_type, fault.message), status, headers)

    def _invalid(self, message: str) -> web.Response:
        return self.error_response(Fault(status=400, message=message))

    def _refuse(self, recorded: RecordedRequest) -> web.Response | None:
        """The checks the Messages API makes before generating, with its error shapes."""
        headers = recorded.headers
        if self.api_key is not None and headers.get("x-api-key") != self.api_key:
            return self.error_response(Fault(status=401))
        if "anthropic-version" not in headers:
            return self._invalid("anthropic-version: header is required")
        body = recorded.json
        if not isinstance(body, dict):
            return self._invalid("There was an issue with your request JSON body.")
        for name in ("model", "max_tokens", "messages"):
            if name not in body:
                return self._invalid(f"{name}: Field required")
        messages = body["messages"]
        if not isinstance(messages, list) or not messages:
            return self._invalid("messages: at least one message is required")
        previous = None
        for i, message in enumerate(messages):
            role = message.get("role") if isinstance(message, dict) else None
            if role not in ("user", "assistant"):
                return self._invalid(
                    f"messages.{i}.role: Input should be 'user' or 'assistant'; the Messages "
                    'API takes a top-level "system" parameter instead of a "system" role'
                )
            if role == previous:
                return self._invalid(
                    'messages: roles must alternate between "user" and "assistant"'
                )
            content = message.get("content")
            if not content:
                return self._invalid(f"messages.{i}: all messages must have non-empty content")
            previous = role
        if self.context_window is not None:
            used = self._prompt_words(body)
            if used > self.context_window:
                return self._invalid(
                    f"prompt is too long: {used} tokens > {self.context_window} maximum"
                )
        return None

    @staticmethod
    def _prompt_words(body: dict[str, Any]) -> int:
        return _words(body.get("system")) + sum(_words(m.get("content")) for m in body["messages"])

    def _usage(self, recorded: RecordedRequest, completion: int) -> tuple[int, int]:
        if self.usage is not None:
            return self.usage
        return self._prompt_words(recorded.json), completion

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        recorded = await self._record(request)
        fault = self._next_fault()
        if not await self._before_answer(request, fault):
            return web.Response(status=503)
        self._counter += 1
        if fault is not None and fault.status is not None:
            return self.error_response(fault)
        refused = self._refuse(recorded)
        if refused is not None:
            return refused
        message_id = f"msg_fake{self._counter:06d}"
        model = recorded.json["model"]
        text = self.reply_text(recorded)
        pieces = split_reply(text)
        prompt, completion = self._usage(recorded, len(pieces))
        if recorded.stream:
            return await self._stream(request, fault, message_id, model, pieces, prompt, completion)
        body = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": self.stop_reason,
            "stop_sequence": None,
            "usage": {
                "input_tokens": prompt,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": completion,
            },
        }
        if fault is not None and fault.die_after is not None:
            return await self._truncated_json(request, body)
        return self._json(body, headers={"request-id": f"req_fake{self._counter}"})

    async def _stream(
        self,
        request: web.Request,
        fault: Fault | None,
        message_id: str,
        model: str,
        pieces: list[str],
        prompt: int,
        completion: int,
    ) -> web.StreamResponse:
        response = await self._open_sse(request, {"request-id": f"req_fake{self._counter}"})
        start = {
            "type": "message_start",
            "message": {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": prompt,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                    "output_tokens": 1,
                },
            },
        }
        await response.write(_sse(start, "message_start"))
        await response.write(
            _sse(
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
                "content_block_start",
            )
        )
        if self.ping:
            await response.write(_sse({"type": "ping"}, "ping"))
        for index, piece in enumerate(pieces):
            if fault is not None and fault.die_after == index:
                _cut(request)
                return response
            if fault is not None and fault.error_event_after == index:
                error = self.error_body(529, fault.error_type or "overloaded_error", fault.message)
                error.pop("request_id")
                await response.write(_sse(error, "error"))
                await response.write_eof()
                return response
            delta = {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": piece},
            }
            await response.write(_sse(delta, "content_block_delta"))
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
        await response.write(_sse({"type": "content_block_stop", "index": 0}, "content_block_stop"))
        await response.write(
            _sse(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": self.stop_reason, "stop_sequence": None},
                    "usage": {"output_tokens": completion},
                },
                "message_delta",
            )
        )
        await response.write(_sse({"type": "message_stop"}, "message_stop"))
        await response.write_eof()
        return response
