"""``powertrain promote``: move a task's traffic to a variant (canary, full), or roll it back."""

from __future__ import annotations

import click
from rich.markup import escape
from rich.table import Table

from powertrain.cli._common import (
    config_option,
    console,
    friendly_errors,
    json_option,
    load,
    print_json,
)
from powertrain.flywheel.promotion import PromotionRequest, Promotions, parse_share
from powertrain.flywheel.views import split_json
from powertrain.store import Database, TaskStore
from powertrain.store.splits import SplitRecord, SplitStore
from powertrain.tasks.registry import TaskRegistry


def _weights(weights: dict[str, float]) -> str:
    total = sum(weights.values()) or 1.0
    shown = [f"{name} {w / total:.0%}" for name, w in sorted(weights.items()) if w > 0]
    return ", ".join(shown) or "none"


def _history_table(task: str, history: list[SplitRecord]) -> Table:
    table = Table(title=f"traffic split history of {task}", title_justify="left")
    for column in ("#", "when", "action", "variant", "split after", "by", "note"):
        table.add_column(column)
    for record in history:
        table.add_row(
            str(record.id),
            record.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            record.action,
            escape(record.variant or ""),
            escape(_weights(record.weights)),
            escape(record.author or ""),
            escape(record.note or ""),
        )
    return table


@click.command()
@click.argument("task")
@click.option("--variant", default=None, help="The variant to promote.")
@click.option("--canary", default=None, metavar="SHARE", help="Give it this share (10%, 0.1).")
@click.option("--full", "full", is_flag=True, help="Give it all the traffic (finish a canary).")
@click.option("--rollback", is_flag=True, help="Undo the promotion in progress or just made.")
@click.option("--history", is_flag=True, help="Show every change of the split instead.")
@click.option("--note", default=None, help="Why, kept in the history.")
@click.option("--author", default=None, help="Who, kept in the history.")
@config_option
@json_option
@friendly_errors
def promote(
    task: str,
    variant: str | None,
    canary: str | None,
    full: bool,
    rollback: bool,
    history: bool,
    note: str | None,
    author: str | None,
    config_path: str | None,
    as_json: bool,
) -> None:
    """Set TASK's traffic split: a canary, a full promotion, or a rollback.

    \b
    powertrain promote banking77 --variant lora-v1 --canary 10%
    powertrain promote banking77 --full          # finish the canary
    powertrain promote banking77 --rollback      # back to the split before it began
    powertrain promote banking77 --history

    Without --canary, --full or --rollback, --variant V is promoted fully.
    The other variants keep serving when a call pins them.
    """
    chosen = [flag for flag, on in (("--canary", canary), ("--full", full)) if on]
    chosen += ["--rollback"] if rollback else []
    chosen += ["--history"] if history else []
    if len(chosen) > 1:
        raise click.UsageError(f"{' and '.join(chosen)} cannot be used together")
    config = load(config_path)
    database = Database(config.settings.resolved_database_url)
    try:
        registry = TaskRegistry(
            TaskStore(database),
            config.tasks,
            refresh_interval=0,
            splits=SplitStore(database),
        )
        registry.sync_config()
        promotions = Promotions(registry, registry.splits)
        if history:
            records = promotions.history(task)
            if as_json:
                print_json([split_json(r) for r in records])
            else:
                console.print(_history_table(task, records))
            return
        if rollback:
            request = PromotionRequest("rollback", author=author, note=note)
        elif canary is not None:
            request = PromotionRequest(
                "canary", variant, parse_share(canary), author=author, note=note
            )
        else:
            if variant is None and not full:
                raise click.UsageError("name the variant (--variant V), or use --full/--rollback")
            request = PromotionRequest("full", variant, author=author, note=note)
        record = promotions.apply(task, request)
    finally:
        database.dispose()
    if as_json:
        print_json(split_json(record))
        return
    console.print(
        f"{escape(task)}: {record.action} {escape(record.variant or '')} → "
        f"[bold]{escape(_weights(record.weights))}[/bold] (was {escape(_weights(record.previous))})"
    )
