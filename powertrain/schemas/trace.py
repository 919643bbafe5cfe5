"""The trace: the record of one call, as stored and as returned by /api/traces."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

TraceStatus = Literal["ok", "error", "cancelled"]


def new_trace_id() -> str:
    """Time-ordered ids (ms clock, then randomness), so sorting by id sorts by time."""
    return f"tr_{int(time.time() * 1000):012x}{os.urandom(8).hex()}"


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
