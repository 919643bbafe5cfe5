"""Tasks: every task, and one task's versions (with a diff between any two), labels,
variants with their traffic split and its history, and (for the admin) promotion:
a canary, a full promotion or a rollback, through ``Promotions.apply`` as
``powertrain promote`` and ``POST /api/tasks/{name}/promote`` do."""

from __future__ import annotations

import asyncio
import difflib
import json
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import RedirectResponse, Response

from powertrain.errors import InvalidRequest, PowertrainError
from powertrain.flywheel.promotion import Action, PromotionRequest, Promotions, parse_share
from powertrain.server.auth import Principal
from powertrain.store.splits import SplitRecord, SplitStore
from powertrain.tasks.definition import PromptVersion
from powertrain.tasks.registry import LoadedTask
from powertrain.ui.render import UIRoute, page
from powertrain.ui.session import AdminViewer, Viewer, author_of, gateway_of, read_fields

router = APIRouter(route_class=UIRoute, include_in_schema=False)
TaskName = Annotated[str, Path(max_length=128)]
HISTORY_LIMIT = 100
PROMOTION_ACTIONS: dict[str, Action] = {"canary": "canary", "full": "full", "rollback": "rollback"}


@dataclass(frozen=True)
class DiffLine:
    kind: str  # add | del | hunk | ctx | file
    text: str


@dataclass(frozen=True)
class VariantRow:
    name: str
    model: str
    version: str
    params: dict[str, Any]
    weight: float
    share: float  # of the traffic not pinned to a variant
    job: str | None = None  # the fine-tuning job that added it


@dataclass(frozen=True)
class HistoryRow:
    record: SplitRecord
    after: list[tuple[str, float]]  # the variants with traffic, as shares
    before: list[tuple[str, float]]


def shares(weights: dict[str, float]) -> list[tuple[str, float]]:
    """The variants that get traffic under ``weights``, with their share, largest first."""
    total = sum(w for w in weights.values() if w > 0)
    kept = [(name, w / total) for name, w in weights.items() if w > 0 and total]
    return sorted(kept, key=lambda pair: (-pair[1], pair[0]))


def version_lines(version: PromptVersion) -> list[str]:
    """A version as text for a line diff: each part under its own heading, JSON indented."""

    def block(title: str, value: Any) -> list[str]:
        if value is None:
            return []
        text = value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False)
        return [f"## {title}", *text.splitlines(), ""]

    return [
        *block("system", version.system),
        *block("user", version.user),
        *block(
            "variables", {k: v.model_dump(exclude_none=True) for k, v in version.variables.items()}
        ),
        *block("input", version.input),
        *block("output schema", version.output_schema),
        *block("examples", [e.model_dump(exclude_none=True) for e in version.examples]),
        *block(
            "options",
            {"output_instructions": version.output_instructions, "reasoning": version.reasoning},
        ),
    ]


def diff_versions(task: LoadedTask, a: int, b: int) -> list[DiffLine]:
    lines = difflib.unified_diff(
        version_lines(task.versions[a]),
        version_lines(task.versions[b]),
        fromfile=f"version {a}",
        tofile=f"version {b}",
        lineterm="",
        n=3,
    )
    out = []
    for line in lines:
        if line.startswith(("---", "+++")):
            kind = "file"
        elif line.startswith("@@"):
            kind = "hunk"
        elif line.startswith("+"):
            kind = "add"
        elif line.startswith("-"):
            kind = "del"
        else:
            kind = "ctx"
        out.append(DiffLine(kind, line))
    return out


def traffic_split(
    task: LoadedTask, default_model: str, added_by: dict[str, str] | None = None
) -> list[VariantRow]:
    """The variants' weights as shares of traffic (``effective_variants``: what runs today);
    ``added_by`` names the job that added each fine-tuned variant."""
    variants = task.settings.effective_variants()
    total = sum(v.weight for v in variants.values())
    return [
        VariantRow(
            name=name,
            model=spec.model or task.settings.model or default_model,
            version=str(spec.version),
            params={**task.settings.params, **spec.params},
            weight=spec.weight,
            share=spec.weight / total if total else 0.0,
            job=(added_by or {}).get(name) if name in task.added_variants else None,
        )
        for name, spec in variants.items()
    ]


