"""LoRA (or prompt tuning) on Banking77: training time, eval loss, and served accuracy.

Trains ``--method lora`` (or ``prompt-tuning``) on ``--per-intent`` messages of
each of the 77 intents from the Banking77 example's train split
(``examples/banking77/data/train.jsonl``, written by ``prepare.py``; a
deterministic sample ranked by a SHA-256 of the seed and the text), with
``--eval-per-intent`` other train-split messages per intent as the test split
the trainer reports its eval loss on. Examples are rendered by the example's
own task (``examples/banking77/powertrain.toml``, zero-shot variant), as the
jobs layer renders them.

The trained model is then served as the trainer's catalog entry says (the
llamacpp engine with the GGUF adapter, or the transformers engine) and
measured on the example's 385 held-out messages through
``AsyncClient.run_task`` — the same path as ``examples/banking77/evaluate.py``,
with the task's grammar — against the base model's 19.2 % zero-shot
(``--base`` measures the base again, in the same conditions).

    nice -n 5 .venv/bin/python -m bench.flywheel.lora_banking77 [--per-intent 4] \\
        [--set learning_rate=1e-3 --set epochs=3 …] [--threads 1] [--limit N] [--json -]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.results import add_json_option, publish
from powertrain import AsyncClient
from powertrain.catalog import BUNDLED_EMBEDDING_MODEL, BUNDLED_MODEL, Catalog, ModelConfig
from powertrain.config import Config, load_config
from powertrain.flywheel.base import Progress, TrainedModel, TrainingExample, TrainingPlan
from powertrain.flywheel.registry import trainer
from powertrain.tasks.prompt import build_messages
from powertrain.tasks.variables import bind_variables

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "banking77"
TASK = "banking77"
VARIANT = "zero_shot"
BASE_ZERO_SHOT = 0.192  # examples/banking77/README.md, 385 held-out messages

sys.path.insert(0, str(EXAMPLE))
from evaluate import evaluate  # noqa: E402
from prepare import Row  # noqa: E402


def read_rows(name: str) -> list[Row]:
    path = EXAMPLE / "data" / f"{name}.jsonl"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run examples/banking77/prepare.py first")
    with path.open(encoding="utf-8") as handle:
        return [Row(**json.loads(line)) for line in handle]


def per_intent(rows: list[Row], first: int, count: int, seed: int) -> list[Row]:
    """Ranks ``first .. first+count`` of each intent's rows (by hash), in rounds over intents."""
    by_intent: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        by_intent[row.intent].append(row)

    def rank(row: Row) -> str:
        return hashlib.sha256(f"{seed}\0lora\0{row.text}".encode()).hexdigest()

    ranked = [sorted(v, key=rank)[first : first + count] for _, v in sorted(by_intent.items())]
    return [group[k] for k in range(count) for group in ranked if k < len(group)]


def plan_for(
    config: Config, train: list[Row], test: list[Row], method_settings: dict[str, Any], seed: int
) -> TrainingPlan:
    version = config.tasks[TASK].version
    contract = version.contract()

    def example(row: Row, split: Any) -> TrainingExample:
        values = bind_variables(version.variables, {"text": row.text}, where=f"row {row.row}")
        messages = build_messages(version, values, [], where=f"task {TASK!r}")
        reference = {"intent": row.intent}
        return TrainingExample(
            messages, contract.example_reply(reference, None), reference, split, row.row
        )

    return TrainingPlan(
        job_id="bench",
        task=TASK,
        task_version=1,
        variant=VARIANT,
        base=BUNDLED_MODEL,
        encoder=BUNDLED_EMBEDDING_MODEL,
        train=[example(r, "train") for r in train],
        test=[example(r, "test") for r in test],
        output_schema=version.output_schema,
        seed=seed,
        settings=method_settings,
    )


def with_tuned(config: Config, trained: TrainedModel | None, threads: int) -> Config:
    """The example's config plus the trained model as the pinned-only variant ``tuned``."""
    models = []
    for model in config.catalog:
        if model.engine == "llamacpp":
            model = model.model_copy(update={"options": {**model.options, "n_threads": threads}})
        models.append(model)
    tasks = dict(config.tasks)
    if trained is not None:
        options = dict(trained.options)
        options["n_threads"] = threads
        models.append(
            ModelConfig(
                alias="tuned",
                engine=trained.engine,
                model=trained.model,
                options=options,
                context_window=trained.context_window,
                params={**BUNDLED_MODEL.params, **trained.params},
            )
        )
        # The variant the examples were rendered with, on the tuned model and pinned only:
        # the same prompt (zero-shot: no few-shot examples) it was trained on.
        task = tasks[TASK]
        variants = task.settings.effective_variants()
        tuned = variants[VARIANT].model_copy(update={"model": "tuned", "weight": 0})
        variants = {**variants, "tuned": tuned}
        tasks[TASK] = task.model_copy(
            update={"settings": task.settings.model_copy(update={"variants": variants})}
        )
    return dataclasses.replace(config, catalog=Catalog(models), tasks=tasks)


