"""The OpenAI-compatible hot path, in pure ASGI.

``/v1/chat/completions`` and ``/v1/embeddings`` are the routes under load, so
they skip the framework: read the body with a size limit, validate it with
pydantic, run it through the Gateway, answer with orjson. A watcher cancels
the work when the client goes away, which stops local generation and closes
the upstream request.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from typing import Any

from powertrain.cache import RESPONSE_HEADER
from powertrain.cache.stage import cache_headers
from powertrain.errors import PowertrainError, StreamInterrupted
from powertrain.gateway import CallContext, ChatCall, Gateway
from powertrain.schemas import ChatCompletionRequest
from powertrain.schemas.embeddings import EmbeddingRequest
from powertrain.server.asgi import (
    SSE_DONE,
    SSE_HEADERS,
    Disconnected,
    DisconnectWatcher,
    Receive,
    Scope,
    Send,
    header,
    parse_json,
    read_body,
    send_error,
    send_json,
    sse_event,
)
from powertrain.server.auth import Access, Authenticator
from powertrain.server.validation import parse_as

TRACE_HEADER = b"x-powertrain-trace-id"

log = logging.getLogger("powertrain.server")


class OpenAIRoutes:
    """Handlers for the hot OpenAI routes; ``routes`` maps (method, path) to (handler, access)."""

    def __init__(self, gateway: Gateway, authenticator: Authenticator):
        self.gateway = gateway
        self.auth = authenticator
        self.max_body = gateway.config.settings.max_body_bytes
        self.routes = {
            ("POST", "/v1/chat/completions"): (self.chat_completions, Access.KEY),
            ("POST", "/v1/embeddings"): (self.embeddings, Access.KEY),
        }

    async def _read(self, scope: Scope, receive: Receive) -> tuple[Any, CallContext]:
        client = scope.get("client")
        principal = await self.auth.authenticate(
            header(scope, b"authorization"), Access.KEY, client[0] if client else None
        )
        data = parse_json(await read_body(scope, receive, self.max_body))
        return data, CallContext(
            api_key_id=principal.key_id,
            raw_request=data,
            key=principal.key,
            headers=cache_headers(scope["headers"]),
        )

    async def chat_completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            data, ctx = await self._read(scope, receive)
            request = parse_as(ChatCompletionRequest, data)
        except Disconnected:
            return
        except PowertrainError as exc:
            await send_error(send, exc)
            return
        watcher = DisconnectWatcher(receive)
        call: ChatCall | None = None
        try:
            call = await self.gateway.prepare(request, ctx)
            if request.stream:
                await self._stream(call, request, send)
            else:
                result = await call.result()
                body = result.to_openai(completion_id=call.completion_id, model=request.model)
                await send_json(send, 200, body, _call_headers(call))
        except asyncio.CancelledError:
            if not watcher.disconnected:
                raise  # the server is shutting down, not the client leaving
        except PowertrainError as exc:
            trace_id = call.trace_id if call else getattr(exc, "trace_id", None)
            await send_error(
                send, self._scrubbed(exc), [(TRACE_HEADER, trace_id.encode())] if trace_id else None
            )
        except Exception as exc:
            # A bug, not a refusal. ``_stream`` handles its own failures once its headers
            # are out, so none has been sent yet: answer in the OpenAI shape anyway.
            await send_error(
                send,
                self._unexpected(exc, "/v1/chat/completions"),
                [(TRACE_HEADER, call.trace_id.encode())] if call else None,
            )
        finally:
            watcher.stop()

    async def _stream(self, call: ChatCall, request: ChatCompletionRequest, send: Send) -> None:
        chunks = call.stream()
        try:
            # The first chunk comes before the headers, so a refusal (busy model,
            # upstream down) is still a proper HTTP error rather than a broken stream.
            first = await anext(chunks, None)
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [*SSE_HEADERS, *_call_headers(call)],
                }
            )
            created = int(time.time())
            completion_id = call.completion_id
            include_usage = bool(request.stream_options and request.stream_options.include_usage)
            usage = None
            is_first = True
            pending = first
            try:
                while pending is not None:
                    await send(
                        {
                            "type": "http.response.body",
                            "more_body": True,
                            "body": sse_event(
                                pending.to_openai(
                                    completion_id=completion_id,
                                    model=request.model,
                                    created=created,
                                    first=is_first,
                                )
                            ),
                        }
                    )
                    is_first = False
                    usage = pending.usage or usage
                    pending = await anext(chunks, None)
            except Exception as exc:
                # After the first byte nothing may be retried: tell the client and close.
                error = (
                    exc
                    if isinstance(exc, PowertrainError)
                    else StreamInterrupted(f"the stream failed: {type(exc).__name__}")
                )
                await send(
                    {
                        "type": "http.response.body",
                        "more_body": False,
                        "body": sse_event(self._scrubbed(error).to_openai()),
                    }
                )
                return
            tail = b""
            if include_usage and usage is not None:
                tail = sse_event(
                    {
                        "id": call.completion_id,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": request.model,
                        "choices": [],
                        "usage": usage.to_openai(),
                    }
                )
            await send({"type": "http.response.body", "body": tail + SSE_DONE})
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]

    async def embeddings(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            data, ctx = await self._read(scope, receive)
            request = parse_as(EmbeddingRequest, data)
            trace, result = await self.gateway.embed(request, ctx)
        except Disconnected:
            return
        except PowertrainError as exc:
            await send_error(send, self._scrubbed(exc))
            return
        except Exception as exc:
            await send_error(send, self._unexpected(exc, "/v1/embeddings"))
            return
        body = result.to_openai(model=request.model, encoding_format=request.encoding_format)
        await send_json(send, 200, body, [(TRACE_HEADER, trace.id.encode())])

    def _unexpected(self, exc: Exception, route: str) -> PowertrainError:
        """Log an unexpected failure (secrets scrubbed) and say so in the OpenAI shape."""
        details = self.gateway.scrubber.text("".join(traceback.format_exception(exc)))
        log.error("unexpected error in %s:\n%s", route, details)
        return PowertrainError("internal error; the server log has the details")

    def _scrubbed(self, exc: PowertrainError) -> PowertrainError:
        scrubber = self.gateway.scrubber
        if scrubber:
            exc.message = scrubber.text(exc.message)
        return exc


_CACHE_HEADER = RESPONSE_HEADER.encode()


def _call_headers(call: ChatCall) -> list[tuple[bytes, bytes]]:
    return [(TRACE_HEADER, call.trace_id.encode()), (_CACHE_HEADER, call.cache_status.encode())]
