"""``powertrain eval``: run a suite (a CI gate), list, show, compare and report runs.

Exit codes of ``eval run``: 0 at or above ``--fail-under``, 1 below it (or on a
runtime error), 2 when the suite or the config is invalid.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import click
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
    with_client,
)
from powertrain.client import AsyncClient
from powertrain.datasets import Datasets
from powertrain.errors import ConfigError
from powertrain.evals import (
    EvalRunner,
    compare_runs,
    load_suite,
    overall_pass_rate,
    render_report,
    summarize,
)
from powertrain.evals.results import TargetSummary
from powertrain.store.evals import EvalResultRecord, EvalRunRecord, EvalStore


def _config_error(message: str) -> None:
    err_console.print(f"[red]error:[/red] {escape(message)}")
    sys.exit(2)


def _summary_table(title: str, summaries: list[TargetSummary]) -> Table:
    table = Table(title=title, title_justify="left")
    for name in ("target", "n", "pass rate", "mean score", "errors", "cost $", "p50 ms"):
        table.add_column(name, justify="left" if name == "target" else "right")
    for s in summaries:
        table.add_row(
            escape(s.target),
            str(s.results),
            f"{s.pass_rate:.1%}",
            f"{s.mean_score:.3f}",
            str(s.errors),
            f"{s.cost_usd:.6f}",
            f"{s.p50_latency_ms:.0f}",
        )
    return table


def _targets(run: EvalRunRecord, results: list[EvalResultRecord]) -> list[str]:
    return list(run.config.get("targets") or sorted({r.target for r in results}))


def _load_run(store: EvalStore, run_id: str) -> tuple[EvalRunRecord, list[EvalResultRecord]]:
    run = store.get_run(run_id)
    if run is None:
        raise click.ClickException(f"no eval run {run_id!r} (see `powertrain eval list`)")
    return run, store.results(run_id)


def _with_store(config_path: str | None, work: Any) -> Any:
    async def inner(client: AsyncClient) -> Any:
        return await asyncio.to_thread(work, EvalStore(client.gateway.database))

    return with_client(load(config_path), inner)


def _run_json(run: EvalRunRecord, results: list[EvalResultRecord]) -> dict[str, Any]:
    return {
        "run": run.id,
        "suite": run.suite,
        "status": run.status,
        "created_at": run.created_at.isoformat(),
        "results": len(results),
        "pass_rate": overall_pass_rate(results),
        "targets": [s.as_dict() for s in summarize(results, _targets(run, results))],
    }


@click.group(name="eval")
def eval_group() -> None:
    """Eval suites: run them (a CI gate), list, show, compare and report runs."""


@eval_group.command(name="run")
@click.argument("suite_path", metavar="SUITE.yaml", type=click.Path(dir_okay=False))
@click.option(
    "--fail-under", type=float, default=None, help="Exit 1 when the pass rate is below this (0-1)."
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 256),
    default=None,
    help="Cases at once (default: the suite's).",
)
@click.option("--resume", "resume", default=None, metavar="RUN_ID", help="Continue this run.")
@click.option(
    "--new", "fresh", is_flag=True, help="Start a new run even if one of this suite is unfinished."
)
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write an HTML report here.",
)
@config_option
@json_option
@friendly_errors
def run_cmd(
    suite_path: str,
    fail_under: float | None,
    concurrency: int | None,
    resume: str | None,
    fresh: bool,
    report_path: str | None,
    config_path: str | None,
    as_json: bool,
) -> None:
    """Run SUITE.yaml: every case x target, stored as each finishes.

    An unfinished run of the same suite (same content) is resumed unless --new.

    \b
    Example:
      powertrain eval run examples/banking77/eval.yaml --fail-under 0.3 --report out.html
    """
    if fail_under is not None and not 0 <= fail_under <= 1:
        _config_error("--fail-under is a pass rate from 0 to 1")
    try:
        config = load(config_path)
    except ConfigError as exc:
        _config_error(exc.message)

    async def work(client: AsyncClient) -> Any:
        datasets = Datasets(client.gateway.database, client.gateway.tasks.registry)
        loaded = await asyncio.to_thread(load_suite, suite_path, stored=datasets)
        store = EvalStore(client.gateway.database)
        runner = EvalRunner(client.gateway, store, allow_python=True)  # the CLI only
        run = await runner.open_run(loaded, resume=resume, auto_resume=not fresh)
        done = len(await asyncio.to_thread(store.results, run.id))
        total = len(loaded.cases) * len(run.config["targets"]) * loaded.suite.repeat
        if done and not as_json:
            err_console.print(f"resuming {run.id}: {done} of {total} already done")
        with Progress(
            TextColumn("[bold]eval[/bold]"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=err_console,
            transient=as_json,
            disable=as_json,
        ) as bar:
            task_id = bar.add_task(run.id, total=total, completed=done)
            passed = 0

            def advance(result: EvalResultRecord) -> None:
                nonlocal passed
                passed += result.passed
                bar.update(task_id, advance=1, description=f"{run.id} · {passed} passed")

            finished = await runner.run(loaded, run=run, concurrency=concurrency, on_result=advance)
        return finished, await asyncio.to_thread(store.results, run.id)

    try:
        run, results = with_client(config, work)
    except ConfigError as exc:
        _config_error(exc.message)
    if report_path:
        Path(report_path).write_text(render_report(run, results), encoding="utf-8")
    rate = overall_pass_rate(results)
    if as_json:
        print_json({**_run_json(run, results), "report": report_path})
    else:
        summaries = summarize(results, _targets(run, results))
        console.print(_summary_table(f"{run.suite} · {run.id}", summaries))
        console.print(f"pass rate {rate:.1%} over {len(results)} results")
        if report_path:
            console.print(f"report: {escape(report_path)}")
    if fail_under is not None and rate < fail_under:
        if not as_json:
            err_console.print(
                f"[red]pass rate {rate:.1%} is below --fail-under {fail_under:g}[/red]"
            )
        sys.exit(1)


@eval_group.command(name="list")
@click.option("-n", "--limit", default=20, show_default=True)
@config_option
@json_option
@friendly_errors
def list_cmd(limit: int, config_path: str | None, as_json: bool) -> None:
    """Recent eval runs, newest first."""

    def work(store: EvalStore) -> list[dict[str, Any]]:
        return [_run_json(run, store.results(run.id)) for run in store.list_runs(limit=limit)]

    runs = _with_store(config_path, work)
    if as_json:
        print_json(runs)
        return
    table = Table()
    for name in ("run", "suite", "status", "created", "results", "pass rate"):
        table.add_column(name)
    for r in runs:
        table.add_row(
            r["run"],
            escape(r["suite"]),
            r["status"],
            r["created_at"][:19],
            str(r["results"]),
            f"{r['pass_rate']:.1%}",
        )
    console.print(table)


@eval_group.command(name="show")
@click.argument("run_id")
@click.option("--failures", default=10, show_default=True, help="How many failed cases to list.")
@config_option
@json_option
@friendly_errors
def show_cmd(run_id: str, failures: int, config_path: str | None, as_json: bool) -> None:
    """One run: per-target summary and its failed cases."""
    run, results = _with_store(config_path, lambda store: _load_run(store, run_id))
    if as_json:
        print_json({**_run_json(run, results), "cases": [r.__dict__ for r in results]})
        return
    console.print(
        _summary_table(
            f"{run.suite} · {run.id} · {run.status}", summarize(results, _targets(run, results))
        )
    )
    bad = [r for r in results if not r.passed][:failures]
    if bad:
        table = Table(title="failed cases", title_justify="left")
        for name in ("#", "target", "status", "output", "why"):
            table.add_column(name)
        for r in bad:
            why = r.error or "; ".join(
                f"{a['type']}: {a.get('detail', '')}" for a in r.assertions if a["status"] != "pass"
            )
            table.add_row(
                str(r.case_idx),
                escape(r.target),
                r.status,
                escape((r.output or "")[:60]),
                escape(why[:80]),
            )
        console.print(table)


@eval_group.command(name="compare")
@click.argument("run_a")
@click.argument("run_b")
@click.option("--all", "show_all", is_flag=True, help="List unchanged cases too.")
@config_option
@json_option
@friendly_errors
def compare_cmd(
    run_a: str, run_b: str, show_all: bool, config_path: str | None, as_json: bool
) -> None:
    """Per-case differences from RUN_A to RUN_B, regressions first."""

    def work(store: EvalStore) -> Any:
        return _load_run(store, run_a), _load_run(store, run_b)

    (ra, a), (rb, b) = _with_store(config_path, work)
    diffs = compare_runs(a, b)
    targets = list(dict.fromkeys(_targets(ra, a) + _targets(rb, b)))
    sa = {s.target: s for s in summarize(a, targets)}
    sb = {s.target: s for s in summarize(b, targets)}
    deltas: list[dict[str, Any]] = [
        {
            "target": t,
            "pass_rate_a": sa[t].pass_rate,
            "pass_rate_b": sb[t].pass_rate,
            "score_delta": sb[t].mean_score - sa[t].mean_score,
            "cost_delta": sb[t].cost_usd - sa[t].cost_usd,
            "p50_latency_delta_ms": sb[t].p50_latency_ms - sa[t].p50_latency_ms,
        }
        for t in targets
    ]
    shown = [d for d in diffs if show_all or d.change != "same"]
    if as_json:
        print_json(
            {
                "a": ra.id,
                "b": rb.id,
                "targets": deltas,
                "regressions": sum(d.change == "regression" for d in diffs),
                "improvements": sum(d.change == "improvement" for d in diffs),
                "cases": [d.as_dict() for d in shown],
            }
        )
        return
    table = Table(title=f"{ra.id} → {rb.id}", title_justify="left")
    for name in ("target", "pass A", "pass B", "Δ score", "Δ cost $", "Δ p50 ms"):
        table.add_column(name, justify="left" if name == "target" else "right")
    for row in deltas:
        table.add_row(
            escape(row["target"]),
            f"{row['pass_rate_a']:.1%}",
            f"{row['pass_rate_b']:.1%}",
            f"{row['score_delta']:+.3f}",
            f"{row['cost_delta']:+.6f}",
            f"{row['p50_latency_delta_ms']:+.0f}",
        )
    console.print(table)
    cases = Table(title="cases (regressions first)", title_justify="left")
    for name in ("change", "#", "target", "A", "B", "Δ score", "output B"):
        cases.add_column(name)
    for d in shown:
        style = "red" if d.change in ("regression", "score_down") else "green"
        cases.add_row(
            f"[{style}]{d.change}[/{style}]",
            str(d.case_idx),
            escape(d.target),
            d.status_a or "—",
            d.status_b or "—",
            f"{d.score_delta:+.2f}",
            escape((d.output_b or "")[:60]),
        )
    console.print(cases)


@eval_group.command(name="report")
@click.argument("run_id")
@click.argument("run_b", required=False)
@click.option(
    "-o",
    "--output",
    "output",
    type=click.Path(dir_okay=False),
    default="report.html",
    show_default=True,
)
@config_option
@friendly_errors
def report_cmd(run_id: str, run_b: str | None, output: str, config_path: str | None) -> None:
    """A self-contained HTML report of RUN (compared with RUN_B when given)."""

    def work(store: EvalStore) -> Any:
        return _load_run(store, run_id), (_load_run(store, run_b) if run_b else None)

    (run, results), other = _with_store(config_path, work)
    Path(output).write_text(render_report(run, results, other), encoding="utf-8")
    console.print(f"wrote {escape(output)}")
