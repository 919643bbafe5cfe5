"""A self-contained HTML report of a run (or two): summary, charts, the cases x targets matrix.

No scripts, no CDN: inline CSS and SVG drawn here. Every piece of text that came
from a case, a model or a judge goes through ``html.escape`` (output is data).
"""

from __future__ import annotations

from html import escape
from typing import Any

from powertrain.evals.results import TargetSummary, compare_runs, summarize
from powertrain.store.evals import EvalResultRecord, EvalRunRecord

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1d2330;max-width:1400px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0}
th,td{border:1px solid #d6dae1;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f2f4f7}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.pass{background:#e3f5e6}td.fail{background:#fde8e6}td.error{background:#fff3cd}
.out{font-family:ui-monospace,monospace;font-size:12px;white-space:pre-wrap;max-width:340px;
overflow-wrap:anywhere;color:#444}
.muted{color:#6b7280}.reg{color:#b42318;font-weight:600}.imp{color:#067647;font-weight:600}
svg text{font:12px system-ui,sans-serif}
"""

_MAX_OUTPUT = 400


def _e(value: Any) -> str:
    return escape(value if isinstance(value, str) else str(value), quote=True)


def _clip(text: str | None) -> str:
    text = text or ""
    return text if len(text) <= _MAX_OUTPUT else text[: _MAX_OUTPUT - 1] + "…"


def bar_chart(summaries: list[TargetSummary]) -> str:
    """Pass rate per target, horizontal bars."""
    row, label_w, bar_w = 26, 260, 360
    height = row * len(summaries) + 10
    parts = [f'<svg width="{label_w + bar_w + 70}" height="{height}" role="img">']
    for i, s in enumerate(summaries):
        y = 5 + i * row
        width = bar_w * s.pass_rate
        parts.append(f'<text x="0" y="{y + 16}">{_e(s.target[:40])}</text>')
        parts.append(f'<rect x="{label_w}" y="{y}" width="{bar_w}" height="20" fill="#eef0f3"/>')
        parts.append(
            f'<rect x="{label_w}" y="{y}" width="{width:.1f}" height="20" fill="#3b82f6"/>'
        )
        parts.append(f'<text x="{label_w + bar_w + 6}" y="{y + 16}">{s.pass_rate:.1%}</text>')
    parts.append("</svg>")
    return "".join(parts)


def latency_chart(results: list[EvalResultRecord], targets: list[str]) -> str:
    """Latency distribution per target: a histogram of 12 bins over the run's range."""
    latencies = [r.latency_ms for r in results]
    if not latencies:
        return '<p class="muted">no results</p>'
    low, high = min(latencies), max(latencies)
    bins = 12
    span = (high - low) or 1.0
    colors = ["#3b82f6", "#f59e0b", "#10b981", "#8b5cf6", "#ef4444", "#14b8a6"]
    width, height, pad = 560, 180, 30
    counts_by = []
    for target in targets:
        counts = [0] * bins
        for r in results:
            if r.target == target:
                counts[min(bins - 1, int((r.latency_ms - low) / span * bins))] += 1
        counts_by.append(counts)
    peak = max((max(c) for c in counts_by), default=1) or 1
    slot = (width - pad) / bins
    bar = slot / max(1, len(targets))
    parts = [f'<svg width="{width + 10}" height="{height + 50}" role="img">']
    for t, counts in enumerate(counts_by):
        color = colors[t % len(colors)]
        for b, count in enumerate(counts):
            h = (height - 10) * count / peak
            x = pad + b * slot + t * bar
            parts.append(
                f'<rect x="{x:.1f}" y="{height - h:.1f}" width="{max(1.0, bar - 1):.1f}" '
                f'height="{h:.1f}" fill="{color}"><title>{_e(targets[t])}: {count}</title></rect>'
            )
        parts.append(
            f'<rect x="{pad + t * 150}" y="{height + 30}" width="10" height="10" fill="{color}"/>'
            f'<text x="{pad + t * 150 + 14}" y="{height + 39}">{_e(targets[t][:20])}</text>'
        )
    parts.append(f'<text x="{pad}" y="{height + 16}">{low:.0f} ms</text>')
    parts.append(f'<text x="{width - 60}" y="{height + 16}">{high:.0f} ms</text>')
    parts.append("</svg>")
    return "".join(parts)


def _summary_table(summaries: list[TargetSummary]) -> str:
    head = (
        "<tr><th>target</th><th>results</th><th>pass rate</th><th>mean score</th>"
        "<th>errors</th><th>cost (USD)</th><th>p50 latency</th><th>p95 latency</th></tr>"
    )
    rows = [
        f"<tr><td>{_e(s.target)}</td><td class=num>{s.results}</td>"
        f"<td class=num>{s.pass_rate:.1%}</td><td class=num>{s.mean_score:.3f}</td>"
        f"<td class=num>{s.errors}</td><td class=num>{s.cost_usd:.6f}</td>"
        f"<td class=num>{s.p50_latency_ms:.0f} ms</td><td class=num>{s.p95_latency_ms:.0f} ms</td>"
        "</tr>"
        for s in summaries
    ]
    return f"<table>{head}{''.join(rows)}</table>"


def _cell(r: EvalResultRecord | None) -> str:
    if r is None:
        return '<td class="muted">—</td>'
    notes = [
        f"{a.get('type')}: {a.get('status')} {a.get('detail', '')}".strip()
        for a in r.assertions
        if a.get("status") != "pass"
    ]
    detail = r.error or "; ".join(notes)
    return (
        f'<td class="{_e(r.status)}" title="{_e(detail)}"><b>{_e(r.status)}</b> '
        f'<span class="muted">{r.score:.2f} · {r.latency_ms:.0f} ms</span>'
        f'<div class="out">{_e(_clip(r.output))}</div>'
        + (f'<div class="muted">{_e(_clip(detail))}</div>' if detail else "")
        + "</td>"
    )


def _matrix(results: list[EvalResultRecord], targets: list[str]) -> str:
    by_key = {(r.case_idx, r.target): r for r in results if r.rep == 0}
    cases: dict[int, EvalResultRecord] = {}
    for r in results:
        cases.setdefault(r.case_idx, r)
    head = "<tr><th>#</th><th>vars</th><th>expected</th>" + "".join(
        f"<th>{_e(t)}</th>" for t in targets
    )
    rows = []
    for idx in sorted(cases):
        first = cases[idx]
        variables = "; ".join(f"{k}={v}" for k, v in first.vars.items())
        rows.append(
            f"<tr><td class=num>{idx}</td><td class=out>{_e(_clip(variables))}</td>"
            f"<td class=out>{_e(_clip('' if first.expected is None else str(first.expected)))}</td>"
            + "".join(_cell(by_key.get((idx, t))) for t in targets)
            + "</tr>"
        )
    return f"<table>{head}</tr>{''.join(rows)}</table>"


def _comparison(a: list[EvalResultRecord], b: list[EvalResultRecord]) -> str:
    diffs = [d for d in compare_runs(a, b) if d.change != "same"]
    if not diffs:
        return "<p>No per-case differences.</p>"
    head = (
        "<tr><th>change</th><th>#</th><th>target</th><th>A</th><th>B</th><th>Δ score</th>"
        "<th>Δ latency</th><th>output A</th><th>output B</th></tr>"
    )
    rows = []
    for d in diffs:
        css = "reg" if d.change in ("regression", "score_down") else "imp"
        rows.append(
            f"<tr><td class={css}>{_e(d.change)}</td><td class=num>{d.case_idx}</td>"
            f"<td>{_e(d.target)}</td><td>{_e(d.status_a or '—')}</td>"
            f"<td>{_e(d.status_b or '—')}</td><td class=num>{d.score_delta:+.2f}</td>"
            f"<td class=num>{d.latency_delta_ms:+.0f} ms</td>"
            f"<td class=out>{_e(_clip(d.output_a))}</td><td class=out>{_e(_clip(d.output_b))}</td>"
            "</tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def _run_section(run: EvalRunRecord, results: list[EvalResultRecord], label: str) -> str:
    targets = list(run.config.get("targets") or sorted({r.target for r in results}))
    summaries = summarize(results, targets)
    return (
        f"<h2>{_e(label)}run {_e(run.id)} · suite {_e(run.suite)} · {_e(run.status)} · "
        f"{_e(run.created_at.strftime('%Y-%m-%d %H:%M UTC'))}</h2>"
        + _summary_table(summaries)
        + "<h3>Pass rate per target</h3>"
        + bar_chart(summaries)
        + "<h3>Latency distribution</h3>"
        + latency_chart(results, targets)
        + "<h3>Cases x targets</h3>"
        + _matrix(results, targets)
    )


def render_report(
    run: EvalRunRecord,
    results: list[EvalResultRecord],
    other: tuple[EvalRunRecord, list[EvalResultRecord]] | None = None,
) -> str:
    """The whole HTML document. With ``other``, run B's sections and an A → B comparison."""
    title = f"powertrain eval · {run.suite}"
    body = _run_section(run, results, "A: " if other else "")
    if other is not None:
        run_b, results_b = other
        body += "<h2>Differences A → B (regressions first)</h2>" + _comparison(results, results_b)
        body += _run_section(run_b, results_b, "B: ")
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        # Nothing in the file may run or load: a defence behind the escaping.
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>"
        f"<body><h1>{_e(title)}</h1>{body}</body></html>\n"
    )
