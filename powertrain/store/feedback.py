"""Feedback rows on traces: pure storage. Who may see a trace is decided by the caller."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import null, select

from powertrain.store.db import Database
from powertrain.store.schema import feedback
from powertrain.store.times import as_utc, utc_now


@dataclass(frozen=True)
class FeedbackRecord:
    id: str
    trace_id: str
    api_key_id: str | None
    created_at: datetime
    source: str  # human | program
    author: str | None
    thumb: str | None  # up | down
    score: float | None
    scale: float | None
    label: str | None
    comment: str | None
    correction: Any  # text or a JSON value; None when not given

    def to_json(self) -> dict[str, Any]:
        values = asdict(self)
        values["created_at"] = self.created_at.isoformat()
        return values


class FeedbackStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, trace_id: str, *, api_key_id: str | None, **values: Any) -> FeedbackRecord:
        row = {
            "id": "fb_" + secrets.token_hex(10),
            "trace_id": trace_id,
            "api_key_id": api_key_id,
            "created_at": utc_now(),
            **values,
        }
        if row.get("correction") is None:
            row["correction"] = null()  # SQL NULL, not the JSON text 'null'
        with self.db.engine.begin() as conn:
            stored = conn.execute(feedback.insert().values(**row).returning(*feedback.c)).one()
        return _record(stored._mapping)

    def for_traces(self, trace_ids: Sequence[str]) -> dict[str, list[FeedbackRecord]]:
        """Each trace's feedback, oldest first (traces with none are absent)."""
        found: dict[str, list[FeedbackRecord]] = {}
        ids = list(dict.fromkeys(trace_ids))
        with self.db.engine.connect() as conn:
            for start in range(0, len(ids), 500):  # bounded IN lists
                query = (
                    select(feedback)
                    .where(feedback.c.trace_id.in_(ids[start : start + 500]))
                    .order_by(feedback.c.created_at, feedback.c.id)
                )
                for row in conn.execute(query).mappings():
                    found.setdefault(row["trace_id"], []).append(_record(row))
        return found

    def for_trace(self, trace_id: str) -> list[FeedbackRecord]:
        return self.for_traces([trace_id]).get(trace_id, [])


def _record(row: Any) -> FeedbackRecord:
    created = row["created_at"]
    created = as_utc(created)
    return FeedbackRecord(
        id=row["id"],
        trace_id=row["trace_id"],
        api_key_id=row["api_key_id"],
        created_at=created,
        source=row["source"],
        author=row["author"],
        thumb=row["thumb"],
        score=row["score"],
        scale=row["scale"],
        label=row["label"],
        comment=row["comment"],
        correction=row["correction"],
    )
