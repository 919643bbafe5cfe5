"""``/api/tasks``: define, version, label, render and run tasks over HTTP.

Reading and running need a key; defining, versioning and moving labels need
the admin key. Tasks defined in ``powertrain.toml`` can be versioned and
labelled here, but their settings belong to the file.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from powertrain.calls import CallContext
from powertrain.errors import InvalidRequest
from powertrain.gateway import Gateway
from powertrain.server.auth import Access, Principal, policy
from powertrain.tasks.definition import (
    LABEL_NAME,
    TaskDefinition,
    check_models,
    parse_settings,
    parse_version,
)
from powertrain.tasks.registry import LoadedTask

router = APIRouter(prefix="/api/tasks", tags=["tasks"])
# DESIGN's short form of the run route, beside the OpenAI surface.
v1_router = APIRouter(prefix="/v1/tasks", tags=["tasks"])

TaskName = Annotated[str, Path(max_length=128)]


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway  # type: ignore[no-any-return]


class VariantInfo(BaseModel):
    name: str
    model: str
    version: int | str
    resolved_version: int | None
    weight: float
    share: float = Field(description="Fraction of unpinned traffic this variant serves.")
    params: dict[str, Any]
    examples: int | None


class VersionInfo(BaseModel):
    version: int
    created_at: datetime
    source: str
    content_hash: str
    labels: list[str]


class TaskSummary(BaseModel):
    name: str
    source: str
    description: str | None
    latest_version: int
    labels: dict[str, int]
    variants: list[VariantInfo]


class TaskDetail(TaskSummary):
    settings: dict[str, Any]
    versions: list[VersionInfo]


class TaskRunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    variables: dict[str, Any] = Field(default_factory=dict)
    variant: str | None = Field(default=None, max_length=64, description="Pin a variant.")
    version: int | str | None = Field(
        default=None, description="Pin a version number or label (overrides the variant's)."
    )
    include_reasoning: bool = False
    user: str | None = Field(
        default=None, max_length=256, description="Sticky variant assignment key."
    )


class TaskRunResponse(BaseModel):
    output: Any
    reasoning: str | None = None
    trace_id: str
    task: str
    variant: str
    version: int
    model: str
    usage: dict[str, int]
    cost: float = Field(description="USD, from the model's prices.")
    attempts: int


class RenderResponse(BaseModel):
    task: str
    variant: str
    version: int
    model: str
    messages: list[dict[str, str]]
    prompt_tokens: int | None
    examples_used: int
    examples_dropped: int


class LabelMove(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1)


class VersionCreated(BaseModel):
    version: int
    created: bool = Field(description="False when identical content already had this number.")


def _variants(task: LoadedTask, default_model: str) -> list[VariantInfo]:
    variants = task.settings.effective_variants()
    total = sum(v.weight for v in variants.values()) or 1.0
    infos = []
    for name, spec in sorted(variants.items()):
        selector = spec.version
        resolved = selector if isinstance(selector, int) else task.labels.get(selector)
        infos.append(
            VariantInfo(
                name=name,
                model=spec.model or task.settings.model or default_model,
                version=selector,
                resolved_version=resolved,
                weight=spec.weight,
                share=spec.weight / total,
                params={**task.settings.params, **spec.params},
                examples=spec.examples,
            )
        )
    return infos


def _summary(task: LoadedTask, default_model: str) -> TaskSummary:
    return TaskSummary(
        name=task.name,
        source=task.source,
        description=task.settings.description,
        latest_version=max(task.versions),
        labels=task.labels,
        variants=_variants(task, default_model),
    )


async def _detail(gateway: Gateway, name: str) -> TaskDetail:
    registry = gateway.tasks.registry
    task = await asyncio.to_thread(registry.get, name)
    records = await asyncio.to_thread(registry.version_records, name)
    by_version: dict[int, list[str]] = {}
    for label, number in sorted(task.labels.items()):
        by_version.setdefault(number, []).append(label)
    summary = _summary(task, gateway.config.settings.default_model)
    return TaskDetail(
        **summary.model_dump(),
        settings=task.settings.model_dump(mode="json"),
        versions=[
            VersionInfo(
                version=r.version,
                created_at=r.created_at,
                source=r.source,
                content_hash=r.content_hash,
                labels=by_version.get(r.version, []),
            )
            for r in records
        ],
    )


@router.get("", dependencies=[policy(Access.KEY)], response_model=list[TaskSummary])
async def list_tasks(request: Request) -> list[TaskSummary]:
    gateway = _gateway(request)
    tasks = await asyncio.to_thread(gateway.tasks.registry.all)
    return [_summary(t, gateway.config.settings.default_model) for t in tasks]


@router.post("", dependencies=[policy(Access.ADMIN)], status_code=201, response_model=TaskDetail)
async def create_task(request: Request, body: Annotated[dict[str, Any], Body()]) -> TaskDetail:
    """Define a task: the same keys as ``[tasks.<name>]`` in powertrain.toml, plus ``name``."""
    gateway = _gateway(request)
    table = dict(body)
    name = str(table.pop("name", ""))
    definition = TaskDefinition.parse(name, table, base_dir=None, where="task")
    check_models(definition.settings, gateway.config.catalog, "task")
    await asyncio.to_thread(gateway.tasks.registry.create, definition, definition.settings.labels)
    return await _detail(gateway, name)


@router.get("/{name}", dependencies=[policy(Access.KEY)], response_model=TaskDetail)
async def get_task(name: TaskName, request: Request) -> TaskDetail:
    return await _detail(_gateway(request), name)


@router.put("/{name}", dependencies=[policy(Access.ADMIN)], response_model=TaskDetail)
async def update_task_settings(
    name: TaskName, request: Request, body: Annotated[dict[str, Any], Body()]
) -> TaskDetail:
    """Replace an API task's settings (variants, split, repairs…); makes no new version."""
    gateway = _gateway(request)
    settings = parse_settings(body, where="settings")
    check_models(settings, gateway.config.catalog, "settings")
    await asyncio.to_thread(gateway.tasks.registry.update_settings, name, settings)
    return await _detail(gateway, name)


