"""``powertrain dataset``: make, list, show, export and delete versioned datasets.

Works on the store directly (no server needed), in the admin key's namespace.
File paths are relative to the working directory (or ``--root``) and checked
like ingest paths: no ``..``, absolute paths, encoded dots or NUL bytes.
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import click
import orjson
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from powertrain.cli._common import (
    config_option,
    console,
    err_console,
    friendly_errors,
    json_option,
    load,
    print_json,
)
from powertrain.config import Config
from powertrain.datasets import (
    ADMIN_OWNER,
    DatasetRow,
    Datasets,
    ExportFormat,
    parse_ref,
    read_rows,
    row_json,
    version_json,
)
from powertrain.datasets.files import resolve_inside
from powertrain.datasets.from_traces import trace_query
from powertrain.errors import InvalidRequest
from powertrain.rag.loaders import safe_relative_path
from powertrain.store import Database, TaskStore
from powertrain.tasks.registry import TaskRegistry


def _datasets(config: Config, *, tasks: bool = False) -> Datasets:
    db = Database(config.settings.resolved_database_url)
    registry = None
    if tasks:  # the same sync a server does on start, so config tasks can be rendered
        registry = TaskRegistry(
            TaskStore(db), config.tasks, refresh_interval=config.settings.task_refresh_interval
        )
        registry.sync_config()
    return Datasets(db, registry)


def _progress(as_json: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=as_json,
    )


@click.group()
def dataset() -> None:
    """Versioned datasets from files or from traces and their feedback."""


@dataset.command("create")
@click.argument("name")
@click.option("--from-file", "from_file", default=None, help="A .jsonl or .csv file.")
@click.option(
    "--root",
    type=click.Path(file_okay=False),
    default=".",
    show_default=True,
    help="The directory --from-file is relative to.",
)
@click.option("--output-column", default=None, help="CSV: the column with the reference output.")
@click.option("--from-traces", is_flag=True, help="Make rows from traces.")
@click.option(
    "--task",
    default=None,
    help="Only this task's traces; for files, the task whose prompt renders the rows on export.",
)
@click.option("--variant", default=None, help="Only this variant's traces.")
@click.option("--model", default=None, help="Only this model's traces.")
@click.option("--since", type=click.DateTime(), default=None, help="Traces from (UTC).")
@click.option("--until", type=click.DateTime(), default=None, help="Traces before (UTC).")
@click.option(
    "--feedback", "feedback_rule", default=None, help="up, down, corrected, any, or 'score>=N'."
)
@click.option(
    "--limit",
    type=click.IntRange(1, 100_000),
    default=10_000,
    show_default=True,
    help="At most this many traces.",
)
@click.option(
    "--test-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.2, show_default=True
)
@click.option("--seed", type=int, default=0, show_default=True)
@config_option
@json_option
@friendly_errors
def create(
    name: str,
    from_file: str | None,
    root: str,
    output_column: str | None,
    from_traces: bool,
    task: str | None,
    variant: str | None,
    model: str | None,
    since: datetime | None,
    until: datetime | None,
    feedback_rule: str | None,
    limit: int,
    test_fraction: float,
    seed: int,
    config_path: str | None,
    as_json: bool,
) -> None:
    """Make a new version of NAME (or find the identical one).

    \b
    Examples:
      powertrain dataset create tickets --from-file tickets.jsonl
      powertrain dataset create tickets --from-file t.csv --output-column intent --task classify
      powertrain dataset create good --from-traces --task classify --feedback up
      powertrain dataset create fixed --from-traces --task classify --feedback corrected
    """
    if (from_file is None) == (not from_traces):
        raise InvalidRequest("give --from-file FILE or --from-traces (one of them)")
    datasets = _datasets(load(config_path))
    rows: list[DatasetRow]
    with _progress(as_json) as bar:
        if from_file is not None:
            bar.add_task("reading", total=None)
            rows = read_rows(Path(root), from_file, output_column=output_column)
            if task is not None:
                rows = [r.model_copy(update={"source": {**r.source, "task": task}}) for r in rows]
            origin: dict[str, Any] = {
                "kind": "file",
                "file": safe_relative_path(from_file).as_posix(),
            }
        else:
            query = trace_query(
                task=task,
                variant=variant,
                model=model,
                since=since,
                until=until,
                feedback=feedback_rule,
                limit=limit,
            )
            job = bar.add_task("traces", total=None)
            rows = datasets.rows_from_traces(
                query,
                scope=None,
                progress=lambda done, total: bar.update(job, completed=done, total=total),
            )
            origin = {"kind": "traces", **query.model_dump(mode="json", exclude_none=True)}
        bar.add_task("storing", total=None)
        outcome = datasets.create(
            ADMIN_OWNER, name, rows, test_fraction=test_fraction, seed=seed, origin=origin
        )
    if as_json:
        print_json(outcome.to_json())
        return
    v = outcome.version
    what = "created" if outcome.created else "unchanged (the same content)"
    console.print(
        f"{escape(name)}@{v.version} {what}: {v.row_count} rows "
        f"({v.row_count - v.test_count} train, {v.test_count} test)"
    )


@dataset.command("list")
@config_option
@json_option
@friendly_errors
def list_datasets(config_path: str | None, as_json: bool) -> None:
    """Datasets, with their latest version."""
    found = _datasets(load(config_path)).list_datasets(ADMIN_OWNER)
    if as_json:
        print_json([{"name": d.name, "latest": version_json(v) if v else None} for d, v in found])
        return
    table = Table(title=f"{len(found)} datasets")
    for column in ("name", "version", "rows", "train", "test", "created"):
        table.add_column(column, no_wrap=True)
    for d, v in found:
        if v is None:
            table.add_row(escape(d.name), "", "", "", "", "")
            continue
        table.add_row(
            escape(d.name),
            str(v.version),
            str(v.row_count),
            str(v.row_count - v.test_count),
            str(v.test_count),
            v.created_at.strftime("%Y-%m-%d %H:%M"),
        )
    console.print(table)


def _short(value: Any, width: int = 80) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


@dataset.command("show")
@click.argument("ref", metavar="NAME[@VERSION]")
@click.option(
    "-n",
    "count",
    type=click.IntRange(1, 10_000),
    default=20,
    show_default=True,
    help="How many rows.",
)
@click.option("--split", type=click.Choice(["train", "test", "all"]), default="all")
@config_option
@json_option
@friendly_errors
def show(ref: str, count: int, split: str, config_path: str | None, as_json: bool) -> None:
    """A version's first rows."""
    name, number = parse_ref(ref)
    version, rows = _datasets(load(config_path)).rows(
        ADMIN_OWNER, name, number, split=split, limit=count
    )
    if as_json:
        print_json({"name": name, **version_json(version), "data": [row_json(r) for r in rows]})
        return
    v = version
    table = Table(
        title=f"{escape(name)}@{v.version}: {v.row_count} rows "
        f"({v.row_count - v.test_count} train, {v.test_count} test)"
    )
    table.add_column("#", no_wrap=True)
    table.add_column("split", no_wrap=True)
    table.add_column("input", overflow="fold", ratio=2)
    table.add_column("output", overflow="fold", ratio=1)
    table.add_column("labels", overflow="fold")
    for r in rows:
        shown = r.input.get("variables") if "variables" in r.input else r.input.get("messages")
        table.add_row(
            str(r.idx),
            r.split,
            escape(_short(shown)),  # stored text is data: never read as rich markup
            escape(_short(r.output)) if r.output is not None else "",
            escape(_short(r.labels)) if r.labels else "",
        )
    console.print(table)


