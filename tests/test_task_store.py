"""The task store on SQLite and on Postgres: versions, labels, config sync, concurrency."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa

from powertrain.store import Database, SyncOutcome, TaskStore
from powertrain.store.migrate import current_revision, head_revision, upgrade
from powertrain.store.tasks import TaskExists, TaskMissing, VersionMissing

T = TypeVar("T")


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    yield database
    database.dispose()


@pytest.fixture
def store(db: Database) -> TaskStore:
    return TaskStore(db)


@pytest.fixture
def name(store: TaskStore) -> str:
    """A task of its own: the Postgres database is shared by the whole session."""
    task = f"t-{uuid.uuid4().hex[:10]}"
    store.create_task(task, source="api", definition={"model": "m"})
    return task


def _unique() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def _at_once(count: int, call: Callable[[int], T]) -> list[T]:
    """``call(i)`` in ``count`` threads released together; any thread's error is raised."""
    barrier = threading.Barrier(count)

    def run(i: int) -> T:
        barrier.wait()
        return call(i)

    with ThreadPoolExecutor(count) as pool:
        return [f.result() for f in [pool.submit(run, i) for i in range(count)]]


def _sync(store: TaskStore, name: str, content: dict[str, Any], **overrides: Any) -> SyncOutcome:
    args: dict[str, Any] = {
        "definition": {"model": "m"},
        "content": content,
        "content_hash": f"h-{content}",
        "config_hash": f"c-{content}",
        "labels": ["production"],
    }
    return store.sync_config_task(name, **{**args, **overrides})


def test_migrations_reach_head_and_create_the_task_tables(db: Database) -> None:
    assert current_revision(db.engine) == head_revision()
    inspector = sa.inspect(db.engine)
    assert {"traces", "tasks", "task_versions", "task_labels"} <= set(inspector.get_table_names())
    assert inspector.get_pk_constraint("task_versions")["constrained_columns"] == [
        "task",
        "version",
    ]
    assert inspector.get_pk_constraint("task_labels")["constrained_columns"] == ["task", "label"]
    unique = {
        u["name"]: u["column_names"] for u in inspector.get_unique_constraints("task_versions")
    }
    assert unique["uq_task_versions_task_content_hash"] == ["task", "content_hash"]
    (label_fk,) = inspector.get_foreign_keys("task_labels")
    assert label_fk["referred_table"] == "task_versions"
    assert label_fk["constrained_columns"] == ["task", "version"]
    assert label_fk["options"]["ondelete"] == "CASCADE"


