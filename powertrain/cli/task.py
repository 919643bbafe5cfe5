"""``powertrain task``: list, inspect, render, run and label tasks from the terminal.

Every command opens the same client the Python API uses, so tasks from
``powertrain.toml`` are synced to the store first (a changed template is a new
version) and ``task run`` is traced like any other call (source "cli").
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from powertrain.cli._common import (
    config_option,
    console,
    err_console,
    friendly_errors,
    json_option,
    load,
    print_json,
    with_client,
)
from powertrain.cli._task_input import gather_variables, variable_options, version_selector
from powertrain.client import AsyncClient
from powertrain.errors import EngineError, InvalidRequest, NotFound
from powertrain.tasks.definition import LABEL_NAME, PromptVersion
from powertrain.tasks.registry import LoadedTask
from powertrain.tasks.runner import TaskPlan, TaskResult
from powertrain.tasks.views import (
    TaskDetail,
    TaskRunResponse,
    describe,
    label_order,
    schema_summary,
    summarize,
)

_PRODUCTION = "production"


def _labels_text(labels: dict[str, int]) -> str:
    """``production→2, latest→2``."""
    return ", ".join(f"{label}→{number}" for label, number in label_order(labels))


def _percent(share: float) -> str:
    return f"{share * 100:.0f}%" if share * 100 >= 1 or share == 0 else f"{share * 100:.2g}%"


async def _command_line_variables(
    client: AsyncClient,
    name: str,
    assignments: tuple[str, ...],
    vars_json: str | None,
    variant: str | None,
    version: str | None,
) -> tuple[dict[str, Any], int | str | None]:
    """The variables and version pin from --var, --vars-json, --version and stdin."""
    loaded = await asyncio.to_thread(client.gateway.tasks.registry.get, name)
    selector = version_selector(version)
    variables = gather_variables(
        loaded, assignments=assignments, vars_json=vars_json, variant=variant, version=selector
    )
    return variables, selector


def _cost(cost: float) -> str:
    return "$" + (f"{cost:.6f}".rstrip("0").rstrip(".") if cost else "0")


# -- the group ----------------------------------------------------------------------------


@click.group()
def task() -> None:
    """Tasks: versioned prompts with typed variables, variants and validated output.

    Define tasks under [tasks.<name>] in powertrain.toml (or POST /api/tasks).

    \b
    Example:
      powertrain task list
      powertrain task run sentiment --var review="I loved it"
    """


@task.command("list")
@config_option
@json_option
@friendly_errors
def list_tasks(config_path: str | None, as_json: bool) -> None:
    """Every task: source, latest version, labels, variants and their traffic split.

    \b
    Example:
      powertrain task list --json | jq '.[].name'
    """

    async def work(client: AsyncClient) -> list[LoadedTask]:
        return await asyncio.to_thread(client.gateway.tasks.registry.all)

    config = load(config_path)
    tasks = with_client(config, work)
    default_model = config.settings.default_model
    summaries = [summarize(t, default_model) for t in tasks]
    if as_json:
        print_json([summary.model_dump(mode="json") for summary in summaries])
        return
    if not summaries:
        console.print("no tasks yet: define one under [tasks.<name>] in powertrain.toml")
        return
    table = Table(title="tasks")
    for column in ("name", "source", "latest", "labels", "variants", "description"):
        table.add_column(column, justify="right" if column == "latest" else "left")
    for s in summaries:
        variants = ", ".join(f"{v.name} {_percent(v.share)}" for v in s.variants)
        table.add_row(
            escape(s.name),
            s.source,
            str(s.latest_version or "none"),
            escape(_labels_text(s.labels)),
            escape(variants),
            escape(s.description or ""),
        )
    console.print(table)


@task.command("show")
@click.argument("name")
@click.option(
    "--version",
    "version",
    default=None,
    metavar="N|LABEL",
    help="Which version's variables and schema to show (default: production, else latest).",
)
@config_option
@json_option
@friendly_errors
def show(name: str, version: str | None, config_path: str | None, as_json: bool) -> None:
    """One task in full: versions, labels, variants, variables, output schema, policies.

    \b
    Example:
      powertrain task show sentiment
      powertrain task show sentiment --version 1 --json
    """

    async def work(client: AsyncClient) -> tuple[LoadedTask, list[Any]]:
        registry = client.gateway.tasks.registry
        loaded = await asyncio.to_thread(registry.get, name)
        return loaded, await asyncio.to_thread(registry.version_records, name)

    config = load(config_path)
    loaded, records = with_client(config, work)
    if not loaded.versions:
        raise NotFound(f"task {name!r} has no versions yet")
    selector = version_selector(version)
    if selector is None:
        selector = _PRODUCTION if _PRODUCTION in loaded.labels else max(loaded.versions)
    number, content = loaded.resolve(selector)
    detail = describe(loaded, records, config.settings.default_model)
    if as_json:
        shown = {"version": number, **content.model_dump(mode="json")}
        print_json({**detail.model_dump(mode="json"), "content": shown})
        return
    _print_detail(loaded, detail, number, content)


def _print_detail(
    loaded: LoadedTask, detail: TaskDetail, number: int, content: PromptVersion
) -> None:
    heading = f"[bold]{escape(loaded.name)}[/bold] ({loaded.source})"
    if loaded.settings.description:
        heading += f" — {escape(loaded.settings.description)}"
    console.print(heading)

    versions = Table(title="versions")
    for column in ("version", "created (UTC)", "source", "hash", "labels"):
        versions.add_column(column)
    for v in detail.versions:
        versions.add_row(
            str(v.version),
            v.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            v.source,
            v.content_hash[:12],
            escape(", ".join(v.labels)),
        )
    console.print(versions)

    variants = Table(title="variants")
    for column in ("variant", "model", "version", "traffic", "params", "examples"):
        variants.add_column(column)
    for variant in detail.variants:
        selector = str(variant.version)
        if not isinstance(variant.version, int):
            resolved = variant.resolved_version
            selector += f" → {resolved if resolved is not None else '(missing)'}"
        pinned_only = " (pinned only)" if variant.weight == 0 else ""
        variants.add_row(
            escape(variant.name),
            escape(variant.model),
            escape(selector),
            _percent(variant.share) + pinned_only,
            escape(json.dumps(variant.params, ensure_ascii=False) if variant.params else ""),
            "all" if variant.examples is None else str(variant.examples),
        )
    console.print(variants)

    labels = next((v.labels for v in detail.versions if v.version == number), [])
    shown = f"version {number}" + (f" ({', '.join(labels)})" if labels else "")
    if content.variables:
        variables = Table(title=f"variables of {shown}")
        for column in ("name", "type", "required", "default", "description"):
            variables.add_column(column)
        for var_name, spec in content.variables.items():
            variables.add_row(
                escape(var_name) + (" (input)" if var_name == content.input else ""),
                spec.type,
                "yes" if spec.required and spec.default is None else "no",
                "" if spec.default is None else escape(json.dumps(spec.default)),
                escape(spec.description or ""),
            )
        console.print(variables)
    else:
        console.print(f"{shown}: no variables")
    policy = loaded.settings.context.on_overflow
    lines = [
        f"output: {escape(schema_summary(content.output_schema))}",
        f"examples: {len(content.examples)}"
        + ("; reasoning: on" if content.reasoning else "")
        + ("" if content.output_instructions else "; schema not told in the prompt"),
        f"repairs: {loaded.settings.repairs}; context overflow: {policy}",
    ]
    for line in lines:
        console.print(line)


@task.command("render")
@click.argument("name")
@variable_options
@json_option
@friendly_errors
def render(
    name: str,
    assignments: tuple[str, ...],
    vars_json: str | None,
    variant: str | None,
    version: str | None,
    config_path: str | None,
    as_json: bool,
) -> None:
    """The exact messages a run would send, with model, version and prompt tokens.

    Nothing is sent to the model and nothing is traced. Without --variant the
    variant is chosen by weight, as a run would.

    \b
    Example:
      powertrain task render sentiment --var review="I loved it" --variant a
    """

    async def work(client: AsyncClient) -> TaskPlan:
        variables, selector = await _command_line_variables(
            client, name, assignments, vars_json, variant, version
        )
        return await client.render_task(name, variables, variant=variant, version=selector)

    plan = with_client(load(config_path), work)
    prompt = plan.prompt
    if as_json:
        print_json(
            {
                "task": name,
                "variant": plan.variant,
                "version": plan.version_number,
                "model": plan.model,
                "messages": plan.messages,
                "prompt_tokens": prompt.prompt_tokens,
                "examples_used": prompt.examples_used,
                "examples_dropped": prompt.examples_dropped,
                "request": plan.request.model_dump(mode="json", exclude_none=True, by_alias=True),
            }
        )
        return
    tokens = "?" if prompt.prompt_tokens is None else str(prompt.prompt_tokens)
    shots = f"{prompt.examples_used} few-shot example{'s' if prompt.examples_used != 1 else ''}"
    if prompt.examples_dropped:
        shots += f" ({prompt.examples_dropped} left out)"
    err_console.print(
        f"[dim]task {escape(name)} · variant {escape(plan.variant)} · version "
        f"{plan.version_number} · model {escape(plan.model)} · {tokens} prompt tokens · "
        f"{shots}[/dim]"
    )
    for message in plan.messages:
        console.print(f"[bold]── {escape(message['role'])} ──[/bold]")
        # The content goes out as is: no markup, no wrapping.
        sys.stdout.write(message["content"] + "\n")
        sys.stdout.flush()


@task.command("run")
@click.argument("name")
@variable_options
@json_option
@friendly_errors
def run(
    name: str,
    assignments: tuple[str, ...],
    vars_json: str | None,
    variant: str | None,
    version: str | None,
    config_path: str | None,
    as_json: bool,
) -> None:
    """Run a task; its output is validated against the task's schema (or this fails).

    The output goes to stdout (JSON when the task has a schema), the trace id,
    variant, version, model, tokens and cost to stderr. When the task's input
    variable is not given and stdin is not a terminal, it is read from stdin.

    \b
    Example:
      powertrain task run sentiment --var review="I loved it"
      cat review.txt | powertrain task run sentiment --json
    """

    async def work(client: AsyncClient) -> TaskResult:
        variables, selector = await _command_line_variables(
            client, name, assignments, vars_json, variant, version
        )
        try:
            return await client.run_task(name, variables, variant=variant, version=selector)
        except EngineError as exc:
            # The model was called (or tried): the trace has every attempt.
            if exc.trace_id:
                raise click.ClickException(f"{exc.message} (trace {exc.trace_id})") from None
            raise

    result = with_client(load(config_path), work)
    usage = result.usage.to_openai()
    if as_json:
        response = TaskRunResponse.of(result, include_reasoning=True)
        print_json(response.model_dump(mode="json", exclude_none=True))
        return
    if isinstance(result.output, str):
        sys.stdout.write(result.output + "\n")
    else:
        print_json(result.output)
    sys.stdout.flush()
    attempts = f" · {result.attempts} attempts" if result.attempts > 1 else ""
    err_console.print(
        f"[dim]trace {result.trace_id} · variant {escape(result.variant)} · version "
        f"{result.version} · {escape(result.model)} · {usage['prompt_tokens']}+"
        f"{usage['completion_tokens']} tokens · {_cost(result.cost)}{attempts}[/dim]"
    )


@task.command("label")
@click.argument("name")
@click.argument("label")
@click.argument("version", required=False, metavar="[VERSION]")
@click.option("--delete", is_flag=True, help="Remove the label instead of moving it.")
@config_option
@json_option
@friendly_errors
def label(
    name: str,
    label: str,
    version: str | None,
    delete: bool,
    config_path: str | None,
    as_json: bool,
) -> None:
    """Point LABEL at VERSION (a number, or another label's version), or --delete it.

    Variants that select a label (version = "production" by default) follow it
    at once: this is how a version is promoted or rolled back.

    \b
    Example:
      powertrain task label sentiment production 3
      powertrain task label sentiment production staging
      powertrain task label sentiment staging --delete
    """
    if not LABEL_NAME.match(label):
        raise InvalidRequest(
            f"label {label!r} must start with a lowercase letter, then lowercase letters, "
            "digits, _ . -"
        )
    if delete == (version is not None):
        raise InvalidRequest(
            f"give a VERSION to point {label!r} at, or --delete to remove it (not both)"
        )

    async def work(client: AsyncClient) -> dict[str, Any]:
        registry = client.gateway.tasks.registry
        loaded = await asyncio.to_thread(registry.get, name)
        previous = loaded.labels.get(label)
        if delete:
            if not await asyncio.to_thread(registry.remove_label, name, label):
                known = _labels_text(loaded.labels) or "none"
                raise NotFound(f"task {name!r} has no label {label!r} (labels: {known})")
            return {"task": name, "label": label, "version": None, "previous": previous}
        selector = version_selector(version)
        assert selector is not None
        number, _ = loaded.resolve(selector)
        await asyncio.to_thread(registry.set_label, name, label, number)
        return {"task": name, "label": label, "version": number, "previous": previous}

    outcome = with_client(load(config_path), work)
    if as_json:
        print_json(outcome)
        return
    previous = outcome["previous"]
    if outcome["version"] is None:
        sys.stdout.write(f"{name}: removed label {label} (was → {previous})\n")
        return
    was = "new label" if previous is None else f"was {previous}"
    sys.stdout.write(f"{name}: {label} → version {outcome['version']} ({was})\n")
