"""What a run's results add up to, per target, and how two runs differ case by case."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any

from powertrain.store.evals import EvalResultRecord


@dataclass(frozen=True)
class TargetSummary:
    target: str
    results: int
    passed: int
    failed: int
    errors: int
    pass_rate: float
    mean_score: float
    cost_usd: float
    p50_latency_ms: float
    p95_latency_ms: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarize(results: list[EvalResultRecord], targets: list[str]) -> list[TargetSummary]:
    """One line per target, in the suite's order (targets with no results yet included)."""
    out = []
    for target in targets:
        rows = [r for r in results if r.target == target]
        n = len(rows)
        latencies = [r.latency_ms for r in rows]
        passed = sum(r.status == "pass" for r in rows)
        out.append(
            TargetSummary(
                target=target,
                results=n,
                passed=passed,
                failed=sum(r.status == "fail" for r in rows),
                errors=sum(r.status == "error" for r in rows),
                pass_rate=passed / n if n else 0.0,
                mean_score=statistics.fmean(r.score for r in rows) if rows else 0.0,
                cost_usd=sum(r.cost_usd for r in rows),
                p50_latency_ms=_percentile(latencies, 0.5),
                p95_latency_ms=_percentile(latencies, 0.95),
            )
        )
    return out


def overall_pass_rate(results: list[EvalResultRecord]) -> float:
    """The share of all results (every case x target x repeat) that passed: the CI gate."""
    return sum(r.passed for r in results) / len(results) if results else 0.0


@dataclass(frozen=True)
class CaseDiff:
    case_key: str
    case_idx: int
    target: str
    change: str  # regression | improvement | score_down | score_up | same | added | removed
    status_a: str | None
    status_b: str | None
    score_delta: float
    cost_delta: float
    latency_delta_ms: float
    vars: dict[str, Any]
    output_a: str | None
    output_b: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_ORDER = {
    "regression": 0,
    "score_down": 1,
    "removed": 2,
    "added": 3,
    "improvement": 4,
    "score_up": 5,
    "same": 6,
}


def _mean(rows: list[EvalResultRecord], attr: str) -> float:
    return statistics.fmean(getattr(r, attr) for r in rows) if rows else 0.0


def compare_runs(a: list[EvalResultRecord], b: list[EvalResultRecord]) -> list[CaseDiff]:
    """Per (case, target) differences, regressions first. Cases are matched by content
    (their vars and expected value), so two runs of different slices still line up."""

    def group(rows: list[EvalResultRecord]) -> dict[tuple[str, str], list[EvalResultRecord]]:
        out: dict[tuple[str, str], list[EvalResultRecord]] = {}
        for r in rows:
            out.setdefault((r.case_key, r.target), []).append(r)
        return out

    ga, gb = group(a), group(b)
    diffs = []
    for key in list(ga) + [k for k in gb if k not in ga]:
        ra, rb = ga.get(key, []), gb.get(key, [])
        first = (ra or rb)[0]
        pass_a = all(r.passed for r in ra) if ra else None
        pass_b = all(r.passed for r in rb) if rb else None
        score_delta = _mean(rb, "score") - _mean(ra, "score") if ra and rb else 0.0
        if not ra:
            change = "added"
        elif not rb:
            change = "removed"
        elif pass_a and not pass_b:
            change = "regression"
        elif pass_b and not pass_a:
            change = "improvement"
        elif score_delta < -1e-9:
            change = "score_down"
        elif score_delta > 1e-9:
            change = "score_up"
        else:
            change = "same"
        diffs.append(
            CaseDiff(
                case_key=key[0],
                case_idx=first.case_idx,
                target=key[1],
                change=change,
                status_a=_status(ra),
                status_b=_status(rb),
                score_delta=score_delta,
                cost_delta=_mean(rb, "cost_usd") - _mean(ra, "cost_usd") if ra and rb else 0.0,
                latency_delta_ms=_mean(rb, "latency_ms") - _mean(ra, "latency_ms")
                if ra and rb
                else 0.0,
                vars=first.vars,
                output_a=ra[0].output if ra else None,
                output_b=rb[0].output if rb else None,
            )
        )
    diffs.sort(key=lambda d: (_ORDER[d.change], d.score_delta, d.case_idx, d.target))
    return diffs


def _status(rows: list[EvalResultRecord]) -> str | None:
    if not rows:
        return None
    if any(r.status == "error" for r in rows):
        return "error"
    return "pass" if all(r.passed for r in rows) else "fail"
