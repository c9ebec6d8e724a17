"""Inline SVG charts for the demo's report: no JavaScript and no external assets, so the file
opens anywhere and scales on a phone (a ``viewBox`` and no fixed size); every text escaped.

Two charts, both stacked by backend in the same colours: each backend's share of the answers
in time buckets across a run (with markers such as the kill), and the latency distribution on
a log scale (one decade holds as many bars as the next, so a 1 ms and a 20 ms hump both show)
with its percentiles. Hovering a bar shows its numbers (an SVG ``<title>``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

__all__ = ["share_chart", "latency_histogram", "format_duration"]

WIDTH, HEIGHT = 520, 250
LEFT, RIGHT, TOP, BOTTOM = 44, 26, 52, 42       # the plot area's margins
BINS_PER_DECADE = 8


def format_duration(seconds: float) -> str:
    """``0.42 ms``, ``1.3 ms``, ``23 ms``, ``1.5 s``: as many digits as a reader needs."""
    if seconds >= 1:
        return f"{seconds:.3g} s"
    ms = seconds * 1000
    return f"{ms:.0f} ms" if ms >= 100 else f"{ms:.2g} ms"


def _n(value: float) -> str:
    return f"{value:.1f}".removesuffix(".0")


def _text(x: float, y: float, text: str, anchor: str = "middle", css: str = "") -> str:
    klass = f' class="{escape(css)}"' if css else ""
    return (f'<text x="{_n(x)}" y="{_n(y)}" text-anchor="{anchor}"{klass}>'
            f"{escape(text)}</text>")


def _rect(x: float, y: float, w: float, h: float, fill: str, title: str) -> str:
    return (f'<rect x="{_n(x)}" y="{_n(y)}" width="{_n(w)}" height="{_n(h)}" '
            f'fill="{escape(fill)}"><title>{escape(title)}</title></rect>')


def _line(x1: float, y1: float, x2: float, y2: float, css: str) -> str:
    return (f'<line x1="{_n(x1)}" y1="{_n(y1)}" x2="{_n(x2)}" y2="{_n(y2)}" '
            f'class="{escape(css)}"/>')


def _svg(label: str, body: list[str]) -> str:
    return (f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(label)}" '
            f'xmlns="http://www.w3.org/2000/svg"><title>{escape(label)}</title>'
            + "".join(body) + "</svg>")


def _legend(names: Sequence[str], colours: Mapping[str, str]) -> list[str]:
    parts, x = [], float(LEFT)
    for name in names:
        parts.append(f'<rect x="{_n(x)}" y="4" width="11" height="11" '
                     f'fill="{escape(colours[name])}"/>')
        parts.append(_text(x + 15, 14, name, "start"))
        x += 15 + 7.5 * len(name) + 16
    return parts


def _label_anchor(x: float, text: str, side: str) -> tuple[float, str]:
    """Where to write a marker's label: beside its line on ``side``, moved to the other side
    when it would leave the plot."""
    room = 7 * len(text)
    if side == "end" and x - room < LEFT:
        side = "start"
    if side == "start" and x + room > WIDTH - RIGHT:
        side = "end"
    return (x - 4, "end") if side == "end" else (x + 4, "start")


def _nice_step(span: float, most: int) -> float:
    """The smallest of 1, 2, 2.5, 5 times a power of ten that cuts ``span`` into at most
    ``most`` steps."""
    if span <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(span / most))
    for factor in (1.0, 2.0, 2.5, 5.0, 10.0):
        if span / (factor * power) <= most:
            return factor * power
    return 10 * power


def share_chart(columns: Sequence[Mapping[str, int]], names: Sequence[str], seconds: float,
                colours: Mapping[str, str], label: str,
                markers: Sequence[tuple[float, str]] = ()) -> str:
    """Each name's share of every column (equal time buckets over ``seconds``), stacked from
    the bottom in ``names`` order; ``markers``: (seconds, text) drawn as dashed lines."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    bottom = TOP + plot_h
    body = _legend(names, colours)
    for share in (0, 50, 100):
        y = bottom - plot_h * share / 100
        body.append(_line(LEFT, y, WIDTH - RIGHT, y, "grid"))
        body.append(_text(LEFT - 6, y + 4, f"{share}%", "end"))
    step = _nice_step(seconds, 6)
    tick = 0.0
    while tick <= seconds + 1e-9:
        x = LEFT + plot_w * tick / seconds if seconds else LEFT
        body.append(_line(x, bottom, x, bottom + 4, "axis"))
        body.append(_text(x, bottom + 16, f"{tick:g} s"))
        tick += step
    body.append(_text(LEFT + plot_w / 2, HEIGHT - 6, "time into the run"))
    width = plot_w / max(len(columns), 1)
    for index, column in enumerate(columns):
        total = sum(column.values())
        if not total:
            continue
        start, end = seconds * index / len(columns), seconds * (index + 1) / len(columns)
        y = float(bottom)
        for name in names:
            count = column.get(name, 0)
            if not count:
                continue
            height = plot_h * count / total
            y -= height
            body.append(_rect(LEFT + index * width, y, width + 0.3, height, colours[name],
                              f"{name}: {100 * count / total:.0f}% ({count} of {total}) "
                              f"between {start:.2f} s and {end:.2f} s"))
    body.append(_line(LEFT, bottom, WIDTH - RIGHT, bottom, "axis"))
    for at, text in markers:
        x = LEFT + plot_w * min(max(at / seconds, 0.0), 1.0) if seconds else LEFT
        body.append(_line(x, TOP - 4, x, bottom, "marker kill-marker"))
        tx, anchor = _label_anchor(x, text, "start")
        body.append(_text(tx, TOP - 8, text, anchor, "marker-label"))
    return _svg(label, body)


