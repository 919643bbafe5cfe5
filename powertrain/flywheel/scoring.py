"""Scoring a fine-tune: its variant beside the base, on the dataset's test split, served.

The score is an ordinary eval run (stored, listed by ``powertrain eval list``,
comparable with ``eval compare``): the test rows are the cases, the task's
variants the targets, and a case passes when the served output equals the
reference. Every call goes through the gateway, so speed and cost come from
the traces those calls left — what serving the model really took.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from powertrain.datasets.service import Datasets
from powertrain.errors import InvalidRequest
from powertrain.evals.runner import EvalRunner
from powertrain.evals.suite import Case, LoadedSuite, parse_suite
from powertrain.store.evals import EvalResultRecord, EvalStore
from powertrain.store.finetune import JobRecord

if TYPE_CHECKING:
    from powertrain.gateway import Gateway


@dataclass(frozen=True)
class VariantScore:
    """How one variant did on the test split, and what serving it took."""

    variant: str
    model: str | None
    cases: int
    passed: int
    errors: int
    accuracy: float
    compute_seconds: float  # model time over every call (local engines report it)
    completion_tokens: int
    cost_usd: float  # what the traces were charged (hosted models' prices)
    p50_latency_ms: float

    @property
    def tokens_per_second(self) -> float | None:
        if not self.compute_seconds or not self.completion_tokens:
            return None
        return self.completion_tokens / self.compute_seconds

    @property
    def calls_per_second(self) -> float | None:
        return self.cases / self.compute_seconds if self.compute_seconds else None

    def cost_per_1k(self, price_per_hour: float) -> float:
        """USD per 1,000 calls: the traced price plus this machine's time for local models."""
        if not self.cases:
            return 0.0
        local = self.compute_seconds / 3600 * price_per_hour
        return (self.cost_usd + local) / self.cases * 1000

    def to_json(self, price_per_hour: float) -> dict[str, Any]:
        return {
            **asdict(self),
            "tokens_per_second": self.tokens_per_second,
            "calls_per_second": self.calls_per_second,
            "cost_per_1k_calls": self.cost_per_1k(price_per_hour),
        }


@dataclass(frozen=True)
class Scoreboard:
    run_id: str
    split: str
    variants: dict[str, VariantScore]


async def score_variants(
    gateway: Gateway,
    job: JobRecord,
    variants: list[str],
    *,
    split: str = "test",
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Scoreboard:
    """Run the job's dataset split against ``variants`` of its task; one eval run."""
    datasets = Datasets(gateway.database, gateway.tasks.registry)
    _version, records = await asyncio.to_thread(
        datasets.eval_cases, job.owner, job.dataset_ref, split=split, limit=limit
    )
    cases = [
        Case(i, dict(r.get("vars") or {}), r.get("expected"))
        for i, r in enumerate(records)
        if r.get("vars") and r.get("expected") is not None
    ]
    if not cases:
        raise InvalidRequest(
            f"dataset {job.dataset_ref!r} has no {split} rows with variables and a reference "
            "output to score on"
        )
    raw = {
        "name": f"finetune {job.id}",
        "description": f"{job.method} fine-tune of task {job.task!r} on {job.dataset_ref} "
        f"({split} split), beside the variants it is compared with",
        "dataset": {"cases": [{"vars": c.vars, "expected": c.expected} for c in cases]},
        "targets": [{"task": job.task, "variants": variants}],
        "assert": [{"type": "equals"}],
        "concurrency": 1,  # local models answer one call at a time anyway
        "timeout": 300,
    }
    loaded = LoadedSuite(
        suite=parse_suite(raw, where=f"scoring of {job.id}"),
        cases=cases,
        base_dir=gateway.config.settings.home,
        raw=raw,
    )
    store = EvalStore(gateway.database)
    total, done = len(cases) * len(variants), [0]

    def count(_result: EvalResultRecord) -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], total)

    run = await EvalRunner(gateway, store).run(loaded, on_result=count)
    results = await asyncio.to_thread(store.results, run.id)
    task = await gateway.tasks.registry.aget(job.task)
    specs = task.settings.effective_variants()
    scores = {}
    for variant in variants:
        mine = [r for r in results if r.target == f"task:{job.task}@{variant}"]
        spec = specs.get(variant)
        model = (spec.model if spec else None) or task.settings.model
        model = model or gateway.config.settings.default_model
        scores[variant] = await _score(gateway, variant, model, mine)
    return Scoreboard(run_id=run.id, split=split, variants=scores)


async def _score(
    gateway: Gateway, variant: str, model: str | None, results: list[EvalResultRecord]
) -> VariantScore:
    await gateway.traces.flush()
    compute, tokens, cost = 0.0, 0, 0.0
    for result in results:
        if result.trace_id is None:
            continue
        trace = await asyncio.to_thread(gateway.trace_store.get, result.trace_id)
        if trace is None:
            continue
        compute += trace.compute_seconds or 0.0
        tokens += trace.completion_tokens
        cost += trace.cost_usd
    passed = sum(r.status == "pass" for r in results)
    return VariantScore(
        variant=variant,
        model=model,
        cases=len(results),
        passed=passed,
        errors=sum(r.status == "error" for r in results),
        accuracy=passed / len(results) if results else 0.0,
        compute_seconds=compute,
        completion_tokens=tokens,
        cost_usd=cost,
        p50_latency_ms=statistics.median([r.latency_ms for r in results]) if results else 0.0,
    )
