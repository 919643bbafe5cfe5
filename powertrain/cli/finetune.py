"""``powertrain finetune``: tune a local model on a task's dataset; list, show, resume, cancel.

Training runs in this process, with a progress bar; the job, its losses and its
result are in the store as it goes, so ``finetune show`` (or the web UI) can
follow it from elsewhere. The trained model is registered in the catalog and
added to the task as a variant with no traffic; it is then scored beside the
task's base variant on the dataset's test split (``--no-score`` skips that).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import click
import orjson
from rich.console import Console
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
)
from powertrain.cli._finetune_view import (
    job_table,
    jobs_table,
    progress_bar,
    score_table,
    speed,
)
from powertrain.config import Config
from powertrain.errors import InvalidRequest, PowertrainError
from powertrain.flywheel.auto import MethodOutcome, parse_duration, recommend, run_methods
from powertrain.flywheel.base import Progress as TrainProgress
from powertrain.flywheel.jobs import FineTuneRequest, FineTuning
from powertrain.flywheel.scoring import Scoreboard
from powertrain.flywheel.views import job_json
from powertrain.gateway import Gateway
from powertrain.store.finetune import JobRecord

# Flags that are shorthand for a method's settings (each method checks its own).
_SETTING_FLAGS = ("epochs", "learning_rate", "rank", "batch_size", "max_steps")


@contextlib.contextmanager
def _service(config: Config) -> Iterator[tuple[Gateway, FineTuning]]:
    """A gateway (not started: training needs only its store) and the jobs over it.

    Scoring starts and closes the gateway in its own event loop (``_score``)."""
    gateway = Gateway(config)
    try:
        gateway.tasks.registry.sync_config()
        gateway.registered.load()
        yield gateway, FineTuning.of(gateway)
    finally:
        gateway.database.dispose()


def _settings(values: dict[str, Any], pairs: tuple[str, ...]) -> dict[str, Any]:
    settings = {name: values[name] for name in _SETTING_FLAGS if values.get(name) is not None}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name.strip():
            raise InvalidRequest(f"--set {pair!r} must look like name=value")
        try:
            settings[name.strip()] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            settings[name.strip()] = raw  # a bare word is a string
    return settings


def _out(as_json: bool) -> Console:
    return err_console if as_json else console  # JSON on stdout, bars and tables on stderr


@click.group(invoke_without_command=True)
@click.option("--task", "task", default=None, help="The task to tune for.")
@click.option("--dataset", default=None, metavar="NAME[@VERSION]", help="Its training data.")
@click.option(
    "--method",
    default="lora",
    show_default=True,
    help="lora, prompt-tuning, classifier, or auto (try each within --time-budget).",
)
@click.option("--base", default=None, help="Catalog model to tune (default: the variant's).")
@click.option("--variant", default=None, help="Variant whose prompt the examples use.")
@click.option("--encoder", default="minilm", show_default=True, help="Embedding model.")
@click.option("--epochs", type=click.IntRange(1, 1000), default=None)
@click.option("--learning-rate", "learning_rate", type=float, default=None)
@click.option("--rank", type=click.IntRange(1, 512), default=None, help="LoRA rank.")
@click.option("--batch-size", "batch_size", type=click.IntRange(1, 4096), default=None)
@click.option("--max-steps", "max_steps", type=click.IntRange(1), default=None)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--set", "pairs", multiple=True, metavar="NAME=VALUE", help="Any method setting.")
@click.option("--limit", type=click.IntRange(1), default=None, help="At most N training rows.")
@click.option(
    "--score/--no-score", default=True, show_default=True, help="Score on the test split."
)
@click.option("--score-limit", type=click.IntRange(1), default=None, help="At most N test rows.")
@click.option("--time-budget", default="30m", show_default=True, help="With --method auto.")
@config_option
@json_option
@click.pass_context
@friendly_errors
def finetune(ctx: click.Context, /, config_path: str | None, as_json: bool, **options: Any) -> None:
    """Fine-tune a local model on a task's dataset, register it, and score it.

    \b
    powertrain finetune --task banking77 --dataset b77-train --method lora --epochs 2
    powertrain finetune --task banking77 --dataset b77-train --method auto
    powertrain finetune list | show JOB | resume JOB | cancel JOB

    The result is a catalog model (e.g. smollm2+banking77-v1) and a variant of the
    task with no traffic; `powertrain promote TASK --variant V --canary 10%` serves it.
    """
    if ctx.invoked_subcommand is not None:
        return
    if not options["task"] or not options["dataset"]:
        raise click.UsageError(
            "--task and --dataset are needed to train (or a command: list, show, resume, cancel)"
        )
    request = FineTuneRequest(
        task=options["task"],
        dataset=options["dataset"],
        method=options["method"],
        base=options["base"],
        variant=options["variant"],
        encoder=options["encoder"],
        seed=options["seed"],
        settings=_settings(options, options["pairs"]),
        limit=options["limit"],
        score=options["score"],
    )
    config = load(config_path)
    out = _out(as_json)
    with _service(config) as (gateway, service):
        if request.method == "auto":
            budget = parse_duration(options["time_budget"])
            _auto(gateway, service, request, budget, options, out, as_json)
            return
        job = service.create(request)
        out.print(f"job [bold]{job.id}[/bold]: {job.method} on {escape(job.dataset_ref)}")
        job = _train(service, job, out, resume=False)
        _after_training(gateway, service, job, options, out, as_json)


def _train(service: FineTuning, job: JobRecord, out: Console, *, resume: bool) -> JobRecord:
    with progress_bar(out, job.method) as report:
        return service.run(job.id, progress=report, resume=resume)


def _after_training(
    gateway: Gateway,
    service: FineTuning,
    job: JobRecord,
    options: dict[str, Any],
    out: Console,
    as_json: bool,
) -> None:
    out.print(job_table(job))
    board = None
    if options.get("score", True) and job.variant:
        board = _score(gateway, service, job, [job.variant, job.params["variant"]], options, out)
        if board is not None:
            job = service.get(job.id)
    if as_json:
        print_json(job_json(job))
        return
    out.print(
        f"\nmodel [bold]{escape(job.model_alias or '')}[/bold] is variant "
        f"[bold]{escape(job.variant or '')}[/bold] of task {escape(job.task)} (no traffic yet):\n"
        f"  powertrain promote {job.task} --variant {job.variant} --canary 10%"
    )


def _score(
    gateway: Gateway,
    service: FineTuning,
    job: JobRecord,
    variants: list[str],
    options: dict[str, Any],
    out: Console,
) -> Scoreboard | None:
    try:
        with progress_bar(out, "scoring") as report:

            def progress(done: int, total: int) -> None:
                report(TrainProgress(step=done, total=total, phase="calls"))

            board = asyncio.run(
                service.score(
                    gateway, job, variants, limit=options.get("score_limit"), progress=progress
                )
            )
    except PowertrainError as exc:
        out.print(f"[yellow]not scored:[/yellow] {escape(exc.message)}")
        return None
    price = service.config.settings.compute_price_per_hour
    title = f"served on the {board.split} split of {job.dataset_ref} (eval run {board.run_id})"
    out.print(score_table(board, price, title))
    return board


def _auto(
    gateway: Gateway,
    service: FineTuning,
    request: FineTuneRequest,
    budget: float,
    options: dict[str, Any],
    out: Console,
    as_json: bool,
) -> None:

    def train(job: JobRecord) -> JobRecord:
        out.print(f"job [bold]{job.id}[/bold]: {job.method}")
        return _train(service, job, out, resume=False)

    outcomes = run_methods(service, request, budget, train)
    tuned = [o for o in outcomes if o.variant is not None]
    board = None
    if tuned and options.get("score", True):
        assert tuned[0].job is not None
        base_variant = tuned[0].job.params["variant"]
        variants = [base_variant, *[o.variant for o in tuned if o.variant]]
        board = _score(gateway, service, tuned[0].job, variants, options, out)
        if board is not None:
            for outcome in tuned:
                assert outcome.job is not None
                outcome.job = service.record_score(outcome.job.id, board)
    price = service.config.settings.compute_price_per_hour
    choice = recommend(outcomes, board, price) if board is not None else None
    if as_json:
        print_json(_auto_json(outcomes, board, price, choice))
        return
    out.print(_auto_table(outcomes, board, price))
    if choice is not None:
        out.print(
            f"\nrecommended: [bold]{choice.method}[/bold] ({escape(choice.why)}):\n"
            f"  powertrain promote {request.task} --variant {choice.variant} --canary 10%"
        )


def _auto_table(outcomes: list[MethodOutcome], board: Scoreboard | None, price: float) -> Table:
    table = Table(title="fine-tuning methods", title_justify="left")
    for column in (
        "method",
        "status",
        "test accuracy",
        "training time",
        "served speed",
        "$ / 1k calls",
        "model",
    ):
        table.add_column(column)
    if board is not None:
        for base in board.variants.values():
            if not any(o.variant == base.variant for o in outcomes):
                table.add_row(
                    f"base ({escape(base.variant)})",
                    "",
                    f"{base.accuracy:.1%}",
                    "",
                    speed(base.tokens_per_second, base.calls_per_second),
                    f"{base.cost_per_1k(price):.4f}",
                    escape(base.model or ""),
                )
    for o in outcomes:
        score = board.variants.get(o.variant) if board is not None and o.variant else None
        job = o.job
        table.add_row(
            o.method,
            o.status + (f": {escape(o.reason)}" if o.reason else ""),
            f"{score.accuracy:.1%}" if score else "",
            f"{job.duration_s:.0f} s" if job is not None and job.duration_s else "",
            speed(score.tokens_per_second, score.calls_per_second) if score else "",
            f"{score.cost_per_1k(price):.4f}" if score else "",
            escape(job.model_alias or "") if job is not None else "",
        )
    return table


def _auto_json(
    outcomes: list[MethodOutcome], board: Scoreboard | None, price: float, choice: Any
) -> dict[str, Any]:
    scores = board.variants if board is not None else {}
    return {
        "eval_run": board.run_id if board is not None else None,
        "base": [
            s.to_json(price) for v, s in scores.items() if not any(o.variant == v for o in outcomes)
        ],
        "methods": [
            {
                "method": o.method,
                "status": o.status,
                "reason": o.reason,
                "job": o.job.id if o.job else None,
                "model": o.job.model_alias if o.job else None,
                "variant": o.variant,
                "training_seconds": o.job.duration_s if o.job else None,
                "score": scores[o.variant].to_json(price) if o.variant in scores else None,
            }
            for o in outcomes
        ],
        "recommended": None
        if choice is None
        else {"method": choice.method, "variant": choice.variant, "why": choice.why},
    }


@finetune.command("list")
@click.option("--task", default=None, help="Only this task's jobs.")
@click.option("-n", "count", type=click.IntRange(1, 10_000), default=50, show_default=True)
@config_option
@json_option
@friendly_errors
def list_cmd(task: str | None, count: int, config_path: str | None, as_json: bool) -> None:
    """Fine-tuning jobs, newest first."""
    with _service(load(config_path)) as (_gateway, service):
        jobs = service.list(task=task, limit=count)
    if as_json:
        print_json([job_json(j) for j in jobs])
        return
    console.print(jobs_table(jobs))


@finetune.command("show")
@click.argument("job_id")
@config_option
@json_option
@friendly_errors
def show_cmd(job_id: str, config_path: str | None, as_json: bool) -> None:
    """One job: its status, settings, loss curves and scores."""
    with _service(load(config_path)) as (_gateway, service):
        job = service.get(job_id)
    if as_json:
        print_json(job_json(job))
        return
    console.print(job_table(job))


@finetune.command("resume")
@click.argument("job_id")
@click.option("--score/--no-score", default=True, show_default=True)
@click.option("--score-limit", type=click.IntRange(1), default=None)
@config_option
@json_option
@friendly_errors
def resume_cmd(
    job_id: str, score: bool, score_limit: int | None, config_path: str | None, as_json: bool
) -> None:
    """Continue a failed, cancelled or interrupted job from its last checkpoint."""
    out = _out(as_json)
    with _service(load(config_path)) as (gateway, service):
        job = _train(service, service.get(job_id), out, resume=True)
        _after_training(
            gateway, service, job, {"score": score, "score_limit": score_limit}, out, as_json
        )


@finetune.command("cancel")
@click.argument("job_id")
@config_option
@json_option
@friendly_errors
def cancel_cmd(job_id: str, config_path: str | None, as_json: bool) -> None:
    """Stop a job: a running one stops at its next progress report (and can be resumed)."""
    with _service(load(config_path)) as (_gateway, service):
        job = service.cancel(job_id)
    if as_json:
        print_json(job_json(job))
        return
    console.print(f"job {job.id}: {job.status}")
