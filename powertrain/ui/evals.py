"""Eval runs: the list, one run's cases x targets matrix, and two runs compared.

Runs are made by ``powertrain eval run`` with the admin's authority and carry no
owner, and no API route serves them yet; so these pages are for the admin key
only (a virtual key gets 403), rather than showing one tenant another's cases.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response

from powertrain.errors import NotFound
from powertrain.evals.results import CaseDiff, compare_runs, overall_pass_rate, summarize
from powertrain.store.evals import EvalResultRecord, EvalRunRecord, EvalStore
from powertrain.store.ui_queries import eval_run_tallies
from powertrain.ui.render import UIRoute, page
from powertrain.ui.session import AdminViewer, gateway_of

router = APIRouter(route_class=UIRoute, include_in_schema=False)
RunId = Annotated[str, Path(max_length=64)]
LIST_LIMIT = 200


@dataclass(frozen=True)
class MatrixRow:
    case_idx: int
    vars: dict[str, object]
    expected: object
    cells: list[list[EvalResultRecord]]  # per target: its repeats (empty: not run)


@dataclass(frozen=True)
class DiffRow:
    diff: CaseDiff
    trace_a: str | None
    trace_b: str | None


def targets_of(run: EvalRunRecord, results: list[EvalResultRecord]) -> list[str]:
    """The suite's column order, as ``powertrain eval show`` uses it."""
    return list(run.config.get("targets") or sorted({r.target for r in results}))


def matrix(results: list[EvalResultRecord], targets: list[str]) -> list[MatrixRow]:
    by_cell: dict[tuple[int, str], list[EvalResultRecord]] = {}
    first: dict[int, EvalResultRecord] = {}
    for r in results:
        by_cell.setdefault((r.case_idx, r.target), []).append(r)
        first.setdefault(r.case_idx, r)
    rows = []
    for idx in sorted(first):
        cells = [by_cell.get((idx, t), []) for t in targets]
        rows.append(MatrixRow(idx, first[idx].vars, first[idx].expected, cells))
    # Failing cases first: what a person opens the matrix to look at.
    rows.sort(key=lambda row: (all(r.passed for c in row.cells for r in c), row.case_idx))
    return rows


def _trace_ids(results: list[EvalResultRecord]) -> dict[tuple[str, str], str]:
    out: dict[tuple[str, str], str] = {}
    for r in results:
        if r.trace_id:
            out.setdefault((r.case_key, r.target), r.trace_id)
    return out


def _load(store: EvalStore, run_id: str) -> tuple[EvalRunRecord, list[EvalResultRecord]]:
    run = store.get_run(run_id)
    if run is None:
        raise NotFound(f"no eval run {run_id!r}")
    return run, store.results(run_id)


@router.get("/ui/evals")
async def evals_page(request: Request, principal: AdminViewer) -> Response:
    database = gateway_of(request).database
    runs = await asyncio.to_thread(EvalStore(database).list_runs, limit=LIST_LIMIT)
    tallies = await asyncio.to_thread(eval_run_tallies, database, [r.id for r in runs])
    return page(request, "evals.html", principal, title="Eval runs", runs=runs, tallies=tallies)


@router.get("/ui/evals/{run_id}")
async def eval_run_page(
    run_id: RunId,
    request: Request,
    principal: AdminViewer,
    against: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    """A run's matrix; with ``against``, that (older) run is A and this one B, regressions first."""
    store = EvalStore(gateway_of(request).database)
    run, results = await asyncio.to_thread(_load, store, run_id)
    targets = targets_of(run, results)
    comparison = None
    base = None
    if against:
        base, base_results = await asyncio.to_thread(_load, store, against)
        traces_a, traces_b = _trace_ids(base_results), _trace_ids(results)
        comparison = [
            DiffRow(d, traces_a.get((d.case_key, d.target)), traces_b.get((d.case_key, d.target)))
            for d in compare_runs(base_results, results)
        ]
    others = await asyncio.to_thread(store.list_runs, limit=LIST_LIMIT)
    return page(
        request,
        "eval_run.html",
        principal,
        title=f"Eval run {run.id}",
        run=run,
        results=results,
        targets=targets,
        summaries=summarize(results, targets),
        pass_rate=overall_pass_rate(results),
        rows=matrix(results, targets),
        comparison=comparison,
        base=base,
        others=[r for r in others if r.id != run.id],
    )
