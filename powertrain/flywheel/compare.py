"""Which fine-tune to recommend, and a task's methods compared side by side.

One rule, used by ``--method auto`` (``auto.recommend``) and by the web UI's
comparison table: the most accurate variant, or, among those within a point
of it, the cheapest to serve. Everything here is pure: scores in, a choice
out, so the terminal and the browser can never disagree about it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Generic, TypeVar

from powertrain.flywheel.scoring import VariantScore
from powertrain.store.finetune import JobRecord

T = TypeVar("T")

# Accuracy within this of the best counts as a tie, broken by the cost of serving.
TIE = 0.01


@dataclass(frozen=True)
class Choice(Generic[T]):
    item: T
    score: VariantScore
    close: int  # candidates within TIE of the best, the chosen one included

    @property
    def why(self) -> str:
        why = f"{self.score.accuracy:.1%} on {self.score.cases} test rows"
        if self.close > 1:
            return why + f", the cheapest to serve of the {self.close} within {TIE:.0%} of the best"
        return why + ", the most accurate"


def choose(scored: Sequence[tuple[T, VariantScore]], price_per_hour: float) -> Choice[T] | None:
    """The most accurate of ``scored``; within ``TIE`` of it, the cheapest per 1k calls
    (the first listed on an exact tie). None when nothing was scored."""
    if not scored:
        return None
    best = max(score.accuracy for _, score in scored)
    close = [(item, score) for item, score in scored if score.accuracy >= best - TIE]
    item, score = min(close, key=lambda pair: pair[1].cost_per_1k(price_per_hour))
    return Choice(item, score, len(close))


_SCORE_FIELDS = tuple(f.name for f in fields(VariantScore))


def served_score(job: JobRecord) -> VariantScore | None:
    """The job's own score from its scoring run (``metrics["served"]``), or None."""
    served = job.metrics.get("served")
    if not isinstance(served, dict) or any(name not in served for name in _SCORE_FIELDS):
        return None
    try:
        return VariantScore(**{name: served[name] for name in _SCORE_FIELDS})
    except TypeError:
        return None


@dataclass(frozen=True)
class MethodRow:
    job: JobRecord
    score: VariantScore | None  # None: trained but never served on the test split
    accuracy: float | None  # served when scored, else the trainer's own test accuracy
    base_accuracy: float | None  # the variant it was trained from, in the same eval run
    cost_per_1k: float | None
    recommended: bool = False

    @property
    def gain(self) -> float | None:
        if self.accuracy is None or self.base_accuracy is None or self.score is None:
            return None
        return self.accuracy - self.base_accuracy


@dataclass(frozen=True)
class BaseScore:
    variant: str
    accuracy: float
    eval_run: str | None
    job_id: str  # the job whose scoring measured it (the newest)


@dataclass(frozen=True)
class DatasetComparison:
    """The jobs trained on one dataset version: the same test split, so comparable."""

    dataset: str  # NAME@VERSION
    rows: list[MethodRow]
    bases: list[BaseScore]
    recommendation: Choice[JobRecord] | None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def compare_methods(jobs: Sequence[JobRecord], price_per_hour: float) -> list[DatasetComparison]:
    """Every succeeded job, grouped by dataset version (newest first), with the base
    variants' scores and the recommendation of each group (``choose``)."""
    groups: dict[str, list[JobRecord]] = {}
    for job in sorted(jobs, key=lambda j: j.created_at, reverse=True):
        if job.status == "succeeded":
            groups.setdefault(job.dataset_ref, []).append(job)
    out = []
    for dataset, members in groups.items():
        scored = [(job, score) for job in members if (score := served_score(job)) is not None]
        choice = choose(scored, price_per_hour)
        bases: dict[str, BaseScore] = {}
        rows = []
        for job in members:
            score = served_score(job)
            base = str(job.params.get("variant") or "")
            base_accuracy = _number(job.metrics.get(f"variant {base}_accuracy"))
            if base_accuracy is not None and base not in bases:
                run = job.metrics.get("eval_run")
                bases[base] = BaseScore(base, base_accuracy, str(run) if run else None, job.id)
            rows.append(
                MethodRow(
                    job=job,
                    score=score,
                    accuracy=score.accuracy if score else _number(job.metrics.get("test_accuracy")),
                    base_accuracy=base_accuracy,
                    cost_per_1k=score.cost_per_1k(price_per_hour) if score else None,
                    recommended=choice is not None and choice.item.id == job.id,
                )
            )
        out.append(DatasetComparison(dataset, rows, list(bases.values()), choice))
    return out
