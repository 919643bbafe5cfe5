"""Where tasks live: the store is the truth, the config file one writer, a short cache in front.

Tasks from ``powertrain.toml`` are synced on start: a changed template makes a
new version and moves the config's labels to it; an unchanged file touches
nothing, so a label moved through the API survives a restart. Tasks created
through the API live only in the store. Reads go through a cache that each
gateway worker refreshes after ``task_refresh_interval`` seconds, so a label
moved on one worker reaches the others without a restart.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from powertrain.errors import Conflict, InvalidRequest, TaskNotFound
from powertrain.store.splits import SplitChange, SplitRecord, SplitStore
from powertrain.store.tasks import (
    SyncOutcome,
    TaskExists,
    TaskMissing,
    TaskStore,
    TaskVersionRecord,
    VersionMissing,
)
from powertrain.tasks.definition import PromptVersion, TaskDefinition, TaskSettings, VariantSpec


@dataclass(frozen=True)
class LoadedTask:
    """One task as read from the store: its settings, labels and every version.

    ``settings.variants`` is what is served: the definition's variants, plus those a
    fine-tuning job added (``added_variants``), weighted by the split in force
    (``split``, the newest row of the task's split history) when there is one.
    ``defined_weights`` are the weights before that split (added variants at 0).
    """

    name: str
    source: str
    settings: TaskSettings
    labels: dict[str, int]
    versions: dict[int, PromptVersion]
    created_at: Any = None
    updated_at: Any = None
    defined_weights: dict[str, float] = field(default_factory=dict)
    added_variants: tuple[str, ...] = ()
    split: SplitRecord | None = None

    def resolve(self, selector: int | str) -> tuple[int, PromptVersion]:
        """A version number or label → (number, version)."""
        if isinstance(selector, int):
            number = selector
        else:
            if selector not in self.labels:
                known = ", ".join(f"{k}→{v}" for k, v in sorted(self.labels.items())) or "none"
                raise InvalidRequest(
                    f"task {self.name!r} has no label {selector!r} (labels: {known})",
                    param="version",
                )
            number = self.labels[selector]
        if number not in self.versions:
            latest = f"latest is {max(self.versions)}" if self.versions else "it has none yet"
            raise InvalidRequest(
                f"task {self.name!r} has no version {number} ({latest})", param="version"
            )
        return number, self.versions[number]


def config_hash(definition: TaskDefinition) -> str:
    payload = {
        "settings": definition.settings.model_dump(mode="json"),
        "version": definition.version.content_hash(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class TaskRegistry:
    def __init__(
        self,
        store: TaskStore,
        configured: dict[str, TaskDefinition],
        *,
        refresh_interval: float,
        splits: SplitStore | None = None,
    ):
        self.store = store
        self.splits = splits or SplitStore(store.db)
        self.configured = configured
        self.refresh_interval = refresh_interval
        self._cache: dict[str, tuple[float, LoadedTask]] = {}
        self._lock = threading.Lock()
        self.synced: dict[str, SyncOutcome] = {}

    # -- config -------------------------------------------------------------
    def sync_config(self) -> dict[str, SyncOutcome]:
        """Bring every configured task's store rows in line with the file."""
        for name, definition in self.configured.items():
            try:
                self.synced[name] = self.store.sync_config_task(
                    name,
                    definition=definition.settings.model_dump(mode="json"),
                    content=definition.version.model_dump(mode="json"),
                    content_hash=definition.version.content_hash(),
                    config_hash=config_hash(definition),
                    labels=definition.settings.labels,
                )
            except TaskExists:
                raise Conflict(
                    f"task {name!r} in powertrain.toml was already created through the API; "
                    "rename one of them or delete the API task"
                ) from None
            if self.synced[name].changed:
                self._definition_changed(name, "config")
            self.invalidate(name)
        return self.synced

    def _definition_changed(self, name: str, action: str) -> None:
        """A new definition's weights take over from any split set since (and end any
        promotion): recorded in the history, only for tasks that have one."""

        defined = self._load(name).defined_weights

        def change(current: SplitRecord | None, _started: SplitRecord | None) -> SplitChange | None:
            if current is None or current.weights == defined:
                return None
            return SplitChange(
                action=action, variant=None, weights=defined, previous=current.weights
            )

        self.splits.change(name, change)

    # -- reads --------------------------------------------------------------
    def invalidate(self, name: str | None = None) -> None:
        with self._lock:
            if name is None:
                self._cache.clear()
            else:
                self._cache.pop(name, None)

    def get(self, name: str) -> LoadedTask:
        """The task, from the cache when fresh (blocking on a miss: call from a thread)."""
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(name)
        if hit is not None and now - hit[0] < self.refresh_interval:
            return hit[1]
        loaded = self._load(name)
        with self._lock:
            self._cache[name] = (now, loaded)
        return loaded

    async def aget(self, name: str) -> LoadedTask:
        hit = self._cache.get(name)
        if hit is not None and time.monotonic() - hit[0] < self.refresh_interval:
            return hit[1]
        return await asyncio.to_thread(self.get, name)

    def _load(self, name: str) -> LoadedTask:
        snapshot = self.store.snapshot(name)
        if snapshot is None:
            raise TaskNotFound(
                f"no task named {name!r}; define it under [tasks.{name}] in powertrain.toml "
                "or POST it to /api/tasks",
                param="model",
            )
        record, labels, versions = snapshot
        settings = TaskSettings.model_validate(record.definition)
        variants = dict(settings.effective_variants())
        added = []
        for stored in self.splits.variants(name):
            if stored.name not in variants:  # the definition's own variant of a name wins
                variants[stored.name] = VariantSpec.model_validate({**stored.spec, "weight": 0})
                added.append(stored.name)
        defined = {variant: spec.weight for variant, spec in variants.items()}
        split = self.splits.current(name)
        if split is not None and any(split.weights.get(v, 0) > 0 for v in variants):
            variants = {
                v: spec.model_copy(update={"weight": float(split.weights.get(v, 0.0))})
                for v, spec in variants.items()
            }
        return LoadedTask(
            name=record.name,
            source=record.source,
            settings=settings.model_copy(update={"variants": variants}),
            labels=labels,
            versions={v.version: PromptVersion.model_validate(v.content) for v in versions},
            created_at=record.created_at,
            updated_at=record.updated_at,
            defined_weights=defined,
            added_variants=tuple(added),
            split=split,
        )

    def all(self) -> list[LoadedTask]:
        return [self.get(record.name) for record in self.store.list_tasks()]

    def version_records(self, name: str) -> list[TaskVersionRecord]:
        self.get(name)  # a clear 404 for an unknown task
        return self.store.list_versions(name)

    # -- writes (the API) ---------------------------------------------------
    def create(self, definition: TaskDefinition, labels: list[str]) -> LoadedTask:
        try:
            self.store.create_task(
                definition.name,
                source="api",
                definition=definition.settings.model_dump(mode="json"),
            )
        except TaskExists:
            raise Conflict(f"task {definition.name!r} already exists") from None
        try:
            self.add_version(definition.name, definition.version, labels)
        except BaseException:
            self.store.delete_task(definition.name)  # never leave a task without a version
            raise
        return self.get(definition.name)

    def add_version(self, name: str, version: PromptVersion, labels: list[str]) -> tuple[int, bool]:
        try:
            record, created = self.store.add_version(
                name, version.model_dump(mode="json"), version.content_hash(), source="api"
            )
        except TaskMissing:
            raise TaskNotFound(f"no task named {name!r}") from None
        for label in labels:
            self.store.set_label(name, label, record.version)
        self.invalidate(name)
        return record.version, created

    def set_label(self, name: str, label: str, version: int) -> None:
        self.get(name)
        try:
            self.store.set_label(name, label, version)
        except VersionMissing:
            raise InvalidRequest(
                f"task {name!r} has no version {version}", param="version"
            ) from None
        self.invalidate(name)

    def remove_label(self, name: str, label: str) -> bool:
        self.get(name)
        removed = self.store.remove_label(name, label)
        self.invalidate(name)
        return removed

    def update_settings(self, name: str, settings: TaskSettings) -> LoadedTask:
        self._refuse_config_task(name, "change its settings")
        try:
            self.store.update_definition(name, settings.model_dump(mode="json"))
        except TaskMissing:
            raise TaskNotFound(f"no task named {name!r}") from None
        self._definition_changed(name, "settings")
        self.invalidate(name)
        return self.get(name)

    def delete(self, name: str) -> None:
        self._refuse_config_task(name, "delete it")
        if not self.store.delete_task(name):
            raise TaskNotFound(f"no task named {name!r}")
        self.invalidate(name)

    def _refuse_config_task(self, name: str, action: str) -> None:
        if self.get(name).source == "config":
            raise Conflict(
                f"task {name!r} is defined in powertrain.toml; edit the file to {action}"
            )
