"""Picking the variant that serves a call: pinned, sticky per user, or by weight."""

from __future__ import annotations

import hashlib
import random

from powertrain.errors import InvalidRequest
from powertrain.tasks.definition import VariantSpec

_random = random.SystemRandom()


def _unit_interval(key: str) -> float:
    """A stable point in [0, 1) for ``key``: the same user lands on the same variant."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def choose_variant(
    task: str,
    variants: dict[str, VariantSpec],
    *,
    pinned: str | None = None,
    sticky_key: str | None = None,
) -> str:
    """The name of the variant to use; ``pinned`` wins, weight-0 variants serve only then."""
    if pinned is not None:
        if pinned not in variants:
            known = ", ".join(sorted(variants))
            raise InvalidRequest(
                f"task {task!r} has no variant {pinned!r} (variants: {known})", param="variant"
            )
        return pinned
    weighted = [(name, spec.weight) for name, spec in sorted(variants.items()) if spec.weight > 0]
    total = sum(weight for _, weight in weighted)
    point = (_unit_interval(f"{task}\0{sticky_key}") if sticky_key else _random.random()) * total
    for name, weight in weighted:
        point -= weight
        if point < 0:
            return name
    return weighted[-1][0]
