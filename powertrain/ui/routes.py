"""Every UI route in one router: ``create_app`` includes it with one line.

Pages live under ``/ui/…`` (``/`` sends a browser to the traces page); each
module serves one area. A page added later is a module with its own
``router = APIRouter(route_class=UIRoute)``, included here, and a ``NavEntry``
appended to ``render.NAV`` (as ``finetunes.py`` was).
"""

from __future__ import annotations

from fastapi import APIRouter

from powertrain.ui import (
    auth_pages,
    costs,
    datasets,
    evals,
    finetunes,
    playground,
    tasks,
    traces,
)

router = APIRouter(include_in_schema=False)
for _area in (auth_pages, traces, costs, playground, tasks, evals, datasets, finetunes):
    router.include_router(_area.router)