async def served_accuracy(config: Config, variants: list[str], rows: list[Row]) -> dict[str, Any]:
    out = {}
    async with AsyncClient(config, source="bench-lora") as client:
        for variant in variants:
            started = time.perf_counter()
            report = await evaluate(client, variant, rows)
            summary = report.summary()
            summary["wall_s"] = round(time.perf_counter() - started, 1)
            out[variant] = summary
    return out


def served_only(adapter: Path) -> TrainedModel:
    """The catalog entry for an adapter trained before: a GGUF for llama.cpp, else a PEFT dir."""
    metrics = adapter.parent / "metrics.json"
    saved = json.loads(metrics.read_text()) if metrics.is_file() else {}
    if adapter.suffix == ".gguf":
        options = {"lora_path": str(adapter)}
        return TrainedModel("llamacpp", None, options, BUNDLED_MODEL.context_window, saved)
    return TrainedModel("transformers", None, {"adapter": str(adapter)}, None, saved)


def parse_setting(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--set {text!r}: expected KEY=VALUE")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def measure(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="lora-b77-"))
    os.environ["POWERTRAIN_HOME"] = str(workdir / "home")  # the traces; read by load_config
    config = load_config(EXAMPLE / "powertrain.toml")
    settings = dict(args.set or [])
    settings.setdefault("threads", args.threads)
    train = per_intent(read_rows("train"), 0, args.per_intent, args.seed)
    test = per_intent(read_rows("train"), args.per_intent, args.eval_per_intent, args.seed)
    heldout = read_rows("heldout")[: args.limit]
    plan = plan_for(config, train, test, settings, args.seed)
    method = trainer(args.method)
    log: list[dict[str, Any]] = []

    def progress(report: Progress) -> None:
        line = {"step": report.step, "total": report.total, "phase": report.phase, **report.metrics}
        log.append({**line, "t": round(time.perf_counter() - started, 1)})
        print(json.dumps(log[-1]), file=sys.stderr, flush=True)

    load = os.getloadavg()
    started = time.perf_counter()
    if args.serve_only:  # a run already trained into --workdir: measure its adapter again
        trained = served_only(Path(args.serve_only))
    else:
        trained = method.train(plan, workdir, progress, resume=args.resume)
        (workdir / "metrics.json").write_text(json.dumps(trained.metrics), encoding="utf-8")
    train_seconds = time.perf_counter() - started
    variants = (["zero_shot"] if args.base else []) + ([] if args.no_serve else ["tuned"])
    served = (
        asyncio.run(served_accuracy(with_tuned(config, trained, args.threads), variants, heldout))
        if variants
        else {}
    )
    return {
        "method": args.method,
        "settings": method.settings(plan).model_dump(),
        "train_messages": len(plan.train),
        "eval_loss_messages": len(plan.test),
        "heldout_messages": len(heldout),
        "seed": args.seed,
        "train_seconds_total": round(train_seconds, 1),
        "engine": trained.engine,
        "metrics": trained.metrics,
        "curves": trained.curves,
        "served": served,
        "base_zero_shot_accuracy_readme": BASE_ZERO_SHOT,
        "workdir": str(workdir),
        "load_before": [round(x, 2) for x in load],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="lora", choices=["lora", "prompt-tuning"])
    parser.add_argument("--per-intent", type=int, default=4, help="training messages per intent")
    parser.add_argument(
        "--eval-per-intent", type=int, default=1, help="eval-loss messages per intent"
    )
    parser.add_argument("--set", type=parse_setting, action="append", metavar="KEY=VALUE")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--limit", type=int, help="only the first N held-out messages")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base", action="store_true", help="also measure the base (zero_shot)")
    parser.add_argument("--no-serve", action="store_true", help="train only")
    parser.add_argument("--workdir", help="keep the adapter and checkpoints here")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--serve-only", metavar="ADAPTER", help="skip training: serve this adapter")
    add_json_option(parser)
    args = parser.parse_args()
    document = measure(args)

    def table() -> str:
        m = document["metrics"]
        lines = ["| measure | value |", "|---|---|"]
        rows = {
            "train messages": document["train_messages"],
            "steps": m.get("steps"),
            "epochs": m.get("epochs"),
            "train seconds": document["train_seconds_total"],
            "seconds per step": m.get("seconds_per_step"),
            "base eval loss": m.get("base_eval_loss"),
            "final eval loss": m.get("eval_loss"),
            "final train loss": m.get("train_loss"),
        }
        for variant, s in document["served"].items():
            rows[f"{variant} accuracy"] = f"{s['accuracy']:.1%} ({s['correct']}/{s['n']})"
            rows[f"{variant} valid"] = f"{s['valid_rate']:.1%}"
            rows[f"{variant} p50 s"] = s["latency_p50_s"]
        for key, value in rows.items():
            shown = f"{value:.4g}" if isinstance(value, float) else str(value)
            lines.append(f"| {key} | {shown} |")
        return "\n".join(lines)

    publish(document, f"flywheel-{document['method']}-banking77", table, args.json)


if __name__ == "__main__":
    main()
