"""What the web UI reads from the store, on SQLite and Postgres: trace filters (feedback,
variant, key, text search), cursor pages over thousands of traces, usage series, eval tallies."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from powertrain.feedback import FeedbackService, feedback_request
from powertrain.schemas.trace import Trace
from powertrain.store import Database, EvalResultRecord, EvalStore, TraceFilter, TraceStore
from powertrain.store.ui_queries import eval_run_tallies, usage_series


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    yield database
    database.dispose()


def tenant() -> str:
    """A key of its own: the Postgres database is shared by the whole session."""
    return f"key_{uuid.uuid4().hex[:12]}"


def make(key: str, n: int, **fields: object) -> Trace:
    values: dict[str, object] = {
        "model": "gpt",
        "request": {"messages": [{"role": "user", "content": f"question {n}"}]},
        "api_key_id": key,
        "output": f"answer {n}",
    }
    values.update(fields)
    return Trace(**values)  # type: ignore[arg-type]


def ids(page_data: list[Trace]) -> list[str]:
    return [t.id for t in page_data]


def test_feedback_variant_and_search_filters(db: Database) -> None:
    store, key = TraceStore(db), tenant()
    traces = [
        make(key, 0, task="t", variant="a"),
        make(key, 1, task="t", variant="b"),
        make(key, 2, output="100% sure_thing"),
        make(key, 3, output="Refund the ORDER please"),
        make(key, 4, status="error", output=None, error_message="upstream said Boom"),
        make(key, 5),
    ]
    store.insert_many(traces)
    service = FeedbackService(db)

    def give(trace: Trace, **values: object) -> None:
        service.give(feedback_request(trace.id, **values), scope=None)

    give(traces[0], thumb="up")
    give(traces[0], thumb="down", comment="changed my mind")  # the latest thumb wins
    give(traces[1], thumb="up")
    give(traces[2], correction={"answer": 42})
    give(traces[3], comment="only a comment")

    def found(**filters: object) -> set[str]:
        page = store.list(TraceFilter(api_key_id=key, **filters), limit=100)  # type: ignore[arg-type]
        return set(ids(page.data))

    assert found(feedback="down") == {traces[0].id}
    assert found(feedback="up") == {traces[1].id}
    assert found(feedback="corrected") == {traces[2].id}
    assert found(feedback="any") == {t.id for t in traces[:4]}
    assert found(feedback="none") == {traces[4].id, traces[5].id}
    assert found(variant="b") == {traces[1].id}
    assert found(search="refund the order") == {traces[3].id}  # case-insensitive
    assert found(search="boom") == {traces[4].id}  # the error message too
    assert found(search="question 5") == {traces[5].id}  # and the request
    assert found(search="100%") == {traces[2].id}  # % and _ are literal, not wildcards
    assert found(search="sur__thing") == set()  # a wildcard would match sure_thing
    assert found(search="sure_thing") == {traces[2].id}
    assert found(search="nothing like this") == set()
    assert store.count(TraceFilter(api_key_id=key, feedback="none")) == 2
    # Another key's traces never appear under this key's scope.
    other = tenant()
    store.insert_many([make(other, 9, output="Refund the ORDER please")])
    assert found(search="refund") == {traces[3].id}


def test_cursor_pages_walk_thousands_of_traces_newest_first(db: Database) -> None:
    store, key = TraceStore(db), tenant()
    start = datetime.now(UTC) - timedelta(hours=3)
    batch = [
        make(key, i, id=f"tr_{key}_{i:05d}", created_at=start + timedelta(seconds=i))
        for i in range(2_000)
    ]
    store.insert_many(batch)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = store.list(TraceFilter(api_key_id=key), limit=500, cursor=cursor)
        seen += ids(page.data)
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert pages == 4
    assert seen == [t.id for t in reversed(batch)]
    # Filters and the cursor together: only matching traces, still in order, no repeats.
    half = store.list(TraceFilter(api_key_id=key, search="answer 19"), limit=5)
    assert ids(half.data) == [f"tr_{key}_{i:05d}" for i in (1999, 1998, 1997, 1996, 1995)]
    rest = store.list(
        TraceFilter(api_key_id=key, search="answer 19"), limit=500, cursor=half.next_cursor
    )
    assert len(rest.data) == 111 - 5  # 19, 190-199, 1900-1999


def test_usage_series_groups_by_bucket_and_model(db: Database) -> None:
    store, key = TraceStore(db), tenant()
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=5)
    store.insert_many(
        [
            make(
                key,
                0,
                created_at=hour + timedelta(minutes=5),
                cost_usd=0.5,
                latency_ms=100.0,
                prompt_tokens=10,
                completion_tokens=5,
                ttft_ms=20.0,
            ),
            make(
                key,
                1,
                created_at=hour + timedelta(minutes=50),
                cost_usd=0.25,
                latency_ms=300.0,
                prompt_tokens=1,
                completion_tokens=1,
                ttft_ms=40.0,
            ),
            make(
                key,
                2,
                created_at=hour + timedelta(minutes=70),
                model="other",
                status="error",
                latency_ms=50.0,
            ),
            make(tenant(), 3, created_at=hour + timedelta(minutes=6), cost_usd=9.0),
        ]
    )
    points = usage_series(
        db,
        since=hour - timedelta(hours=1),
        until=hour + timedelta(hours=3),
        bucket_seconds=3_600,
        group_by="model",
        api_key_id=key,
    )
    by = {(p.start, p.group): p for p in points}
    assert set(by) == {(hour, "gpt"), (hour + timedelta(hours=1), "other")}
    first = by[(hour, "gpt")]
    assert (first.calls, first.errors, first.tokens) == (2, 0, 17)
    assert first.cost_usd == pytest.approx(0.75)
    assert first.avg_latency_ms == pytest.approx(200.0)
    assert first.max_latency_ms == pytest.approx(300.0)
    assert first.avg_ttft_ms == pytest.approx(30.0)
    later = by[(hour + timedelta(hours=1), "other")]
    assert (later.calls, later.errors, later.avg_ttft_ms) == (1, 1, None)
    by_key = usage_series(
        db,
        since=hour - timedelta(hours=1),
        until=hour + timedelta(hours=3),
        bucket_seconds=86_400,
        group_by="api_key_id",
        api_key_id=key,
    )
    assert {p.group for p in by_key} == {key}
    assert sum(p.calls for p in by_key) == 3


def test_eval_run_tallies(db: Database) -> None:
    store = EvalStore(db)
    run = store.create_run(suite="s", suite_hash="h" * 64, suite_path=None, config={})
    empty = store.create_run(suite="s", suite_hash="h" * 64, suite_path=None, config={})
    for i, status in enumerate(["pass", "pass", "fail", "error"]):
        store.add_result(
            EvalResultRecord(
                run_id=run.id,
                case_idx=i,
                target="m",
                rep=0,
                case_key=f"c{i}",
                vars={},
                expected=None,
                status=status,
                score=1.0 if status == "pass" else 0.0,
                output="x",
                error=None,
                latency_ms=1.0,
                cost_usd=0.0,
                trace_id=None,
                assertions=[],
            )
        )
    tallies = eval_run_tallies(db, [run.id, empty.id])
    assert empty.id not in tallies
    tally = tallies[run.id]
    assert (tally.results, tally.passed, tally.failed, tally.errors) == (4, 2, 1, 1)
    assert tally.pass_rate == 0.5
    assert eval_run_tallies(db, []) == {}
