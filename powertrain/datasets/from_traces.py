"""Rows from traces: a filter over the caller's own calls, narrowed by their feedback.

A task call's row holds the variables it was called with; a plain chat call's
row holds its messages. The reference output is the call's answer, unless the
trace has a corrected output, which replaces it. Labels carry the latest
feedback (thumb, score, label).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import select

from powertrain.datasets.rows import DatasetRow, RowInput
from powertrain.errors import InvalidRequest
from powertrain.schemas.trace import TRACE_ADAPTER, Trace
from powertrain.store.db import Database
from powertrain.store.feedback import FeedbackRecord, FeedbackStore
from powertrain.store.schema import traces
from powertrain.store.tasks import TaskStore
from powertrain.store.times import as_utc

_SCORE = re.compile(r"^score\s*>=\s*(-?\d+(?:\.\d+)?)$")
FEEDBACK_FILTERS = "up, down, corrected, any, or score>=N"


class TraceQuery(BaseModel):
    """Which traces become rows. Only ``status = ok`` calls are taken."""

    model_config = ConfigDict(extra="forbid")

    task: str | None = Field(default=None, max_length=256)
    variant: str | None = Field(default=None, max_length=256)
    model: str | None = Field(default=None, max_length=256)
    since: datetime | None = None
    until: datetime | None = None
    feedback: str | None = Field(
        default=None, description=f"Keep traces whose feedback is: {FEEDBACK_FILTERS}."
    )
    limit: int = Field(default=10_000, ge=1, le=100_000)

    @field_validator("feedback")
    @classmethod
    def _known(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().lower()
        if value in ("up", "down", "corrected", "any") or _SCORE.match(value):
            return value
        raise ValueError(f"unknown feedback filter {value!r}; use {FEEDBACK_FILTERS}")


def trace_query(**values: Any) -> TraceQuery:
    """A checked query from keyword arguments, or one clear InvalidRequest."""
    try:
        return TraceQuery(**values)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        raise InvalidRequest(f"{where}: {message}", param=where or None) from None


def _latest(items: list[FeedbackRecord], field: str) -> Any:
    for item in reversed(items):  # oldest first, so the last one given wins
        value = getattr(item, field)
        if value is not None:
            return value
    return None


def keeps(rule: str | None, items: list[FeedbackRecord]) -> bool:
    """Whether a trace with this feedback passes the filter ``rule``."""
    if rule is None:
        return True
    if rule == "any":
        return bool(items)
    if rule in ("up", "down"):
        return bool(_latest(items, "thumb") == rule)
    if rule == "corrected":
        return _latest(items, "correction") is not None
    match = _SCORE.match(rule)
    assert match is not None  # validated by TraceQuery
    score = _latest(items, "score")
    return score is not None and score >= float(match.group(1))


class TraceRows:
    """Turns the caller's traces into dataset rows (blocking; call from a thread)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.feedback = FeedbackStore(db)
        self.tasks = TaskStore(db)
        self._versions: dict[tuple[str, int], dict[str, Any]] = {}

    def rows(
        self,
        query: TraceQuery,
        *,
        scope: str | None,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[DatasetRow]:
        """Rows from ``query``'s traces, oldest first; ``scope`` limits them to one key's."""
        found = self._traces(query, scope)
        given = self.feedback.for_traces([t.id for t in found])
        rows = []
        for n, trace in enumerate(found, 1):
            items = given.get(trace.id, [])
            if keeps(query.feedback, items):
                row = self._row(trace, items)
                if row is not None:
                    rows.append(row)
            if progress is not None:
                progress(n, len(found))
        return rows

    def _traces(self, query: TraceQuery, scope: str | None) -> list[Trace]:
        sql = select(traces).where(traces.c.status == "ok")
        for column in ("task", "variant", "model"):
            value = getattr(query, column)
            if value is not None:
                sql = sql.where(traces.c[column] == value)
        if scope is not None:
            sql = sql.where(traces.c.api_key_id == scope)
        if query.since is not None:
            sql = sql.where(traces.c.created_at >= as_utc(query.since))
        if query.until is not None:
            sql = sql.where(traces.c.created_at < as_utc(query.until))
        sql = sql.order_by(traces.c.id).limit(query.limit)
        with self.db.engine.connect() as conn:
            rows = conn.execute(sql).mappings().all()
        out = []
        for row in rows:
            values = dict(row)
            values["created_at"] = as_utc(values["created_at"])
            out.append(TRACE_ADAPTER.validate_python(values))
        return out

    def _row(self, trace: Trace, items: list[FeedbackRecord]) -> DatasetRow | None:
        given = self._input(trace)
        if given is None:
            return None
        correction = _latest(items, "correction")
        labels = {
            name: value
            for name in ("thumb", "score", "label")
            if (value := _latest(items, name)) is not None
        }
        if correction is not None:
            labels["corrected"] = True
        source: dict[str, Any] = {"trace_id": trace.id}
        if trace.task:
            source["task"] = trace.task
        if trace.variant:
            source["variant"] = trace.variant
        return DatasetRow(
            input=given,
            output=correction if correction is not None else self._answer(trace),
            labels=labels,
            source=source,
        )

    def _input(self, trace: Trace) -> RowInput | None:
        request = trace.request
        variables = request.get("variables")
        variables = dict(variables) if isinstance(variables, dict) else None
        messages = request.get("messages")
        if trace.task and isinstance(messages, list):
            # A task called as a chat completion: its last user message filled the input.
            name = self._input_name(trace)
            users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
            if name is not None and users and isinstance(users[-1].get("content"), str):
                return RowInput(variables={name: users[-1]["content"], **(variables or {})})
        if trace.task and variables is not None:
            return RowInput(variables=variables)
        if isinstance(messages, list) and messages:
            return RowInput(messages=[dict(m) for m in messages if isinstance(m, dict)])
        if trace.task:
            return RowInput(variables={})
        return None  # an embeddings call, say: nothing to learn from

    def _input_name(self, trace: Trace) -> str | None:
        name = self._version(trace).get("input")
        return name if isinstance(name, str) else None

    def _answer(self, trace: Trace) -> Any:
        """The call's answer as a reference: the value itself for a task with an output
        schema (its trace holds the validated value as JSON text), so it compares with a
        correction, which is given as the value; the text otherwise."""
        if trace.output is None or self._version(trace).get("output_schema") is None:
            return trace.output
        try:
            return json.loads(trace.output)
        except json.JSONDecodeError:
            return trace.output  # from a build that stored something else: kept as it was

    def _version(self, trace: Trace) -> dict[str, Any]:
        """The content of the task version that served ``trace`` ({} when unknown)."""
        version = trace.metadata.get("task_version")
        if not isinstance(version, int) or trace.task is None:
            return {}
        key = (trace.task, version)
        if key not in self._versions:
            record = self.tasks.get_version(trace.task, version)
            self._versions[key] = record.content if record is not None else {}
        return self._versions[key]


def check_query(query: TraceQuery) -> None:
    if query.since and query.until and as_utc(query.since) >= as_utc(query.until):
        raise InvalidRequest("since must be before until", param="since")
