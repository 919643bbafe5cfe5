"""Costs and latency over time, per model, task or key: SQL aggregates drawn as SVG lines."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from powertrain.errors import InvalidRequest
from powertrain.server.auth import ADMIN_KEY_ID, Principal
from powertrain.store.ui_queries import GroupBy, UsagePoint, usage_series
from powertrain.ui.charts import MAX_SERIES, bucket_starts, line_chart
from powertrain.ui.render import UIRoute, duration_ms, number, page, usd
from powertrain.ui.session import Viewer, gateway_of

router = APIRouter(route_class=UIRoute, include_in_schema=False)

# range → (length, bucket seconds): about 24 to 48 points a line.
WINDOWS = {
    "1h": (timedelta(hours=1), 120),
    "24h": (timedelta(hours=24), 3_600),
    "7d": (timedelta(days=7), 4 * 3_600),
    "30d": (timedelta(days=30), 86_400),
}
GROUPINGS: dict[str, GroupBy] = {"model": "model", "task": "task", "key": "api_key_id"}
OTHER = "(other)"


def _count(value: float) -> str:
    """An axis value of calls or tokens: whole where it is whole (a quarter tick may not be)."""
    return number(int(value)) if float(value).is_integer() else f"{value:,.1f}"


@dataclass(frozen=True)
class GroupTotal:
    name: str
    color: int
    calls: int
    errors: int
    cost_usd: float
    tokens: int
    avg_latency_ms: float  # weighted by calls
    max_latency_ms: float
    avg_ttft_ms: float | None


def _names(points: list[UsagePoint], by: str, key_names: dict[str, str]) -> dict[str | None, str]:
    """Display names of the groups; keys by their name, missing values said plainly."""
    out: dict[str | None, str] = {}
    for p in points:
        if p.group is None:
            out[None] = {"task": "(no task)", "key": "(no key)"}.get(by, "(none)")
        elif by == "key":
            out[p.group] = key_names.get(p.group, p.group)
        else:
            out[p.group] = p.group
    return out


def _totals(points: list[UsagePoint], label: dict[str | None, str]) -> list[GroupTotal]:
    by_group: dict[str, list[UsagePoint]] = defaultdict(list)
    for p in points:
        by_group[label[p.group]].append(p)
    totals = []
    for name, rows in by_group.items():
        calls = sum(r.calls for r in rows)
        ttft = [(r.avg_ttft_ms, r.calls) for r in rows if r.avg_ttft_ms is not None]
        totals.append(
            GroupTotal(
                name=name,
                color=0,
                calls=calls,
                errors=sum(r.errors for r in rows),
                cost_usd=sum(r.cost_usd for r in rows),
                tokens=sum(r.tokens for r in rows),
                avg_latency_ms=sum(r.avg_latency_ms * r.calls for r in rows) / max(1, calls),
                max_latency_ms=max(r.max_latency_ms for r in rows),
                avg_ttft_ms=(
                    sum(v * n for v, n in ttft) / max(1, sum(n for _v, n in ttft)) if ttft else None
                ),
            )
        )
    totals.sort(key=lambda t: (-t.cost_usd, -t.calls, t.name))
    return [
        GroupTotal(**{**t.__dict__, "color": min(i, MAX_SERIES - 1)}) for i, t in enumerate(totals)
    ]


async def _key_names(request: Request, principal: Principal) -> dict[str, str]:
    names = {ADMIN_KEY_ID: "admin key"}
    if principal.admin:
        keys = await asyncio.to_thread(gateway_of(request).keys.store.list_keys)
        names.update({k.id: f"{k.name} ({k.id})" for k in keys})
    elif principal.key is not None:
        names[principal.key.id] = principal.key.name
    return names


@router.get("/ui/costs")
async def costs_page(
    request: Request,
    principal: Viewer,
    window: Annotated[str, Query(alias="range", max_length=8)] = "24h",
    by: Annotated[str, Query(max_length=8)] = "model",
) -> Response:
    if window not in WINDOWS:
        raise InvalidRequest(f"range must be one of {', '.join(WINDOWS)}", param="range")
    if by not in GROUPINGS:
        raise InvalidRequest(f"by must be one of {', '.join(GROUPINGS)}", param="by")
    length, bucket = WINDOWS[window]
    until = datetime.now(UTC)
    since = until - length
    gateway = gateway_of(request)
    points = await asyncio.to_thread(
        usage_series,
        gateway.database,
        since=since,
        until=until,
        bucket_seconds=bucket,
        group_by=GROUPINGS[by],
        api_key_id=principal.scope,  # a virtual key sees its own calls only
    )
    label = _names(points, by, await _key_names(request, principal))
    totals = _totals(points, label)
    shown = {t.name for t in totals[: MAX_SERIES - 1]} if len(totals) > MAX_SERIES else None
    colors = {t.name: t.color for t in totals}
    colors[OTHER] = MAX_SERIES - 1

    def series(metric: str) -> dict[str, dict[datetime, float]]:
        out: dict[str, dict[datetime, float]] = defaultdict(lambda: defaultdict(float))
        latency_max = metric == "max_latency_ms"
        for p in points:
            name = label[p.group]
            if shown is not None and name not in shown:
                name = OTHER
            value = float(getattr(p, metric))
            slot = out[name]
            slot[p.start] = max(slot[p.start], value) if latency_max else slot[p.start] + value
        return {n: dict(v) for n, v in out.items()}

    def averaged(metric: str) -> dict[str, dict[datetime, float]]:
        """Call-weighted averages per bucket (groups folded into "other" stay averages)."""
        sums: dict[str, dict[datetime, list[float]]] = defaultdict(
            lambda: defaultdict(lambda: [0.0, 0.0])
        )
        for p in points:
            name = label[p.group]
            if shown is not None and name not in shown:
                name = OTHER
            value = getattr(p, metric)
            if value is None:
                continue
            acc = sums[name][p.start]
            acc[0] += float(value) * p.calls
            acc[1] += p.calls
        return {n: {t: a[0] / a[1] for t, a in v.items() if a[1]} for n, v in sums.items()}

    buckets = bucket_starts(since, until, bucket)
    charts = [
        line_chart(
            "Cost (USD)", buckets, series("cost_usd"), bucket_seconds=bucket, fmt=usd, colors=colors
        ),
        line_chart(
            "Calls",
            buckets,
            series("calls"),
            bucket_seconds=bucket,
            fmt=_count,
            colors=colors,
        ),
        line_chart(
            "Average latency",
            buckets,
            averaged("avg_latency_ms"),
            bucket_seconds=bucket,
            fmt=duration_ms,
            colors=colors,
        ),
        line_chart(
            "Slowest call (max latency)",
            buckets,
            series("max_latency_ms"),
            bucket_seconds=bucket,
            fmt=duration_ms,
            colors=colors,
        ),
        line_chart(
            "Average time to first token",
            buckets,
            averaged("avg_ttft_ms"),
            bucket_seconds=bucket,
            fmt=duration_ms,
            colors=colors,
        ),
        line_chart(
            "Tokens",
            buckets,
            series("tokens"),
            bucket_seconds=bucket,
            fmt=_count,
            colors=colors,
        ),
    ]
    return page(
        request,
        "costs.html",
        principal,
        title="Costs & latency",
        charts=charts,
        totals=totals,
        window=window,
        windows=list(WINDOWS),
        by=by,
        groupings=list(GROUPINGS),
        bucket=bucket,
        since=since,
        until=until,
    )
