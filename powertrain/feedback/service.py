"""Giving and reading feedback, scoped like traces: a key reaches only its own calls.

Another key's trace is "not found", never "forbidden", so ids say nothing across
tenants (RELIABILITY 9). Every value is data: stored and returned as given.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Self

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from powertrain.errors import InvalidRequest, NotFound
from powertrain.store.db import Database
from powertrain.store.feedback import FeedbackRecord, FeedbackStore
from powertrain.store.traces import TraceStore

MAX_COMMENT_CHARS = 8_000
MAX_CORRECTION_BYTES = 64 * 1024


class TraceNotFound(NotFound):
    code = "trace_not_found"


class FeedbackCreate(BaseModel):
    """One piece of feedback on a trace; at least one signal must be given."""

    model_config = ConfigDict(extra="forbid")

    trace_id: str = Field(min_length=1, max_length=64)
    thumb: Literal["up", "down"] | None = None
    score: float | None = Field(default=None, description="A number, within [0, scale] if set.")
    scale: float | None = Field(default=None, gt=0, description="The score's maximum, e.g. 5.")
    label: str | None = Field(default=None, min_length=1, max_length=128)
    comment: str | None = Field(default=None, max_length=MAX_COMMENT_CHARS)
    correction: Any = Field(
        default=None, description="The output it should have been: text or a JSON value."
    )
    source: Literal["human", "program"] = "human"
    author: str | None = Field(default=None, max_length=128)

    @field_validator("score")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("score must be a finite number")
        return value

    @field_validator("correction")
    @classmethod
    def _bounded(cls, value: Any) -> Any:
        if value is not None and len(orjson.dumps(value)) > MAX_CORRECTION_BYTES:
            raise ValueError(f"correction is over the limit of {MAX_CORRECTION_BYTES} bytes")
        return value

    @model_validator(mode="after")
    def _one_signal(self) -> Self:
        signals = (self.thumb, self.score, self.label, self.comment, self.correction)
        if all(s is None for s in signals):
            raise ValueError("give at least one of thumb, score, label, comment or correction")
        if self.scale is not None:
            if self.score is None:
                raise ValueError("scale needs a score")
            if not 0 <= self.score <= self.scale:
                raise ValueError(f"score must be between 0 and the scale ({self.scale:g})")
        return self


def feedback_request(trace_id: str, **values: Any) -> FeedbackCreate:
    """A checked request from keyword arguments, or one clear InvalidRequest."""
    try:
        return FeedbackCreate(trace_id=trace_id, **values)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        shown = f"{where}: {message}" if where else message
        raise InvalidRequest(shown, param=where or None) from None


class FeedbackService:
    def __init__(self, db: Database) -> None:
        self.store = FeedbackStore(db)
        self.traces = TraceStore(db)

    def _visible(self, trace_id: str, scope: str | None) -> None:
        if self.traces.get(trace_id, api_key_id=scope) is None:
            raise TraceNotFound(f"no trace with id {trace_id!r}", param="trace_id")

    def give(
        self, body: FeedbackCreate, *, scope: str | None, api_key_id: str | None = None
    ) -> FeedbackRecord:
        """Record ``body`` on its trace; ``scope`` is the key whose traces the caller sees
        (None: all, for the admin key)."""
        self._visible(body.trace_id, scope)
        values = body.model_dump(exclude={"trace_id"})
        return self.store.add(
            body.trace_id, api_key_id=api_key_id, **{k: _no_nul(v) for k, v in values.items()}
        )

    def list_for(self, trace_id: str, *, scope: str | None) -> list[FeedbackRecord]:
        self._visible(trace_id, scope)
        return self.store.for_trace(trace_id)


def _no_nul(value: Any) -> Any:
    """Postgres text and JSON cannot hold NUL; it is kept as U+FFFD on every backend alike."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_no_nul(k): _no_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nul(v) for v in value]
    return value