@router.delete("/{name}", dependencies=[policy(Access.ADMIN)], status_code=204)
async def delete_task(name: TaskName, request: Request) -> None:
    await asyncio.to_thread(_gateway(request).tasks.registry.delete, name)


@router.get("/{name}/versions", dependencies=[policy(Access.KEY)], response_model=list[VersionInfo])
async def list_versions(name: TaskName, request: Request) -> list[VersionInfo]:
    return (await _detail(_gateway(request), name)).versions


@router.get("/{name}/versions/{version}", dependencies=[policy(Access.KEY)])
async def get_version(name: TaskName, version: int, request: Request) -> dict[str, Any]:
    """One version's full content: templates, variables, examples, schema."""
    task = await asyncio.to_thread(_gateway(request).tasks.registry.get, name)
    number, content = task.resolve(version)
    return {"version": number, **content.model_dump(mode="json")}


@router.post(
    "/{name}/versions",
    dependencies=[policy(Access.ADMIN)],
    status_code=201,
    response_model=VersionCreated,
)
async def create_version(
    name: TaskName, request: Request, body: Annotated[dict[str, Any], Body()]
) -> VersionCreated:
    """A new immutable version (system, user, variables, examples, output, reasoning).

    ``labels`` (e.g. ["staging"]) point at it; "latest" always does.
    """
    table = dict(body)
    labels = table.pop("labels", [])
    if not isinstance(labels, list) or not all(
        isinstance(x, str) and LABEL_NAME.match(x) for x in labels
    ):
        raise InvalidRequest("labels must be a list of lowercase label names", param="labels")
    version = parse_version(table, base_dir=None, where="version")
    number, created = await asyncio.to_thread(
        _gateway(request).tasks.registry.add_version, name, version, labels
    )
    return VersionCreated(version=number, created=created)


@router.put("/{name}/labels/{label}", dependencies=[policy(Access.ADMIN)])
async def move_label(
    name: TaskName,
    label: Annotated[str, Path(pattern=LABEL_NAME.pattern)],
    body: LabelMove,
    request: Request,
) -> dict[str, Any]:
    """Point ``label`` at a version: promote to production, roll back, stage."""
    await asyncio.to_thread(_gateway(request).tasks.registry.set_label, name, label, body.version)
    return {"task": name, "label": label, "version": body.version}


@router.delete("/{name}/labels/{label}", dependencies=[policy(Access.ADMIN)], status_code=204)
async def remove_label(name: TaskName, label: str, request: Request) -> None:
    await asyncio.to_thread(_gateway(request).tasks.registry.remove_label, name, label)


@router.post("/{name}/render", response_model=RenderResponse)
async def render_task(
    name: TaskName,
    body: TaskRunRequest,
    request: Request,
    principal: Annotated[Principal, policy(Access.KEY)],
) -> RenderResponse:
    """The exact messages a run would send, without calling the model."""
    plan = await _gateway(request).tasks.render(
        name, body.variables, variant=body.variant, version=body.version
    )
    return RenderResponse(
        task=name,
        variant=plan.variant,
        version=plan.version_number,
        model=plan.model,
        messages=plan.messages,
        prompt_tokens=plan.prompt.prompt_tokens,
        examples_used=plan.prompt.examples_used,
        examples_dropped=plan.prompt.examples_dropped,
    )


@v1_router.post("/{name}", response_model=TaskRunResponse, response_model_exclude_none=True)
@router.post("/{name}/run", response_model=TaskRunResponse, response_model_exclude_none=True)
async def run_task(
    name: TaskName,
    body: TaskRunRequest,
    request: Request,
    principal: Annotated[Principal, policy(Access.KEY)],
) -> TaskRunResponse:
    """Run the task; the output always satisfies its schema, or this is an error."""
    ctx = CallContext(
        api_key_id=principal.key_id, raw_request=body.model_dump(exclude_defaults=True)
    )
    result = await _gateway(request).tasks.run(
        name,
        body.variables,
        ctx,
        variant=body.variant,
        version=body.version,
        sticky_key=body.user,
    )
    return TaskRunResponse(
        output=result.output,
        reasoning=result.reasoning if body.include_reasoning else None,
        trace_id=result.trace_id,
        task=result.task,
        variant=result.variant,
        version=result.version,
        model=result.model,
        usage=result.usage.to_openai(),
        cost=result.cost,
        attempts=result.attempts,
    )
