"""The trace: the record of one call, as stored and as returned by /api/traces."""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

TraceStatus = Literal["ok", "error", "cancelled"]


class _RandomPool:
    """Unpredictable bytes from the OS, fetched in blocks: one syscall per 512 ids."""

    def __init__(self, block: int = 4096):
        self._block = block
        self._buffer = b""
        self._offset = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bytes:
        with self._lock:
            if self._offset + n > len(self._buffer):
                self._buffer, self._offset = os.urandom(self._block), 0
            chunk = self._buffer[self._offset : self._offset + n]
            self._offset += n
            return chunk


_random = _RandomPool()


def new_trace_id() -> str:
    """Time-ordered ids (ms clock, then 64 random bits), so sorting by id sorts by time."""
    return f"tr_{int(time.time() * 1000):012x}{_random.take(8).hex()}"


class Attempt(BaseModel):
    """One try against one engine; retries and fallbacks each add one."""

    model: str
    engine: str
    status: TraceStatus
    latency_ms: float
    error: str | None = None


class Trace(BaseModel):
    id: str = Field(default_factory=new_trace_id)
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    model: str
    engine: str | None = None
    task: str | None = None
    variant: str | None = None
    api_key_id: str | None = None
    status: TraceStatus = "ok"
    stream: bool = False
    request: dict[str, Any] = Field(default_factory=dict)
    output: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    compute_seconds: float | None = None
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    http_status: int | None = None
    error_type: str | None = None
    error_message: str | None = None
    attempts: list[Attempt] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def begin(cls, *, model: str, request: dict[str, Any], stream: bool = False,
              api_key_id: str | None = None, metadata: dict[str, Any] | None = None) -> Trace:
        """A new trace on the hot path: already-valid values, no validation pass.

        Every default-factory field is given explicitly; pydantic would otherwise
        inspect each factory's signature on every construction.
        """
        return cls.model_construct(
            id=new_trace_id(), created_at=datetime.now(UTC), model=model, request=request,
            stream=stream, api_key_id=api_key_id, attempts=[], metadata=metadata or {})

    def to_row(self) -> dict[str, Any]:
        """The values of the traces table, without pydantic's (slower) generic dump."""
        row = dict(self.__dict__)
        row["attempts"] = [dict(a.__dict__) for a in self.attempts]
        return row
