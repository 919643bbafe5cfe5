"""``/api/finetune`` and ``/api/tasks/{name}/promote``: the flywheel over HTTP.

Starting, cancelling and resuming jobs and moving traffic need the admin key;
a job trains in its own process (``flywheel/worker.py``), so the request
returns at once with the job, which ``GET /api/finetune/jobs/{id}`` follows.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from powertrain.errors import Conflict
from powertrain.flywheel.jobs import FineTuneRequest, FineTuning
from powertrain.flywheel.promotion import PromotionRequest, Promotions, parse_share
from powertrain.flywheel.views import job_json, split_json
from powertrain.flywheel.worker import spawn
from powertrain.gateway import Gateway
from powertrain.server.auth import Access, policy

router = APIRouter(tags=["flywheel"])

JobId = Annotated[str, Path(pattern=r"^ft_[0-9a-f]{12,40}$", max_length=40)]
TaskName = Annotated[str, Path(max_length=128)]


class FineTuneBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: str = Field(max_length=128)
    dataset: str = Field(max_length=160, description="NAME or NAME@VERSION.")
    method: str = Field(default="lora", max_length=64)
    base: str | None = Field(default=None, max_length=256)
    variant: str | None = Field(default=None, max_length=64)
    encoder: str = Field(default="minilm", max_length=256)
    seed: int = 0
    settings: dict[str, Any] = Field(default_factory=dict)
    limit: int | None = Field(default=None, ge=1)
    score: bool = Field(default=True, description="Score on the test split when trained.")
    score_limit: int | None = Field(default=None, ge=1)


class PromoteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Literal["canary", "full", "rollback"] = "full"
    variant: str | None = Field(default=None, max_length=64)
    canary: str | float | None = Field(
        default=None, description="The canary's share: 0.1, 10 or '10%'."
    )
    author: str | None = Field(default=None, max_length=128)
    note: str | None = Field(default=None, max_length=2000)


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway  # type: ignore[no-any-return]


def _jobs(request: Request) -> FineTuning:
    return FineTuning.of(_gateway(request))


@router.post("/api/finetune/jobs", dependencies=[policy(Access.ADMIN)], status_code=202)
async def create_job(body: FineTuneBody, request: Request) -> dict[str, Any]:
    """Check and start a fine-tuning job in its own process; 202 with the job."""
    service = _jobs(request)
    ask = FineTuneRequest(
        task=body.task,
        dataset=body.dataset,
        method=body.method,
        base=body.base,
        variant=body.variant,
        encoder=body.encoder,
        seed=body.seed,
        settings=body.settings,
        limit=body.limit,
        score=body.score,
    )
    job = await asyncio.to_thread(service.create, ask)
    config = _gateway(request).config
    await asyncio.to_thread(
        spawn,
        job,
        service.workdir(job),
        config.path,
        score=body.score,
        score_limit=body.score_limit,
    )
    return job_json(job)


@router.get("/api/finetune/jobs", dependencies=[policy(Access.ADMIN)])
async def list_jobs(
    request: Request,
    task: Annotated[str | None, Query(max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    jobs = await asyncio.to_thread(_jobs(request).list, task=task, limit=limit)
    return {"object": "list", "data": [job_json(j) for j in jobs]}


@router.get("/api/finetune/jobs/{job_id}", dependencies=[policy(Access.ADMIN)])
async def get_job(job_id: JobId, request: Request) -> dict[str, Any]:
    return job_json(await asyncio.to_thread(_jobs(request).get, job_id))


@router.post("/api/finetune/jobs/{job_id}/cancel", dependencies=[policy(Access.ADMIN)])
async def cancel_job(job_id: JobId, request: Request) -> dict[str, Any]:
    return job_json(await asyncio.to_thread(_jobs(request).cancel, job_id))


@router.post(
    "/api/finetune/jobs/{job_id}/resume", dependencies=[policy(Access.ADMIN)], status_code=202
)
async def resume_job(job_id: JobId, request: Request) -> dict[str, Any]:
    """Continue a failed, cancelled or interrupted job from its last checkpoint."""
    service = _jobs(request)
    job = await asyncio.to_thread(service.get, job_id)
    if job.status in ("succeeded", "running"):
        raise Conflict(f"job {job.id} is {job.status}; only an ended, unfinished job resumes")
    await asyncio.to_thread(
        spawn, job, service.workdir(job), _gateway(request).config.path, resume=True
    )
    return job_json(job)


@router.post("/api/tasks/{name}/promote", dependencies=[policy(Access.ADMIN)])
async def promote(name: TaskName, body: PromoteBody, request: Request) -> JSONResponse:
    """Canary, fully promote or roll back a variant; the new split (and history row)."""
    share = None
    if body.canary is not None:
        share = parse_share(str(body.canary))
    action = "canary" if share is not None and body.action == "full" else body.action
    ask = PromotionRequest(action, body.variant, share, author=body.author, note=body.note)
    registry = _gateway(request).tasks.registry
    record = await asyncio.to_thread(Promotions(registry, registry.splits).apply, name, ask)
    return JSONResponse(split_json(record))


@router.get("/api/tasks/{name}/splits", dependencies=[policy(Access.KEY)])
async def split_history(
    name: TaskName,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Every change of the task's traffic split, newest first."""
    registry = _gateway(request).tasks.registry
    history = await asyncio.to_thread(
        Promotions(registry, registry.splits).history, name, limit=limit
    )
    return {"object": "list", "data": [split_json(r) for r in history]}
