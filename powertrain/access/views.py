"""What ``/api/keys`` takes and returns, and what ``powertrain keys`` prints: one shape."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from powertrain.catalog import Catalog
from powertrain.errors import InvalidRequest
from powertrain.store.keys import ApiKeyRecord

_NAME = Field(min_length=1, max_length=128, description="A label for people; need not be unique.")
_MODELS = Field(default=None, description="Models it may call (null: every model).")
_TASKS = Field(default=None, description="Tasks it may run (null: every task).")
_RPM = Field(default=None, ge=1, description="Requests per minute (null: no limit).")
_TPM = Field(
    default=None, ge=1, description="Tokens per minute, prompt plus completion (null: no limit)."
)
_BUDGET = Field(default=None, ge=0, description="Spend budget in USD (null: unlimited).")


def _names(value: list[str] | None) -> list[str] | None:
    if value is None:
        return None
    names = list(dict.fromkeys(v.strip() for v in value if v.strip()))
    if any(len(n) > 256 for n in names):
        raise ValueError("names are at most 256 characters")
    return names


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = _NAME
    models: list[str] | None = _MODELS
    tasks: list[str] | None = _TASKS
    rpm: int | None = _RPM
    tpm: int | None = _TPM
    budget_usd: float | None = _BUDGET

    _clean = field_validator("models", "tasks")(_names)


class KeyUpdate(BaseModel):
    """Only the fields sent change; an explicit null lifts a limit."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=128)
    models: list[str] | None = _MODELS
    tasks: list[str] | None = _TASKS
    rpm: int | None = _RPM
    tpm: int | None = _TPM
    budget_usd: float | None = _BUDGET

    _clean = field_validator("models", "tasks")(_names)

    def changes(self) -> dict[str, Any]:
        """The store's names for the fields that were sent."""
        renamed = {"models": "allowed_models", "tasks": "allowed_tasks"}
        changes = {renamed.get(f, f): getattr(self, f) for f in self.model_fields_set}
        if changes.get("name", "") is None:
            raise InvalidRequest("name cannot be null", param="name")
        return changes


class KeyInfo(BaseModel):
    id: str
    name: str
    prefix: str = Field(description="The secret's first characters, to recognise it.")
    models: list[str] | None
    tasks: list[str] | None
    rpm: int | None
    tpm: int | None
    budget_usd: float | None
    spend_usd: float
    reserved_usd: float = Field(description="Held by calls in flight.")
    remaining_usd: float | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, record: ApiKeyRecord) -> KeyInfo:
        return cls(
            id=record.id,
            name=record.name,
            prefix=record.prefix,
            models=record.allowed_models,
            tasks=record.allowed_tasks,
            rpm=record.rpm,
            tpm=record.tpm,
            budget_usd=record.budget_usd,
            spend_usd=record.spend_usd,
            reserved_usd=record.reserved_usd,
            remaining_usd=record.remaining_usd,
            created_at=record.created_at,
            last_used_at=record.last_used_at,
            revoked_at=record.revoked_at,
        )


class KeyCreated(KeyInfo):
    key: str = Field(description="The secret. It is not stored and cannot be shown again.")


def check_models_exist(catalog: Catalog, models: list[str] | None) -> None:
    """Refuse a key for models the catalog does not have (a typo would lock it out)."""
    for alias in models or []:
        if alias not in catalog:
            known = ", ".join(m.alias for m in catalog)
            raise InvalidRequest(
                f"model {alias!r} is not in the catalog (known: {known})", param="models"
            )
