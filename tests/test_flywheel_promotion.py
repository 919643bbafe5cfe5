"""Promotion: canary, full, rollback; the split history; the registry serving the split.

Runs on SQLite and (when its URL is set) Postgres.
"""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from powertrain.errors import Conflict, InvalidRequest, TaskNotFound
from powertrain.flywheel.promotion import PromotionRequest, Promotions, parse_share
from powertrain.store import Database, TaskStore
from powertrain.store.migrate import upgrade
from powertrain.store.schema import metadata
from powertrain.store.splits import SplitStore, VariantExists
from powertrain.tasks.definition import TaskDefinition
from powertrain.tasks.registry import TaskRegistry
from powertrain.tasks.variants import choose_variant


@pytest.fixture
def name() -> str:
    """The Postgres database is shared by the session's tests: each test has its own task."""
    return f"intent-{uuid.uuid4().hex[:8]}"


def _definition(name: str, weights: dict[str, float] | None = None) -> TaskDefinition:
    table: dict[str, Any] = {"user": "{{ text }}", "variables": {"text": {"type": "string"}}}
    if weights:
        table["variants"] = {variant: {"weight": w} for variant, w in weights.items()}
    return TaskDefinition.parse(name, table, base_dir=None, where=f"[tasks.{name}]")


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    yield database
    database.dispose()


def _registry(db: Database, definition: TaskDefinition) -> TaskRegistry:
    registry = TaskRegistry(
        TaskStore(db), {definition.name: definition}, refresh_interval=0, splits=SplitStore(db)
    )
    registry.sync_config()
    return registry


def _add_tuned(db: Database, name: str, variant: str = "lora-v1") -> None:
    SplitStore(db).add_variant(
        name, variant, {"model": "smollm2", "version": 1, "params": {}}, source="ft_test"
    )


def _served(registry: TaskRegistry, name: str) -> dict[str, float]:
    variants = registry.get(name).settings.effective_variants()
    return {variant: spec.weight for variant, spec in variants.items()}


FLYWHEEL_TABLES = {"finetune_jobs", "registered_models", "task_variants", "task_splits"}


def test_the_flywheel_schema_matches_its_migration(db: Database) -> None:
    def ours(obj: object, name: str | None, kind: str, *_: object) -> bool:
        table = name if kind == "table" else getattr(getattr(obj, "table", None), "name", None)
        return table in FLYWHEEL_TABLES

    def reflected(name: str | None, kind: str, parent: dict[str, str | None]) -> bool:
        # Only these tables are read back: others hold types (pgvector's) SQLAlchemy lacks.
        return name in FLYWHEEL_TABLES if kind == "table" else True

    with db.engine.connect() as conn:
        opts = {"include_object": ours, "include_name": reflected}
        context = MigrationContext.configure(conn, opts=opts)
        diff = compare_metadata(context, metadata)
    # Tables and columns; JSON/JSONB variants and defaults are reported differently per backend.
    assert [
        d for d in diff if d[0] in ("add_table", "remove_table", "add_column", "remove_column")
    ] == []


