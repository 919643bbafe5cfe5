"""Datasets: the caller's own, one dataset's versions and rows by split, and building a
version from traces and their feedback (the same path as ``POST /api/datasets``)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import RedirectResponse, Response

from powertrain.datasets import Datasets
from powertrain.datasets.from_traces import FEEDBACK_FILTERS, trace_query
from powertrain.errors import InvalidRequest
from powertrain.server.auth import Principal
from powertrain.server.datasets_api import owner_of
from powertrain.ui.render import UIRoute, page, query_string
from powertrain.ui.session import Viewer, gateway_of, read_fields

router = APIRouter(route_class=UIRoute, include_in_schema=False)
Name = Annotated[str, Path(max_length=128)]
ROWS_PER_PAGE = 50
SPLITS = ("all", "train", "test")


def _datasets(request: Request) -> Datasets:
    gateway = gateway_of(request)
    return Datasets(gateway.database, gateway.tasks.registry)


async def _list_page(
    request: Request,
    principal: Principal,
    *,
    status: int = 200,
    error: str | None = None,
    form: dict[str, Any] | None = None,
) -> Response:
    found = await asyncio.to_thread(_datasets(request).list_datasets, owner_of(principal))
    tasks = await asyncio.to_thread(gateway_of(request).tasks.registry.store.list_tasks)
    return page(
        request,
        "datasets.html",
        principal,
        status=status,
        title="Datasets",
        datasets=found,
        error=error,
        form=form or {"feedback": "any", "test_fraction": "0.2"},
        tasks=[t.name for t in tasks],
        feedback_help=FEEDBACK_FILTERS,
    )


@router.get("/ui/datasets")
async def datasets_page(request: Request, principal: Viewer) -> Response:
    return await _list_page(request, principal)


def _fraction(value: Any) -> float:
    try:
        return float(value) if value not in (None, "") else 0.2
    except (TypeError, ValueError):
        raise InvalidRequest("test fraction must be a number", param="test_fraction") from None


@router.post("/ui/datasets")
async def build_dataset(request: Request, principal: Viewer) -> Response:
    """A new version from the caller's traces that have the chosen feedback."""
    fields = {k: v for k, v in (await read_fields(request)).items() if k != "csrf"}
    try:
        query = trace_query(
            **{
                k: str(fields[k]).strip()
                for k in ("task", "model", "variant", "feedback")
                if str(fields.get(k) or "").strip()
            }
        )
        datasets = _datasets(request)
        gateway = gateway_of(request)
        with contextlib.suppress(Exception):  # feedback given a moment ago is on stored traces
            await gateway.traces.flush()
        rows = await asyncio.to_thread(datasets.rows_from_traces, query, scope=principal.scope)
        if not rows:
            raise InvalidRequest("no trace of yours matches that filter and feedback yet")
        outcome = await asyncio.to_thread(
            datasets.create,
            owner_of(principal),
            str(fields.get("name") or "").strip(),
            rows,
            test_fraction=_fraction(fields.get("test_fraction")),
            origin={"kind": "traces", **query.model_dump(mode="json", exclude_none=True)},
        )
    except InvalidRequest as exc:
        return await _list_page(request, principal, status=400, error=exc.message, form=fields)
    target = f"/ui/datasets/{outcome.dataset.name}" + query_string(version=outcome.version.version)
    return RedirectResponse(target, status_code=303)


@router.get("/ui/datasets/{name}")
async def dataset_page(
    name: Name,
    request: Request,
    principal: Viewer,
    version: Annotated[int | None, Query(ge=1)] = None,
    split: Annotated[str, Query(max_length=8)] = "all",
    offset: Annotated[int, Query(ge=0)] = 0,
) -> Response:
    if split not in SPLITS:
        raise InvalidRequest("split must be all, train or test", param="split")
    datasets = _datasets(request)
    owner = owner_of(principal)
    record = await asyncio.to_thread(datasets.get, owner, name)
    versions = await asyncio.to_thread(datasets.versions, owner, name)
    found, rows = await asyncio.to_thread(
        datasets.rows, owner, name, version, split=split, limit=ROWS_PER_PAGE + 1, offset=offset
    )
    more = len(rows) > ROWS_PER_PAGE

    def link(**changes: Any) -> str:
        params = {"version": found.version, "split": split, "offset": offset, **changes}
        if params["split"] == "all":
            params["split"] = None
        if not params["offset"]:
            params["offset"] = None
        return f"/ui/datasets/{record.name}" + query_string(**params)

    return page(
        request,
        "dataset.html",
        principal,
        title=f"Dataset {record.name}",
        dataset=record,
        versions=list(reversed(versions)),
        version=found,
        rows=rows[:ROWS_PER_PAGE],
        split=split,
        splits=SPLITS,
        offset=offset,
        next_link=link(offset=offset + ROWS_PER_PAGE) if more else None,
        prev_link=link(offset=max(0, offset - ROWS_PER_PAGE)) if offset else None,
        link=link,
    )
