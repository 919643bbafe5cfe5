"""The classifier method on Banking77: accuracy, calibration, training and serving time.

Trains ``--method classifier`` (all-MiniLM-L6-v2 embeddings, the bundled
encoder) on ``--train`` messages of Banking77's ``train.csv`` (CC-BY-4.0, in
``../shared/data/banking77``): a deterministic sample (ranked by a SHA-256 of
the seed and the text) of the rows that are not in the example's held-out
slice (``examples/banking77/data/heldout_rows.txt``). The test split is those
385 held-out messages. Examples are rendered by the example's own task
(``examples/banking77/powertrain.toml``, zero-shot variant), as the jobs
layer does. Then the trained model is served by the ``classifier`` engine,
called directly (no HTTP), one call at a time over the held-out messages:
calls/s, and per-call model time split into the encoder and the head.

The encoder runs on ``--threads`` torch threads (default 1: "on one core"; on
a machine whose cores are busy with other work, two threads were measured 5 to
8 times slower than one). The load average is recorded with the results.

    nice -n 5 .venv/bin/python -m bench.flywheel.classifier [--train 3000] [--threads 1] [--json -]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.results import add_json_option, publish
from powertrain.catalog import BUNDLED_EMBEDDING_MODEL, BUNDLED_MODEL, ModelConfig
from powertrain.config import load_config
from powertrain.engines.classifier import ClassifierEngine
from powertrain.flywheel.base import Progress, TrainingExample, TrainingPlan
from powertrain.flywheel.classifier import ClassifierTrainer
from powertrain.schemas import ChatCompletionRequest
from powertrain.tasks.prompt import build_messages

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "banking77"
DATA = REPO.parent / "shared" / "data" / "banking77" / "train.csv"
TASK = "banking77"
VARIANT = "zero_shot"


def load_rows() -> tuple[list[tuple[str, str]], list[int]]:
    with DATA.open(newline="", encoding="utf-8") as handle:
        rows = [(r["text"], r["category"]) for r in csv.DictReader(handle)]
    held = [int(x) for x in (EXAMPLE / "data" / "heldout_rows.txt").read_text().split()]
    return rows, held


def sample(rows: list[tuple[str, str]], held: list[int], n: int, seed: int) -> list[int]:
    excluded = set(held)

    def rank(i: int) -> tuple[str, int]:
        return hashlib.sha256(f"{seed}\0train\0{rows[i][0]}".encode()).hexdigest(), i

    return sorted((i for i in range(len(rows)) if i not in excluded), key=rank)[:n]


def plan_for(train_rows: list[int], test_rows: list[int], seed: int, threads: int) -> TrainingPlan:
    config = load_config(EXAMPLE / "powertrain.toml")
    task = config.tasks[TASK]
    version = task.version
    rows, _ = load_rows()

    def example(i: int, split: Any) -> TrainingExample:
        text, intent = rows[i]
        messages = build_messages(version, {"text": text}, [], where=f"task {TASK!r}")
        reference = {"intent": intent}
        return TrainingExample(messages, json.dumps(reference), reference, split, i)

    return TrainingPlan(
        job_id="bench",
        task=TASK,
        task_version=1,
        variant=VARIANT,
        base=BUNDLED_MODEL,
        encoder=BUNDLED_EMBEDDING_MODEL.model_copy(update={"options": {"n_threads": threads}}),
        train=[example(i, "train") for i in train_rows],
        test=[example(i, "test") for i in test_rows],
        output_schema=version.output_schema,
        seed=seed,
    )


async def serve(directory: str, texts: list[str], intents: list[str]) -> dict[str, Any]:
    engine = ClassifierEngine(ModelConfig(alias="clf", engine="classifier", model=directory))
    await engine.start()
    try:
        requests = [
            ChatCompletionRequest(model="clf", messages=[{"role": "user", "content": t}])
            for t in texts
        ]
        await engine.chat(requests[0])  # warm-up: first-call allocations
        compute, correct = [], 0
        started, cpu_started = time.perf_counter(), time.process_time()
        for request, intent in zip(requests, intents, strict=True):
            result = await engine.chat(request)
            compute.append(result.compute_seconds or 0.0)
            correct += json.loads(result.content)["intent"] == intent
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        encoder, vectors = [], []
        for text in texts:
            t0 = time.perf_counter()
            vectors.append((await engine.encoder.embed([text])).vectors[0])
            encoder.append(time.perf_counter() - t0)
        head = engine._head
        assert head is not None
        matrix = np.asarray(vectors, dtype=np.float32)
        t0 = time.perf_counter()
        for row in matrix:
            engine._answer(head.probabilities(row[None, :])[0], None, prompt_tokens=0, seconds=0)
        head_seconds = (time.perf_counter() - t0) / len(matrix)
    finally:
        await engine.aclose()
    return {
        "served_accuracy": correct / len(texts),
        "calls_per_second": len(texts) / wall,
        "model_ms_per_call_median": 1000 * statistics.median(compute),
        "cpu_ms_per_call": 1000 * cpu / len(texts),
        "encoder_ms_per_call_median": 1000 * statistics.median(encoder),
        "head_ms_per_call": 1000 * head_seconds,
    }


def measure(n_train: int, seed: int, threads: int) -> dict[str, Any]:
    rows, held = load_rows()
    plan = plan_for(sample(rows, held, n_train, seed), held, seed, threads)
    load_before = os.getloadavg()[0]
    # CPU seconds (every thread of this process) when each phase began: with one torch
    # and one BLAS thread they are time on one core, however busy the machine is.
    cpu: dict[str, float] = {}

    def progress(report: Progress) -> None:
        cpu.setdefault(report.phase, time.process_time())

    with tempfile.TemporaryDirectory() as work:
        started, cpu_started = time.perf_counter(), time.process_time()
        trained = ClassifierTrainer().train(plan, Path(work), progress)
        total, cpu_total = time.perf_counter() - started, time.process_time() - cpu_started
        served = asyncio.run(
            serve(
                str(trained.model),
                [rows[i][0] for i in held],
                [rows[i][1] for i in held],
            )
        )
    m = trained.metrics
    return {
        "train_messages": m["train_examples"],
        "test_messages": m["test_examples"],
        "seed": seed,
        "encoder_threads": threads,
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "test_accuracy": m["test_accuracy"],
        "test_macro_f1": m["test_macro_f1"],
        "ece_uncalibrated": m["test_ece_uncalibrated"],
        "ece_calibrated": m["test_ece"],
        "log_loss_uncalibrated": m["test_log_loss_uncalibrated"],
        "log_loss_calibrated": m["test_log_loss"],
        "temperature": m["temperature"],
        "C": m["C"],
        "cv_accuracy": m["cv_accuracy"],
        "embed_seconds": m["embed_seconds"],
        "fit_seconds": m["fit_seconds"],
        "train_seconds_total": total,
        "embed_cpu_seconds": cpu["fit"] - cpu_started,
        "fit_cpu_seconds": cpu["eval"] - cpu["fit"],
        "train_cpu_seconds_total": cpu_total,
        **served,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=3000, help="training messages")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="the encoder's torch threads")
    add_json_option(parser)
    args = parser.parse_args()
    document = measure(args.train, args.seed, args.threads)

    def table() -> str:
        lines = ["| measure | value |", "|---|---|"]
        for key, value in document.items():
            shown = f"{value:.4g}" if isinstance(value, float) else str(value)
            lines.append(f"| {key} | {shown} |")
        return "\n".join(lines)

    publish(document, "flywheel-classifier", table, args.json)


if __name__ == "__main__":
    main()
