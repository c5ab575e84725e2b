"""Stacked bar charts as plain data, drawn as inline SVG by `templates/_chart.html`.

Why no charting library: the console needs one kind of chart (a value per time bucket, stacked
by group) and the server has the numbers already; computing rectangles here costs a few dozen
lines, ships no JavaScript, works without scripts, prints, and leaves the values readable in
the page (each bar's `<title>`), which is also what the browser tests read.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["MAX_SERIES", "Bar", "Chart", "Legend", "Tick", "nice_ceiling", "stacked_bars"]

MAX_SERIES = 8  # groups drawn in their own colour; the rest are one "other" series
WIDTH, HEIGHT = 960, 280
LEFT, RIGHT, TOP, BOTTOM = 72, 8, 10, 26


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    w: float
    h: float
    series: int  # the colour (CSS class s0…s8)
    title: str


@dataclass(frozen=True, slots=True)
class Tick:
    pos: float
    label: str


@dataclass(frozen=True, slots=True)
class Legend:
    series: int
    label: str
    total: str


@dataclass(frozen=True, slots=True)
class Chart:
    title: str
    bars: list[Bar]
    y_ticks: list[Tick]
    x_ticks: list[Tick]
    legend: list[Legend]
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    bottom: float = HEIGHT - BOTTOM
    right: int = WIDTH - RIGHT

    @property
    def empty(self) -> bool:
        return not self.bars


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times 10^k at least `value` (an axis maximum people read)."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if value <= step * power * (1 + 1e-9):
            return step * power
    return 10.0 * power  # pragma: no cover - the loop ends at 10


def stacked_bars(
    title: str,
    buckets: Sequence[int],
    values: Mapping[str, Mapping[int, float]],
    *,
    fmt: Callable[[float], str],
    bucket_label: Callable[[int], str],
) -> Chart:
    """One bar per bucket, one stacked segment per group (largest groups first and lowest)."""
    totals = {label: sum(per.values()) for label, per in values.items()}
    ranked = sorted((lb for lb in totals if totals[lb] > 0), key=lambda lb: (-totals[lb], lb))
    shown, rest = ranked[:MAX_SERIES], ranked[MAX_SERIES:]
    series: list[tuple[int, str, dict[int, float]]] = [
        (i, label, dict(values[label])) for i, label in enumerate(shown)
    ]
    if rest:
        other: dict[int, float] = {}
        for label in rest:
            for bucket, v in values[label].items():
                other[bucket] = other.get(bucket, 0.0) + v
        series.append((MAX_SERIES, f"{len(rest)} more", other))
    heights = [sum(per.get(b, 0.0) for _i, _l, per in series) for b in buckets]
    top = nice_ceiling(max(heights, default=0.0))
    plot_h = HEIGHT - BOTTOM - TOP
    slot = (WIDTH - RIGHT - LEFT) / max(1, len(buckets))
    width = max(1.0, slot * 0.72)
    bars: list[Bar] = []
    for n, bucket in enumerate(buckets):
        y = float(HEIGHT - BOTTOM)
        for index, label, per in series:
            v = per.get(bucket, 0.0)
            if v <= 0:
                continue
            h = v / top * plot_h
            y -= h
            x = LEFT + n * slot + (slot - width) / 2
            text = f"{bucket_label(bucket)} · {label}: {fmt(v)}"
            bars.append(Bar(round(x, 2), round(y, 2), round(width, 2), round(h, 2), index, text))
    y_ticks = [Tick(round(HEIGHT - BOTTOM - plot_h * k / 4, 2), fmt(top * k / 4)) for k in range(5)]
    every = max(1, math.ceil(len(buckets) / 8))  # at most about eight labels under the axis
    x_ticks = [
        Tick(round(LEFT + n * slot + slot / 2, 2), bucket_label(b))
        for n, b in enumerate(buckets)
        if n % every == 0
    ]
    legend = [Legend(i, label, fmt(sum(per.values()))) for i, label, per in series]
    return Chart(title, bars, y_ticks, x_ticks, legend)
