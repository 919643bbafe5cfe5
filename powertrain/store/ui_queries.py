"""Aggregates the web UI shows: usage over time and eval run tallies, computed in SQL.

Pure reads with bound parameters. Time buckets are whole multiples of a bucket size
counted from the Unix epoch, so one expression serves SQLite (``strftime('%s')``)
and Postgres (``EXTRACT(EPOCH …)``), and a chart's buckets line up across groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import Integer, case, cast, func, select
from sqlalchemy.sql.elements import ColumnElement

from powertrain.store.db import Database
from powertrain.store.schema import eval_results, traces
from powertrain.store.times import as_utc

GroupBy = Literal["model", "task", "api_key_id"]
GROUPS: tuple[GroupBy, ...] = ("model", "task", "api_key_id")


@dataclass(frozen=True)
class UsagePoint:
    """One time bucket of one group (a model, a task or a key)."""

    start: datetime
    group: str | None
    calls: int
    errors: int
    cost_usd: float
    tokens: int
    # Averages and maxima, not percentiles: SQLite has no percentile aggregate, and a
    # bucket's exact p95 would need every latency of it in Python. Max shows the tail.
    avg_latency_ms: float
    max_latency_ms: float
    avg_ttft_ms: float | None


def _bucket(db: Database, seconds: int) -> ColumnElement[Any]:
    if db.dialect == "postgresql":
        epoch = func.extract("epoch", traces.c.created_at)
        return cast(func.floor(epoch / seconds), Integer)
    # SQLite keeps UTC text; strftime('%s') reads it as UTC seconds.
    return cast(func.strftime("%s", traces.c.created_at), Integer) // seconds


def usage_series(
    db: Database,
    *,
    since: datetime,
    until: datetime,
    bucket_seconds: int,
    group_by: GroupBy,
    api_key_id: str | None = None,
) -> list[UsagePoint]:
    """Calls, errors, cost, tokens and latency per (bucket, group), oldest bucket first.

    ``api_key_id`` narrows to one key's calls (a virtual key's own view).
    """
    if group_by not in GROUPS:
        raise ValueError(f"group_by must be one of {', '.join(GROUPS)}")
    bucket = _bucket(db, bucket_seconds).label("bucket")
    group = traces.c[group_by].label("grp")
    query = (
        select(
            bucket,
            group,
            func.count().label("calls"),
            func.sum(case((traces.c.status != "ok", 1), else_=0)).label("errors"),
            func.sum(traces.c.cost_usd).label("cost"),
            func.sum(traces.c.prompt_tokens + traces.c.completion_tokens).label("tokens"),
            func.avg(traces.c.latency_ms).label("avg_latency"),
            func.max(traces.c.latency_ms).label("max_latency"),
            func.avg(traces.c.ttft_ms).label("avg_ttft"),
        )
        .where(traces.c.created_at >= as_utc(since), traces.c.created_at < as_utc(until))
        .group_by(bucket, group)
        .order_by(bucket, group)
    )
    if api_key_id is not None:
        query = query.where(traces.c.api_key_id == api_key_id)
    with db.engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    return [
        UsagePoint(
            start=datetime.fromtimestamp(int(r["bucket"]) * bucket_seconds, UTC),
            group=r["grp"],
            calls=int(r["calls"]),
            errors=int(r["errors"] or 0),
            cost_usd=float(r["cost"] or 0.0),
            tokens=int(r["tokens"] or 0),
            avg_latency_ms=float(r["avg_latency"] or 0.0),
            max_latency_ms=float(r["max_latency"] or 0.0),
            avg_ttft_ms=float(r["avg_ttft"]) if r["avg_ttft"] is not None else None,
        )
        for r in rows
    ]


@dataclass(frozen=True)
class RunTally:
    results: int
    passed: int
    failed: int
    errors: int

    @property
    def pass_rate(self) -> float:
        return self.passed / self.results if self.results else 0.0


def eval_run_tallies(db: Database, run_ids: Sequence[str]) -> dict[str, RunTally]:
    """Result counts per run, for a list of runs (one grouped query, not one per run)."""
    if not run_ids:
        return {}
    status = eval_results.c.status
    query = (
        select(
            eval_results.c.run_id,
            func.count().label("results"),
            func.sum(case((status == "pass", 1), else_=0)).label("passed"),
            func.sum(case((status == "fail", 1), else_=0)).label("failed"),
            func.sum(case((status == "error", 1), else_=0)).label("errors"),
        )
        .where(eval_results.c.run_id.in_(list(run_ids)))
        .group_by(eval_results.c.run_id)
    )
    with db.engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    return {
        r["run_id"]: RunTally(
            int(r["results"]), int(r["passed"] or 0), int(r["failed"] or 0), int(r["errors"] or 0)
        )
        for r in rows
    }
