"""Tasks: versioned prompt definitions. Pure storage; the JSON blobs are opaque here.

Every write that reads before it writes locks the task first (``SELECT ... FOR UPDATE`` on
Postgres, ``BEGIN IMMEDIATE`` on SQLite), so two gateway workers never race on a version
number or a label, and the lock is always taken in the same order (task row first).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Select, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from powertrain.store.db import Database
from powertrain.store.schema import task_labels, task_versions, tasks
from powertrain.store.times import as_utc, utc_now

LATEST = "latest"


class TaskExists(Exception):
    """A task of that name exists already (or is owned by the API, not the config)."""


class TaskMissing(Exception):
    """No task of that name."""


class VersionMissing(Exception):
    """The task has no such version."""


@dataclass(frozen=True)
class TaskRecord:
    name: str
    source: str
    definition: dict[str, Any]
    config_hash: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class TaskVersionRecord:
    task: str
    version: int
    content: dict[str, Any]
    content_hash: str
    source: str
    created_at: datetime


@dataclass(frozen=True)
class SyncOutcome:
    version: int  # the version the config's content now is
    created: bool  # a new version row was inserted
    changed: bool  # the config differed from the last sync (labels were applied)


class TaskStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._insert = postgresql.insert if db.dialect == "postgresql" else sqlite.insert

    # -- reads ---------------------------------------------------------------------------

    def get_task(self, name: str) -> TaskRecord | None:
        with self.db.engine.connect() as conn:
            return _task(conn, name)

    def list_tasks(self) -> list[TaskRecord]:
        with self.db.engine.connect() as conn:
            rows = conn.execute(select(tasks).order_by(tasks.c.name)).mappings().all()
        return [_task_record(r) for r in rows]

    def get_version(self, name: str, version: int) -> TaskVersionRecord | None:
        query = _versions(name).where(task_versions.c.version == version)
        with self.db.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return _version_record(row) if row else None

    def latest_version(self, name: str) -> TaskVersionRecord | None:
        query = _versions(name).order_by(task_versions.c.version.desc()).limit(1)
        with self.db.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return _version_record(row) if row else None

    def list_versions(self, name: str) -> list[TaskVersionRecord]:
        with self.db.engine.connect() as conn:
            return _all_versions(conn, name)

    def labels(self, name: str) -> dict[str, int]:
        with self.db.engine.connect() as conn:
            return _labels(conn, name)

    def snapshot(
        self, name: str
    ) -> tuple[TaskRecord, dict[str, int], list[TaskVersionRecord]] | None:
        """The task, its labels and its versions, all as of one moment."""
        with self._reading() as conn:
            task = _task(conn, name)
            if task is None:
                return None
            return task, _labels(conn, name), _all_versions(conn, name)

    # -- writes --------------------------------------------------------------------------

    def create_task(self, name: str, *, source: str, definition: dict[str, Any]) -> TaskRecord:
        query = (
            self._insert(tasks)
            .values(_new_task(name, source, definition))
            .on_conflict_do_nothing(index_elements=["name"])
            .returning(*tasks.c)
        )
        with self.db.engine.begin() as conn:
            row = conn.execute(query).mappings().first()
        if row is None:
            raise TaskExists(f"task {name!r} exists already")
        return _task_record(row)

    def update_definition(self, name: str, definition: dict[str, Any]) -> TaskRecord:
        query = (
            update(tasks)
            .where(tasks.c.name == name)
            .values(definition=definition, updated_at=utc_now())
            .returning(*tasks.c)
        )
        with self.db.engine.begin() as conn:
            row = conn.execute(query).mappings().first()
        if row is None:
            raise TaskMissing(f"no task {name!r}")
        return _task_record(row)

    def delete_task(self, name: str) -> bool:
        """Delete the task; its versions and labels go with it (ON DELETE CASCADE)."""
        with self.db.engine.begin() as conn:
            return conn.execute(delete(tasks).where(tasks.c.name == name)).rowcount > 0

    def add_version(
        self, name: str, content: dict[str, Any], content_hash: str, *, source: str
    ) -> tuple[TaskVersionRecord, bool]:
        """The version holding ``content_hash``, added (and labelled latest) if new."""
        with self._writing() as conn:
            if _lock_task(conn, name) is None:
                raise TaskMissing(f"no task {name!r}")
            record, created = _find_or_add_version(conn, name, content, content_hash, source)
            if created:
                self._point_labels(conn, name, [LATEST], record.version)
            return record, created

    def set_label(self, name: str, label: str, version: int) -> None:
        with self._writing() as conn:
            if _lock_task(conn, name) is None:
                raise TaskMissing(f"no task {name!r}")
            exists = _versions(name).where(task_versions.c.version == version)
            if conn.execute(exists).first() is None:
                raise VersionMissing(f"task {name!r} has no version {version}")
            self._point_labels(conn, name, [label], version)
            _touch(conn, name)

    def remove_label(self, name: str, label: str) -> bool:
        with self._writing() as conn:
            if _lock_task(conn, name) is None:
                return False
            query = delete(task_labels).where(
                task_labels.c.task == name, task_labels.c.label == label
            )
            removed = conn.execute(query).rowcount > 0
            if removed:
                _touch(conn, name)
            return removed

    def sync_config_task(
        self,
        name: str,
        *,
        definition: dict[str, Any],
        content: dict[str, Any],
        content_hash: str,
        config_hash: str,
        labels: list[str],
    ) -> SyncOutcome:
        """Make the stored task match the config; labels move only when the config changed."""
        with self._writing() as conn:
            # DO NOTHING, not a plain insert: a worker starting alongside this one may have
            # created the row a moment ago, and then its sync is the one that counts.
            conn.execute(
                self._insert(tasks)
                .values(_new_task(name, "config", definition))
                .on_conflict_do_nothing(index_elements=["name"])
            )
            stored = _lock_task(conn, name)
            assert stored is not None  # inserted above or already there, and now locked
            if stored.source != "config":
                raise TaskExists(f"task {name!r} was created through the API, not the config")
            changed = stored.config_hash != config_hash
            if changed or stored.definition != definition:
                conn.execute(
                    update(tasks)
                    .where(tasks.c.name == name)
                    .values(definition=definition, config_hash=config_hash, updated_at=utc_now())
                )
            record, created = _find_or_add_version(conn, name, content, content_hash, "config")
            if changed:
                self._point_labels(conn, name, [*labels, LATEST], record.version)
            return SyncOutcome(version=record.version, created=created, changed=changed)

    # -- helpers -------------------------------------------------------------------------

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        """A write transaction; on SQLite it holds the write lock from its first statement."""
        with self.db.engine.begin() as conn:
            if self.db.dialect == "sqlite":
                # pysqlite only BEGINs at the first write, so a read-then-insert could see a
                # stale max(version); IMMEDIATE takes the lock up front (waiting busy_timeout).
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            yield conn

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        """A read transaction whose statements all see the same snapshot."""
        with self.db.engine.connect() as conn:  # rolled back (nothing to undo) on exit
            if self.db.dialect == "sqlite":
                conn.exec_driver_sql("BEGIN")  # WAL keeps one snapshot until the end
            else:  # Postgres' default READ COMMITTED takes a new snapshot per statement
                conn.execution_options(isolation_level="REPEATABLE READ")
            yield conn

    def _point_labels(self, conn: Connection, name: str, labels: list[str], version: int) -> None:
        now = utc_now()
        rows = [
            {"task": name, "label": label, "version": version, "updated_at": now}
            for label in dict.fromkeys(labels)  # once each: one upsert may not hit a row twice
        ]
        query = self._insert(task_labels).values(rows)
        conn.execute(
            query.on_conflict_do_update(
                index_elements=["task", "label"],
                set_={"version": query.excluded.version, "updated_at": query.excluded.updated_at},
            )
        )


def _task(conn: Connection, name: str) -> TaskRecord | None:
    row = conn.execute(select(tasks).where(tasks.c.name == name)).mappings().first()
    return _task_record(row) if row else None


def _lock_task(conn: Connection, name: str) -> TaskRecord | None:
    """The task row, locked until the transaction ends (SQLite renders no FOR UPDATE; its
    whole-database write lock is already held)."""
    query = select(tasks).where(tasks.c.name == name).with_for_update()
    row = conn.execute(query).mappings().first()
    return _task_record(row) if row else None


def _touch(conn: Connection, name: str) -> None:
    conn.execute(update(tasks).where(tasks.c.name == name).values(updated_at=utc_now()))


def _new_task(name: str, source: str, definition: dict[str, Any]) -> dict[str, Any]:
    now = utc_now()
    return {
        "name": name,
        "source": source,
        "definition": definition,
        "config_hash": None,
        "created_at": now,
        "updated_at": now,
    }


def _versions(name: str) -> Select[Any]:
    return select(task_versions).where(task_versions.c.task == name)


def _all_versions(conn: Connection, name: str) -> list[TaskVersionRecord]:
    rows = conn.execute(_versions(name).order_by(task_versions.c.version)).mappings().all()
    return [_version_record(r) for r in rows]


def _labels(conn: Connection, name: str) -> dict[str, int]:
    query = select(task_labels.c.label, task_labels.c.version).where(task_labels.c.task == name)
    return {label: version for label, version in conn.execute(query).all()}


def _find_or_add_version(
    conn: Connection, name: str, content: dict[str, Any], content_hash: str, source: str
) -> tuple[TaskVersionRecord, bool]:
    """Call with the task locked, so the next number cannot be taken meanwhile."""
    query = _versions(name).where(task_versions.c.content_hash == content_hash)
    row = conn.execute(query).mappings().first()
    if row is not None:
        return _version_record(row), False
    last = select(func.max(task_versions.c.version)).where(task_versions.c.task == name)
    record = TaskVersionRecord(
        task=name,
        version=(conn.execute(last).scalar() or 0) + 1,
        content=content,
        content_hash=content_hash,
        source=source,
        created_at=utc_now(),
    )
    conn.execute(task_versions.insert().values(vars(record)))
    _touch(conn, name)
    return record, True


def _task_record(row: Any) -> TaskRecord:
    times = {"created_at": as_utc(row["created_at"]), "updated_at": as_utc(row["updated_at"])}
    return TaskRecord(**{**row, **times})


def _version_record(row: Any) -> TaskVersionRecord:
    return TaskVersionRecord(**{**row, "created_at": as_utc(row["created_at"])})
