"""Task variants added outside a task's definition, and the history of its traffic split.

A fine-tuning job adds a variant (its tuned model behind the task's prompt) with no
traffic; promotions move traffic by appending a row to ``task_splits``. The newest
row is the split in force, so the history is never rewritten. Every change is made
with the task row locked (``SELECT … FOR UPDATE`` on Postgres, ``BEGIN IMMEDIATE`` on
SQLite), so two promotions at once apply one after the other, each to the split the
other left.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, select

from powertrain.store.db import Database
from powertrain.store.schema import task_splits, task_variants, tasks
from powertrain.store.times import as_utc, utc_now


class SplitTaskMissing(Exception):
    """No task of that name."""


class VariantExists(Exception):
    """The task has a stored variant of that name already."""


@dataclass(frozen=True)
class StoredVariant:
    task: str
    name: str
    spec: dict[str, Any]
    source: str
    created_at: datetime


@dataclass(frozen=True)
class SplitRecord:
    id: int
    task: str
    action: str
    variant: str | None
    weights: dict[str, float]
    previous: dict[str, float]
    promotion: int | None
    author: str | None
    note: str | None
    created_at: datetime


@dataclass(frozen=True)
class SplitChange:
    """A new split, decided from the one in force (see ``SplitStore.change``)."""

    action: str
    variant: str | None
    weights: dict[str, float]
    previous: dict[str, float]
    promotion: int | None = None  # None: this row starts a promotion (of ``variant``)
    author: str | None = None
    note: str | None = None


class SplitStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- variants --------------------------------------------------------------------------

    def add_variant(self, task: str, name: str, spec: dict[str, Any], *, source: str) -> None:
        with self._writing() as conn:
            _lock(conn, task)
            exists = select(task_variants.c.name).where(
                task_variants.c.task == task, task_variants.c.name == name
            )
            if conn.execute(exists).first() is not None:
                raise VariantExists(f"task {task!r} has a variant {name!r} already")
            conn.execute(
                task_variants.insert().values(
                    task=task, name=name, spec=spec, source=source, created_at=utc_now()
                )
            )

    def variants(self, task: str) -> list[StoredVariant]:
        query = (
            select(task_variants)
            .where(task_variants.c.task == task)
            .order_by(task_variants.c.created_at, task_variants.c.name)
        )
        with self.db.engine.connect() as conn:
            return [_variant(r._mapping) for r in conn.execute(query)]

    def remove_variant(self, task: str, name: str) -> bool:
        query = delete(task_variants).where(
            task_variants.c.task == task, task_variants.c.name == name
        )
        with self.db.engine.begin() as conn:
            return conn.execute(query).rowcount > 0

    # -- splits ----------------------------------------------------------------------------

    def current(self, task: str) -> SplitRecord | None:
        with self.db.engine.connect() as conn:
            return _current(conn, task)

    def history(self, task: str, *, limit: int = 100) -> list[SplitRecord]:
        """Newest first."""
        query = (
            select(task_splits)
            .where(task_splits.c.task == task)
            .order_by(task_splits.c.id.desc())
            .limit(limit)
        )
        with self.db.engine.connect() as conn:
            return [_split(r._mapping) for r in conn.execute(query)]

    def change(
        self,
        task: str,
        decide: Callable[[SplitRecord | None, SplitRecord | None], SplitChange | None],
    ) -> SplitRecord | None:
        """Append the split ``decide`` makes of the one in force, under the task's lock.

        ``decide(current, started)`` gets the row in force and the row that began its
        promotion (the same row when it began one); it may raise to refuse, or return
        None to change nothing.
        """
        with self._writing() as conn:
            _lock(conn, task)
            current = _current(conn, task)
            started = current
            if current is not None and current.promotion is not None:
                started = _row(conn, current.promotion)
            decided = decide(current, started)
            if decided is None:
                return None
            values = {
                "task": task,
                "action": decided.action,
                "variant": decided.variant,
                "weights": decided.weights,
                "previous": decided.previous,
                "promotion": decided.promotion,
                "author": decided.author,
                "note": decided.note,
                "created_at": utc_now(),
            }
            conn.execute(task_splits.insert().values(values))
            return _current(conn, task)

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        with self.db.engine.begin() as conn:
            if self.db.dialect == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock before the first read
            yield conn


def _lock(conn: Connection, task: str) -> None:
    query = select(tasks.c.name).where(tasks.c.name == task).with_for_update()
    if conn.execute(query).first() is None:
        raise SplitTaskMissing(f"no task {task!r}")


def _current(conn: Connection, task: str) -> SplitRecord | None:
    query = (
        select(task_splits)
        .where(task_splits.c.task == task)
        .order_by(task_splits.c.id.desc())
        .limit(1)
    )
    row = conn.execute(query).first()
    return _split(row._mapping) if row else None


def _row(conn: Connection, row_id: int) -> SplitRecord | None:
    row = conn.execute(select(task_splits).where(task_splits.c.id == row_id)).first()
    return _split(row._mapping) if row else None


def _variant(row: Any) -> StoredVariant:
    return StoredVariant(**{**row, "created_at": as_utc(row["created_at"])})


def _split(row: Any) -> SplitRecord:
    return SplitRecord(**{**row, "created_at": as_utc(row["created_at"])})
