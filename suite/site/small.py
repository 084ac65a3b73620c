"""SVG charts written without matplotlib: each entry's declared plots on its page, and the index's plots."""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from html import escape

import matplotlib
import matplotlib.colors
import numpy as np

from suite.task import Plot as PlotSpec

WIDTH, HEIGHT = 300, 150  # the plotting area and its margins, in CSS pixels
LEFT, RIGHT, TOP, BOTTOM = 46, 16, 8, 30
LEGEND_ROW, CHAR = 13, 5.6  # legend line height; the width of a character at 9.5px
POINTS = 80  # a line keeps at most this many of its evaluations (log-spaced: about even in x)
FMT = re.compile(r"^(?P<color>C\d)?(?P<line>--|-\.|-|:)?")
DASHES = {"--": "5 3", "-.": "5 2 1 2", ":": "1 2", "-": ""}
BAND_ALPHA = 0.2  # the shaded interval of a curve's seed mean
SPAN_COLOUR = "#ff7f0e"  # a shaded span between two metric means (matplotlib's C1)


def colours(spec: PlotSpec, n: int) -> list:
    """One format per line: the spec's styles, else a viridis ramp (ordered curves, e.g. modes)."""
    if spec.styles:
        return [dict(fmt=style) for style in spec.styles]
    return [dict(fmt="-", color=c) for c in matplotlib.colormaps["viridis"](np.linspace(0.0, 0.85, n))]


def label_of(spec: PlotSpec, i: int, name: str) -> str:
    return spec.labels[i] if i < len(spec.labels) else name


@dataclass
class Series:
    """One line: values (and their band: low, high, NaN where none) at x."""

    label: str
    x: np.ndarray
    y: np.ndarray
    low: np.ndarray
    high: np.ndarray
    color: str
    dash: str = ""
    dots: bool = False  # points with error bars instead of a line with a band


@functools.cache
def style(spec: PlotSpec, n: int) -> list[tuple[str, str]]:
    """(colour, dash pattern) per curve: the spec's format strings, else the site's ramp."""
    out = []
    for item in colours(spec, n):
        match = FMT.match(item["fmt"])
        colour = item.get("color", match["color"] or "C0")
        out.append((matplotlib.colors.to_hex(colour), DASHES[match["line"] or "-"]))
    return out


def nice_ticks(low: float, high: float, n: int = 4) -> list[float]:
    """About `n` round numbers spanning [low, high]."""
    if not high > low:
        return [low]
    raw = (high - low) / n
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if m * step >= raw)
    return [float(t) for t in np.arange(math.ceil(low / step) * step, high + step * 1e-9, step)]


