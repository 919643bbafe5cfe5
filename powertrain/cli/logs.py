"""``powertrain logs``: recent traces as a table, or one trace in full."""

from __future__ import annotations

import click
from rich.table import Table

from powertrain.cli._common import (
    config_option,
    console,
    friendly_errors,
    json_option,
    load,
    print_json,
)
from powertrain.errors import NotFound
from powertrain.store import Database, TraceFilter, TraceStore


def _store(config_path: str | None) -> TraceStore:
    return TraceStore(Database(load(config_path).settings.resolved_database_url))


@click.group(invoke_without_command=True)
@click.option(
    "-n",
    "count",
    type=click.IntRange(1, 10_000),
    default=20,
    show_default=True,
    help="How many traces.",
)
@click.option("-m", "--model", default=None, help="Only this model.")
@click.option("--status", type=click.Choice(["ok", "error", "cancelled"]), default=None)
@config_option
@json_option
@click.pass_context
@friendly_errors
def logs(
    ctx: click.Context,
    count: int,
    model: str | None,
    status: str | None,
    config_path: str | None,
    as_json: bool,
) -> None:
    """Recent traces, newest first. `powertrain logs show ID` prints one in full."""
    if ctx.invoked_subcommand is not None:
        return
    page = _store(config_path).list(TraceFilter(model=model, status=status), limit=count)
    if as_json:
        print_json([t.to_json() for t in page.data])
        return
    table = Table(title=f"last {len(page.data)} traces")
    table.add_column("id", no_wrap=True, min_width=31)
    for column in ("time", "model", "status", "tokens in/out", "latency", "ttft"):
        table.add_column(column, no_wrap=True)
    table.add_column("output", overflow="ellipsis", no_wrap=True, ratio=1)
    for t in page.data:
        table.add_row(
            t.id,
            t.created_at.strftime("%H:%M:%S"),
            t.model,
            t.status if t.status == "ok" else f"[red]{t.status}[/red]",
            f"{t.prompt_tokens}/{t.completion_tokens}",
            f"{t.latency_ms:.0f} ms",
            f"{t.ttft_ms:.0f} ms" if t.ttft_ms is not None else "",
            (t.output or t.error_message or "").replace("\n", " ")[:80],
        )
    console.print(table)


@logs.command("show")
@click.argument("trace_id")
@config_option
@json_option
@friendly_errors
def show(trace_id: str, config_path: str | None, as_json: bool) -> None:
    """Print one trace in full."""
    trace = _store(config_path).get(trace_id)
    if trace is None:
        raise NotFound(f"no trace with id {trace_id!r}; `powertrain logs` lists recent ones")
    if as_json:
        print_json(trace.to_json())
        return
    table = Table(show_header=False, title=trace.id)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for name, value in trace.to_json().items():
        table.add_row(name, "" if value is None else str(value))
    console.print(table)
