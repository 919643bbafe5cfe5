"""Measure one running target: a warm-up, then one wrk run per concurrency level."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from bench.gateway.targets import Endpoint
from bench.gateway.wrk import Sample, run_wrk


@dataclass(frozen=True)
class Plan:
    """What to measure for every target."""

    concurrency: tuple[int, ...] = (1, 8, 32, 64)
    stream_concurrency: tuple[int, ...] = (1, 32)
    seconds: float = 5.0
    warmup: float = 1.0
    client_cpu: int | None = None


@dataclass
class TargetResult:
    name: str
    version: str = ""
    skipped: str | None = None
    note: str = ""
    answered: int = 0  # requests answered during warm-ups and cells (probes not counted)
    cells: dict[int, Sample] = field(default_factory=dict)
    stream_cells: dict[int, Sample] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "version": self.version,
            "skipped": self.skipped,
            "note": self.note,
            "answered": self.answered,
            "cells": [s.to_dict() for s in self.cells.values()],
            "stream_cells": [s.to_dict() for s in self.stream_cells.values()],
        }


def measure(
    endpoint: Endpoint,
    plan: Plan,
    result: TargetResult,
    say: Callable[[str], None],
) -> None:
    """Fill ``result`` with one sample per (stream, concurrency) cell of ``plan``."""
    cells = [(False, c) for c in plan.concurrency] + [(True, c) for c in plan.stream_concurrency]
    for stream, concurrency in cells:
        if plan.warmup > 0:
            warm = run_wrk(endpoint, concurrency, plan.warmup, plan.client_cpu, stream)
            result.answered += warm.requests
        sample = run_wrk(endpoint, concurrency, plan.seconds, plan.client_cpu, stream)
        result.answered += sample.requests
        (result.stream_cells if stream else result.cells)[concurrency] = sample
        kind = "stream" if stream else "json"
        errors = f", {sample.errors} errors" if sample.errors else ""
        say(
            f"  {result.name:<10} {kind:<6} c={concurrency:<3} {sample.rps:>9,.0f} req/s  "
            f"p50 {sample.p50_ms:.3f} ms  p99 {sample.p99_ms:.3f} ms{errors}"
        )
