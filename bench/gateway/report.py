"""Turn the measured cells into one table (metrics by targets, plus ratio columns) or JSON.

"Added" latency is a target's latency minus the direct call's at the same
percentile and concurrency (1). Ratio columns compare the subject (powertrain,
else LiteLLM) with the bare proxy and with LiteLLM: for added latency lower is
better, for req/s higher is better.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bench.gateway.measure import Plan, TargetResult
from bench.gateway.wrk import Sample

Value = float | None


@dataclass(frozen=True)
class Row:
    label: str
    unit: str  # "ms" or "req/s" or "n"
    values: dict[str, Value]


def _get(
    results: dict[str, TargetResult],
    name: str,
    stream: bool,
    c: int,
    pick: Callable[[Sample], float],
) -> Value:
    result = results.get(name)
    if result is None or result.skipped:
        return None
    cell = (result.stream_cells if stream else result.cells).get(c)
    return None if cell is None else pick(cell)


def _added(
    results: dict[str, TargetResult],
    name: str,
    stream: bool,
    c: int,
    pick: Callable[[Sample], float],
) -> Value:
    if name == "direct":
        return None
    value = _get(results, name, stream, c, pick)
    base = _get(results, "direct", stream, c, pick)
    return None if value is None or base is None else value - base


def build_rows(results: dict[str, TargetResult], plan: Plan) -> list[Row]:
    names = list(results)
    rows: list[Row] = []

    def p50(s: Sample) -> float:
        return s.p50_ms

    def p99(s: Sample) -> float:
        return s.p99_ms

    def rps(s: Sample) -> float:
        return s.rps

    for stream in (False, True):
        levels = plan.stream_concurrency if stream else plan.concurrency
        if not levels:
            continue
        tag = "stream " if stream else ""
        if 1 in levels:
            for label, pick in (("p50", p50), ("p99", p99)):
                rows.append(
                    Row(
                        f"{tag}{label} c=1",
                        "ms",
                        {n: _get(results, n, stream, 1, pick) for n in names},
                    )
                )
            for label, pick in (("p50", p50), ("p99", p99)):
                rows.append(
                    Row(
                        f"{tag}added {label} c=1",
                        "ms",
                        {n: _added(results, n, stream, 1, pick) for n in names},
                    )
                )
        for c in levels:
            rows.append(
                Row(
                    f"{tag}req/s c={c}",
                    "req/s",
                    {n: _get(results, n, stream, c, rps) for n in names},
                )
            )
    errors: dict[str, Value] = {}
    for name, result in results.items():
        cells = [*result.cells.values(), *result.stream_cells.values()]
        errors[name] = None if result.skipped else float(sum(s.errors for s in cells))
    rows.append(Row("failed requests", "n", errors))
    return rows


def subject_and_bases(results: dict[str, TargetResult]) -> tuple[str | None, list[str]]:
    """The target the ratios are about, and what it is compared with."""
    measured = [n for n, r in results.items() if not r.skipped]
    subject: str
    for subject in ("powertrain", "litellm"):
        if subject in measured:
            bases: list[str] = [b for b in ("bare", "litellm") if b in measured and b != subject]
            return (subject, bases) if bases else (None, [])
    return None, []


def _ratio(value: Value, base: Value) -> Value:
    if value is None or base is None or base <= 0:
        return None
    return value / base


def _fmt(value: Value, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "req/s":
        return f"{value:,.0f}"
    if unit == "n":
        return f"{value:.0f}"
    if abs(value) < 1:
        return f"{value:.3f}"
    return f"{value:.2f}" if abs(value) < 100 else f"{value:.1f}"


def _fmt_ratio(value: Value) -> str:
    if value is None:
        return "—"
    return f"{value:.2f}x" if value < 10 else f"{value:.0f}x"


def format_table(header: list[str], lines: list[list[str]]) -> str:
    """A plain text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]

    def join(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    return "\n".join([join(header), join(["-" * w for w in widths])] + [join(c) for c in lines])


def render_table(results: dict[str, TargetResult], plan: Plan) -> str:
    rows = build_rows(results, plan)
    names = list(results)
    subject, bases = subject_and_bases(results)
    ratio_heads = [f"{subject}/{b}" for b in bases] if subject else []
    header = ["metric", *names, *ratio_heads]
    lines: list[list[str]] = []
    for row in rows:
        cells = [f"{row.label} ({row.unit})", *(_fmt(row.values.get(n), row.unit) for n in names)]
        for base in bases:
            ratio = (
                None
                if row.unit == "n" or subject is None
                else _ratio(row.values.get(subject), row.values.get(base))
            )
            cells.append(_fmt_ratio(ratio))
        lines.append(cells)
    out = [format_table(header, lines)]
    notes = [
        f"  {n}: {r.version}" + (f" ({r.note})" if r.note else "")
        for n, r in results.items()
        if r.version and not r.skipped
    ]
    notes += [f"  {n}: skipped — {r.skipped}" for n, r in results.items() if r.skipped]
    if notes:
        out += ["", *notes]
    if subject:
        out += [
            "",
            f"  {subject}/X = {subject}'s value ÷ X's. Added latency: lower is better; "
            "req/s: higher is better.",
        ]
    return "\n".join(out)


def to_json(
    results: dict[str, TargetResult], plan: Plan, meta: dict[str, object]
) -> dict[str, object]:
    rows = build_rows(results, plan)
    subject, bases = subject_and_bases(results)
    ratios: dict[str, dict[str, Value]] = {}
    for base in bases:
        assert subject is not None
        ratios[f"{subject}/{base}"] = {
            row.label: _ratio(row.values.get(subject), row.values.get(base))
            for row in rows
            if row.unit != "n"
        }
    return {
        "meta": meta,
        "plan": {
            "concurrency": list(plan.concurrency),
            "stream_concurrency": list(plan.stream_concurrency),
            "seconds": plan.seconds,
            "warmup": plan.warmup,
        },
        "targets": {name: result.to_dict() for name, result in results.items()},
        "table": {row.label: {"unit": row.unit, "values": row.values} for row in rows},
        "ratios": ratios,
    }
