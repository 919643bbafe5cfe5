"""Eval runs and their results. Pure storage: the evals package decides what a result means."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from powertrain.store.db import Database
from powertrain.store.schema import eval_results, eval_runs
from powertrain.store.times import utc_now


def new_run_id() -> str:
    """Time-ordered, like trace ids: sorting by id sorts by start time."""
    return f"ev_{int(time.time() * 1000):012x}{os.urandom(4).hex()}"


@dataclass(frozen=True)
class EvalRunRecord:
    id: str
    suite: str
    suite_hash: str
    suite_path: str | None
    status: str  # running | finished
    config: dict[str, Any]
    created_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True)
class EvalResultRecord:
    run_id: str
    case_idx: int
    target: str
    rep: int
    case_key: str
    vars: dict[str, Any]
    expected: Any
    status: str  # pass | fail | error
    score: float
    output: str | None
    error: str | None
    latency_ms: float
    cost_usd: float
    trace_id: str | None
    assertions: list[dict[str, Any]]

    @property
    def key(self) -> tuple[int, str, int]:
        return (self.case_idx, self.target, self.rep)

    @property
    def passed(self) -> bool:
        return self.status == "pass"


class EvalStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._insert = postgresql.insert if db.dialect == "postgresql" else sqlite.insert

    def create_run(
        self, *, suite: str, suite_hash: str, suite_path: str | None, config: dict[str, Any]
    ) -> EvalRunRecord:
        values = {
            "id": new_run_id(),
            "suite": suite,
            "suite_hash": suite_hash,
            "suite_path": suite_path,
            "status": "running",
            "config": config,
            "created_at": utc_now(),
            "finished_at": None,
        }
        with self.db.engine.begin() as conn:
            conn.execute(eval_runs.insert().values(values))
        return EvalRunRecord(**values)  # type: ignore[arg-type]

    def get_run(self, run_id: str) -> EvalRunRecord | None:
        with self.db.engine.connect() as conn:
            row = conn.execute(select(eval_runs).where(eval_runs.c.id == run_id)).mappings().first()
        return _run(row) if row else None

    def list_runs(self, *, limit: int = 20) -> list[EvalRunRecord]:
        query = select(eval_runs).order_by(eval_runs.c.id.desc()).limit(limit)
        with self.db.engine.connect() as conn:
            return [_run(r) for r in conn.execute(query).mappings().all()]

    def latest_unfinished(self, suite_hash: str) -> EvalRunRecord | None:
        query = (
            select(eval_runs)
            .where(eval_runs.c.suite_hash == suite_hash, eval_runs.c.status != "finished")
            .order_by(eval_runs.c.id.desc())
            .limit(1)
        )
        with self.db.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return _run(row) if row else None

    def finish_run(self, run_id: str) -> None:
        query = (
            update(eval_runs)
            .where(eval_runs.c.id == run_id)
            .values(status="finished", finished_at=utc_now())
        )
        with self.db.engine.begin() as conn:
            conn.execute(query)

    def delete_run(self, run_id: str) -> bool:
        with self.db.engine.begin() as conn:
            conn.execute(delete(eval_results).where(eval_results.c.run_id == run_id))
            return conn.execute(delete(eval_runs).where(eval_runs.c.id == run_id)).rowcount > 0

    def add_result(self, result: EvalResultRecord) -> bool:
        """Store one result; ``False`` when that (run, case, target, repeat) was stored already."""
        values = {**result.__dict__, "created_at": utc_now()}
        query = (
            self._insert(eval_results)
            .values(values)
            .on_conflict_do_nothing(index_elements=["run_id", "case_idx", "target", "rep"])
        )
        with self.db.engine.begin() as conn:
            return conn.execute(query).rowcount > 0

    def results(self, run_id: str) -> list[EvalResultRecord]:
        query = (
            select(eval_results)
            .where(eval_results.c.run_id == run_id)
            .order_by(eval_results.c.case_idx, eval_results.c.target, eval_results.c.rep)
        )
        with self.db.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [EvalResultRecord(**{k: v for k, v in r.items() if k != "created_at"}) for r in rows]


def _run(row: Any) -> EvalRunRecord:
    return EvalRunRecord(**dict(row))
