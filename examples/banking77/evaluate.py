"""Measure the banking77 task's variants on the held-out slice.

    python examples/banking77/evaluate.py [--variant zero_shot] [--limit N] [--json]

Every message goes through ``AsyncClient.run_task``, the same path as the
gateway, so each call is a trace in the store (``powertrain logs`` shows them;
their variant and task version are recorded). The calls run one after another:
the local model serves one at a time, and consecutive calls share the evaluated
prompt prefix.

Prints one row per variant: accuracy, valid-output rate, errors, latency
(mean, p50, p95) and tokens. ``--json`` prints the same as JSON instead.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from prepare import DEFAULT_DATA, TASK, Row, load_split  # noqa: E402

from powertrain import AsyncClient, OutputInvalid, PowertrainError  # noqa: E402
from powertrain.catalog import Catalog  # noqa: E402
from powertrain.config import Config, load_config  # noqa: E402


@dataclass
class Outcome:
    row: int
    text: str
    intent: str
    predicted: str | None
    latency: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 0
    trace_id: str | None = None
    error: str | None = None  # the error's class name, when the call raised
    message: str | None = None

    @property
    def valid(self) -> bool:
        return self.error is None

    @property
    def correct(self) -> bool:
        return self.predicted == self.intent


@dataclass
class Report:
    variant: str
    version: int | None = None
    model: str | None = None
    outcomes: list[Outcome] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        n = len(self.outcomes)
        latencies = sorted(o.latency for o in self.outcomes)
        errors: dict[str, int] = {}
        for o in self.outcomes:
            if o.error:
                errors[o.error] = errors.get(o.error, 0) + 1
        prompt = sum(o.prompt_tokens for o in self.outcomes)
        completion = sum(o.completion_tokens for o in self.outcomes)
        return {
            "variant": self.variant,
            "task_version": self.version,
            "model": self.model,
            "n": n,
            "correct": sum(o.correct for o in self.outcomes),
            "accuracy": _ratio(sum(o.correct for o in self.outcomes), n),
            "valid": sum(o.valid for o in self.outcomes),
            "valid_rate": _ratio(sum(o.valid for o in self.outcomes), n),
            "errors": sum(errors.values()),
            "errors_by_type": errors,
            "repaired": sum(o.attempts > 1 for o in self.outcomes),
            "latency_mean_s": round(statistics.fmean(latencies), 3) if n else None,
            "latency_p50_s": _percentile(latencies, 50),
            "latency_p95_s": _percentile(latencies, 95),
            "wall_s": round(sum(latencies), 1),
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _percentile(ordered: list[float], pct: float) -> float | None:
    """Nearest-rank percentile of an already sorted list."""
    if not ordered:
        return None
    rank = max(1, -(-len(ordered) * pct // 100))  # ceil without floats drifting
    return round(ordered[int(rank) - 1], 3)


def with_threads(config: Config, threads: int) -> Config:
    """The same config with every local (llamacpp) model on ``threads`` threads."""
    models = [
        m.model_copy(update={"options": {**m.options, "n_threads": threads}})
        if m.engine == "llamacpp"
        else m
        for m in config.catalog
    ]
    return dataclasses.replace(config, catalog=Catalog(models))


async def evaluate(
    client: AsyncClient,
    variant: str,
    rows: list[Row],
    progress: Progress | None = None,
) -> Report:
    report = Report(variant)
    task = progress.add_task(variant, total=len(rows), acc="") if progress else None
    for row in rows:
        outcome = Outcome(row.row, row.text, row.intent, predicted=None, latency=0.0)
        start = time.perf_counter()
        try:
            result = await client.run_task(TASK, {"text": row.text}, variant=variant)
        except PowertrainError as exc:
            outcome.latency = time.perf_counter() - start
            outcome.error, outcome.message = type(exc).__name__, exc.message
            outcome.trace_id = exc.trace_id
            if isinstance(exc, OutputInvalid) and exc.trace_id:
                trace = await client.trace(exc.trace_id)  # tokens spent on the failed tries
                if trace is not None:
                    outcome.prompt_tokens = trace.prompt_tokens
                    outcome.completion_tokens = trace.completion_tokens
                    outcome.attempts = len(trace.attempts)
        else:
            outcome.latency = time.perf_counter() - start
            outcome.predicted = result.output["intent"]
            outcome.prompt_tokens = result.usage.prompt_tokens
            outcome.completion_tokens = result.usage.completion_tokens
            outcome.attempts, outcome.trace_id = result.attempts, result.trace_id
            report.version, report.model = result.version, result.model
        report.outcomes.append(outcome)
        if progress is not None and task is not None:
            done = report.outcomes
            acc = sum(o.correct for o in done) / len(done)
            progress.update(task, advance=1, acc=f"acc {acc:.1%}")
    return report


def table(summaries: list[dict[str, Any]]) -> Table:
    out = Table(title=f"task {TASK}: held-out slice")
    for name in ("variant", "n", "accuracy", "valid", "errors", "mean s", "p50 s", "p95 s"):
        if name == "variant":
            out.add_column(name, no_wrap=True, min_width=9)
        else:
            out.add_column(name, justify="right")
    out.add_column("tokens", justify="right")
    for s in summaries:
        out.add_row(
            s["variant"],
            str(s["n"]),
            f"{s['accuracy']:.1%}",
            f"{s['valid_rate']:.1%}",
            str(s["errors"]),
            f"{s['latency_mean_s']:.2f}",
            f"{s['latency_p50_s']:.2f}",
            f"{s['latency_p95_s']:.2f}",
            f"{s['total_tokens']:,}",
        )
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=HERE / "powertrain.toml")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Banking77 directory")
    parser.add_argument(
        "--variant",
        action="append",
        help="variant to run (repeat for several; default: every variant of the task)",
    )
    parser.add_argument("--limit", type=int, help="only the first N held-out messages")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--predictions", type=Path, help="write one JSON line per message here")
    parser.add_argument(
        "--threads",
        type=int,
        help="llama.cpp threads (default: every core; 1 is steadier "
        "when other work shares the machine)",
    )
    parser.add_argument("--home", type=Path, help="POWERTRAIN_HOME for the traces")
    return parser.parse_args(argv)


async def amain(args: argparse.Namespace) -> int:
    err = Console(stderr=True)
    if not (args.data / "train.csv").is_file():
        err.print(f"no train.csv in {args.data}; pass --data DIR")
        return 2
    if args.home is not None:
        os.environ["POWERTRAIN_HOME"] = str(args.home)
    config = load_config(args.config)
    if args.threads:
        config = with_threads(config, args.threads)
    if TASK not in config.tasks:
        err.print(f"{args.config} defines no task {TASK!r}")
        return 2
    known = list(config.tasks[TASK].settings.effective_variants())
    variants = args.variant or known
    unknown = [v for v in variants if v not in known]
    if unknown:
        err.print(f"task {TASK!r} has no variant {unknown[0]!r} (variants: {', '.join(known)})")
        return 2
    rows = load_split(args.data).heldout
    if args.limit is not None:
        rows = rows[: max(0, args.limit)]
    reports = []
    columns = (
        TextColumn("{task.description:>10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[acc]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    started = datetime.now(UTC)
    async with AsyncClient(config, source="banking77-eval") as client:
        with Progress(*columns, console=err, transient=args.json) as progress:
            for variant in variants:
                reports.append(await evaluate(client, variant, rows, progress))
    summaries = [r.summary() for r in reports]
    if args.predictions is not None:
        with args.predictions.open("w", encoding="utf-8") as f:
            for report in reports:
                for o in report.outcomes:
                    line = {"variant": report.variant, **dataclasses.asdict(o)}
                    f.write(json.dumps(line, ensure_ascii=False) + "\n")
    if args.json:
        meta = {
            "task": TASK,
            "config": str(args.config),
            "started": started.isoformat(timespec="seconds"),
            "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores",
            "threads": args.threads,
            "limit": args.limit,
        }
        print(json.dumps({**meta, "variants": summaries}, indent=2))
    else:
        Console().print(table(summaries))
    return 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(amain(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
