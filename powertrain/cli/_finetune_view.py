"""How fine-tuning looks in the terminal: the progress bar, job tables, loss curves."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from powertrain.flywheel.base import Progress as TrainProgress
from powertrain.flywheel.base import ProgressFn
from powertrain.flywheel.scoring import Scoreboard
from powertrain.store.finetune import JobRecord

_SPARK = "▁▂▃▄▅▆▇█"


@contextlib.contextmanager
def progress_bar(console: Console, label: str) -> Iterator[ProgressFn]:
    """A bar that follows a trainer's phases (embed, train, eval, export…) and its loss."""
    columns = (
        TextColumn("[bold]{task.description:<14}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[metrics]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        tasks: dict[str, TaskID] = {}

        def report(event: TrainProgress) -> None:
            phase = f"{label} {event.phase}"
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=max(1, event.total), metrics="")
            shown = "  ".join(f"{k} {v:.4g}" for k, v in event.metrics.items() if k != "lr")
            bar.update(
                tasks[phase],
                completed=event.step,
                total=max(1, event.total),
                metrics=escape(shown),
            )

        yield report


def sparkline(points: list[list[float]], width: int = 48) -> str:
    """A loss curve in one line of block characters (resampled to ``width``)."""
    values = [p[1] for p in points]
    if not values:
        return ""
    if len(values) > width:
        step = len(values) / width
        values = [values[int(i * step)] for i in range(width)]
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    return "".join(_SPARK[int((v - low) / span * (len(_SPARK) - 1))] for v in values)


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    minutes, seconds = divmod(round(value), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{value:.1f}s"


def _percent(value: Any) -> str:
    return f"{value:.1%}" if isinstance(value, int | float) else ""


def jobs_table(jobs: list[JobRecord]) -> Table:
    table = Table(title="fine-tuning jobs", title_justify="left")
    for column in ("id", "task", "method", "status", "dataset", "model", "time", "test acc"):
        table.add_column(column, no_wrap=column in ("id", "model"))
    for job in jobs:
        status = job.status if job.status != "failed" else f"[red]{job.status}[/red]"
        table.add_row(
            job.id,
            escape(job.task),
            job.method,
            status,
            escape(job.dataset_ref),
            escape(job.model_alias or ""),
            _seconds(job.duration_s),
            _percent(job.metrics.get("test_accuracy")),
        )
    return table


def job_table(job: JobRecord) -> Table:
    table = Table(show_header=False, title=f"job {job.id}", title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    rows: list[tuple[str, str]] = [
        ("task", job.task),
        ("dataset", job.dataset_ref),
        ("method", job.method),
        ("base model", job.base_model),
        ("status", job.status),
        ("model", job.model_alias or ""),
        ("variant", job.variant or ""),
        ("started", job.started_at.isoformat(timespec="seconds") if job.started_at else ""),
        ("duration", _seconds(job.duration_s)),
        ("settings", str(job.params.get("settings") or {})),
    ]
    if job.error:
        rows.append(("error", job.error))
    progress = job.progress
    if progress and not job.finished:
        rows.append(
            ("progress", f"{progress.get('phase')} {progress.get('step')}/{progress.get('total')}")
        )
    for name, points in sorted(job.curves.items()):
        if points:
            rows.append((name, f"{sparkline(points)}  {points[0][1]:.4g} → {points[-1][1]:.4g}"))
    for name, value in sorted(job.metrics.items()):
        if isinstance(value, float):
            rows.append((name, f"{value:.4g}"))
        elif isinstance(value, int | str):
            rows.append((name, str(value)))
    for name, value in rows:
        table.add_row(name, escape(value))
    return table


def score_table(board: Scoreboard, price_per_hour: float, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("variant", "model", "n", "accuracy", "errors", "served speed", "$ / 1k calls"):
        table.add_column(column, justify="left" if column in ("variant", "model") else "right")
    for score in board.variants.values():
        table.add_row(
            escape(score.variant),
            escape(score.model or ""),
            str(score.cases),
            f"{score.accuracy:.1%}",
            str(score.errors),
            speed(score.tokens_per_second, score.calls_per_second),
            f"{score.cost_per_1k(price_per_hour):.4f}",
        )
    return table


def speed(tokens_per_second: float | None, calls_per_second: float | None) -> str:
    if tokens_per_second:
        return f"{tokens_per_second:.1f} tok/s"
    if calls_per_second:
        return f"{calls_per_second:.1f} calls/s"
    return ""
