"""Reading and writing traces. Every query uses bound parameters."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import Insert, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite

from powertrain.schemas.trace import Trace
from powertrain.store.db import Database
from powertrain.store.schema import traces

_COLUMNS = [c.name for c in traces.columns]


class TraceFilter(BaseModel):
    model: str | None = None
    status: str | None = None
    task: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    api_key_id: str | None = None


class TracePage(BaseModel):
    data: list[Trace]
    next_cursor: str | None = Field(
        default=None, description="Pass as `cursor` for the next (older) page."
    )


class TraceStore:
    def __init__(self, db: Database):
        self.db = db

    def _insert_ignoring_duplicates(self) -> Insert:
        # Idempotent by id, so a batch retried after a store outage never duplicates.
        if self.db.dialect == "postgresql":
            return postgresql.insert(traces).on_conflict_do_nothing(index_elements=["id"])
        if self.db.dialect == "sqlite":
            return sqlite.insert(traces).on_conflict_do_nothing(index_elements=["id"])
        return traces.insert()

    def insert_many(self, rows: Sequence[Trace]) -> None:
        if not rows:
            return
        values = [row.to_row() for row in rows]
        if self.db.dialect == "postgresql":
            values = [_without_nul(v) for v in values]
        with self.db.engine.begin() as conn:
            conn.execute(self._insert_ignoring_duplicates(), values)

    def get(self, trace_id: str, *, api_key_id: str | None = None) -> Trace | None:
        query = select(traces).where(traces.c.id == _without_nul(trace_id))
        if api_key_id is not None:
            query = query.where(traces.c.api_key_id == api_key_id)
        with self.db.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return _to_trace(row) if row else None

    def list(self, filters: TraceFilter, *, limit: int = 50, cursor: str | None = None) -> TracePage:
        query = select(traces).order_by(traces.c.id.desc()).limit(limit + 1)
        for column in ("model", "status", "task", "api_key_id"):
            value = getattr(filters, column)
            if value is not None:
                query = query.where(traces.c[column] == _without_nul(value))
        if filters.since is not None:
            query = query.where(traces.c.created_at >= filters.since)
        if filters.until is not None:
            query = query.where(traces.c.created_at < filters.until)
        if cursor:
            query = query.where(traces.c.id < _without_nul(cursor))
        with self.db.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        data = [_to_trace(r) for r in rows[:limit]]
        next_cursor = data[-1].id if len(rows) > limit and data else None
        return TracePage(data=data, next_cursor=next_cursor)

    def count(self, filters: TraceFilter | None = None) -> int:
        query = select(func.count()).select_from(traces)
        if filters and filters.model:
            query = query.where(traces.c.model == _without_nul(filters.model))
        with self.db.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def delete(self, trace_id: str) -> bool:
        with self.db.engine.begin() as conn:
            query = delete(traces).where(traces.c.id == _without_nul(trace_id))
            return conn.execute(query).rowcount > 0


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
    return Trace.model_validate(values)
