"""The steps of the flywheel a script plays here: traffic with its labeller, data, the summary.

    python examples/banking77/flywheel.py traffic --per-intent 4
    python examples/banking77/flywheel.py rows --per-intent 8 -o methods.jsonl
    python examples/banking77/flywheel.py summary --job ft_… --run ev_…

``traffic`` is the product in use: customer messages from the train split go
through the ``banking77`` task (its served variant, traced like any call), and a
labeller — this program, standing in for a person with the true labels — gives
each answer feedback: a thumb up when the intent is right, a thumb down and the
correct intent when it is not. Those traces and their feedback are what
``powertrain dataset create --from-traces --feedback any`` turns into training
data. ``rows`` writes a dataset file instead: train messages, and the held-out
slice pinned as the test split, so ``finetune --method auto`` scores every method
on the held-out slice (``methods.sh``). ``summary`` prints what the loop
measured. ``flywheel.sh`` runs the loop.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from prepare import DEFAULT_DATA, TASK, Row, load_split  # noqa: E402

from powertrain import AsyncClient, PowertrainError  # noqa: E402

console = Console()


def traffic_rows(train: list[Row], shots: list[Row], per_intent: int, seed: int) -> list[Row]:
    """``per_intent`` train messages of every intent, picked by hash (not the few-shot ones),
    in rounds of one per intent so a partial run still covers them all."""
    shown = {r.row for r in shots}
    by_intent: dict[str, list[Row]] = {}
    for row in train:
        if row.row not in shown:
            by_intent.setdefault(row.intent, []).append(row)

    def rank(row: Row) -> str:
        return hashlib.sha256(f"{seed}\0traffic\0{row.text}".encode()).hexdigest()

    ranked = {k: sorted(v, key=rank)[:per_intent] for k, v in sorted(by_intent.items())}
    return [rows[i] for i in range(per_intent) for rows in ranked.values() if i < len(rows)]


async def traffic(args: argparse.Namespace) -> int:
    split = load_split(args.data)
    rows = traffic_rows(split.train, split.shots, args.per_intent, args.seed)
    right = errors = 0
    started = time.monotonic()
    columns = (TextColumn("traffic"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    async with AsyncClient(args.config, source="flywheel-traffic") as client:
        with Progress(*columns, console=console) as bar:
            job = bar.add_task("traffic", total=len(rows))
            for row in rows:
                try:
                    result = await client.run_task(TASK, {"text": row.text})
                except PowertrainError:
                    errors += 1  # traced as an error; no feedback to give on it
                    bar.advance(job)
                    continue
                predicted = result.output.get("intent") if isinstance(result.output, dict) else None
                if predicted == row.intent:
                    right += 1
                    await client.feedback(result.trace_id, thumb="up", author="labeller")
                else:
                    await client.feedback(
                        result.trace_id,
                        thumb="down",
                        correction={"intent": row.intent},
                        author="labeller",
                    )
                bar.advance(job)
    seconds = time.monotonic() - started
    console.print(
        f"{len(rows)} messages through task {TASK!r} in {seconds:.0f} s: {right} right "
        f"({right / max(1, len(rows)):.1%}), {len(rows) - right - errors} corrected, "
        f"{errors} errors"
    )
    return 0


def rows(args: argparse.Namespace) -> int:
    split = load_split(args.data)
    train = traffic_rows(split.train, split.shots, args.per_intent, args.seed)
    # The held-out slice is in rounds of one message per intent: any prefix is balanced.
    heldout = split.heldout[: args.heldout_limit]
    with args.output.open("w", encoding="utf-8") as out:
        for row, pin in [*((r, "train") for r in train), *((r, "test") for r in heldout)]:
            record = {"vars": {"text": row.text}, "expected": {"intent": row.intent}, "split": pin}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    console.print(f"{args.output}: {len(train)} train rows, {len(heldout)} held-out (test)")
    return 0


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def summary(args: argparse.Namespace) -> int:
    job = _json(args.job)
    run = _json(args.run)
    targets = {t["target"]: t for t in run["targets"]}
    base = targets.get(f"task:{TASK}@{args.base_variant}")
    tuned = targets.get(f"task:{TASK}@{job['variant']}")
    if base is None or tuned is None:
        raise SystemExit(f"{args.run}: the run has no results for both variants")
    served = job["metrics"].get("served") or {}
    table = Table(title="the Banking77 flywheel, measured", title_justify="left")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("held-out messages", str(base["results"])),
        (f"base accuracy ({args.base_variant}, smollm2)", f"{base['pass_rate']:.1%}"),
        (f"tuned accuracy ({job['variant']}, {job['model']})", f"{tuned['pass_rate']:.1%}"),
        ("training examples", str(job["metrics"].get("train_examples", ""))),
        ("training time", f"{job['duration_s']:.0f} s"),
        ("eval loss on the test split (base → tuned)", _losses(job["metrics"])),
        ("tuned served speed (tok/s, model time)", _number(served.get("tokens_per_second"))),
        (
            "held-out p50 latency (base / tuned, ms)",
            f"{base['p50_latency_ms']:.0f} / {tuned['p50_latency_ms']:.0f}",
        ),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    if args.json:
        print(json.dumps({name: value for name, value in rows}, indent=2))
    return 0


def _losses(metrics: dict[str, Any]) -> str:
    base, final = metrics.get("base_eval_loss"), metrics.get("eval_loss")
    if isinstance(base, int | float) and isinstance(final, int | float):
        return f"{base:.3f} → {final:.3f}"
    return ""


def _number(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, int | float) else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(HERE / "powertrain.toml"))
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("traffic", help="serve train messages and label the answers")
    run.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Banking77 directory")
    run.add_argument("--per-intent", type=int, default=4)
    run.add_argument("--seed", type=int, default=7)
    data = commands.add_parser("rows", help="a dataset file: train rows + the held-out slice")
    data.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Banking77 directory")
    data.add_argument("--per-intent", type=int, default=8)
    data.add_argument("--seed", type=int, default=7)
    data.add_argument("--heldout-limit", type=int, default=None, help="the first N held-out")
    data.add_argument("-o", "--output", type=Path, required=True)
    report = commands.add_parser("summary", help="print what the loop measured")
    report.add_argument("--job", type=Path, required=True, help="`finetune show --json` output")
    report.add_argument("--run", type=Path, required=True, help="`eval run --json` output")
    report.add_argument("--base-variant", default="zero_shot")
    report.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "traffic":
        return asyncio.run(traffic(args))
    if args.command == "rows":
        return rows(args)
    return summary(args)


if __name__ == "__main__":
    sys.exit(main())
