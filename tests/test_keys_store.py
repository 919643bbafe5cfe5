"""The key store on SQLite and Postgres: hashed at rest, atomic budget holds, in-place upgrade."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from powertrain.access import KeyService
from powertrain.store import Database, KeyStore
from powertrain.store.keys import hash_secret, to_nano
from powertrain.store.migrate import current_revision, head_revision, upgrade


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    yield database
    database.dispose()


@pytest.fixture
def store(db: Database) -> KeyStore:
    return KeyStore(db)


def test_a_key_is_made_found_by_its_hash_and_listed(store: KeyStore) -> None:
    record, secret = store.create(
        "web", allowed_models=["gpt"], rpm=60, tpm=1000, budget_usd=2.5, allowed_tasks=None
    )
    assert secret.startswith("pt-") and len(secret) > 40
    assert record.id.startswith("key_") and record.prefix == secret[:10]
    assert (record.allowed_models, record.allowed_tasks) == (["gpt"], None)
    assert (record.rpm, record.tpm, record.budget_usd, record.spend_usd) == (60, 1000, 2.5, 0.0)
    assert store.get_by_hash(hash_secret(secret)) == record
    assert store.get_by_hash(hash_secret(secret + "x")) is None
    assert record.id in [k.id for k in store.list_keys()]
    other, other_secret = store.create("batch")
    assert other_secret != secret and other.budget_usd is None and other.allowed_models is None


def test_the_secret_is_not_stored(store: KeyStore, db: Database, tmp_path: Path) -> None:
    _record, secret = store.create("web", budget_usd=1)
    with db.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM api_keys")).all()
    assert rows and not any(secret in str(value) for row in rows for value in row)
    assert any(hash_secret(secret) in str(value) for row in rows for value in row)
    if db.dialect == "sqlite":
        db.dispose()  # checkpoint the WAL so every byte is in the files we read
        for file in Path(str(db.engine.url.database)).parent.glob("store.db*"):
            assert secret.encode() not in file.read_bytes(), file


def test_revoke_and_update(store: KeyStore) -> None:
    record, _ = store.create("web", rpm=10, budget_usd=1)
    changed = store.update(record.id, rpm=None, budget_usd=5, allowed_models=["a", "b"])
    assert changed is not None
    assert (changed.rpm, changed.budget_usd, changed.allowed_models) == (None, 5.0, ["a", "b"])
    lifted = store.update(record.id, allowed_models=None)
    assert lifted is not None and lifted.allowed_models is None
    revoked = store.revoke(record.id)
    assert revoked is not None and revoked.revoked
    assert store.revoke(record.id) == revoked  # revoking again changes nothing
    assert store.revoke("key_missing") is None
    assert [k.id for k in store.list_keys(include_revoked=False)].count(record.id) == 0
    assert not store.reserve(record.id, 1)  # a revoked key holds nothing


def test_reserve_and_settle_keep_exact_accounts(store: KeyStore) -> None:
    record, _ = store.create("web", budget_usd=0.10)
    cent = to_nano(0.01)
    assert all(store.reserve(record.id, cent) for _ in range(10))
    assert not store.reserve(record.id, 1)  # not one nano-dollar more
    for _ in range(10):
        store.settle(record.id, cent, to_nano(0.004))
    after = store.get(record.id)
    assert after is not None
    assert (after.spend_nano, after.reserved_nano) == (to_nano(0.04), 0)
    assert after.remaining_usd == pytest.approx(0.06)
    store.settle(record.id, cent, 0)  # an unbalanced settle never drives the hold negative
    assert store.get(record.id).reserved_nano == 0  # type: ignore[union-attr]
    unlimited, _ = store.create("free")
    assert store.reserve(unlimited.id, to_nano(1000))


def test_concurrent_holds_never_pass_the_budget(store: KeyStore) -> None:
    """RELIABILITY 15 at the store: 50 threads race for a budget that holds 10."""
    record, _ = store.create("race", budget_usd=0.10)
    start = threading.Barrier(50)
    won: list[bool] = []
    lock = threading.Lock()

    def race() -> None:
        start.wait()
        ok = store.reserve(record.id, to_nano(0.01))
        with lock:
            won.append(ok)

    threads = [threading.Thread(target=race) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert won.count(True) == 10 and len(won) == 50
    assert store.get(record.id).reserved_nano == to_nano(0.10)  # type: ignore[union-attr]


def test_last_use_is_written_at_most_once_a_period(store: KeyStore) -> None:
    record, _ = store.create("web")
    store.touch(record.id, older_than=datetime.now(UTC) - timedelta(seconds=60))
    first = store.get(record.id).last_used_at  # type: ignore[union-attr]
    assert first is not None
    store.touch(record.id, older_than=datetime.now(UTC) - timedelta(seconds=60))
    assert store.get(record.id).last_used_at == first  # type: ignore[union-attr]


def test_the_service_caches_verifications_and_forgets_revoked_keys(store: KeyStore) -> None:
    now = [0.0]
    service = KeyService(store, cache_seconds=5, clock=lambda: now[0])
    record, secret = service.create("web")
    assert service.verify(secret.encode()) == record
    assert service.verify(b"pt-" + b"x" * 43) is None  # key-shaped, unknown: asked the store
    assert service.verify(b"' OR 1=1 --") is None  # not key-shaped: never asked
    # Revoked through another worker (the store directly): this one trusts its cache a while.
    store.revoke(record.id)
    assert service.verify(secret.encode()) is not None
    now[0] = 5.1
    assert service.verify(secret.encode()) is None
    # Revoked through this worker: at once.
    other, other_secret = service.create("batch")
    assert service.verify(other_secret.encode()) is not None
    service.revoke(other.id)
    assert service.verify(other_secret.encode()) is None


def test_the_verification_cache_is_bounded(store: KeyStore) -> None:
    service = KeyService(store, cache_entries=8)
    for i in range(50):
        service.verify(b"pt-" + str(i).encode() * 30)
    assert len(service._cache) <= 8


def test_a_store_from_the_collections_release_upgrades_in_place(tmp_path: Path) -> None:
    """RELIABILITY 21: the previous release's store gains api_keys and keeps its data."""
    from powertrain.store import TaskStore

    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = Database(url, migrate=False)
    upgrade(old.engine, "0003_create_collections")
    TaskStore(old).create_task("keep", source="api", definition={"model": "m"})
    assert "api_keys" not in sa.inspect(old.engine).get_table_names()
    old.dispose()
    db = Database(url)
    assert current_revision(db.engine) == head_revision()
    assert TaskStore(db).get_task("keep") is not None
    indexes = {i["name"]: i for i in sa.inspect(db.engine).get_indexes("api_keys")}
    assert indexes["ix_api_keys_key_hash"]["unique"]
    KeyStore(db).create("new")
    db.dispose()
