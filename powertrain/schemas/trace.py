"""The trace: the record of one call, as built on the request path, stored and served."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, NotRequired

from pydantic import TypeAdapter
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

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


class Attempt(TypedDict):
    """One try against one engine; retries and fallbacks each add one.

    The optional keys are what a routed call adds (see docs/routing.md).
    """

    model: str
    engine: str
    status: TraceStatus
    latency_ms: float
    error: str | None
    route: NotRequired[str]
    n: NotRequired[int]  # 1-based position among the call's attempts
    attempt: NotRequired[int]  # 1-based, per model
    reason: NotRequired[str]  # primary | fallback | split | cascade | semantic | … | retry
    outcome: NotRequired[str]  # ok | rejected | error | timeout | rate_limited | …
    error_type: NotRequired[str | None]
    wait_s: NotRequired[float]  # slept before this attempt
    breaker: NotRequired[str]  # closed | probe | forced
    detail: NotRequired[str]
    similarity: NotRequired[float]
    prompt_tokens: NotRequired[int]
    completion_tokens: NotRequired[int]
    cost_usd: NotRequired[float]
    verdict: NotRequired[dict[str, Any]]
    streamed: NotRequired[bool]
    then: NotRequired[str]  # retry | fallback | escalate | raise


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class Trace:
    """One call's record.

    A plain dataclass, because every call builds and fills one on the hot path
    (a pydantic model costs microseconds per attribute set, and a call sets a
    dozen); values read back from the store or a spill file are validated
    through ``TRACE_ADAPTER``, and the API serves it through the same schema.
    """

    model: str
    request: dict[str, Any]
    id: str = field(default_factory=new_trace_id)
    created_at: datetime = field(default_factory=_now)
    engine: str | None = None
    task: str | None = None
    variant: str | None = None
    api_key_id: str | None = None
    status: TraceStatus = "ok"
    stream: bool = False
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
    attempts: list[Attempt] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in TRACE_FIELDS}

    def to_json(self) -> dict[str, Any]:
        """JSON-ready values (times as ISO 8601 strings)."""
        return TRACE_ADAPTER.dump_python(self, mode="json")  # type: ignore[no-any-return]


TRACE_FIELDS = tuple(Trace.__dataclass_fields__)
TRACE_ADAPTER: TypeAdapter[Trace] = TypeAdapter(Trace)