def test_a_traces_only_store_upgrades_in_place(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = Database(url, migrate=False)
    upgrade(old.engine, "0001_create_traces")
    assert "tasks" not in sa.inspect(old.engine).get_table_names()
    old.dispose()
    db = Database(url)
    assert current_revision(db.engine) == head_revision()
    TaskStore(db).create_task("t", source="api", definition={})
    db.dispose()


def test_tasks_are_created_read_updated_and_listed(store: TaskStore) -> None:
    name = _unique()
    created = store.create_task(name, source="api", definition={"model": "m", "n": 1})
    assert created.source == "api" and created.config_hash is None
    assert created.created_at.tzinfo is UTC and created.updated_at == created.created_at
    assert store.get_task(name) == created
    with pytest.raises(TaskExists):
        store.create_task(name, source="config", definition={})
    assert store.get_task(name) == created  # the losing create changed nothing

    updated = store.update_definition(name, {"model": "other"})
    assert updated.definition == {"model": "other"}
    assert updated.updated_at > created.updated_at and updated.created_at == created.created_at
    assert store.get_task(name) == updated
    with pytest.raises(TaskMissing):
        store.update_definition(_unique(), {})
    assert store.get_task(_unique()) is None

    prefix = f"list-{uuid.uuid4().hex[:6]}"
    for suffix in ("c", "a", "b"):
        store.create_task(f"{prefix}-{suffix}", source="api", definition={})
    listed = [t.name for t in store.list_tasks() if t.name.startswith(prefix)]
    assert listed == [f"{prefix}-a", f"{prefix}-b", f"{prefix}-c"]


def test_versions_are_sequential_idempotent_and_round_trip(store: TaskStore, name: str) -> None:
    content = {
        "messages": [{"role": "system", "content": "Réponds en français ✓ 日本語 🚀"}],
        "params": {"temperature": 0.25, "stop": ["\n\n", "END"], "seed": 2**40, "x": None},
        "flags": [True, False],
    }
    first, created = store.add_version(name, content, "h1", source="api")
    assert created and first.version == 1 and first.content == content
    assert first.created_at.tzinfo is UTC
    added = [store.add_version(name, {"v": v}, f"h{v}", source="api") for v in (2, 3)]
    assert [(record.version, created) for record, created in added] == [(2, True), (3, True)]

    again, created = store.add_version(name, content, "h1", source="config")
    assert not created and again == store.get_version(name, 1)
    assert again.source == "api"  # the existing row, not the one asked for

    stored = store.get_version(name, 1)
    assert stored is not None and stored.content == content and stored.content_hash == "h1"
    assert store.get_version(name, 4) is None
    latest = store.latest_version(name)
    assert latest is not None and latest.version == 3 and latest.content == {"v": 3}
    assert [v.version for v in store.list_versions(name)] == [1, 2, 3]
    assert store.latest_version(_unique()) is None and store.list_versions(_unique()) == []
    with pytest.raises(TaskMissing):
        store.add_version(_unique(), {}, "h", source="api")


def test_versions_are_immutable(store: TaskStore, name: str) -> None:
    assert not [m for m in dir(TaskStore) if "version" in m and m.startswith(("update", "set"))]
    for i in range(3):
        store.add_version(name, {"i": i}, f"h{i}", source="api")
    before = store.list_versions(name)
    store.add_version(name, {"i": "new"}, "h-new", source="config")
    # The hash names the version; other content under a known hash rewrites nothing.
    existing, created = store.add_version(name, {"i": "rewritten"}, "h0", source="api")
    assert not created and existing == before[0]
    after = store.list_versions(name)
    assert after[:3] == before and [v.version for v in after] == [1, 2, 3, 4]


def test_labels_are_set_moved_and_removed(store: TaskStore, name: str) -> None:
    for i in (1, 2):
        store.add_version(name, {"i": i}, f"h{i}", source="api")
    assert store.labels(name) == {"latest": 2}

    before = store.get_task(name)
    store.set_label(name, "production", 1)
    assert store.labels(name) == {"latest": 2, "production": 1}
    after = store.get_task(name)
    assert before is not None and after is not None and after.updated_at > before.updated_at
    store.set_label(name, "production", 2)
    assert store.labels(name) == {"latest": 2, "production": 2}

    with pytest.raises(VersionMissing):
        store.set_label(name, "production", 3)
    with pytest.raises(TaskMissing):
        store.set_label(_unique(), "production", 1)
    assert store.labels(name) == {"latest": 2, "production": 2}

    store.add_version(name, {"i": 3}, "h3", source="api")
    assert store.labels(name) == {"latest": 3, "production": 2}
    store.add_version(name, {"i": 1}, "h1", source="api")  # known content: latest stays
    assert store.labels(name) == {"latest": 3, "production": 2}

    assert store.remove_label(name, "production") is True
    assert store.remove_label(name, "production") is False
    assert store.remove_label(_unique(), "production") is False
    assert store.labels(name) == {"latest": 3}


def test_sync_config_task_applies_labels_only_when_the_config_changes(store: TaskStore) -> None:
    name = _unique()
    first = _sync(store, name, {"v": 1}, labels=["production", "latest"])
    assert first == SyncOutcome(version=1, created=True, changed=True)
    task = store.get_task(name)
    assert task is not None and task.source == "config" and task.config_hash == "c-{'v': 1}"
    assert store.labels(name) == {"production": 1, "latest": 1}

    # Someone moves production by hand; a restart with the same config leaves it there.
    store.add_version(name, {"v": "hand"}, "h-hand", source="api")
    store.set_label(name, "production", 2)
    again = _sync(store, name, {"v": 1}, definition={"model": "new"})
    assert again == SyncOutcome(version=1, created=False, changed=False)
    assert store.labels(name) == {"production": 2, "latest": 2}
    task = store.get_task(name)
    assert task is not None and task.definition == {"model": "new"}  # config is authoritative

    changed = _sync(store, name, {"v": 3})
    assert changed == SyncOutcome(version=3, created=True, changed=True)
    assert store.labels(name) == {"production": 3, "latest": 3}

    back = _sync(store, name, {"v": 1})
    assert back == SyncOutcome(version=1, created=False, changed=True)
    assert store.labels(name) == {"production": 1, "latest": 1}
    assert [v.version for v in store.list_versions(name)] == [1, 2, 3]


def test_sync_refuses_a_task_created_through_the_api(store: TaskStore, name: str) -> None:
    before = store.get_task(name)
    with pytest.raises(TaskExists):
        _sync(store, name, {"v": 1}, definition={"model": "from-config"})
    assert store.get_task(name) == before
    assert store.list_versions(name) == [] and store.labels(name) == {}


def test_concurrent_add_version_numbers_without_gaps(store: TaskStore, name: str) -> None:
    results = _at_once(8, lambda i: store.add_version(name, {"i": i}, f"h{i}", source="api"))
    assert all(created for _, created in results)
    assert sorted(r.version for r, _ in results) == list(range(1, 9))
    versions = store.list_versions(name)
    assert [v.version for v in versions] == list(range(1, 9))
    assert {v.content_hash for v in versions} == {f"h{i}" for i in range(8)}
    assert store.labels(name) == {"latest": 8}


def test_concurrent_identical_syncs_make_one_version(store: TaskStore) -> None:
    name = _unique()
    outcomes = _at_once(4, lambda _: _sync(store, name, {"v": 1}))
    assert {o.version for o in outcomes} == {1}
    assert sum(o.created for o in outcomes) == 1
    assert sum(o.changed for o in outcomes) == 1
    assert [v.version for v in store.list_versions(name)] == [1]
    assert store.labels(name) == {"production": 1, "latest": 1}

    # A changed config met by workers at once, the task row already there: still one v2.
    outcomes = _at_once(4, lambda _: _sync(store, name, {"v": 2}))
    assert {o.version for o in outcomes} == {2}
    assert sum(o.created for o in outcomes) == 1
    assert sum(o.changed for o in outcomes) == 1
    assert [v.version for v in store.list_versions(name)] == [1, 2]
    assert store.labels(name) == {"production": 2, "latest": 2}


def test_snapshot_reads_everything_about_a_task(store: TaskStore, name: str) -> None:
    assert store.snapshot(_unique()) is None
    store.add_version(name, {"i": 1}, "h1", source="api")
    store.add_version(name, {"i": 2}, "h2", source="api")
    store.set_label(name, "production", 1)
    snap = store.snapshot(name)
    assert snap is not None
    task, labels, versions = snap
    assert task == store.get_task(name)
    assert labels == {"latest": 2, "production": 1}
    assert versions == store.list_versions(name)


def test_delete_task_cascades(store: TaskStore, db: Database, name: str) -> None:
    for i in (1, 2):
        store.add_version(name, {"i": i}, f"h{i}", source="api")
    store.set_label(name, "production", 1)
    assert store.delete_task(name) is True
    assert store.get_task(name) is None and store.snapshot(name) is None
    with db.engine.connect() as conn:
        for table in ("task_versions", "task_labels"):
            query = sa.text(f"SELECT count(*) FROM {table} WHERE task = :t")
            assert conn.execute(query, {"t": name}).scalar_one() == 0
    assert store.delete_task(name) is False
    store.create_task(name, source="api", definition={})  # the name is free again, from v1
    assert store.add_version(name, {"i": 9}, "h1", source="api")[0].version == 1


def test_json_keeps_key_order_on_every_backend(store: TaskStore, name: str) -> None:
    # A schema's property order is the order a grammar makes the model write fields.
    content = {
        "user": "{{ x }}",
        "output_schema": {"properties": {"zeta": {}, "alpha": {}, "mid": {}}},
        "examples": [{"output": {"zeta": 1, "alpha": 2}}],
    }
    store.add_version(name, content, "hash-order", source="api")
    snapshot = store.snapshot(name)
    assert snapshot is not None
    loaded = snapshot[2][-1].content
    assert list(loaded) == ["user", "output_schema", "examples"]
    assert list(loaded["output_schema"]["properties"]) == ["zeta", "alpha", "mid"]
    assert list(loaded["examples"][0]["output"]) == ["zeta", "alpha"]
