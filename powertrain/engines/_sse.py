"""Server-sent events from hosted APIs: the line protocol and the stream-decoding seam."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from powertrain.errors import (
    StreamInterrupted,
)
from powertrain.schemas import ChatChunk, Usage

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
