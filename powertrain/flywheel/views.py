"""Jobs and splits as people read them: one shape for the API, the CLI's --json and the UI."""

from __future__ import annotations

from typing import Any

from powertrain.store.finetune import JobRecord
from powertrain.store.splits import SplitRecord


def job_json(job: JobRecord) -> dict[str, Any]:
    return {
        "id": job.id,
        "object": "finetune.job",
        "task": job.task,
        "dataset": job.dataset_ref,
        "method": job.method,
        "base_model": job.base_model,
        "status": job.status,
        "model": job.model_alias,
        "variant": job.variant,
        "params": job.params,
        "progress": job.progress,
        "metrics": job.metrics,
        "curves": job.curves,
        "error": job.error,
        "created_at": job.created_at.isoformat(),
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "duration_s": job.duration_s,
    }


def split_json(record: SplitRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "task": record.task,
        "action": record.action,
        "variant": record.variant,
        "weights": record.weights,
        "previous": record.previous,
        "promotion": record.promotion,
        "author": record.author,
        "note": record.note,
        "created_at": record.created_at.isoformat(),
    }