@router.get("/ui/tasks")
async def tasks_page(request: Request, principal: Viewer) -> Response:
    registry = gateway_of(request).tasks.registry
    tasks = await asyncio.to_thread(registry.all)
    return page(request, "tasks.html", principal, title="Tasks", tasks=tasks)


def _version_number(value: str | None, task: LoadedTask, default: int) -> int:
    if value in (None, ""):
        return default
    if not value.isdigit() or int(value) not in task.versions:
        raise InvalidRequest(f"task {task.name!r} has no version {value!r}", param="version")
    return int(value)


def _history(splits: SplitStore, name: str) -> tuple[list[HistoryRow], dict[str, str]]:
    """The split's changes, newest first, and the job that added each tuned variant."""
    history = [
        HistoryRow(r, shares(r.weights), shares(r.previous))
        for r in splits.history(name, limit=HISTORY_LIMIT)
    ]
    added_by = {v.name: v.source for v in splits.variants(name)}
    return history, added_by


def _promotable(task: LoadedTask) -> str | None:
    """The variant a promote form offers first: the one being canaried, else the newest
    fine-tuned one."""
    if task.split is not None and task.split.action == "canary":
        return task.split.variant
    return task.added_variants[-1] if task.added_variants else None


async def _task_page(
    request: Request,
    principal: Principal,
    name: str,
    a: str | None = None,
    b: str | None = None,
    *,
    status: int = 200,
    error: str | None = None,
    form: dict[str, str] | None = None,
) -> Response:
    gateway = gateway_of(request)
    registry = gateway.tasks.registry
    task = await asyncio.to_thread(registry.get, name)
    records = await asyncio.to_thread(registry.version_records, name)
    history, added_by = await asyncio.to_thread(_history, registry.splits, task.name)
    numbers = sorted(task.versions)
    latest = numbers[-1] if numbers else 0
    new = _version_number(b, task, latest)
    old = _version_number(a, task, numbers[-2] if len(numbers) > 1 else latest)
    labels_of: dict[int, list[str]] = {}
    for label, number in sorted(task.labels.items()):
        labels_of.setdefault(number, []).append(label)
    return page(
        request,
        "task.html",
        principal,
        status=status,
        title=f"Task {task.name}",
        task=task,
        history=history,
        promotion_error=error,
        form=form or {"share": "10%", "variant": _promotable(task) or ""},
        records=list(reversed(records)),
        labels_of=labels_of,
        numbers=numbers,
        a=old,
        b=new,
        diff=diff_versions(task, old, new) if numbers else [],
        variants=traffic_split(task, gateway.config.settings.default_model, added_by),
        shown=task.versions.get(new),
    )


@router.get("/ui/tasks/{name}")
async def task_page(
    name: TaskName,
    request: Request,
    principal: Viewer,
    a: Annotated[str | None, Query(max_length=12)] = None,
    b: Annotated[str | None, Query(max_length=12)] = None,
) -> Response:
    return await _task_page(request, principal, name, a, b)


def promotion_request(fields: dict[str, Any], author: str) -> PromotionRequest:
    """The promote form (or a job page's promote buttons) as a request; the library decides."""
    action = PROMOTION_ACTIONS.get(str(fields.get("action") or ""))
    if action is None:
        raise InvalidRequest("action must be canary, full or rollback", param="action")
    variant = str(fields.get("variant") or "").strip() or None
    raw_share = str(fields.get("share") or "").strip()
    share = parse_share(raw_share) if action == "canary" and raw_share else None
    note = str(fields.get("note") or "").strip()[:2000] or None
    return PromotionRequest(action, variant, share, author=author, note=note)


@router.post("/ui/tasks/{name}/promote")
async def promote(name: TaskName, request: Request, principal: AdminViewer) -> Response:
    """Move the task's traffic; the page again with the library's refusal, if any."""
    fields = await read_fields(request)
    registry = gateway_of(request).tasks.registry
    try:
        ask = promotion_request(fields, author_of(principal))
        await asyncio.to_thread(Promotions(registry, registry.splits).apply, name, ask)
    except PowertrainError as exc:
        if exc.status_code == 404:
            raise  # no such task: the error page
        form = {k: str(v) for k, v in fields.items() if k in ("variant", "share", "note")}
        return await _task_page(
            request, principal, name, status=exc.status_code, error=exc.message, form=form
        )
    return RedirectResponse(f"/ui/tasks/{quote(name, safe='')}#split-history", status_code=303)
