"""``powertrain feedback TRACE_ID``: thumbs, a score, a label, a comment or a correction.

Works on the store directly, like ``powertrain logs``, with the admin's reach
(every trace). With no signal given, it prints the trace's feedback.
"""

from __future__ import annotations

from typing import Any

import click
import orjson
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
from powertrain.errors import InvalidRequest
from powertrain.feedback import FeedbackRecord, FeedbackService, feedback_request
from powertrain.store import Database


def _correction(text: str | None, as_json: bool) -> Any:
    if text is None or not as_json:
        return text
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"--correct is not valid JSON ({exc})") from None


@click.command()
@click.argument("trace_id")
@click.option("--up", "thumb", flag_value="up", default=None, help="Thumbs up.")
@click.option("--down", "thumb", flag_value="down", help="Thumbs down.")
@click.option("--score", type=float, default=None, help="A numeric score.")
@click.option("--scale", type=float, default=None, help="The score's maximum (e.g. 5).")
@click.option("--label", default=None, help="A category, e.g. billing.")
@click.option("--comment", default=None, help="Free text.")
@click.option("--correct", "correct", default=None, help="The output it should have been.")
@click.option("--correct-json", is_flag=True, help="Read --correct as a JSON value.")
@click.option(
    "--source",
    type=click.Choice(["human", "program"]),
    default="human",
    show_default=True,
    help="Who gave it.",
)
@click.option("--author", default=None, help="A name for who gave it.")
@config_option
@json_option
@friendly_errors
def feedback(
    trace_id: str,
    thumb: str | None,
    score: float | None,
    scale: float | None,
    label: str | None,
    comment: str | None,
    correct: str | None,
    correct_json: bool,
    source: str,
    author: str | None,
    config_path: str | None,
    as_json: bool,
) -> None:
    """Give feedback on a trace, or (with no signal) show the feedback it has.

    \b
    Examples:
      powertrain feedback tr_0123 --up --label billing
      powertrain feedback tr_0123 --score 4 --scale 5 --comment "close"
      powertrain feedback tr_0123 --correct '{"intent": "refund"}' --correct-json
    """
    service = FeedbackService(Database(load(config_path).settings.resolved_database_url))
    signals = (thumb, score, label, comment, correct)
    if all(s is None for s in signals):
        records = service.list_for(trace_id, scope=None)
        if as_json:
            print_json([r.to_json() for r in records])
        else:
            _table(trace_id, records)
        return
    body = feedback_request(
        trace_id,
        thumb=thumb,
        score=score,
        scale=scale,
        label=label,
        comment=comment,
        correction=_correction(correct, correct_json),
        source=source,
        author=author,
    )
    record = service.give(body, scope=None)
    if as_json:
        print_json(record.to_json())
        return
    console.print(f"feedback {record.id} recorded on {escape(trace_id)}")


def _table(trace_id: str, records: list[FeedbackRecord]) -> None:
    table = Table(title=f"feedback on {escape(trace_id)}")
    for column in ("time", "source", "author", "thumb", "score", "label"):
        table.add_column(column, no_wrap=True)
    table.add_column("comment / correction", overflow="fold", ratio=1)
    for r in records:
        score = "" if r.score is None else f"{r.score:g}" + (f"/{r.scale:g}" if r.scale else "")
        note = r.comment or ""
        if r.correction is not None:
            corrected = (
                r.correction
                if isinstance(r.correction, str)
                else orjson.dumps(r.correction).decode()
            )
            note = f"{note}\n→ {corrected}" if note else f"→ {corrected}"
        table.add_row(
            r.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            r.source,
            escape(r.author or ""),
            r.thumb or "",
            score,
            escape(r.label or ""),
            escape(note),  # stored text is data: no rich markup in it is interpreted
        )
    console.print(table)