def latency_histogram(latencies: Mapping[str, Sequence[float]], names: Sequence[str],
                      colours: Mapping[str, str], label: str, low: float, high: float,
                      percentiles: Sequence[tuple[str, float]] = ()) -> str:
    """The share of all requests per latency bin (log scale from ``low`` to ``high`` seconds,
    powers of ten), stacked by name; ``percentiles``: (name, seconds) drawn as lines."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    bottom = TOP + plot_h
    low_exp, high_exp = math.floor(math.log10(low)), math.ceil(math.log10(high))
    high_exp = max(high_exp, low_exp + 1)
    bins = (high_exp - low_exp) * BINS_PER_DECADE
    counts = {name: [0] * bins for name in names}
    total = 0
    for name in names:
        for value in latencies.get(name, ()):
            position = (math.log10(max(value, 1e-9)) - low_exp) * BINS_PER_DECADE
            counts[name][min(max(int(position), 0), bins - 1)] += 1
            total += 1
    total = max(total, 1)
    tallest = max((sum(counts[n][i] for n in names) for i in range(bins)), default=0)
    top_share = _nice_step(100 * tallest / total, 1) if tallest else 10.0

    def x_of(seconds: float) -> float:
        position = (math.log10(max(seconds, 1e-9)) - low_exp) / (high_exp - low_exp)
        return LEFT + plot_w * min(max(position, 0.0), 1.0)

    body = _legend(names, colours)
    for share in (0, top_share / 2, top_share):
        y = bottom - plot_h * share / top_share
        body.append(_line(LEFT, y, WIDTH - RIGHT, y, "grid"))
        body.append(_text(LEFT - 6, y + 4, f"{share:g}%", "end"))
    for exponent in range(low_exp, high_exp + 1):
        x = x_of(10.0 ** exponent)
        body.append(_line(x, bottom, x, bottom + 4, "axis"))
        body.append(_text(x, bottom + 16, format_duration(10.0 ** exponent)))
    body.append(_text(LEFT + plot_w / 2, HEIGHT - 6,
                      "latency seen by the client (log scale); bar height: share of requests"))
    width = plot_w / bins
    for index in range(bins):
        y = float(bottom)
        edge = 10 ** (low_exp + index / BINS_PER_DECADE)
        upper = 10 ** (low_exp + (index + 1) / BINS_PER_DECADE)
        for name in names:
            count = counts[name][index]
            if not count:
                continue
            height = plot_h * (100 * count / total) / top_share
            y -= height
            body.append(_rect(LEFT + index * width + 0.5, y, width - 1, height, colours[name],
                              f"{name}: {count} requests between {format_duration(edge)} "
                              f"and {format_duration(upper)}"))
    body.append(_line(LEFT, bottom, WIDTH - RIGHT, bottom, "axis"))
    for row, (name, seconds) in enumerate(percentiles):
        x = x_of(seconds)
        body.append(_line(x, TOP - 16 + 12 * row, x, bottom, f"marker percentile {name}"))
        text = f"{name} {format_duration(seconds)}"
        tx, anchor = _label_anchor(x, text, "end" if row == 0 else "start")
        body.append(_text(tx, TOP - 20 + 12 * row, text, anchor, "marker-label"))
    return _svg(label, body)
