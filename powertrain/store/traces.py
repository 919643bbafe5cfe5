"""Reading and writing traces. Every query uses bound parameters."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, Field
from sqlalchemy import ColumnElement, Select, Text, cast, delete, exists, func, or_, select

from powertrain.schemas.trace import TRACE_ADAPTER, Trace
from powertrain.store.db import Database
from powertrain.store.schema import feedback, traces
from powertrain.store.times import as_utc

_COLUMNS = [c.name for c in traces.columns]


FeedbackState = Literal["none", "any", "up", "down", "corrected"]
MAX_SEARCH_CHARS = 200


class TraceFilter(BaseModel):
    model: str | None = None
    status: str | None = None
    task: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    api_key_id: str | None = None
    variant: str | None = None
    feedback: FeedbackState | None = Field(
        default=None,
        description="none: no feedback yet; any; up/down: the latest thumb; corrected.",
    )
    search: str | None = Field(
        default=None,
        max_length=MAX_SEARCH_CHARS,
        description="Text in the output, the request or the error (case-insensitive).",
    )


class TracePage(BaseModel):
    data: list[Trace]
    next_cursor: str | None = Field(
        default=None, description="Pass as `cursor` for the next (older) page."
    )


_JSON_COLUMNS = frozenset({"request", "attempts", "metadata"})


class TraceStore:
    def __init__(self, db: Database):
        self.db = db
        self._insert_sql = self._insert_statement()

    def _insert_statement(self) -> str:
        # Idempotent by id, so a batch retried after a store outage never duplicates.
        # Plain driver SQL: traces are written in bulk at the request rate, and going
        # through the DB-API directly keeps almost all of it in C, off the GIL.
        columns = ", ".join(_COLUMNS)
        if self.db.dialect == "postgresql":
            marks = ", ".join("%s::jsonb" if c in _JSON_COLUMNS else "%s" for c in _COLUMNS)
        else:  # sqlite; Database refuses any other backend
            marks = ", ".join("?" for _ in _COLUMNS)
        return f"INSERT INTO traces ({columns}) VALUES ({marks}) ON CONFLICT (id) DO NOTHING"

    def to_rows(self, batch: Sequence[Trace]) -> list[tuple[Any, ...]]:
        """Driver-ready rows (JSON as text, times as the backend keeps them). Pure and cheap."""
        postgres = self.db.dialect == "postgresql"
        rows = []
        for trace in batch:
            values = trace.as_dict()
            if postgres:
                values = _without_nul(values)
            else:
                values["created_at"] = _sqlite_datetime(values["created_at"])
            for column in _JSON_COLUMNS:
                values[column] = orjson.dumps(values[column]).decode()
            rows.append(tuple(values[c] for c in _COLUMNS))
        return rows

    def insert_rows(self, rows: Sequence[tuple[Any, ...]]) -> None:
        if rows:
            with self.db.engine.begin() as conn:
                conn.exec_driver_sql(self._insert_sql, list(rows))

    def insert_many(self, batch: Sequence[Trace]) -> None:
        self.insert_rows(self.to_rows(batch))

    def get(self, trace_id: str, *, api_key_id: str | None = None) -> Trace | None:
        query = select(traces).where(traces.c.id == _without_nul(trace_id))
        if api_key_id is not None:
            query = query.where(traces.c.api_key_id == api_key_id)
        with self.db.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return _to_trace(row) if row else None

    def list(
        self, filters: TraceFilter, *, limit: int = 50, cursor: str | None = None
    ) -> TracePage:
        query = _filtered(select(traces), filters).order_by(traces.c.id.desc()).limit(limit + 1)
        if cursor:
            query = query.where(traces.c.id < _without_nul(cursor))
        with self.db.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        data = [_to_trace(r) for r in rows[:limit]]
        next_cursor = data[-1].id if len(rows) > limit and data else None
        return TracePage(data=data, next_cursor=next_cursor)

    def count(self, filters: TraceFilter | None = None) -> int:
        query = _filtered(select(func.count()).select_from(traces), filters or TraceFilter())
        with self.db.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def delete(self, trace_id: str) -> bool:
        with self.db.engine.begin() as conn:
            query = delete(traces).where(traces.c.id == _without_nul(trace_id))
            return conn.execute(query).rowcount > 0


def _filtered(query: Select[Any], filters: TraceFilter) -> Select[Any]:
    """``query`` narrowed by every filter that is set (values always bound, never inlined)."""
    for column in ("model", "status", "task", "api_key_id", "variant"):
        value = getattr(filters, column)
        if value is not None:
            query = query.where(traces.c[column] == _without_nul(value))
    if filters.since is not None:
        query = query.where(traces.c.created_at >= as_utc(filters.since))
    if filters.until is not None:
        query = query.where(traces.c.created_at < as_utc(filters.until))
    if filters.feedback is not None:
        query = query.where(_feedback_condition(filters.feedback))
    if filters.search:
        query = query.where(_search_condition(filters.search))
    return query


def _feedback_condition(state: FeedbackState) -> ColumnElement[bool]:
    """Feedback as ``datasets.from_traces.keeps`` reads it: the latest thumb given wins."""
    mine = feedback.c.trace_id == traces.c.id
    if state == "none":
        return ~exists().where(mine)
    if state == "any":
        return exists().where(mine)
    if state == "corrected":
        return exists().where(mine, feedback.c.correction.is_not(None))
    latest_thumb = (
        select(feedback.c.thumb)
        .where(mine, feedback.c.thumb.is_not(None))
        .order_by(feedback.c.created_at.desc(), feedback.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    return latest_thumb == state


def _search_condition(text: str) -> ColumnElement[bool]:
    """A case-insensitive substring of the output, the request (as JSON text) or the error.

    A scan, not an index: with newest-first order and a page limit it stops at the
    first page of matches, which is fast on tens of thousands of traces; a rare term
    over millions would want Postgres full-text or FTS5 instead.
    """
    escaped = (
        _without_nul(text)[:MAX_SEARCH_CHARS]
        .replace("\\", "\\\\")
        .replace("%", "\\%")
        .replace("_", "\\_")
    )
    pattern = f"%{escaped}%"
    return or_(
        traces.c.output.ilike(pattern, escape="\\"),
        traces.c.error_message.ilike(pattern, escape="\\"),
        cast(traces.c.request, Text).ilike(pattern, escape="\\"),
    )


def _sqlite_datetime(moment: datetime) -> str:
    """SQLAlchemy's text form of DATETIME on SQLite (UTC), so rows written here read back alike."""
    if moment.tzinfo is not None and moment.utcoffset():
        moment = moment.astimezone(UTC)
    return moment.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def _without_nul(value: Any) -> Any:
    """Postgres text and JSONB cannot hold NUL; there it is stored as U+FFFD."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value


def _to_trace(row: Any) -> Trace:
    values = {name: row[name] for name in _COLUMNS}
    if values["created_at"].tzinfo is None:  # SQLite keeps no zone; we only ever write UTC
        values["created_at"] = values["created_at"].replace(tzinfo=UTC)
    return TRACE_ADAPTER.validate_python(values)
