"""Fine-tuning jobs and the models they registered. Pure storage: the flywheel decides."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from powertrain.store.db import Database
from powertrain.store.schema import finetune_jobs, registered_models
from powertrain.store.times import as_utc, utc_now

# "cancelling": asked to stop; the process running it stops at its next progress report.
JOB_STATUSES = ("queued", "running", "cancelling", "succeeded", "failed", "cancelled")
FINISHED = frozenset({"succeeded", "failed", "cancelled"})


def new_job_id() -> str:
    """Time-ordered, like trace and eval run ids."""
    return f"ft_{int(time.time() * 1000):012x}{os.urandom(4).hex()}"


@dataclass(frozen=True)
class JobRecord:
    id: str
    task: str
    owner: str
    dataset: str
    dataset_version: int
    method: str
    base_model: str
    status: str
    params: dict[str, Any]
    progress: dict[str, Any]
    metrics: dict[str, Any]
    curves: dict[str, list[list[float]]]
    model_alias: str | None
    variant: str | None
    workdir: str | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    duration_s: float | None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def dataset_ref(self) -> str:
        return f"{self.dataset}@{self.dataset_version}"


@dataclass(frozen=True)
class RegisteredModel:
    alias: str
    config: dict[str, Any]
    task: str | None
    job_id: str | None
    created_at: datetime


class FineTuneStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._insert = postgresql.insert if db.dialect == "postgresql" else sqlite.insert

    # -- jobs ------------------------------------------------------------------------------

    def create_job(
        self,
        *,
        task: str,
        owner: str,
        dataset: str,
        dataset_version: int,
        method: str,
        base_model: str,
        params: dict[str, Any],
    ) -> JobRecord:
        job_id = new_job_id()
        values = {
            "id": job_id,
            "task": task,
            "owner": owner,
            "dataset": dataset,
            "dataset_version": dataset_version,
            "method": method,
            "base_model": base_model,
            "status": "queued",
            "params": params,
            "progress": {},
            "metrics": {},
            "curves": {},
            "created_at": utc_now(),
        }
        with self.db.engine.begin() as conn:
            conn.execute(finetune_jobs.insert().values(values))
        job = self.get_job(job_id)
        assert job is not None
        return job

    def get_job(self, job_id: str) -> JobRecord | None:
        with self.db.engine.connect() as conn:
            row = conn.execute(select(finetune_jobs).where(finetune_jobs.c.id == job_id)).first()
        return _job(row._mapping) if row else None

    def list_jobs(
        self, *, task: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[JobRecord]:
        query = select(finetune_jobs).order_by(finetune_jobs.c.id.desc()).limit(limit)
        if task is not None:
            query = query.where(finetune_jobs.c.task == task)
        if status is not None:
            query = query.where(finetune_jobs.c.status == status)
        with self.db.engine.connect() as conn:
            return [_job(r._mapping) for r in conn.execute(query)]

    def update_job(self, job_id: str, **values: Any) -> None:
        with self.db.engine.begin() as conn:
            conn.execute(update(finetune_jobs).where(finetune_jobs.c.id == job_id).values(values))

    def claim_job(self, job_id: str, *, resume: bool) -> bool:
        """Mark the job running, unless another process runs it (one conditional UPDATE).

        A queued job is claimed; with ``resume``, so is one that failed, was cancelled,
        or was left ``running`` by a process that stopped sending heartbeats.
        """
        now = utc_now()
        claimable = ["queued"]
        if resume:
            claimable += ["failed", "cancelled", "running"]
        query = update(finetune_jobs).where(
            finetune_jobs.c.id == job_id, finetune_jobs.c.status.in_(claimable)
        )
        if resume:
            stale = now.timestamp() - STALE_AFTER_S
            query = query.where(
                (finetune_jobs.c.status != "running")
                | (finetune_jobs.c.heartbeat_at.is_(None))
                | (finetune_jobs.c.heartbeat_at < datetime.fromtimestamp(stale, now.tzinfo))
            )
        values = {"status": "running", "heartbeat_at": now, "error": None, "finished_at": None}
        with self.db.engine.begin() as conn:
            claimed = conn.execute(query.values(values)).rowcount > 0
            if claimed:
                conn.execute(
                    update(finetune_jobs)
                    .where(finetune_jobs.c.id == job_id, finetune_jobs.c.started_at.is_(None))
                    .values(started_at=now)
                )
        return claimed

    def delete_job(self, job_id: str) -> bool:
        with self.db.engine.begin() as conn:
            return (
                conn.execute(delete(finetune_jobs).where(finetune_jobs.c.id == job_id)).rowcount > 0
            )

    # -- registered models -----------------------------------------------------------------

    def register_model(
        self, alias: str, config: dict[str, Any], *, task: str | None, job_id: str | None
    ) -> bool:
        """Add a catalog entry; False when the alias is taken (entries never change)."""
        query = (
            self._insert(registered_models)
            .values(alias=alias, config=config, task=task, job_id=job_id, created_at=utc_now())
            .on_conflict_do_nothing(index_elements=["alias"])
        )
        with self.db.engine.begin() as conn:
            return conn.execute(query).rowcount > 0

    def registered_models(self) -> list[RegisteredModel]:
        query = select(registered_models).order_by(registered_models.c.alias)
        with self.db.engine.connect() as conn:
            return [_model(r._mapping) for r in conn.execute(query)]

    def registered_model(self, alias: str) -> RegisteredModel | None:
        query = select(registered_models).where(registered_models.c.alias == alias)
        with self.db.engine.connect() as conn:
            row = conn.execute(query).first()
        return _model(row._mapping) if row else None

    def unregister_model(self, alias: str) -> bool:
        with self.db.engine.begin() as conn:
            query = delete(registered_models).where(registered_models.c.alias == alias)
            return conn.execute(query).rowcount > 0

    def model_aliases_like(self, prefix: str) -> list[str]:
        """Registered aliases starting with ``prefix`` (to number the next one)."""
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = select(registered_models.c.alias).where(
            registered_models.c.alias.like(escaped + "%", escape="\\")
        )
        with self.db.engine.connect() as conn:
            return [r[0] for r in conn.execute(query)]


# A running job writes a heartbeat at least this often; one silent for longer is taken
# to have died with its process, and may be resumed by another.
HEARTBEAT_S = 10.0
STALE_AFTER_S = 120.0


def _job(row: Any) -> JobRecord:
    values = dict(row)
    for name in ("created_at", "started_at", "finished_at", "heartbeat_at"):
        values[name] = as_utc(values[name])
    return JobRecord(**values)


def _model(row: Any) -> RegisteredModel:
    return RegisteredModel(**{**row, "created_at": as_utc(row["created_at"])})
