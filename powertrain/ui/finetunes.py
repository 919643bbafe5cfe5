"""Fine-tuning jobs: the list, starting one, one job (its loss curves, metrics, actions), and a
task's methods compared.

Admin only, like ``/api/finetune``: jobs train on the admin's datasets and change
what a task serves. Every action goes through the library exactly as the HTTP API
does: ``FineTuning.create`` checks a new job and ``worker.spawn`` trains it in its
own process; ``FineTuning.cancel`` and ``spawn(resume=True)`` stop and continue one.
Promoting a job's variant is a form that posts to the task page's promote action.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from powertrain.datasets import Datasets
from powertrain.errors import Conflict, InvalidRequest, PowertrainError
from powertrain.flywheel.compare import compare_methods, served_score
from powertrain.flywheel.jobs import FineTuneRequest, FineTuning
from powertrain.flywheel.registry import trainer_classes
from powertrain.flywheel.worker import spawn
from powertrain.server.auth import Principal
from powertrain.store.datasets import ADMIN_OWNER
from powertrain.store.finetune import JOB_STATUSES, JobRecord
from powertrain.store.times import utc_now
from powertrain.tasks.registry import LoadedTask
from powertrain.ui.charts import LineChart, step_chart
from powertrain.ui.render import UIRoute, page, query_string
from powertrain.ui.session import CSRF_FIELD, AdminViewer, gateway_of, read_fields

router = APIRouter(route_class=UIRoute, include_in_schema=False)
JobId = Annotated[str, Path(max_length=40)]
LIST_LIMIT = 100  # the newest jobs shown; filters reach older ones
COMPARE_LIMIT = 1000
ACTIVE = frozenset({"queued", "running", "cancelling"})  # a page that polls for progress
# After training, a worker scores the job (unless ``params["score"]`` says not to): its
# page keeps looking for the score this long after the job finished.
SCORING_WINDOW = timedelta(minutes=30)
LOG_LINES = 40
# Shown in their own sections of a job page, not in its metrics table.
_OWN_SECTIONS = frozenset({"skipped", "served", "eval_run"})


def _service(request: Request) -> FineTuning:
    return FineTuning.of(gateway_of(request))


def _price(request: Request) -> float:
    return gateway_of(request).config.settings.compute_price_per_hour


# -- the list and the start form -----------------------------------------------------------


async def _list_page(
    request: Request,
    principal: Principal,
    *,
    task: str | None = None,
    status_filter: str | None = None,
    status: int = 200,
    error: str | None = None,
    form: dict[str, str] | None = None,
) -> Response:
    gateway = gateway_of(request)
    service = _service(request)
    jobs = await asyncio.to_thread(
        service.store.list_jobs, task=task or None, status=status_filter or None, limit=LIST_LIMIT
    )
    tasks = await asyncio.to_thread(gateway.tasks.registry.store.list_tasks)
    found = await asyncio.to_thread(
        Datasets(gateway.database, gateway.tasks.registry).list_datasets, ADMIN_OWNER
    )
    methods = {name: cls.description for name, cls in sorted(trainer_classes().items())}
    return page(
        request,
        "finetunes.html",
        principal,
        status=status,
        title="Fine-tunes",
        jobs=jobs,
        limit=LIST_LIMIT,
        task=task or "",
        status_filter=status_filter or "",
        statuses=JOB_STATUSES,
        tasks=[t.name for t in tasks],
        datasets=[f"{d.name}@{v.version}" for d, v in found if v is not None],
        methods=methods,
        error=error,
        form=form or {"method": next(iter(methods), ""), "score": "on"},
    )


@router.get("/ui/finetunes")
async def finetunes_page(
    request: Request,
    principal: AdminViewer,
    task: Annotated[str | None, Query(max_length=128)] = None,
    status: Annotated[str | None, Query(max_length=16)] = None,
) -> Response:
    if status and status not in JOB_STATUSES:
        raise InvalidRequest(f"status must be one of {', '.join(JOB_STATUSES)}", param="status")
    return await _list_page(request, principal, task=task, status_filter=status)


def _whole(form: dict[str, str], name: str) -> int | None:
    raw = form.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise InvalidRequest(
            f"{name.replace('_', ' ')} must be a whole number", param=name
        ) from None


def _settings(text: str) -> dict[str, Any]:
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidRequest(f"settings are not valid JSON: {exc}", param="settings") from None
    if not isinstance(value, dict):
        raise InvalidRequest('settings must be a JSON object, like {"epochs": 2}', param="settings")
    return value


def fine_tune_request(form: dict[str, str]) -> FineTuneRequest:
    """The start form as a request (``FineTuning.create`` checks the rest)."""
    optional = {k: form.get(k, "").strip() or None for k in ("base", "variant")}
    seed = _whole(form, "seed")
    return FineTuneRequest(
        task=form.get("task", "").strip(),
        dataset=form.get("dataset", "").strip(),
        method=form.get("method", "").strip(),
        base=optional["base"],
        variant=optional["variant"],
        encoder=form.get("encoder", "").strip() or "minilm",
        seed=seed if seed is not None else 0,
        settings=_settings(form.get("settings", "")),
        limit=_whole(form, "limit"),
        score=form.get("score") == "on",
    )


@router.post("/ui/finetunes")
async def start_job(request: Request, principal: AdminViewer) -> Response:
    """Check and record the job, then train it in its own process (as the API does)."""
    fields = await read_fields(request)
    form = {k: str(v) for k, v in fields.items() if k != CSRF_FIELD}
    service = _service(request)
    try:
        ask = fine_tune_request(form)
        score_limit = _whole(form, "score_limit")
        job = await asyncio.to_thread(service.create, ask)
    except PowertrainError as exc:
        return await _list_page(
            request, principal, status=exc.status_code, error=exc.message, form=form
        )
    await asyncio.to_thread(
        spawn,
        job,
        service.workdir(job),
        gateway_of(request).config.path,
        score=form.get("score") == "on",
        score_limit=score_limit,
    )
    return RedirectResponse(f"/ui/finetunes/{job.id}", status_code=303)


# -- comparing methods ---------------------------------------------------------------------


@router.get("/ui/finetunes/compare")
async def compare_page(
    request: Request,
    principal: AdminViewer,
    task: Annotated[str | None, Query(max_length=128)] = None,
) -> Response:
    """Every succeeded job of a task by dataset version, with the recommendation."""
    service = _service(request)
    gateway = gateway_of(request)
    if not task:
        newest = await asyncio.to_thread(service.list, limit=1)
        task = newest[0].task if newest else None
    loaded = await asyncio.to_thread(gateway.tasks.registry.get, task) if task else None
    jobs = await asyncio.to_thread(service.list, task=task, limit=COMPARE_LIMIT) if task else []
    tasks = await asyncio.to_thread(gateway.tasks.registry.store.list_tasks)
    return page(
        request,
        "finetune_compare.html",
        principal,
        title=f"Methods compared · {task}" if task else "Methods compared",
        task=loaded,
        tasks=[t.name for t in tasks],
        groups=compare_methods(jobs, _price(request)),
        unfinished=sum(1 for j in jobs if j.status != "succeeded"),
        price=_price(request),
    )


# -- one job -------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricRow:
    name: str
    text: str
    block: bool  # a structure, shown indented


def metric_rows(metrics: dict[str, Any]) -> list[MetricRow]:
    """Every metric as text: numbers to four significant digits, structures as JSON."""
    rows = []
    for name, value in sorted(metrics.items()):
        if name in _OWN_SECTIONS:
            continue
        if isinstance(value, bool) or value is None:
            rows.append(MetricRow(name, str(value).lower(), False))
        elif isinstance(value, float):
            rows.append(MetricRow(name, f"{value:.4g}", False))
        elif isinstance(value, int | str):
            rows.append(MetricRow(name, str(value), False))
        else:
            rows.append(MetricRow(name, json.dumps(value, indent=2, ensure_ascii=False), True))
    return rows


def _loss(value: float) -> str:
    return f"{value:.3g}"


def loss_chart(job: JobRecord) -> LineChart | None:
    """Train loss by step and eval loss at the steps it was measured, on the same axes;
    None until some curve has two points (one measure is a number, not a curve)."""
    if not any(len(points) > 1 for points in job.curves.values()):
        return None
    curves = {
        "train loss": job.curves.get("loss") or [],
        "eval loss": job.curves.get("eval_loss") or [],
        **{k: v for k, v in job.curves.items() if k not in ("loss", "eval_loss")},
    }
    return step_chart("Loss by step", curves, fmt=_loss, dots=("eval loss",))


def single_losses(job: JobRecord) -> list[tuple[str, float, float]]:
    """(name, step, value) of the curves with one point: a loss measured once."""
    return [(name, pts[0][0], pts[0][1]) for name, pts in job.curves.items() if len(pts) == 1]


def awaiting_score(job: JobRecord) -> bool:
    """Trained a moment ago and not scored yet: its worker is probably scoring it now."""
    recent = job.finished_at is not None and utc_now() - job.finished_at < SCORING_WINDOW
    wanted = job.params.get("score", True)
    return job.status == "succeeded" and wanted and "eval_run" not in job.metrics and recent


def curve_points(job: JobRecord) -> int:
    """How many loss points the job has recorded (the page reloads when this grows)."""
    return sum(len(points) for points in job.curves.values())


def _log_tail(workdir: FilePath) -> str | None:
    """The end of the worker's log: what a job that never started has to say."""
    path = workdir / "worker.log"
    try:
        with path.open("rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - 16_384))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    lines = text.splitlines()[-LOG_LINES:]
    return "\n".join(lines) if lines else None


async def _task_of(request: Request, name: str) -> LoadedTask | None:
    try:
        return await asyncio.to_thread(gateway_of(request).tasks.registry.get, name)
    except PowertrainError:
        return None  # the task was deleted since: the job page still shows the job


async def _job_page(
    request: Request,
    principal: Principal,
    job_id: str,
    *,
    status: int = 200,
    error: str | None = None,
    waiting: bool = False,
) -> Response:
    service = _service(request)
    job = await asyncio.to_thread(service.get, job_id)
    task = await _task_of(request, job.task)
    variants = task.settings.effective_variants() if task else {}
    total = sum(v.weight for v in variants.values())
    share = variants[job.variant].weight / total if job.variant in variants and total else None
    base = str(job.params.get("variant") or "")
    log = await asyncio.to_thread(_log_tail, service.workdir(job))
    waiting = waiting and job.status in ("failed", "cancelled")  # the new worker not yet in
    scoring = awaiting_score(job)
    skipped = job.metrics.get("skipped")
    return page(
        request,
        "finetune.html",
        principal,
        status=status,
        title=f"Fine-tune {job.id}",
        job=job,
        settings=job.params.get("settings") or {},
        params={k: v for k, v in job.params.items() if k != "settings"},
        loss_chart=loss_chart(job),
        single_losses=single_losses(job),
        points=curve_points(job),
        admin_owner=ADMIN_OWNER,
        metrics=metric_rows(job.metrics),
        skipped=[str(s) for s in skipped] if isinstance(skipped, list) else [],
        score=served_score(job),
        base=base,
        base_accuracy=job.metrics.get(f"variant {base}_accuracy"),
        eval_run=job.metrics.get("eval_run"),
        price=_price(request),
        task=task,
        share=share,
        can_promote=job.status == "succeeded" and job.variant in variants,
        poll=job.status in ACTIVE or waiting or scoring,
        waiting=waiting,
        scoring=scoring,
        scoring_minutes=int(SCORING_WINDOW.total_seconds() // 60),
        log=log,
        error=error,
    )


@router.get("/ui/finetunes/{job_id}")
async def job_page(
    job_id: JobId,
    request: Request,
    principal: AdminViewer,
    resumed: Annotated[str | None, Query(max_length=4)] = None,
) -> Response:
    return await _job_page(request, principal, job_id, waiting=bool(resumed))


@router.get("/ui/finetunes/{job_id}/progress")
async def job_progress(job_id: JobId, request: Request, _principal: AdminViewer) -> Response:
    """What the job page's script polls: status and progress, no curves."""
    job = await asyncio.to_thread(_service(request).get, job_id)
    return JSONResponse(
        {
            "id": job.id,
            "status": job.status,
            "finished": job.finished,
            "progress": job.progress,
            "duration_s": job.duration_s,
            "points": curve_points(job),
            "scored": "eval_run" in job.metrics,
        }
    )


@router.post("/ui/finetunes/{job_id}/cancel")
async def cancel_job(job_id: JobId, request: Request, principal: AdminViewer) -> Response:
    """A queued job ends now; a running one stops at its next progress report."""
    try:
        await asyncio.to_thread(_service(request).cancel, job_id)
    except Conflict as exc:
        return await _job_page(request, principal, job_id, status=409, error=exc.message)
    return RedirectResponse(f"/ui/finetunes/{job_id}", status_code=303)


@router.post("/ui/finetunes/{job_id}/resume")
async def resume_job(job_id: JobId, request: Request, principal: AdminViewer) -> Response:
    """Continue a failed or cancelled job from its last checkpoint, in a new worker."""
    service = _service(request)
    job = await asyncio.to_thread(service.get, job_id)
    if job.status not in ("failed", "cancelled"):
        message = f"job {job.id} is {job.status}; only a failed or cancelled job resumes"
        return await _job_page(request, principal, job_id, status=409, error=message)
    config_path = gateway_of(request).config.path
    await asyncio.to_thread(spawn, job, service.workdir(job), config_path, resume=True)
    return RedirectResponse(f"/ui/finetunes/{job_id}" + query_string(resumed="1"), status_code=303)
