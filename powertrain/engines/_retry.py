"""Upstream failures: reading an API's error, and when (and how long) to try again."""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass

import orjson

from powertrain.catalog import ModelConfig
from powertrain.errors import (
    ContextWindowExceeded,
    PowertrainError,
    RateLimited,
    UpstreamError,
)

# Who wants to hear of each retry an engine makes inside one call: the gateway's Call
# sets it so every attempt lands in the trace, while engines stay ignorant of traces.
# Called with the failure and the wait before the next attempt.
RetryObserver = Callable[[PowertrainError, float], None]
retry_observer: ContextVar[RetryObserver | None] = ContextVar("retry_observer", default=None)

DEFAULT_BACKOFF_BASE = 0.5
DEFAULT_BACKOFF_MAX = 8.0
DEFAULT_MAX_RETRY_AFTER = 60.0
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
