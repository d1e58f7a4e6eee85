"""Charts drawn on the server as SVG geometry: the page writes the <svg> markup from these
numbers, styled by classes (the Content-Security-Policy allows no inline style), so no
chart library, build step or script is needed."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

WIDTH = 1000
HEIGHT = 240
LEFT = 52  # the y axis's labels
RIGHT = 8
TOP = 12
BOTTOM = 28  # the x axis's labels
BAR_SHARE = 0.62  # of a slot's width


@dataclass(frozen=True)
class Segment:
    """One series' part of a bar: its rectangle and its class."""

    series: str
    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True)
class Bar:
    label: str  # the x axis's label, shown when `labelled`
    title: str  # the tooltip: the slot's figures in words
    x: float  # the slot's left edge
    slot: float  # the slot's width (the hover target)
    segments: list[Segment]
    labelled: bool


@dataclass(frozen=True)
class Tick:
    y: float
    label: str


@dataclass(frozen=True)
class BarChart:
    width: int
    height: int
    left: int
    right: int
    top: int
    bottom: int  # the y of the x axis
    bars: list[Bar]
    ticks: list[Tick]


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 5 times a power of ten at or above `value` (1 for nothing)."""
    if value <= 1:
        return 1
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return float(step * power)
    return float(10 * power)


def compact_number(value: float) -> str:
    """12, 1.2k, 34k, 1.5M: an axis label."""
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if value >= size:
            scaled = value / size
            text = f"{scaled:.1f}" if scaled < 10 else f"{scaled:.0f}"
            return text.removesuffix(".0") + suffix
    return f"{value:g}"


def stacked_bars(
    slots: Sequence[tuple[str, str, Sequence[tuple[str, int]]]], *, label_every: int = 5
) -> BarChart:
    """A bar per slot (label, tooltip, [(series, value), ...]), the series stacked bottom up;
    the last slot and every `label_every`-th before it get their label."""
    plot_width = WIDTH - LEFT - RIGHT
    plot_height = HEIGHT - TOP - BOTTOM
    base = HEIGHT - BOTTOM
    top_value = nice_ceiling(max((sum(v for _, v in s) for _, _, s in slots), default=0))
    scale = plot_height / top_value
    slot = plot_width / max(len(slots), 1)
    bar_width = slot * BAR_SHARE
    bars = []
    last = len(slots) - 1
    for index, (label, title, series) in enumerate(slots):
        x = LEFT + index * slot
        y = float(base)
        segments = []
        for name, value in series:
            if value <= 0:
                continue
            height = value * scale
            y -= height
            segments.append(Segment(name, x + (slot - bar_width) / 2, y, bar_width, height))
        labelled = (last - index) % label_every == 0
        bars.append(Bar(label, title, x, slot, segments, labelled))
    ticks = [
        Tick(base - plot_height * share, compact_number(top_value * share)) for share in (0, 0.5, 1)
    ]
    return BarChart(WIDTH, HEIGHT, LEFT, RIGHT, TOP, base, bars, ticks)
