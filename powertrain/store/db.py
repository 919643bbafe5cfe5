"""Opening the store: one SQLAlchemy engine, tuned per backend, migrated on open."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

from powertrain.errors import ConfigError

SUPPORTED_BACKENDS = frozenset({"sqlite", "postgresql"})


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers (the API, the CLI) work while the trace writer writes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Database:
    """Owns the SQLAlchemy engine for one store URL."""

    def __init__(self, url: str, *, migrate: bool = True):
        self.url = url
        try:
            parsed = make_url(url)
        except Exception:
            raise ConfigError(
                "database_url is not a valid SQLAlchemy URL "
                "(e.g. sqlite:///path.db or postgresql+psycopg://host/db)"
            ) from None
        if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        self.dialect = parsed.get_backend_name()
        if self.dialect not in SUPPORTED_BACKENDS:
            raise ConfigError(
                f"database_url uses {self.dialect!r}; powertrain stores data in SQLite "
                "(sqlite:///path.db) or PostgreSQL (postgresql+psycopg://host/db)"
            )
        # orjson instead of the json module for JSON columns: traces are written in bulk.
        kwargs: dict[str, Any] = {
            "json_serializer": lambda value: orjson.dumps(value).decode(),
            "json_deserializer": orjson.loads,
        }
        if self.dialect == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"check_same_thread": False}
        elif self.dialect == "postgresql":
            kwargs.update(pool_size=5, max_overflow=5, pool_pre_ping=True)
        self.engine: Engine = create_engine(parsed, **kwargs)
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        if migrate:
            from powertrain.store.migrate import upgrade

            upgrade(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()

    def describe(self) -> str:
        """The URL with any password hidden, for logs and `powertrain info`."""
        return make_url(self.url).render_as_string(hide_password=True)
