"""Virtual API keys: pure storage, hashed at rest, with atomic budget accounting.

A key's secret is shown once, when it is made; the store keeps its SHA-256 and
a short prefix for listings. Budgets are enforced with reservations: before a
call, ``reserve`` adds the call's estimated cost to ``reserved`` in one
conditional UPDATE that only matches while spend + reserved + the estimate fits
the budget, so concurrent calls (threads, processes, workers on one Postgres)
can never together pass it. ``settle`` then moves the reservation to spend at
the call's actual cost. Every value reaches the database as a bound parameter.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, null, select, update

from powertrain.store.db import Database
from powertrain.store.schema import api_keys
from powertrain.store.times import as_utc, utc_now

SECRET_PREFIX = "pt-"
_DISPLAY_CHARS = 10  # "pt-" and 7 characters of the secret: enough to tell keys apart
NANO = 1_000_000_000  # nano-dollars per dollar


def hash_secret(secret: str | bytes) -> str:
    """The stored form of a secret: SHA-256, hex.

    A fast hash is right: secrets are 256 random bits (nothing to guess), and a
    slow password hash would cost every request a key-stretching run.
    """
    data = secret.encode("utf-8", "surrogatepass") if isinstance(secret, str) else secret
    return hashlib.sha256(data).hexdigest()


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def to_nano(usd: float) -> int:
    """Dollars to whole nano-dollars, rounded up (a hold or a charge never comes out low)."""
    return math.ceil(round(usd * NANO, 3))


def to_usd(nano: int) -> float:
    return nano / NANO


@dataclass(frozen=True)
class ApiKeyRecord:
    id: str
    name: str
    prefix: str
    allowed_models: list[str] | None  # None: every model
    allowed_tasks: list[str] | None  # None: every task
    rpm: int | None
    tpm: int | None
    budget_nano: int | None  # None: unlimited
    spend_nano: int
    reserved_nano: int
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    @property
    def budget_usd(self) -> float | None:
        return None if self.budget_nano is None else to_usd(self.budget_nano)

    @property
    def spend_usd(self) -> float:
        return to_usd(self.spend_nano)

    @property
    def reserved_usd(self) -> float:
        return to_usd(self.reserved_nano)

    @property
    def remaining_usd(self) -> float | None:
        """What is left of the budget once calls in flight are paid (never below 0)."""
        if self.budget_nano is None:
            return None
        return to_usd(max(0, self.budget_nano - self.spend_nano - self.reserved_nano))


class KeyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- keys ----------------------------------------------------------------------------
    def create(
        self,
        name: str,
        *,
        allowed_models: list[str] | None = None,
        allowed_tasks: list[str] | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        budget_usd: float | None = None,
    ) -> tuple[ApiKeyRecord, str]:
        """A new key and its secret; the secret is not stored and cannot be shown again."""
        secret = new_secret()
        values = {
            "id": "key_" + secrets.token_hex(8),
            "name": name,
            "key_hash": hash_secret(secret),
            "prefix": secret[:_DISPLAY_CHARS],
            "allowed_models": _json(allowed_models),
            "allowed_tasks": _json(allowed_tasks),
            "rpm": rpm,
            "tpm": tpm,
            "budget_nano_usd": None if budget_usd is None else to_nano(budget_usd),
            "spend_nano_usd": 0,
            "reserved_nano_usd": 0,
            "created_at": utc_now(),
        }
        with self.db.engine.begin() as conn:
            row = conn.execute(api_keys.insert().values(**values).returning(*api_keys.c)).one()
        return _record(row._mapping), secret

    def get(self, key_id: str) -> ApiKeyRecord | None:
        with self.db.engine.connect() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).mappings().first()
        return _record(row) if row else None

    def get_by_hash(self, key_hash: str) -> ApiKeyRecord | None:
        """The key whose secret hashes to ``key_hash`` (revoked or not)."""
        query = select(api_keys).where(api_keys.c.key_hash == key_hash)
        with self.db.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return _record(row) if row else None

    def list_keys(self, *, include_revoked: bool = True) -> list[ApiKeyRecord]:
        query = select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
        if not include_revoked:
            query = query.where(api_keys.c.revoked_at.is_(None))
        with self.db.engine.connect() as conn:
            return [_record(r) for r in conn.execute(query).mappings()]

    def update(self, key_id: str, **changes: Any) -> ApiKeyRecord | None:
        """Change a key's name, limits or budget (``budget_usd``; None lifts it)."""
        allowed = {"name", "allowed_models", "allowed_tasks", "rpm", "tpm", "budget_usd"}
        unknown = set(changes) - allowed
        if unknown:
            raise TypeError(f"cannot change {', '.join(sorted(unknown))}")
        values = dict(changes)
        for name in ("allowed_models", "allowed_tasks"):
            if name in values:
                values[name] = _json(values[name])
        if "budget_usd" in values:
            budget = values.pop("budget_usd")
            values["budget_nano_usd"] = None if budget is None else to_nano(budget)
        query = update(api_keys).where(api_keys.c.id == key_id)
        with self.db.engine.begin() as conn:
            if values:
                conn.execute(query.values(**values))
            row = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).mappings().first()
        return _record(row) if row else None

    def revoke(self, key_id: str) -> ApiKeyRecord | None:
        """Revoke a key (a no-op when it already is); None when there is no such key."""
        with self.db.engine.begin() as conn:
            conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=utc_now())
            )
            row = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).mappings().first()
        return _record(row) if row else None

    def touch(self, key_id: str, *, older_than: datetime) -> None:
        """Record a use, but write at most once per period (``older_than`` is its start)."""
        stale = api_keys.c.last_used_at.is_(None) | (api_keys.c.last_used_at < older_than)
        with self.db.engine.begin() as conn:
            conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, stale)
                .values(last_used_at=utc_now())
            )

    # -- budget --------------------------------------------------------------------------
    def reserve(self, key_id: str, amount_nano: int) -> bool:
        """Hold ``amount_nano`` of the key's budget; False when it does not fit (or the key
        is revoked or gone). One conditional UPDATE: atomic on SQLite (the write lock) and
        on Postgres (the row lock), so concurrent holds never pass the budget together."""
        c = api_keys.c
        fits = c.budget_nano_usd.is_(None) | (
            c.spend_nano_usd + c.reserved_nano_usd + amount_nano <= c.budget_nano_usd
        )
        query = (
            update(api_keys)
            .where(c.id == key_id, c.revoked_at.is_(None), fits)
            .values(reserved_nano_usd=c.reserved_nano_usd + amount_nano)
        )
        with self.db.engine.begin() as conn:
            return conn.execute(query).rowcount == 1

    def settle(self, key_id: str, reserved_nano: int, actual_nano: int) -> None:
        """Release a hold and charge the call's actual cost (which may differ from it)."""
        c = api_keys.c
        held = case(
            (c.reserved_nano_usd >= reserved_nano, c.reserved_nano_usd - reserved_nano),
            else_=0,
        )
        query = (
            update(api_keys)
            .where(c.id == key_id)
            .values(reserved_nano_usd=held, spend_nano_usd=c.spend_nano_usd + actual_nano)
        )
        with self.db.engine.begin() as conn:
            conn.execute(query)


def _json(value: list[str] | None) -> Any:
    """SQL NULL, not the JSON text 'null', for "no restriction"."""
    return null() if value is None else value


def _record(row: Any) -> ApiKeyRecord:
    created = as_utc(row["created_at"])
    assert created is not None
    return ApiKeyRecord(
        id=row["id"],
        name=row["name"],
        prefix=row["prefix"],
        allowed_models=list(row["allowed_models"]) if row["allowed_models"] is not None else None,
        allowed_tasks=list(row["allowed_tasks"]) if row["allowed_tasks"] is not None else None,
        rpm=row["rpm"],
        tpm=row["tpm"],
        budget_nano=row["budget_nano_usd"],
        spend_nano=int(row["spend_nano_usd"]),
        reserved_nano=int(row["reserved_nano_usd"]),
        created_at=created,
        revoked_at=as_utc(row["revoked_at"]),
        last_used_at=as_utc(row["last_used_at"]),
    )
