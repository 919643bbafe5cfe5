"""The trace store on SQLite and on Postgres: migrations, idempotent writes, queries."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from powertrain.errors import ConfigError
from powertrain.schemas.trace import Trace
from powertrain.store import Database, TraceFilter, TraceStore
from powertrain.store.migrate import current_revision, head_revision


@pytest.fixture
def store(database_url: str) -> Iterator[TraceStore]:
    db = Database(database_url)
    yield TraceStore(db)
    db.dispose()


def _trace(model: str, **fields: object) -> Trace:
    fields.setdefault("request", {"messages": [{"role": "user", "content": "hi"}]})
    return Trace(model=model, **fields)  # type: ignore[arg-type]


def test_migrations_reach_head_and_are_idempotent(database_url: str) -> None:
    db = Database(database_url)
    assert current_revision(db.engine) == head_revision()
    Database(database_url).dispose()  # opening again migrates nothing and does not fail
    inspector = sa.inspect(db.engine)
    assert "traces" in inspector.get_table_names()
    assert {"ix_traces_created_at", "ix_traces_model_created_at"} <= {
        ix["name"] for ix in inspector.get_indexes("traces")
    }
    db.dispose()


def test_insert_is_idempotent_and_round_trips(store: TraceStore) -> None:
    model = f"m-{uuid.uuid4().hex[:8]}"
    trace = _trace(
        model,
        output="héllo ✓",
        prompt_tokens=3,
        completion_tokens=2,
        attempts=[
            {"model": model, "engine": "openai", "status": "ok", "latency_ms": 1.5, "error": None}
        ],
        metadata={"source": "test", "nested": {"k": [1, 2]}},
    )
    store.insert_many([trace])
    store.insert_many([trace, trace])  # a retried batch must not duplicate
    assert store.count(TraceFilter(model=model)) == 1
    loaded = store.get(trace.id)
    assert loaded is not None
    assert loaded == trace
    assert loaded.created_at.tzinfo is not None


def test_list_filters_and_paginates_newest_first(store: TraceStore) -> None:
    model = f"m-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    traces = [
        _trace(model, status="ok" if i % 3 else "error", created_at=now - timedelta(minutes=i))
        for i in range(25)
    ]
    store.insert_many(traces)
    store.insert_many([_trace(f"other-{model}")])

    seen: list[str] = []
    cursor = None
    while True:
        page = store.list(TraceFilter(model=model), limit=10, cursor=cursor)
        seen += [t.id for t in page.data]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == sorted((t.id for t in traces), reverse=True)

    errors = store.list(TraceFilter(model=model, status="error"), limit=100).data
    assert {t.id for t in errors} == {t.id for t in traces if t.status == "error"}

    recent = store.list(
        TraceFilter(model=model, since=now - timedelta(minutes=4, seconds=30)), limit=100
    ).data
    assert len(recent) == 5


def test_delete_removes_the_trace(store: TraceStore) -> None:
    trace = _trace(f"m-{uuid.uuid4().hex[:8]}")
    store.insert_many([trace])
    assert store.delete(trace.id) is True
    assert store.get(trace.id) is None
    assert store.delete(trace.id) is False


def test_hostile_filter_values_are_bound_parameters(store: TraceStore) -> None:
    model = f"m-{uuid.uuid4().hex[:8]}"
    store.insert_many([_trace(model)])
    for hostile in ("' OR 1=1 --", "x'; DROP TABLE traces; --", "\x00", "ü" * 300):
        assert store.list(TraceFilter(model=hostile), limit=5).data == []
        assert store.get(hostile) is None
    assert store.count(TraceFilter(model=model)) == 1


def test_sqlite_uses_wal(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path}/wal.db")
    with db.engine.connect() as conn:
        assert conn.execute(sa.text("PRAGMA journal_mode")).scalar() == "wal"
    db.dispose()


def test_nul_bytes_in_a_trace_are_stored(store: TraceStore) -> None:
    trace = _trace(
        f"m-{uuid.uuid4().hex[:8]}",
        output="a\x00b",
        request={"messages": [{"role": "user", "content": "x\x00y"}]},
    )
    store.insert_many([trace])
    loaded = store.get(trace.id)
    assert loaded is not None and loaded.output in ("a\x00b", "a\ufffdb")


def test_time_filters_honour_offsets(store: TraceStore) -> None:
    model = f"m-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    store.insert_many([_trace(model, created_at=now - timedelta(hours=h)) for h in range(4)])
    plus_two = timezone(timedelta(hours=2))
    since = (now - timedelta(hours=1, minutes=30)).astimezone(plus_two)
    found = store.list(TraceFilter(model=model, since=since), limit=10).data
    assert len(found) == 2


@pytest.mark.parametrize("url", ["mysql://root@127.0.0.1/test", "not a url at all"])
def test_unsupported_or_malformed_store_urls_are_clear(url: str) -> None:
    with pytest.raises(ConfigError, match="database_url"):
        Database(url)