def tick_text(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return f"{value:.0e}".replace("e+0", "e").replace("e-0", "e-")
    return f"{value:g}"


HUGE = 1e300  # values beyond are not drawn: the axis arithmetic (range, padding, ticks) would overflow


class Axes:
    """Maps data to pixels: x linear or log10(1 + step) (steps from 0), y linear or log10."""

    def __init__(self, xs: np.ndarray, ys: np.ndarray, *, steps: bool, logy: bool, xpad: float = 0.0) -> None:
        self.steps, self.logy = steps, logy
        xs, ys = self.fx(xs), self.fy(ys)
        xs, ys = xs[np.isfinite(xs)], ys[np.isfinite(ys)]
        self.x0, self.x1 = (float(xs.min()) - xpad, float(xs.max()) + xpad) if len(xs) else (0.0, 1.0)
        self.y0, self.y1 = (float(ys.min()), float(ys.max())) if len(ys) else (0.0, 1.0)
        if self.y1 - self.y0 < 1e-12 * max(1.0, abs(self.y1)):
            self.y0, self.y1 = self.y0 - 0.5, self.y1 + 0.5
        pad = 0.05 * (self.y1 - self.y0)
        self.y0, self.y1 = self.y0 - pad, self.y1 + pad
        self.x1 = self.x1 if self.x1 > self.x0 else self.x0 + 1.0

    def fx(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        return np.log10(1.0 + np.maximum(x, 0.0)) if self.steps else x

    def fy(self, y) -> np.ndarray:
        """y on the axis's scale; NaN (not drawn) where it has none, or beyond ±HUGE."""
        y = np.asarray(y, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            if not self.logy:
                return np.where(np.abs(y) <= HUGE, y, np.nan)
            return np.where((y > 0) & (y <= HUGE), np.log10(y), np.nan)

    def px(self, x) -> np.ndarray:
        return LEFT + (self.fx(x) - self.x0) / (self.x1 - self.x0) * WIDTH

    def py(self, y) -> np.ndarray:
        return TOP + (self.y1 - self.fy(y)) / (self.y1 - self.y0) * HEIGHT

    def xticks(self) -> list[tuple[float, str]]:
        if self.steps:  # 0, 10, 100, ... in steps
            top = int(math.floor(self.x1 + 1e-9))
            return [(10.0 ** k if k else 0.0, tick_text(10.0 ** k if k else 0.0)) for k in range(top + 1)]
        return [(t, tick_text(t)) for t in nice_ticks(self.x0, self.x1)]

    def yticks(self) -> list[tuple[float, str]]:
        if self.logy:  # decades, or 1-2-5 steps within less than two of them
            ks = range(max(math.floor(self.y0), -307), min(math.ceil(self.y1), 307) + 1)  # 10.0**k finite
            ks = ks[::max(1, math.ceil(len(ks) / 30))]  # at most 30 decades labelled (a value of 1e-300...)
            steps = (1,) if len(ks) > 3 else (1, 2, 5)
            ticks = [m * 10.0 ** k for k in ks for m in steps]
            ticks = [t for t in ticks if self.y0 <= math.log10(t) <= self.y1]
            if len(ticks) < 2:  # within a fraction of a decade: round numbers, evenly spaced
                low, high = 10.0 ** max(self.y0, -307), 10.0 ** min(self.y1, 307)
                ticks = [t for t in nice_ticks(low, high) if t > 0]
        else:
            ticks = nice_ticks(self.y0, self.y1)
        return [(t, tick_text(t)) for t in ticks if abs(t) <= HUGE]  # beyond: not on the axis


def pixels(xs: np.ndarray, ys: np.ndarray) -> tuple[int, ...]:
    """x0, y0, x1, y1, ... of the points in whole pixels: plenty at this size."""
    return tuple(np.rint(np.array((xs, ys)).T).astype(int).ravel().tolist())  # (np.stack: 10x slower)


def pairs(xs: np.ndarray, ys: np.ndarray) -> str:
    """'x,y x,y ...' of the (finite) points in whole pixels, formatted in one `%` (a thousand
    entry pages write about a million of them)."""
    return ("%d,%d " * len(xs))[:-1] % pixels(xs, ys)


def path_d(xs: np.ndarray, ys: np.ndarray) -> str:
    """An SVG path through the finite points, broken where a value is missing."""
    ok = np.isfinite(xs) & np.isfinite(ys)
    if ok.all():  # most curves: one unbroken run
        return ("M%d,%d" + " L%d,%d" * (len(xs) - 1) if len(xs) else "") % pixels(xs, ys)
    starts = np.flatnonzero((ok & ~np.concatenate(([False], ok[:-1])))[ok])  # of each unbroken run
    runs = np.diff(np.append(starts, len(starts) and int(ok.sum()))).tolist()
    return " ".join("M%d,%d" + " L%d,%d" * (n - 1) for n in runs) % pixels(xs[ok], ys[ok])


def legend(items: list[tuple[str, str, str]], y: float) -> tuple[list[str], float]:
    """Legend entries (label, colour, dash) flowing in rows from `y`; returns elements and the end."""
    parts, x = [], float(LEFT)
    for label, colour, dash in items:
        width = 22 + CHAR * len(label)
        if x + width > LEFT + WIDTH and x > LEFT:
            x, y = float(LEFT), y + LEGEND_ROW
        parts.append(f'<line x1="{x:.0f}" y1="{y - 3:.0f}" x2="{x + 16:.0f}" y2="{y - 3:.0f}" '
                     f'stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/>'
                     f'<text x="{x + 19:.0f}" y="{y:.0f}">{escape(label)}</text>')
        x += width + 8
    return parts, y + 4


def svg(series: list[Series], *, steps: bool, logy: bool, xlabel: str, ylabel: str,
        vlines: list[tuple[float, str]] = (), span: tuple[float, float] | None = None,
        xticks: list[tuple[float, str]] | None = None, also: np.ndarray | None = None,
        span_label: str = "", xspan: tuple[float, float] | None = None) -> str:
    """A chart of `series` with their bands; `vlines` (x, colour) dotted, `span` shaded (named
    `span_label` in the legend); the y range also spans the values `also` (a figure's panels
    share their y axis), the x range `xspan` (else, with `xticks`, columns padded by half)."""
    xs = np.concatenate([s.x for s in series] + [np.asarray(xspan or (), dtype=float)])
    ys = np.concatenate([np.concatenate([s.y, s.low, s.high]) for s in series] + [np.asarray(
        also if also is not None else [], dtype=float)])
    ax = Axes(xs, ys, steps=steps, logy=logy, xpad=0.5 if xticks and xspan is None else 0.0)
    body = [f'<rect x="{LEFT}" y="{TOP}" width="{WIDTH}" height="{HEIGHT}" fill="none" stroke="#dde2e8"/>']
    yticks, columns = ax.yticks(), xticks or ax.xticks()
    for (_, text), y in zip(yticks, ax.py([v for v, _ in yticks]).tolist(), strict=True):  # one call each
        body.append(f'<line x1="{LEFT - 3}" y1="{y:.1f}" x2="{LEFT}" y2="{y:.1f}" stroke="#5d6773"/>'
                    f'<text x="{LEFT - 5}" y="{y + 3:.1f}" text-anchor="end">{escape(text)}</text>')
    for (_, text), x in zip(columns, ax.px([v for v, _ in columns]).tolist(), strict=True):
        body.append(f'<line x1="{x:.1f}" y1="{TOP + HEIGHT}" x2="{x:.1f}" y2="{TOP + HEIGHT + 3}" '
                    f'stroke="#5d6773"/><text x="{x:.1f}" y="{TOP + HEIGHT + 13}" '
                    f'text-anchor="middle">{escape(text)}</text>')
    if span is not None:
        x0, x1 = (float(v) for v in ax.px(np.array(span)))
        body.append(f'<rect x="{x0:.1f}" y="{TOP}" width="{max(x1 - x0, 0.0):.1f}" height="{HEIGHT}" '
                    f'fill="{SPAN_COLOUR}" fill-opacity="0.15"/>')
    for s in series:
        body += points(ax, s) if s.dots else line(ax, s)
    for value, colour in vlines:
        x = float(ax.px(value))
        if LEFT <= x <= LEFT + WIDTH:
            body.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{TOP + HEIGHT}" '
                        f'stroke="{colour}" stroke-dasharray="1 2"/>')
    body.append(f'<text x="{LEFT + WIDTH / 2}" y="{TOP + HEIGHT + 25}" text-anchor="middle">'
                f'{escape(xlabel)}</text>')
    body.append(f'<text transform="translate(11 {TOP + HEIGHT / 2}) rotate(-90)" '
                f'text-anchor="middle">{escape(ylabel)}</text>')
    items = [] if xticks else [(s.label, s.color, s.dash) for s in series]
    items += [(span_label, SPAN_COLOUR, "")] if span is not None and span_label else []
    keys, bottom = legend(items, TOP + HEIGHT + BOTTOM + LEGEND_ROW)
    total = LEFT + WIDTH + RIGHT
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {total} {bottom:.0f}" width="{total}" '
            f'height="{bottom:.0f}" font-size="9.5" font-family="system-ui, sans-serif" fill="#1d232b" '
            f'role="img" aria-label="{escape(ylabel or "curves")} against {escape(xlabel)}">'
            f'{"".join(body + keys)}</svg>')


def line(ax: Axes, s: Series) -> list[str]:
    """A line with its band (where the interval exists)."""
    px, (y, lo, hi) = ax.px(s.x), ax.py(np.array((s.y, s.low, s.high)))  # one call: these are short
    ok = np.isfinite(px) & np.isfinite(lo) & np.isfinite(hi)
    out = []
    if ok.sum() > 1:
        corners = pairs(np.concatenate((px[ok], px[ok][::-1])),  # (np.r_ costs 20x more)
                        np.concatenate((hi[ok], lo[ok][::-1])))
        out.append(f'<polygon points="{corners}" fill="{s.color}" fill-opacity="{BAND_ALPHA}"/>')
    out.append(f'<path d="{path_d(px, y)}" fill="none" stroke="{s.color}" '
               f'stroke-width="1.5" stroke-dasharray="{s.dash}"/>')
    return out


def points(ax: Axes, s: Series) -> list[str]:
    """Dots with error bars (where the interval exists)."""
    out = []
    for x, y, lo, hi in zip(ax.px(s.x), ax.py(s.y), ax.py(s.low), ax.py(s.high), strict=True):
        if math.isfinite(lo) and math.isfinite(hi):
            out.append(f'<line x1="{x:.1f}" y1="{lo:.1f}" x2="{x:.1f}" y2="{hi:.1f}" stroke="{s.color}"/>')
        if math.isfinite(x) and math.isfinite(y):
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{s.color}"/>')
    return out


Curves = dict[str, np.ndarray]  # curve name -> (4, evaluations): step, mean, low, high
Values = dict[str, tuple[float, float, float]]  # metric (or final curve value) -> mean, low, high
NONE = (math.nan, math.nan, math.nan)


def thin(curve: np.ndarray) -> np.ndarray:
    """At most POINTS evaluations of a (4, n) curve, evenly spaced in order, the first and last
    kept: a 300-pixel chart needs no more, and a thousand entry pages stay small."""
    if curve.shape[1] <= POINTS:
        return curve
    return curve[:, np.unique(np.linspace(0, curve.shape[1] - 1, POINTS).round().astype(int))]


def over_steps(spec: PlotSpec, curves: Curves, metrics: Values, *, also: np.ndarray | None = None,
               logy: bool | None = None, points: bool = True) -> str | None:
    """panels and lines: the entry's curves vs step, with markers and span from its metric means.

    also: more y values the y range spans; logy: the y scale (default: the spec's, where every
    mean is positive); points: thin each curve to POINTS evaluations (else draw them all)."""
    series, vlines = [], []
    for i, (name, (colour, dash)) in enumerate(zip(spec.curves, style(spec, len(spec.curves)), strict=True)):
        if name in curves and np.isfinite(curves[name][1]).any():
            step, mean, low, high = thin(curves[name]) if points else curves[name]
            series.append(Series(label_of(spec, i, name), step, mean, low, high, colour, dash))
            at = metrics.get(spec.markers[i], NONE)[0] if i < len(spec.markers) else math.nan
            vlines += [(at, colour)] if math.isfinite(at) else []
    if not series:
        return None
    span = tuple(metrics.get(m, NONE)[0] for m in spec.span) if spec.span else None
    span = span if span and all(map(math.isfinite, span)) and span[1] > span[0] else None
    if logy is None:
        logy = spec.logy and all((s.y[np.isfinite(s.y)] > 0).all() for s in series)
    return svg(series, steps=True, logy=logy, xlabel="step", ylabel=spec.ylabel, vlines=vlines, span=span,
               also=also, span_label=spec.span_label)


def along_path(spec: PlotSpec, final: Values, *, also: np.ndarray | None = None) -> str | None:
    """path: each path's final values (seed mean and band) against `spec.x`."""
    series = []
    for (label, names), (colour, _) in zip(spec.paths, style(spec, len(spec.paths)), strict=True):
        mean, low, high = np.array([final.get(n, NONE) for n in names], dtype=float).T
        if np.isfinite(mean).any():
            series.append(Series(label, np.asarray(spec.x, float), mean, low, high, colour))
    if not series:
        return None
    return svg(series, steps=False, logy=False, xlabel=spec.xlabel, ylabel=spec.ylabel, also=also)


def dots(spec: PlotSpec, metrics: Values) -> str | None:
    """dots: each metric's mean and interval, one column per metric (log y where positive)."""
    labels = [label_of(spec, i, name) for i, name in enumerate(spec.metrics)]
    values = [metrics.get(name, NONE) for name in spec.metrics]
    series = [Series(labels[i], np.array([float(i)]), *(np.array([v]) for v in values[i]), colour, dots=True)
              for i, (colour, _) in enumerate(style(spec, len(labels))) if math.isfinite(values[i][0])]
    if not series:
        return None
    logy = all(s.y[0] > 0 for s in series)
    return svg(series, steps=False, logy=logy, xlabel="", ylabel=spec.xlabel,
               xticks=[(float(i), label) for i, label in enumerate(labels)])


def study_chart(values: list, targets: np.ndarray, *, space: dict, best: int | None, xlabel: str,
                ylabel: str) -> str:
    """A tuning study's trials on one hyperparameter: each trial's target (its mean over the
    tuning seeds) against the trial's value; trials that reached the target on no seed sit on
    the top edge in red, the chosen trial (index `best`) is black. The axis follows the search
    space: log for log_uniform, one column per value for choice."""
    (kind, bounds), = space.items()
    if kind == "choice":
        x = np.array([float(bounds.index(v)) if v in bounds else math.nan for v in values])
        ticks, span = [(float(i), str(v)) for i, v in enumerate(bounds)], None
    elif kind == "log_uniform":
        x = np.log10(np.asarray(values, dtype=float))
        span = (math.log10(bounds[0]), math.log10(bounds[1]))
        ticks = [(float(k), tick_text(10.0 ** k)) for k in range(math.ceil(span[0] - 1e-9),
                                                                 math.floor(span[1] + 1e-9) + 1)]
    else:
        x = np.asarray(values, dtype=float)
        span = (float(bounds[0]), float(bounds[1]))
        ticks = [(t, tick_text(t)) for t in nice_ticks(*span)]
    y = np.asarray(targets, dtype=float)
    reached = np.isfinite(y)
    top = float(y[reached].max()) * 1.1 if reached.any() and y[reached].max() > 0 else 1.0
    y = np.where(reached, y, top)
    chosen = np.arange(len(y)) == best
    nan = np.full(len(y), math.nan)
    series = [Series(label, x[mask], y[mask], nan[mask], nan[mask], colour, dots=True)
              for label, mask, colour in (("reached", reached & ~chosen, "#1f77b4"),
                                          ("not reached", ~reached & ~chosen, "#d62728"),
                                          ("chosen", chosen, "#000000")) if mask.any()]
    return svg(series, steps=False, logy=False, xlabel=xlabel, ylabel=ylabel, xticks=ticks,
               also=np.array([top]), xspan=span)
