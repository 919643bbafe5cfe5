"""Datasets as the CLI, the API and the Python helper see them: owned, versioned, exported.

Every operation names an owner (the key id; the admin key and a local server
use ""), so another key's dataset is simply "not found".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from powertrain.datasets.export import ExportFormat, TaskPrompts, eval_record, export_lines
from powertrain.datasets.from_traces import TraceQuery, TraceRows, check_query
from powertrain.datasets.rows import DatasetRow, version_hash
from powertrain.errors import InvalidRequest, NotFound
from powertrain.store.datasets import (
    DatasetRecord,
    DatasetStore,
    DatasetVersionRecord,
    StoredRow,
)
from powertrain.store.db import Database
from powertrain.tasks.registry import TaskRegistry

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
Progress = Callable[[int, int], None]


class DatasetNotFound(NotFound):
    code = "dataset_not_found"


@dataclass(frozen=True)
class CreateOutcome:
    dataset: DatasetRecord
    version: DatasetVersionRecord
    created: bool  # False: identical content was already this version

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.dataset.name,
            "version": self.version.version,
            "created": self.created,
            **version_json(self.version),
        }


def version_json(version: DatasetVersionRecord) -> dict[str, Any]:
    return {
        "version": version.version,
        "rows": version.row_count,
        "train": version.row_count - version.test_count,
        "test": version.test_count,
        "test_fraction": version.test_fraction,
        "seed": version.seed,
        "content_hash": version.content_hash,
        "origin": version.origin,
        "created_at": version.created_at.isoformat(),
    }


def row_json(row: StoredRow) -> dict[str, Any]:
    return {
        "idx": row.idx,
        "input": row.input,
        "output": row.output,
        "labels": row.labels,
        "source": row.source,
        "split": row.split,
    }


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``NAME`` or ``NAME@VERSION`` → (name, version or None for the latest)."""
    name, at, version = ref.partition("@")
    if not at:
        return name, None
    if not version.isdigit() or int(version) < 1:
        raise InvalidRequest(f"{ref!r}: the version after @ must be a number from 1")
    return name, int(version)


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise InvalidRequest(
            f"dataset name {name[:200]!r} must be 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            param="name",
        )
    return name


def check_split(test_fraction: float, seed: int) -> None:
    if not 0 <= test_fraction < 1:
        raise InvalidRequest("test_fraction must be at least 0 and below 1", param="test_fraction")
    if not -(2**31) <= seed < 2**31:
        raise InvalidRequest("seed must fit in 32 bits", param="seed")


class Datasets:
    """Blocking (call from a thread in async code)."""

    def __init__(self, db: Database, registry: TaskRegistry | None = None) -> None:
        self.db = db
        self.store = DatasetStore(db)
        self.registry = registry

    # -- making versions -----------------------------------------------------------------
    def create(
        self,
        owner: str,
        name: str,
        rows: Sequence[DatasetRow],
        *,
        test_fraction: float = 0.2,
        seed: int = 0,
        origin: dict[str, Any] | None = None,
    ) -> CreateOutcome:
        """A version holding ``rows``; the same rows and split settings give the same one."""
        check_name(name)
        check_split(test_fraction, seed)
        if not rows:
            raise InvalidRequest("a dataset version needs at least one row", param="rows")
        stored = [r.stored(test_fraction=test_fraction, seed=seed) for r in rows]
        digest = version_hash(
            stored, test_fraction=test_fraction, seed=seed, pinned=[r.split for r in rows]
        )
        dataset, version, created = self.store.add_version(
            owner,
            name,
            stored,
            content_hash=digest,
            test_fraction=test_fraction,
            seed=seed,
            origin=origin or {},
        )
        return CreateOutcome(dataset, version, created)

    def rows_from_traces(
        self, query: TraceQuery, *, scope: str | None, progress: Progress | None = None
    ) -> list[DatasetRow]:
        """Rows from the traces ``query`` selects among those ``scope`` may see."""
        check_query(query)
        return TraceRows(self.db).rows(query, scope=scope, progress=progress)

    # -- reading -------------------------------------------------------------------------
    def get(self, owner: str, name: str) -> DatasetRecord:
        record = self.store.get(owner, name)
        if record is None:
            raise DatasetNotFound(f"no dataset named {name!r}", param="name")
        return record

    def version(self, owner: str, name: str, version: int | None = None) -> DatasetVersionRecord:
        record = self.get(owner, name)
        found = self.store.get_version(record.id, version)
        if found is None:
            raise DatasetNotFound(f"dataset {name!r} has no version {version}", param="version")
        return found

    def rows(
        self,
        owner: str,
        name: str,
        version: int | None = None,
        *,
        split: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> tuple[DatasetVersionRecord, list[StoredRow]]:
        found = self.version(owner, name, version)
        rows = self.store.rows(
            found.dataset_id, found.version, split=_split(split), limit=limit, offset=offset
        )
        return found, rows

    def iter_rows(
        self, owner: str, name: str, version: int | None = None, *, split: str | None = None
    ) -> tuple[DatasetVersionRecord, Iterator[StoredRow]]:
        """The version and every row of it (of ``split``), read in batches."""
        found = self.version(owner, name, version)
        return found, self.store.iter_rows(found.dataset_id, found.version, split=_split(split))

    def export(
        self,
        owner: str,
        name: str,
        version: int | None = None,
        *,
        fmt: ExportFormat = "openai",
        split: str | None = None,
        task: str | None = None,
        skipped: list[int] | None = None,
    ) -> tuple[DatasetVersionRecord, Iterator[bytes]]:
        """JSON lines for the version's rows; see ``powertrain.datasets.export``."""
        if fmt not in ("openai", "eval"):
            raise InvalidRequest("format must be openai or eval", param="format")
        found, rows = self.iter_rows(owner, name, version, split=split)
        lines = export_lines(rows, fmt, TaskPrompts(self.registry), task=task, skipped=skipped)
        return found, lines

    def eval_cases(
        self,
        owner: str,
        ref: str,
        *,
        split: str | None = None,
        limit: int | None = None,
    ) -> tuple[DatasetVersionRecord, list[dict[str, Any]]]:
        """``NAME[@VERSION]`` as eval cases: ``{"vars", "expected"}`` (``messages``, ``labels``
        when the row has them), in row order."""
        name, number = parse_ref(ref)
        found, rows = self.rows(owner, name, number, split=split, limit=limit)
        return found, [eval_record(r) for r in rows]

    def list_datasets(self, owner: str) -> list[tuple[DatasetRecord, DatasetVersionRecord | None]]:
        return self.store.list_datasets(owner)

    def versions(self, owner: str, name: str) -> list[DatasetVersionRecord]:
        return self.store.versions(self.get(owner, name).id)

    def delete(self, owner: str, name: str) -> None:
        if not self.store.delete(owner, name):
            raise DatasetNotFound(f"no dataset named {name!r}", param="name")


def _split(split: str | None) -> str | None:
    if split in (None, "all"):
        return None
    if split not in ("train", "test"):
        raise InvalidRequest("split must be train, test or all", param="split")
    return split
