"""One exception tree for the whole library.

Every error carries what the HTTP layer needs to answer in the OpenAI error
shape (status, ``type``, ``code``) and a message that says what to do next, so
the server, the CLI and the Python API report the same failure the same way.
"""

from __future__ import annotations

from typing import Any


class PowertrainError(Exception):
    """Base of every error powertrain raises on purpose."""

    status_code: int = 500
    error_type: str = "server_error"
    code: str | None = None
    trace_id: str | None = None  # set once the failure has been traced

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    @property
    def headers(self) -> dict[str, str]:
        return {}

    def to_openai(self) -> dict[str, Any]:
        """The body OpenAI's API returns for an error, so SDKs raise the right class."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class ConfigError(PowertrainError):
    """The configuration file or environment is invalid."""

    status_code = 500
    error_type = "configuration_error"


class InvalidRequest(PowertrainError):
    """The caller sent something we will not run; fixing the request fixes it."""

    status_code = 400
    error_type = "invalid_request_error"


class ContextWindowExceeded(InvalidRequest):
    code = "context_length_exceeded"


class RequestTooLarge(InvalidRequest):
    status_code = 413
    code = "request_too_large"


class AuthenticationError(PowertrainError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(PowertrainError):
    status_code = 403
    error_type = "permission_error"


class NotFound(PowertrainError):
    status_code = 404
    error_type = "not_found_error"


class MethodNotAllowed(PowertrainError):
    status_code = 405
    error_type = "invalid_request_error"
    code = "method_not_allowed"


class ModelNotFound(NotFound):
    code = "model_not_found"


class TaskNotFound(ModelNotFound):
    """No such task; a ``model="task:<name>"`` naming none is a model not found too."""

    code = "task_not_found"


class Conflict(PowertrainError):
    """The change collides with what exists (a name taken, a file-owned task)."""

    status_code = 409
    error_type = "invalid_request_error"
    code = "conflict"


class EngineError(PowertrainError):
    """An engine failed to produce an answer."""

    status_code = 502
    error_type = "upstream_error"


class EngineUnavailable(EngineError):
    """The engine cannot be used here (missing package, missing file)."""

    status_code = 503
    error_type = "engine_unavailable"


class _RetryAfterMixin(PowertrainError):
    retry_after: float | None = None

    @property
    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, round(self.retry_after)))}


class EngineOverloaded(_RetryAfterMixin, EngineError):
    """A local model's queue is full; the caller should come back later."""

    status_code = 503
    error_type = "overloaded_error"
    code = "engine_overloaded"

    def __init__(self, message: str, *, retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after


class RateLimited(_RetryAfterMixin, EngineError):
    """An upstream (or a limit of ours) said 429."""

    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class UpstreamTimeout(EngineError):
    status_code = 504
    error_type = "timeout_error"
    code = "upstream_timeout"


class UpstreamError(EngineError):
    """An upstream answered with an error status we pass on to the caller."""

    def __init__(
        self,
        message: str,
        *,
        upstream_status: int,
        retry_after: float | None = None,
        code: str | None = None,
    ):
        super().__init__(message, code=code)
        self.upstream_status = upstream_status
        self.retry_after = retry_after
        # A 4xx from upstream is the caller's problem (bad params), except that a refused
        # credential (401/403) is the server's configuration, not the caller's request.
        caller_fault = 400 <= upstream_status < 500 and upstream_status not in (401, 403)
        self.status_code = 400 if caller_fault else 502
        if self.status_code == 400:
            self.error_type = "invalid_request_error"

    @property
    def retryable(self) -> bool:
        return self.upstream_status == 429 or self.upstream_status >= 500


class OutputInvalid(EngineError):
    """The model's output did not satisfy the task's contract, even after repairs."""

    code = "output_invalid"


class StreamInterrupted(EngineError):
    """The upstream stream broke after the first byte; nothing may be retried."""

    code = "stream_interrupted"


class ModelNotAllowed(PermissionDenied):
    """The API key may not use this model."""

    code = "model_not_allowed"


class TaskNotAllowed(ModelNotAllowed):
    """The API key may not run this task."""

    code = "task_not_allowed"


class KeyRateLimited(RateLimited):
    """An API key went over its requests- or tokens-per-minute limit."""

    @property
    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": _seconds_up(self.retry_after)}


class BudgetExceeded(PowertrainError):
    """An API key's spend budget cannot cover this call."""

    status_code = 429
    error_type = "insufficient_quota"
    code = "budget_exceeded"

    def __init__(self, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": _seconds_up(self.retry_after)}


def _seconds_up(seconds: float) -> str:
    """Whole seconds, rounded up (a client that waits exactly this long finds room), >= 1."""
    whole = int(seconds)
    return str(max(1, whole + (seconds > whole)))
