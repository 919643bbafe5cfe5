"""Line charts as geometry: numbers in, coordinates and labels out; a template draws the SVG.

No chart library and no markup built here: ``templates/_chart.html`` turns a
:class:`LineChart` into inline SVG, so every label (a model or key name) goes
through Jinja's escaping like any other text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

WIDTH, HEIGHT = 640, 200
LEFT, RIGHT, TOP, BOTTOM = 64, 36, 10, 24
MAX_SERIES = 8  # more groups than this are summed into "other"


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    label: str  # the tooltip: group, time and value


@dataclass(frozen=True)
class Series:
    name: str
    color: int  # index into the stylesheet's series colours (.s0 … .s7)
    points: list[Point]
    dots: bool = True  # a marker (with its tooltip) on every point

    @property
    def polyline(self) -> str:
        return " ".join(f"{p.x:.1f},{p.y:.1f}" for p in self.points)


@dataclass(frozen=True)
class Tick:
    at: float
    label: str


@dataclass(frozen=True)
class LineChart:
    title: str
    width: int
    height: int
    plot_left: float
    plot_right: float
    plot_top: float
    plot_bottom: float
    series: list[Series]
    y_ticks: list[Tick]
    x_ticks: list[Tick]

    @property
    def empty(self) -> bool:
        return not any(s.points for s in self.series)


def _nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^n at or above ``value`` (a readable axis top)."""
    if value <= 0:
        return 1.0
    power = 10.0 ** _floor_log10(value)
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * power * (1 + 1e-9):
            return step * power
    return 10 * power


def _floor_log10(value: float) -> int:
    exponent = 0
    while value >= 10:
        value /= 10
        exponent += 1
    while value < 1:
        value *= 10
        exponent -= 1
    return exponent


def _time_label(moment: datetime, bucket_seconds: int) -> str:
    moment = moment.astimezone(UTC)
    if bucket_seconds >= 86_400:
        return moment.strftime("%m-%d")
    if bucket_seconds >= 3_600:
        return moment.strftime("%m-%d %H:00")
    return moment.strftime("%H:%M")


def line_chart(
    title: str,
    buckets: Sequence[datetime],
    values: dict[str, dict[datetime, float]],
    *,
    bucket_seconds: int,
    fmt: Callable[[float], str],
    colors: dict[str, int] | None = None,
) -> LineChart:
    """One line per group over ``buckets`` (a missing bucket is drawn as 0)."""
    plot_w = WIDTH - LEFT - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM
    peak = max((v for by_time in values.values() for v in by_time.values()), default=0.0)
    top = _nice_ceiling(peak)
    span = max(1, len(buckets) - 1)

    def x_of(i: int) -> float:
        return LEFT + plot_w * (i / span if len(buckets) > 1 else 0.5)

    def y_of(v: float) -> float:
        return TOP + plot_h * (1 - v / top)

    series = []
    for n, (name, by_time) in enumerate(values.items()):
        points = [
            Point(
                x_of(i),
                y_of(by_time.get(moment, 0.0)),
                f"{name} · {_time_label(moment, bucket_seconds)} · {fmt(by_time.get(moment, 0.0))}",
            )
            for i, moment in enumerate(buckets)
        ]
        color = (colors or {}).get(name, n) % MAX_SERIES
        series.append(Series(name, color, points))
    every = max(1, len(buckets) // 6)
    x_ticks = [
        Tick(x_of(i), _time_label(moment, bucket_seconds))
        for i, moment in enumerate(buckets)
        if i % every == 0
    ]
    return _framed(title, series, top=top, fmt=fmt, x_ticks=x_ticks)


def _framed(
    title: str,
    series: list[Series],
    *,
    top: float,
    fmt: Callable[[float], str],
    x_ticks: list[Tick],
) -> LineChart:
    """``series`` in the one frame every chart shares, the y axis from 0 to ``top`` in
    quarters (``series`` placed with the same geometry)."""
    plot_h = HEIGHT - TOP - BOTTOM
    return LineChart(
        title=title,
        width=WIDTH,
        height=HEIGHT,
        plot_left=LEFT,
        plot_right=WIDTH - RIGHT,
        plot_top=TOP,
        plot_bottom=HEIGHT - BOTTOM,
        series=series,
        y_ticks=[Tick(TOP + plot_h * (1 - f), fmt(top * f)) for f in (0, 0.25, 0.5, 0.75, 1)],
        x_ticks=x_ticks,
    )


def bucket_starts(since: datetime, until: datetime, bucket_seconds: int) -> list[datetime]:
    """Every bucket start from ``since`` to ``until``, aligned to the epoch like the SQL."""
    first = int(since.timestamp()) // bucket_seconds
    last = int(until.timestamp()) // bucket_seconds
    return [datetime.fromtimestamp(b * bucket_seconds, UTC) for b in range(first, last + 1)]


def _x_steps(low: float, high: float) -> list[float]:
    """About five round step numbers from ``low`` to ``high`` for the x axis."""
    if high <= low:
        return [low]
    step = _nice_ceiling((high - low) / 5)
    first = -(-low // step) * step
    count = int((high - first) // step) + 1
    return [first + i * step for i in range(count)]


def step_chart(
    title: str,
    curves: dict[str, list[list[float]]],
    *,
    fmt: Callable[[float], str],
    dots: Sequence[str] = (),
    max_points: int = 400,
) -> LineChart:
    """Values by training step (a loss curve): every curve on one pair of axes, x from the
    first step to the last, y from 0. Curves named in ``dots`` get a marker per point;
    longer curves are thinned to ``max_points`` for drawing (the last point kept)."""
    plot_w = WIDTH - LEFT - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM
    shown = {name: _thinned(points, max_points) for name, points in curves.items() if points}
    steps = [p[0] for points in shown.values() for p in points]
    low, high = (min(steps), max(steps)) if steps else (0.0, 1.0)
    top = _nice_ceiling(max((p[1] for points in shown.values() for p in points), default=0.0))

    def x_of(step: float) -> float:
        return LEFT + plot_w * ((step - low) / (high - low) if high > low else 0.5)

    def y_of(v: float) -> float:
        return TOP + plot_h * (1 - max(0.0, v) / top)

    series = []
    for n, name in enumerate(curves):  # colours by position, so a curve keeps its colour
        points = shown.get(name)
        if not points:
            continue
        drawn = [
            Point(x_of(step), y_of(value), f"{name} · step {step:g} · {fmt(value)}")
            for step, value in points
        ]
        series.append(Series(name, n % MAX_SERIES, drawn, dots=name in dots or len(drawn) == 1))
    x_ticks = [Tick(x_of(s), f"{s:g}") for s in _x_steps(low, high)]
    return _framed(title, series, top=top, fmt=fmt, x_ticks=x_ticks)


def _thinned(points: list[list[float]], limit: int) -> list[list[float]]:
    if len(points) <= limit:
        return points
    every = len(points) / limit
    return [*(points[int(i * every)] for i in range(limit - 1)), points[-1]]
