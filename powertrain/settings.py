"""Settings: one declarative table drives the config file, the environment and the docs.

Each setting is read from ``[settings]`` in ``powertrain.toml`` and can be
overridden by ``POWERTRAIN_<NAME>`` in the environment. ``powertrain settings``
prints this table, and a test fails if one is missing from the docs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from powertrain.errors import ConfigError

ENV_PREFIX = "POWERTRAIN_"


def default_home() -> Path:
    return Path(os.environ.get("POWERTRAIN_HOME") or Path.home() / ".powertrain")


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    home: Path = Field(
        default_factory=default_home,
        description="Directory for the SQLite store, indexes and adapters.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the store; a SQLite file under `home` when unset, "
        "postgresql+psycopg://… to scale out.",
    )
    admin_key: str | None = Field(
        default=None,
        description="Turns authentication on: every /v1 and /api route needs this bearer key.",
    )
    allow_unauthenticated: bool = Field(
        default=True,
        description="With no `admin_key`, serve without authentication, to loopback clients "
        "only. Set false to make a missing `admin_key` an error.",
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis URL (redis://host:6379/0) shared by every worker for rate limits; "
        "limits are kept in process when unset.",
    )
    host: str = Field(
        default="127.0.0.1",
        description="Address `powertrain serve` binds; a non-loopback address needs `admin_key`.",
    )
    port: int = Field(default=8080, ge=0, le=65535, description="Port `powertrain serve` binds.")
    default_model: str = Field(default="smollm2", description="Model used when none is named.")
    max_body_bytes: int = Field(
        default=4 * 1024 * 1024, ge=1024, description="Largest request body accepted (bytes)."
    )
    max_messages: int = Field(
        default=1024, ge=1, description="Most messages accepted in one chat request."
    )
    request_timeout: float = Field(
        default=600.0, gt=0, description="Deadline of one call, engine attempts included (s)."
    )
    trace_batch_size: int = Field(
        default=256, ge=1, description="Traces written to the store in one batch."
    )
    trace_flush_interval: float = Field(
        default=0.2, gt=0, description="Longest a trace waits in memory before it is written (s)."
    )
    trace_buffer_limit: int = Field(
        default=100_000,
        ge=1,
        description="Traces held in memory while the store is down; beyond it they spill to "
        "a JSONL file under `home` instead of being dropped.",
    )
    task_refresh_interval: float = Field(
        default=2.0,
        ge=0,
        description="How long a worker serves a task's versions and labels from memory before "
        "reading the store again (s); label moves on other workers show up after it.",
    )
    compute_price_per_hour: float = Field(
        default=0.10,
        ge=0,
        description="USD an hour of this machine costs; `finetune --method auto` prices local "
        "models' calls by their compute time with it (a 2-vCPU cloud VM is about 0.05-0.10).",
    )
    shutdown_grace: float = Field(
        default=30.0, ge=0, description="How long live streams may finish on SIGTERM (s)."
    )

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home / 'powertrain.db'}"

    @classmethod
    def describe(cls) -> list[tuple[str, Any, str]]:
        """(name, default, help) for every setting, for the CLI and the docs."""
        rows = []
        for name, field in cls.model_fields.items():
            default = "~/.powertrain" if name == "home" else field.default
            rows.append((name, default, field.description or ""))
        return rows


def load_settings(file_values: dict[str, Any], environ: dict[str, str] | None = None) -> Settings:
    """Merge ``[settings]`` from the config file with ``POWERTRAIN_*`` variables (env wins)."""
    environ = dict(os.environ if environ is None else environ)
    values: dict[str, Any] = dict(file_values)
    for name in Settings.model_fields:
        env_value = environ.get(ENV_PREFIX + name.upper())
        if env_value not in (None, ""):
            values[name] = env_value
    try:
        return Settings(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"invalid setting {where!r}: {first['msg']}") from None
