"""Datasets: pure storage of named, owned datasets and their immutable numbered versions.

A version is written once, with all its rows, in one transaction, and never
changed; the only way to remove it is to delete its dataset. Adding a version
locks the dataset row first (``FOR UPDATE`` on Postgres, ``BEGIN IMMEDIATE`` on
SQLite), so two writers never take the same number, and a content hash already
present returns the version that holds it.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from powertrain.store.db import Database
from powertrain.store.schema import dataset_rows, dataset_versions, datasets
from powertrain.store.times import as_utc, utc_now

ADMIN_OWNER = ""  # the admin key, or authentication off
_INSERT_BATCH = 1000


@dataclass(frozen=True)
class DatasetRecord:
    id: str
    owner: str
    name: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class DatasetVersionRecord:
    dataset_id: str
    version: int
    content_hash: str
    row_count: int
    test_count: int
    test_fraction: float
    seed: int
    origin: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class StoredRow:
    """One row of a version, as stored. ``output`` is None when the row has no reference."""

    idx: int
    input: dict[str, Any]
    output: Any
    labels: dict[str, Any]
    source: dict[str, Any]
    row_hash: str
    split: str  # train | test


class DatasetStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._insert = postgresql.insert if db.dialect == "postgresql" else sqlite.insert

    # -- reads ---------------------------------------------------------------------------
    def get(self, owner: str, name: str) -> DatasetRecord | None:
        query = select(datasets).where(datasets.c.owner == owner, datasets.c.name == name)
        with self.db.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return _dataset(row) if row else None

    def list_datasets(self, owner: str) -> list[tuple[DatasetRecord, DatasetVersionRecord | None]]:
        """The owner's datasets by name, each with its latest version."""
        with self.db.engine.connect() as conn:
            rows = conn.execute(
                select(datasets).where(datasets.c.owner == owner).order_by(datasets.c.name)
            ).mappings()
            found = [_dataset(r) for r in rows]
            return [(d, _latest(conn, d.id)) for d in found]

    def versions(self, dataset_id: str) -> list[DatasetVersionRecord]:
        query = (
            select(dataset_versions)
            .where(dataset_versions.c.dataset_id == dataset_id)
            .order_by(dataset_versions.c.version)
        )
        with self.db.engine.connect() as conn:
            return [_version(r) for r in conn.execute(query).mappings()]

    def get_version(
        self, dataset_id: str, version: int | None = None
    ) -> DatasetVersionRecord | None:
        """Version ``version``, or the latest when None."""
        with self.db.engine.connect() as conn:
            if version is None:
                return _latest(conn, dataset_id)
            query = select(dataset_versions).where(
                dataset_versions.c.dataset_id == dataset_id,
                dataset_versions.c.version == version,
            )
            row = conn.execute(query).mappings().first()
        return _version(row) if row else None

    def rows(
        self,
        dataset_id: str,
        version: int,
        *,
        split: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[StoredRow]:
        """Rows in their stored order, optionally of one split."""
        query = (
            select(dataset_rows)
            .where(dataset_rows.c.dataset_id == dataset_id, dataset_rows.c.version == version)
            .order_by(dataset_rows.c.idx)
            .offset(offset)
        )
        if split is not None:
            query = query.where(dataset_rows.c.split == split)
        if limit is not None:
            query = query.limit(limit)
        with self.db.engine.connect() as conn:
            return [_row(r) for r in conn.execute(query).mappings()]

    def iter_rows(
        self, dataset_id: str, version: int, *, split: str | None = None, batch: int = 1000
    ) -> Iterator[StoredRow]:
        """Every row, read in batches (memory stays flat on a large version)."""
        after = -1
        while True:
            query = (
                select(dataset_rows)
                .where(
                    dataset_rows.c.dataset_id == dataset_id,
                    dataset_rows.c.version == version,
                    dataset_rows.c.idx > after,
                )
                .order_by(dataset_rows.c.idx)
                .limit(batch)
            )
            if split is not None:
                query = query.where(dataset_rows.c.split == split)
            with self.db.engine.connect() as conn:
                page = [_row(r) for r in conn.execute(query).mappings()]
            yield from page
            if len(page) < batch:
                return
            after = page[-1].idx

    def count_rows(self, dataset_id: str) -> int:
        query = select(func.count()).where(dataset_rows.c.dataset_id == dataset_id)
        with self.db.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    # -- writes --------------------------------------------------------------------------
    def add_version(
        self,
        owner: str,
        name: str,
        rows: Sequence[dict[str, Any]],
        *,
        content_hash: str,
        test_fraction: float,
        seed: int,
        origin: dict[str, Any],
    ) -> tuple[DatasetRecord, DatasetVersionRecord, bool]:
        """The version holding ``content_hash``, made (dataset too, if new) when absent.

        Each of ``rows`` has input, output, labels, source, row_hash and split.
        """
        now = utc_now()
        with self._writing() as conn:
            conn.execute(
                self._insert(datasets)
                .values(
                    id="ds_" + secrets.token_hex(8),
                    owner=owner,
                    name=name,
                    created_at=now,
                    updated_at=now,
                )
                .on_conflict_do_nothing(index_elements=["owner", "name"])
            )
            locked = (
                select(datasets)
                .where(datasets.c.owner == owner, datasets.c.name == name)
                .with_for_update()
            )
            dataset = _dataset(conn.execute(locked).mappings().one())
            existing = (
                conn.execute(
                    select(dataset_versions).where(
                        dataset_versions.c.dataset_id == dataset.id,
                        dataset_versions.c.content_hash == content_hash,
                    )
                )
                .mappings()
                .first()
            )
            if existing is not None:
                return dataset, _version(existing), False
            last = select(func.max(dataset_versions.c.version)).where(
                dataset_versions.c.dataset_id == dataset.id
            )
            record = DatasetVersionRecord(
                dataset_id=dataset.id,
                version=(conn.execute(last).scalar() or 0) + 1,
                content_hash=content_hash,
                row_count=len(rows),
                test_count=sum(1 for r in rows if r["split"] == "test"),
                test_fraction=test_fraction,
                seed=seed,
                origin=origin,
                created_at=now,
            )
            conn.execute(dataset_versions.insert().values(vars(record)))
            # An absent output is stored as JSON null, which reads back as None.
            values = [
                {"dataset_id": dataset.id, "version": record.version, "idx": idx, **row}
                for idx, row in enumerate(rows)
            ]
            for start in range(0, len(values), _INSERT_BATCH):
                conn.execute(dataset_rows.insert(), values[start : start + _INSERT_BATCH])
            conn.execute(update(datasets).where(datasets.c.id == dataset.id).values(updated_at=now))
            return dataset, record, True

    def delete(self, owner: str, name: str) -> bool:
        """Remove the dataset with every version and row."""
        with self._writing() as conn:
            row = conn.execute(
                select(datasets.c.id).where(datasets.c.owner == owner, datasets.c.name == name)
            ).first()
            if row is None:
                return False
            # Rows and versions explicitly, not only by cascade: nothing may outlive it.
            conn.execute(delete(dataset_rows).where(dataset_rows.c.dataset_id == row.id))
            conn.execute(delete(dataset_versions).where(dataset_versions.c.dataset_id == row.id))
            conn.execute(delete(datasets).where(datasets.c.id == row.id))
        return True

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        with self.db.engine.begin() as conn:
            if self.db.dialect == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock before the first read
            yield conn


def _latest(conn: Connection, dataset_id: str) -> DatasetVersionRecord | None:
    query = (
        select(dataset_versions)
        .where(dataset_versions.c.dataset_id == dataset_id)
        .order_by(dataset_versions.c.version.desc())
        .limit(1)
    )
    row = conn.execute(query).mappings().first()
    return _version(row) if row else None


def _dataset(row: Any) -> DatasetRecord:
    return DatasetRecord(
        id=row["id"],
        owner=row["owner"],
        name=row["name"],
        created_at=as_utc(row["created_at"]),
        updated_at=as_utc(row["updated_at"]),
    )


def _version(row: Any) -> DatasetVersionRecord:
    return DatasetVersionRecord(
        dataset_id=row["dataset_id"],
        version=row["version"],
        content_hash=row["content_hash"],
        row_count=row["row_count"],
        test_count=row["test_count"],
        test_fraction=row["test_fraction"],
        seed=row["seed"],
        origin=dict(row["origin"]),
        created_at=as_utc(row["created_at"]),
    )


def _row(row: Any) -> StoredRow:
    return StoredRow(
        idx=row["idx"],
        input=dict(row["input"]),
        output=row["output"],
        labels=dict(row["labels"]),
        source=dict(row["source"]),
        row_hash=row["row_hash"],
        split=row["split"],
    )
