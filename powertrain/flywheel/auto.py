"""``--method auto``: try every method that applies within a time budget, then recommend one.

The cheapest methods go first (a classifier on embeddings trains in seconds; LoRA
and prompt tuning take minutes), so a tight budget still yields an answer. Each
method is an ordinary job; all of them are then scored in one eval run beside the
base variant, and the recommendation is the most accurate — or, within a point of
it, the cheapest to serve — because a good product says so with numbers instead
of reaching for the heaviest tool first.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from powertrain.errors import InvalidRequest, PowertrainError
from powertrain.flywheel.base import Trainer
from powertrain.flywheel.compare import TIE as TIE  # the rule lives in compare.py
from powertrain.flywheel.compare import choose
from powertrain.flywheel.jobs import FineTuneRequest, FineTuning
from powertrain.flywheel.registry import trainer, trainer_classes
from powertrain.flywheel.scoring import Scoreboard, VariantScore
from powertrain.store.finetune import JobRecord

# Cheapest first; methods a plugin adds come after these, by name.
_ORDER = ("classifier", "lora", "prompt-tuning")


@dataclass
class MethodOutcome:
    method: str
    status: str  # succeeded | failed | cancelled | skipped | not applicable
    reason: str | None = None
    job: JobRecord | None = None

    @property
    def variant(self) -> str | None:
        return self.job.variant if self.job is not None and self.status == "succeeded" else None


@dataclass(frozen=True)
class Recommendation:
    method: str
    variant: str
    why: str


def candidate_methods(service: FineTuning, request: FineTuneRequest) -> list[MethodOutcome]:
    """Every registered method, applicable or not (with the reason), cheapest first."""
    names = sorted(trainer_classes(), key=lambda n: (_ORDER.index(n) if n in _ORDER else 99, n))
    outcomes = []
    for name in names:
        try:
            service.check(request_for(request, name, {}))
        except InvalidRequest as exc:
            outcomes.append(MethodOutcome(name, "not applicable", exc.message))
            continue
        outcomes.append(MethodOutcome(name, "pending"))
    return outcomes


def settings_for(method: Trainer, shared: dict[str, Any], seconds: float) -> dict[str, Any]:
    """The shared ``--set`` values this method takes, and its share of the time budget
    when its settings take a limit (``max_seconds``)."""
    known = method.settings_model.model_fields
    settings = {name: value for name, value in shared.items() if name in known}
    if "max_seconds" in known and "max_seconds" not in settings:
        settings["max_seconds"] = max(1.0, seconds)
    return settings


def run_methods(
    service: FineTuning,
    request: FineTuneRequest,
    budget: float,
    train: Callable[[JobRecord], JobRecord],
    *,
    clock: Callable[[], float] = time.monotonic,
) -> list[MethodOutcome]:
    """Train every applicable method in turn within ``budget`` seconds (``train`` runs one
    job: the caller's progress display wraps ``FineTuning.run``)."""
    outcomes = candidate_methods(service, request)
    pending = [o for o in outcomes if o.status == "pending"]
    if not pending:
        reasons = "; ".join(f"{o.method}: {o.reason}" for o in outcomes)
        raise InvalidRequest(f"no fine-tuning method applies: {reasons}")
    ignored = set(request.settings) - {
        name for o in pending for name in trainer(o.method).settings_model.model_fields
    }
    if ignored:
        raise InvalidRequest(
            f"no applicable method takes the setting(s) {', '.join(sorted(ignored))}"
        )
    started = clock()
    for index, outcome in enumerate(pending):
        left = budget - (clock() - started)
        if left <= 0:
            outcome.status, outcome.reason = "skipped", "the time budget was spent"
            continue
        method = trainer(outcome.method)
        share = left / (len(pending) - index)
        job = service.create(
            request_for(request, outcome.method, settings_for(method, request.settings, share))
        )
        outcome.job = job
        try:
            outcome.job = train(job)
            outcome.status = "succeeded"
        except KeyboardInterrupt:
            raise
        except PowertrainError as exc:
            outcome.status, outcome.reason = "failed", exc.message
        except Exception as exc:  # one method's crash must not lose the others' results
            outcome.status, outcome.reason = "failed", f"{type(exc).__name__}: {exc}"
        outcome.job = service.get(job.id)
    return outcomes


def parse_duration(text: str) -> float:
    """``90s``, ``20m``, ``1h``, ``1h30m`` or plain seconds → seconds."""
    raw = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", raw):
        return float(raw)
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", raw)
    if not raw or parts is None or not any(parts.groups()):
        raise InvalidRequest(f"time budget {text!r} is not a duration like 90s, 20m or 1h30m")
    hours, minutes, seconds = (int(g) if g else 0 for g in parts.groups())
    return float(hours * 3600 + minutes * 60 + seconds)


def recommend(
    outcomes: list[MethodOutcome], board: Scoreboard, price_per_hour: float
) -> Recommendation | None:
    scored: list[tuple[MethodOutcome, VariantScore]] = [
        (o, board.variants[o.variant])
        for o in outcomes
        if o.variant is not None and o.variant in board.variants
    ]
    choice = choose(scored, price_per_hour)  # the same rule as the UI's comparison
    if choice is None:
        return None
    outcome = choice.item
    assert outcome.variant is not None
    return Recommendation(outcome.method, outcome.variant, choice.why)


def request_for(request: FineTuneRequest, method: str, settings: dict[str, Any]) -> FineTuneRequest:
    """``request`` for one of the methods ``auto`` tries."""
    return replace(request, method=method, settings=settings)