@dataset.command("export")
@click.argument("ref", metavar="NAME[@VERSION]")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["openai", "eval"]),
    default="openai",
    show_default=True,
    help="OpenAI chat fine-tuning JSONL, or eval cases.",
)
@click.option(
    "--split", type=click.Choice(["train", "test", "all"]), default="all", show_default=True
)
@click.option("--task", default=None, help="Render variables rows with this task's prompt.")
@click.option(
    "-o",
    "--output",
    "output",
    default="-",
    show_default=True,
    help="A file under the working directory, or - for stdout.",
)
@config_option
@friendly_errors
def export(
    ref: str, fmt: str, split: str, task: str | None, output: str, config_path: str | None
) -> None:
    """Write a version's rows as JSON lines."""
    name, number = parse_ref(ref)
    datasets = _datasets(load(config_path), tasks=fmt == "openai")
    skipped: list[int] = []
    version, lines = datasets.export(
        ADMIN_OWNER,
        name,
        number,
        fmt=cast(ExportFormat, fmt),
        split=split,
        task=task,
        skipped=skipped,
    )
    written = 0
    if output == "-":
        for line in lines:
            sys.stdout.buffer.write(line)
            written += 1
        sys.stdout.flush()
    else:
        target = Path.cwd() / safe_relative_path(output, root="the working directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        with partial.open("wb") as handle:
            for line in lines:
                handle.write(line)
                written += 1
        resolve_inside(Path.cwd(), partial.relative_to(Path.cwd()).as_posix())
        partial.replace(target)
    if skipped:
        err_console.print(f"[yellow]{len(skipped)} rows without an output left out[/yellow]")
    err_console.print(f"{escape(name)}@{version.version}: {written} {fmt} lines written")


@dataset.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask.")
@config_option
@friendly_errors
def delete(name: str, yes: bool, config_path: str | None) -> None:
    """Delete NAME with every version and row."""
    datasets = _datasets(load(config_path))
    datasets.get(ADMIN_OWNER, name)  # a clear error before asking
    if not yes:
        click.confirm(f"delete dataset {name!r} with every version?", abort=True)
    datasets.delete(ADMIN_OWNER, name)
    console.print(f"deleted {escape(name)}")