def test_a_release_7_store_upgrades_in_place_keeping_its_data(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = Database(url, migrate=False)
    upgrade(old.engine, "0007_create_eval_runs")
    TaskStore(old).create_task("intent", source="api", definition={"note": "kept"})
    old.dispose()
    db = Database(url)
    assert TaskStore(db).get_task("intent").definition == {"note": "kept"}  # type: ignore[union-attr]
    assert {"finetune_jobs", "registered_models", "task_variants", "task_splits"} <= set(
        sa.inspect(db.engine).get_table_names()
    )
    db.dispose()


def test_an_added_variant_is_served_only_when_pinned_until_promoted(
    db: Database, name: str
) -> None:
    registry = _registry(db, _definition(name))
    _add_tuned(db, name)
    assert _served(registry, name) == {"default": 1.0, "lora-v1": 0.0}
    task = registry.get(name)
    assert task.added_variants == ("lora-v1",)
    variants = task.settings.effective_variants()
    assert {choose_variant(name, variants) for _ in range(50)} == {"default"}
    assert choose_variant(name, variants, pinned="lora-v1") == "lora-v1"
    with pytest.raises(VariantExists):
        _add_tuned(db, name)


def test_canary_full_and_rollback_are_recorded_in_order(db: Database, name: str) -> None:
    registry = _registry(db, _definition(name, {"a": 3, "b": 1}))
    _add_tuned(db, name)
    promotions = Promotions(registry, registry.splits)

    canary = promotions.apply(
        name, PromotionRequest("canary", "lora-v1", parse_share("10%"), author="ana")
    )
    assert canary.weights == {"a": 0.675, "b": 0.225, "lora-v1": 0.1}
    assert canary.previous == {"a": 3, "b": 1, "lora-v1": 0}
    assert _served(registry, name) == {"a": 0.675, "b": 0.225, "lora-v1": 0.1}

    wider = promotions.apply(name, PromotionRequest("canary", "lora-v1", 0.5))
    assert wider.promotion == canary.id and wider.weights["lora-v1"] == 0.5

    full = promotions.apply(name, PromotionRequest("full"))  # the canary's variant
    assert full.variant == "lora-v1" and full.promotion == canary.id
    assert _served(registry, name) == {"a": 0.0, "b": 0.0, "lora-v1": 1.0}

    back = promotions.apply(name, PromotionRequest("rollback", note="worse on refunds"))
    assert back.action == "rollback" and back.promotion == canary.id
    assert back.weights == {"a": 3.0, "b": 1.0, "lora-v1": 0.0}  # as before the canary
    assert _served(registry, name) == {"a": 3.0, "b": 1.0, "lora-v1": 0.0}

    history = promotions.history(name)
    assert [r.action for r in history] == ["rollback", "full", "canary", "canary"]
    assert history[0].note == "worse on refunds" and history[-1].author == "ana"
    with pytest.raises(Conflict, match="no promotion to roll back"):
        promotions.apply(name, PromotionRequest("rollback"))


def test_promotion_refusals_are_clear(db: Database, name: str) -> None:
    registry = _registry(db, _definition(name, {"a": 1, "b": 1}))
    _add_tuned(db, name)
    promotions = Promotions(registry, registry.splits)
    with pytest.raises(InvalidRequest, match="no variant 'nope'"):
        promotions.apply(name, PromotionRequest("full", "nope"))
    with pytest.raises(TaskNotFound):
        promotions.apply("missing", PromotionRequest("full", "a"))
    with pytest.raises(InvalidRequest, match="name the variant"):
        promotions.apply(name, PromotionRequest("full"))
    promotions.apply(name, PromotionRequest("canary", "lora-v1", 0.2))
    with pytest.raises(Conflict, match="is canarying 'lora-v1'"):
        promotions.apply(name, PromotionRequest("canary", "b", 0.2))
    for text in ("0", "100%", "1.5x", "-3"):
        with pytest.raises(InvalidRequest):
            parse_share(text)
    assert parse_share("0.25") == 0.25 and parse_share("5") == 0.05


def test_a_changed_definition_takes_over_and_ends_the_promotion(db: Database, name: str) -> None:
    registry = _registry(db, _definition(name, {"a": 1, "b": 1}))
    _add_tuned(db, name)
    Promotions(registry, registry.splits).apply(name, PromotionRequest("full", "lora-v1"))
    restarted = _registry(db, _definition(name, {"a": 1, "b": 1}))  # same file: the split holds
    assert _served(restarted, name) == {"a": 0.0, "b": 0.0, "lora-v1": 1.0}
    edited = _registry(db, _definition(name, {"a": 1, "b": 4}))
    assert _served(edited, name) == {"a": 1.0, "b": 4.0, "lora-v1": 0.0}
    assert SplitStore(db).history(name)[0].action == "config"
    with pytest.raises(Conflict):
        Promotions(edited, edited.splits).apply(name, PromotionRequest("rollback"))


def test_concurrent_promotions_apply_one_after_the_other(db: Database, name: str) -> None:
    registry = _registry(db, _definition(name, {"a": 1, "b": 1}))
    for n in range(1, 5):
        _add_tuned(db, name, f"lora-v{n}")
    errors: list[BaseException] = []
    done: list[int] = []

    def promote(variant: str) -> None:
        try:
            other = TaskRegistry(TaskStore(db), {}, refresh_interval=0, splits=SplitStore(db))
            done.append(
                Promotions(other, other.splits).apply(name, PromotionRequest("full", variant)).id
            )
        except BaseException as exc:  # collected, asserted below
            errors.append(exc)

    threads = [threading.Thread(target=promote, args=(f"lora-v{n}",)) for n in range(1, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    history = list(reversed(SplitStore(db).history(name)))
    assert len(history) == 4
    # Each change starts from the split the one before it left.
    for before, after in itertools.pairwise(history):
        assert after.previous == before.weights
    assert sum(1 for w in _served(registry, name).values() if w > 0) == 1
