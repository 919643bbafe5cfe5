"""Feedback and datasets in the store, on SQLite and on Postgres: versions, splits, deletes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from powertrain.datasets import DatasetRow, Datasets, TraceQuery, row_from_object
from powertrain.datasets.rows import split_of
from powertrain.errors import InvalidRequest
from powertrain.feedback import FeedbackService, TraceNotFound, feedback_request
from powertrain.schemas.trace import Trace
from powertrain.store import Database, TaskStore, TraceStore
from powertrain.store.schema import dataset_rows, dataset_versions, feedback


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    yield database
    database.dispose()


def owner() -> str:
    """An owner of its own: the Postgres database is shared by the whole session."""
    return f"key_{uuid.uuid4().hex[:12]}"


def rows(n: int, start: int = 0) -> list[DatasetRow]:
    return [
        row_from_object({"input": {"q": f"question {i}"}, "output": f"answer {i}"}, f"row {i}")
        for i in range(start, start + n)
    ]


def trace(task: str, key: str, *, output: str, variant: str = "default", **kw: object) -> Trace:
    return Trace(
        model=f"task:{task}",
        task=task,
        variant=variant,
        api_key_id=key,
        request={"variables": {"text": f"in {output}"}},
        output=output,
        **kw,  # type: ignore[arg-type]
    )


def test_versions_are_immutable_and_found_by_content(db: Database) -> None:
    datasets, who = Datasets(db), owner()
    first = datasets.create(who, "faq", rows(10))
    assert (first.version.version, first.created, first.version.row_count) == (1, True, 10)
    again = datasets.create(who, "faq", rows(10))
    assert (again.version.version, again.created) == (1, False)
    bigger = datasets.create(who, "faq", rows(11))
    assert (bigger.version.version, bigger.created) == (2, True)
    resplit = datasets.create(who, "faq", rows(10), test_fraction=0.5)
    assert resplit.version.version == 3  # split settings are part of a version's content
    _, kept = datasets.rows(who, "faq", 1)
    assert [r.output for r in kept] == [f"answer {i}" for i in range(10)]  # untouched
    assert [v.version for v in datasets.versions(who, "faq")] == [1, 2, 3]
    assert datasets.version(who, "faq").version == 3  # latest
    # Another owner has its own namespace: the same name is another dataset.
    assert datasets.create(owner(), "faq", rows(10)).version.version == 1


def test_split_is_deterministic_and_stable_when_rows_are_added(db: Database) -> None:
    datasets, who = Datasets(db), owner()
    small = datasets.create(who, "split", rows(200), test_fraction=0.2, seed=7)
    big = datasets.create(who, "split", rows(400), test_fraction=0.2, seed=7)
    _, before = datasets.rows(who, "split", small.version.version)
    _, after = datasets.rows(who, "split", big.version.version)
    by_hash = {r.row_hash: r.split for r in after}
    assert all(by_hash[r.row_hash] == r.split for r in before)  # nobody moved
    tests = sum(r.split == "test" for r in after)
    assert 40 < tests < 120  # about a fifth
    assert big.version.test_count == tests
    assert all(split_of(r.row_hash, seed=7, test_fraction=0.2) == r.split for r in after)
    other_seed = [split_of(r.row_hash, seed=8, test_fraction=0.2) for r in after]
    assert other_seed != [r.split for r in after]
    _, only_test = datasets.rows(who, "split", split="test")
    assert {r.split for r in only_test} == {"test"} and len(only_test) == tests


def test_delete_removes_every_version_and_row(db: Database) -> None:
    datasets, who = Datasets(db), owner()
    made = datasets.create(who, "gone", rows(5))
    datasets.create(who, "gone", rows(6))
    dataset_id = made.dataset.id
    datasets.delete(who, "gone")
    with db.engine.connect() as conn:
        for table in (dataset_rows, dataset_versions):
            left = conn.execute(
                sa.select(sa.func.count()).where(table.c.dataset_id == dataset_id)
            ).scalar_one()
            assert left == 0
    with pytest.raises(Exception, match="no dataset named 'gone'"):
        datasets.rows(who, "gone")
    assert datasets.create(who, "gone", rows(5)).version.version == 1  # a new dataset


def test_feedback_is_scoped_and_goes_with_its_trace(db: Database) -> None:
    service, traces = FeedbackService(db), TraceStore(db)
    mine, theirs = owner(), owner()
    t = trace("fb", mine, output="hello")
    traces.insert_many([t])
    given = service.give(
        feedback_request(t.id, thumb="up", score=4, scale=5, correction={"b": 1, "a": 2}),
        scope=mine,
    )
    assert given.correction == {"b": 1, "a": 2}
    assert list(given.correction) == ["b", "a"]  # key order kept on Postgres too
    service.give(feedback_request(t.id, comment="<b>{{ x }}</b>"), scope=None)  # the admin
    assert [f.thumb for f in service.list_for(t.id, scope=mine)] == ["up", None]
    with pytest.raises(TraceNotFound):
        service.list_for(t.id, scope=theirs)
    with pytest.raises(TraceNotFound):
        service.give(feedback_request(t.id, thumb="down"), scope=theirs)
    with pytest.raises(TraceNotFound):
        service.give(feedback_request("tr_nope", thumb="down"), scope=None)
    assert traces.delete(t.id)
    with db.engine.connect() as conn:
        left = conn.execute(
            sa.select(sa.func.count()).where(feedback.c.trace_id == t.id)
        ).scalar_one()
    assert left == 0


def test_rows_from_traces_follow_filters_and_feedback(db: Database) -> None:
    service, traces, datasets = FeedbackService(db), TraceStore(db), Datasets(db)
    key, other = owner(), owner()
    task = f"classify-{uuid.uuid4().hex[:6]}"
    old = datetime.now(UTC) - timedelta(days=3)
    good = trace(task, key, output="refund")
    bad = trace(task, key, output="wrong")
    fixed = trace(task, key, output="wrong too")
    scored = trace(task, key, output="ok", variant="b")
    failed = trace(task, key, output=None, status="error")  # type: ignore[arg-type]
    stale = trace(task, key, output="old", created_at=old)
    foreign = trace(task, other, output="not yours")
    traces.insert_many([good, bad, fixed, scored, failed, stale, foreign])
    for t in (good, stale, foreign):
        service.give(feedback_request(t.id, thumb="up"), scope=None)
    service.give(feedback_request(bad.id, thumb="up"), scope=None)
    service.give(feedback_request(bad.id, thumb="down"), scope=None)  # the latest counts
    service.give(feedback_request(fixed.id, correction="billing", label="fixed"), scope=None)
    service.give(feedback_request(scored.id, score=4.5), scope=None)

    def outputs(**query: object) -> list[str]:
        found = datasets.rows_from_traces(TraceQuery(task=task, **query), scope=key)  # type: ignore[arg-type]
        return sorted(str(r.output) for r in found)  # ids made in one ms sort randomly

    assert outputs() == ["billing", "ok", "old", "refund", "wrong"]  # status ok, own only
    assert outputs(feedback="up") == ["old", "refund"]
    assert outputs(feedback="up", since=old + timedelta(hours=1)) == ["refund"]
    assert outputs(feedback="down") == ["wrong"]
    assert outputs(feedback="corrected") == ["billing"]  # the correction is the reference
    assert outputs(feedback="score>=4") == ["ok"]
    assert outputs(feedback="score>=5") == []
    assert outputs(variant="b") == ["ok"]
    corrected = datasets.rows_from_traces(TraceQuery(task=task, feedback="corrected"), scope=key)
    assert corrected[0].input.variables == {"text": "in wrong too"}
    assert corrected[0].labels == {"label": "fixed", "corrected": True}
    assert corrected[0].source == {"trace_id": fixed.id, "task": task, "variant": "default"}
    everyone = datasets.rows_from_traces(TraceQuery(task=task, feedback="up"), scope=None)
    assert sorted(str(r.output) for r in everyone) == ["not yours", "old", "refund"]


def test_a_schema_tasks_answer_is_its_value_like_a_correction(db: Database) -> None:
    service, traces, tasks = FeedbackService(db), TraceStore(db), TaskStore(db)
    key = owner()
    typed, plain = (f"{kind}-{uuid.uuid4().hex[:6]}" for kind in ("typed", "plain"))
    schema = {"type": "object", "properties": {"intent": {"enum": ["refund", "card"]}}}
    for name, content in ((typed, {"output_schema": schema}), (plain, {"output_schema": None})):
        tasks.create_task(name, source="api", definition={})
        version, _ = tasks.add_version(name, content, f"hash-{name}", source="api")
        made = [
            trace(
                name, key, output='{"intent": "refund"}', metadata={"task_version": version.version}
            ),
            trace(
                name, key, output='{"intent": "refund"}', metadata={"task_version": version.version}
            ),
        ]
        traces.insert_many(made)
        service.give(feedback_request(made[0].id, thumb="up"), scope=None)
        service.give(feedback_request(made[1].id, correction={"intent": "card"}), scope=None)

    def outputs(task: str) -> list[object]:
        found = Datasets(db).rows_from_traces(TraceQuery(task=task, feedback="any"), scope=key)
        return sorted((r.output for r in found), key=str)

    assert outputs(typed) == [{"intent": "card"}, {"intent": "refund"}]  # one shape for both
    assert outputs(plain) == ['{"intent": "refund"}', {"intent": "card"}]  # text stays text


def test_rows_keep_any_text_and_read_back_as_eval_cases(db: Database) -> None:
    datasets, who = Datasets(db), owner()
    hostile = "<script>x</script> {{ 7*7 }} {% if %} nul:\x00 end"
    made = datasets.create(
        who,
        "odd",
        [
            row_from_object(
                {
                    "input": {"t": hostile},
                    "output": {"z": 1, "a": hostile},
                    "labels": {"l": hostile},
                },
                "row 0",
            ),
            row_from_object({"messages": [{"role": "user", "content": "hi"}]}, "row 1"),
        ],
        test_fraction=0,
    )
    kept = hostile.replace("\x00", "\ufffd")  # the one character Postgres cannot keep
    version, cases = datasets.eval_cases(who, "odd@1")
    assert version.version == made.version.version == 1
    assert cases[0] == {
        "vars": {"t": kept},
        "expected": {"z": 1, "a": kept},
        "labels": {"l": kept},
    }
    assert list(cases[0]["expected"]) == ["z", "a"]  # key order kept
    assert cases[1] == {
        "vars": {},
        "expected": None,
        "messages": [{"role": "user", "content": "hi"}],
    }
    assert datasets.eval_cases(who, "odd", split="test")[1] == []


def test_concurrent_writers_never_share_a_version_number(database_url: str) -> None:
    """Writers on separate connections (as gateway workers are): every distinct content gets
    its own number, and the same content the same one."""
    from concurrent.futures import ThreadPoolExecutor

    who = owner()
    databases = [Database(database_url) for _ in range(4)]
    try:

        def make(n: int) -> int:
            datasets = Datasets(databases[n % 4])
            return datasets.create(who, "race", rows(3 + n % 6)).version.version

        with ThreadPoolExecutor(8) as pool:
            numbers = list(pool.map(make, range(24)))
        by_size: dict[int, set[int]] = {}
        for n, number in enumerate(numbers):
            by_size.setdefault(3 + n % 6, set()).add(number)
        assert all(len(v) == 1 for v in by_size.values())  # same content, same number
        assert sorted(n for v in by_size.values() for n in v) == [1, 2, 3, 4, 5, 6]
    finally:
        for database in databases:
            database.dispose()


def test_a_row_may_pin_its_split(db: Database) -> None:
    datasets, who = Datasets(db), owner()

    def pinned(split: str) -> list[DatasetRow]:
        return [
            row_from_object({"vars": {"q": f"q{i}"}, "expected": f"a{i}", "split": split}, "r")
            for i in range(20)
        ]

    tests = datasets.create(who, "published", pinned("test"))
    assert tests.version.test_count == 20  # whatever the hash would have said
    _version, stored = datasets.iter_rows(who, "published", None)
    assert {r.split for r in stored} == {"test"}
    trains = datasets.create(who, "published", pinned("train"))
    assert trains.created and trains.version.test_count == 0  # another pin, another version
    unpinned = datasets.create(who, "published", rows(20))
    assert 0 < unpinned.version.test_count < 20
    with pytest.raises(InvalidRequest, match='split must be "train" or "test"'):
        row_from_object({"vars": {"q": "x"}, "split": "dev"}, "row 1")
