"""Promotion: moving a task's traffic to a variant in steps, and back.

A promotion starts with a canary (``--canary 10%``: the variant gets that share,
the others keep theirs in proportion to what they had) or goes straight to
``--full`` (the variant gets all the traffic; the others stay callable when
pinned). ``--full`` after a canary finishes it; ``--rollback`` undoes the whole
promotion, restoring the split from before it began. Each step is a row in the
task's split history (``store/splits.py``), so who moved what, and when, is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from powertrain.errors import Conflict, InvalidRequest, TaskNotFound
from powertrain.store.splits import SplitChange, SplitRecord, SplitStore, SplitTaskMissing
from powertrain.tasks.registry import LoadedTask, TaskRegistry

Action = Literal["canary", "full", "rollback"]
_OPEN = frozenset({"canary", "full"})  # a promotion that can still be rolled back


@dataclass(frozen=True)
class PromotionRequest:
    action: Action
    variant: str | None = None
    share: float | None = None  # the canary's share of traffic, in (0, 1)
    author: str | None = None
    note: str | None = None


def parse_share(text: str) -> float:
    """``10%``, ``10`` or ``0.1`` → 0.1 (a share strictly between 0 and 1)."""
    raw = text.strip()
    try:
        value = float(raw.rstrip("%"))
    except ValueError:
        raise InvalidRequest(f"canary share {text!r} is not a number like 10%") from None
    if raw.endswith("%") or value > 1:
        value /= 100
    if not 0 < value < 1:
        raise InvalidRequest(
            f"canary share {text!r} must be above 0% and below 100% (use --full for all)"
        )
    return value


def split_in_force(task: LoadedTask, current: SplitRecord | None) -> dict[str, float]:
    """Every variant's weight under ``current`` (the definition's weights when None)."""
    if current is None:
        return dict(task.defined_weights)
    return {name: float(current.weights.get(name, 0.0)) for name in task.defined_weights}


def canary_weights(current: dict[str, float], variant: str, share: float) -> dict[str, float]:
    others = {name: w for name, w in current.items() if name != variant and w > 0}
    total = sum(others.values())
    if total <= 0:
        raise Conflict(
            f"variant {variant!r} is the only one serving traffic; a canary needs another "
            "variant to split with (use --full, or --rollback)"
        )
    weights = {name: 0.0 for name in current}
    for name, weight in others.items():
        weights[name] = round(weight / total * (1 - share), 6)
    weights[variant] = round(share, 6)
    return weights


def full_weights(current: dict[str, float], variant: str) -> dict[str, float]:
    return {name: (1.0 if name == variant else 0.0) for name in current}


def decide(
    request: PromotionRequest,
    task: LoadedTask,
    current: SplitRecord | None,
    started: SplitRecord | None,
) -> SplitChange:
    """The split ``request`` makes of the one in force (raises to refuse).

    ``started`` is the row that began ``current``'s promotion (``current`` itself when
    it began one): its ``previous`` is what a rollback restores.
    """
    weights = split_in_force(task, current)
    open_promotion = current if current is not None and current.action in _OPEN else None
    if request.action == "rollback":
        if open_promotion is None or started is None:
            raise Conflict(f"task {task.name!r} has no promotion to roll back")
        restored = {name: float(started.previous.get(name, 0.0)) for name in weights}
        if not any(w > 0 for w in restored.values()):
            raise Conflict(
                f"the split before this promotion of task {task.name!r} served none of its "
                "current variants; promote one with --full instead"
            )
        return SplitChange(
            action="rollback",
            variant=open_promotion.variant,
            weights=restored,
            promotion=started.id,
            previous=weights,
            author=request.author,
            note=request.note,
        )
    variant = request.variant or (open_promotion.variant if open_promotion else None)
    if variant is None:
        raise InvalidRequest("name the variant to promote (--variant)", param="variant")
    if variant not in weights:
        known = ", ".join(sorted(weights))
        raise InvalidRequest(
            f"task {task.name!r} has no variant {variant!r} (variants: {known})",
            param="variant",
        )
    if open_promotion is not None and open_promotion.variant != variant:
        if open_promotion.action == "canary":
            raise Conflict(
                f"task {task.name!r} is canarying {open_promotion.variant!r}; finish it "
                "(--full) or roll it back (--rollback) first"
            )
        open_promotion = None  # another variant's finished promotion: this one starts anew
    if request.action == "canary":
        if request.share is None:
            raise InvalidRequest("a canary needs its share of traffic (--canary 10%)")
        new = canary_weights(weights, variant, request.share)
    else:
        new = full_weights(weights, variant)
    if new == weights:
        raise Conflict(f"task {task.name!r} already serves that split")
    continuing = open_promotion is not None and started is not None
    return SplitChange(
        action=request.action,
        variant=variant,
        weights=new,
        promotion=started.id if continuing and started is not None else None,
        previous=weights,
        author=request.author,
        note=request.note,
    )


class Promotions:
    """Promote, finish and roll back; read the history. Blocking (call from a thread)."""

    def __init__(self, registry: TaskRegistry, splits: SplitStore):
        self.registry = registry
        self.splits = splits

    def apply(self, task_name: str, request: PromotionRequest) -> SplitRecord:
        task = self.registry.get(task_name)  # a clear 404 for an unknown task
        try:
            record = self.splits.change(
                task.name, lambda current, started: decide(request, task, current, started)
            )
        except SplitTaskMissing:
            raise TaskNotFound(f"no task named {task_name!r}") from None
        assert record is not None
        self.registry.invalidate(task_name)
        return record

    def history(self, task_name: str, *, limit: int = 100) -> list[SplitRecord]:
        self.registry.get(task_name)
        return self.splits.history(task_name, limit=limit)
