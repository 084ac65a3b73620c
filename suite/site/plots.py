"""The leaderboard's plots: each task's declared `Plot`s as SVG, skipped when absent.

Curves are seed means with a band: the interval of the tables (suite.interval), at each step.
The index's plots are written directly (suite.site.small's pieces: a figure in milliseconds,
where matplotlib took a second); `render`, `figure` and `log_steps` serve the matplotlib
figures of `ldbench compare --plot` and `ldbench tune --plot`."""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass
from html import escape
from typing import TYPE_CHECKING

import matplotlib
import matplotlib.colors
import numpy as np
import pandas as pd

from suite import interval
from suite.score import seed_statistics
from suite.site import small
from suite.task import Plot as PlotSpec

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Deterministic SVG (fixed ids, no date) so that a rebuild from the same results is byte-identical;
# text stays text (smaller, selectable, and escaped by matplotlib's SVG writer).
SVG_RC = {"svg.hashsalt": "ldbench", "svg.fonttype": "none", "font.size": 9,
          "axes.spines.top": False, "axes.spines.right": False}
PANELS = 6  # small multiples: one panel per top entry, COLUMNS to a row
COLUMNS = 3
LINES = 8  # one line per top entry
TITLE = 16  # pixels above each panel for its entry's name
DOT_ROW, DOT_WIDTH = 18, 360  # the index's dots: pixels per entry row, and the value axis' length
Bounds = dict[str, tuple[float, float]]  # a curve's valid range (Curve.bounds), by name


@dataclass(frozen=True)
class Plot:
    """One rendered figure: `key` names its file, `svg` is the document."""

    key: str
    title: str
    caption: str
    svg: str
    shown: tuple[str, ...] = ()  # the entries drawn, in order


def render(fig: Figure) -> str:
    plain_text(fig)
    buffer = io.StringIO()
    with matplotlib.rc_context(SVG_RC):
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    return buffer.getvalue()


def plain_text(fig: Figure) -> None:
    """Draw every title, label and legend as plain text: entry and curve names come from
    submissions, and a `$` in one must be a dollar sign, not mathtext (which raises on malformed
    input and would block the build for everyone). Tick labels keep mathtext: matplotlib writes
    log-axis ticks such as 10² with it, and their text is ours."""
    from matplotlib.text import Text

    ticks: set[Text] = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            ticks |= set(axis.findobj(Text)) - {axis.label}
    for text in fig.findobj(Text):
        if text not in ticks:
            text.set_parse_math(False)


def figure(panels: int = 1, *, width: float = 3.2, height: float = 2.4) -> tuple[Figure, list]:
    """`panels` axes sharing y, COLUMNS to a row."""
    from matplotlib.figure import Figure

    columns, rows = min(panels, COLUMNS), math.ceil(panels / COLUMNS)
    with matplotlib.rc_context(SVG_RC):
        fig = Figure(figsize=(width * columns, height * rows), layout="constrained")
        axes = list(fig.subplots(rows, columns, squeeze=False, sharey=True).flat)
    for ax in axes[panels:]:
        fig.delaxes(ax)
    return fig, axes[:panels]


def log_steps(ax) -> None:
    """A symlog step axis for matplotlib figures (`ldbench compare --plot`)."""
    ax.set_xscale("symlog", linthresh=1.0)  # step 0 (the initialisation) stays on the axis
    ax.set_xlim(left=0.0)  # no negative steps in the margin
    ax.set_xlabel("step")


def seed_means(curves: pd.DataFrame, bounds: Bounds | None = None) -> pd.DataFrame:
    """Mean over seeds of each (entry, curve, step) and its interval (interval.METHOD, clipped
    to the curve's bounds, NaN below interval.MIN_SEEDS finite values), sorted by those keys:
    columns entry, metric, step, value, low, high. (Integer keys and bincounts rather than a
    pandas groupby, which costs more than the arithmetic here.)"""
    curves = curves[curves[["entry", "metric", "step"]].notna().all(axis=1)]  # a row without them: none
    if curves.empty:
        return pd.DataFrame({c: [] for c in ("entry", "metric", "step", "value", "low", "high")})
    entry, entries = pd.factorize(curves["entry"], sort=True)
    name, names = pd.factorize(curves["metric"], sort=True)
    # Steps by rank, not value: keys cannot overflow, whatever int64 steps a file holds.
    step, steps = pd.factorize(curves["step"].to_numpy(np.int64), sort=True)
    keys, group = np.unique((entry.astype(np.int64) * len(names) + name) * len(steps) + step,
                            return_inverse=True)
    stats = seed_statistics(group=group, values=curves["value"].to_numpy(float), n_groups=len(keys))
    pair, at = np.divmod(keys, len(steps))
    which, curve = np.divmod(pair, len(names))
    bounds = bounds or {}
    low, high = (np.array([bounds.get(n, (-math.inf, math.inf))[i] for n in names], dtype=float)[curve]
                 for i in (0, 1))
    low, high = interval.t_intervals(mean=stats["mean"], sd=stats["sd"], n=stats["n"], bounds=(low, high))
    return pd.DataFrame({"entry": np.asarray(entries, dtype=object)[which],
                         "metric": np.asarray(names, dtype=object)[curve], "step": np.asarray(steps)[at],
                         "value": stats["mean"].to_numpy(), "low": low, "high": high})


def split_curves(means: pd.DataFrame) -> dict[tuple, np.ndarray]:
    """`seed_means` rows (sorted by entry, metric, step) as (entry, metric) -> (4, evaluations):
    step, mean, low, high; cut where the keys change (a groupby per entry costs far more)."""
    entry, name = means["entry"].to_numpy(), means["metric"].to_numpy()
    cuts = np.flatnonzero((entry[1:] != entry[:-1]) | (name[1:] != name[:-1])) + 1
    arrays = means[["step", "value", "low", "high"]].to_numpy(float).T
    return {(entry[a], name[a]): arrays[:, a:b]
            for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(means)], strict=True) if b > a}


def entry_curves(split: dict[tuple, np.ndarray], entry: str) -> small.Curves:
    """An entry's curves from `split_curves`: curve name -> (4, evaluations)."""
    return {name: array for (e, name), array in split.items() if e == entry}


def entry_values(metrics: pd.DataFrame, entry: str) -> small.Values:
    """An entry's metric means and intervals (its scores rows) as metric -> (mean, low, high)."""
    rows = metrics[metrics["entry"] == entry]
    return {m: (float(mean), float(low), float(high))
            for m, mean, low, high in rows[["metric", "mean", "ci_low", "ci_high"]].itertuples(index=False)}


def positive(values) -> bool:
    """Every finite value is positive (a log axis shows them all)."""
    values = np.asarray(values, dtype=float)
    return bool((values[np.isfinite(values)] > 0).all())


VIEWBOX = re.compile(r'viewBox="0 0 ([0-9.]+) ([0-9.]+)"')


def document(width: float, height: float, body: list[str], label: str) -> str:
    """An SVG document with small.py's text style; `label` names it for screen readers."""
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width:.0f} {height:.0f}" '
            f'width="{width:.0f}" height="{height:.0f}" font-size="9.5" font-family="system-ui, sans-serif" '
            f'fill="#1d232b" role="img" aria-label="{escape(label)}">{"".join(body)}</svg>')


def grid(panels: list[tuple[str, str]]) -> str:
    """Panels (title, small.svg document) as one SVG, COLUMNS to a row, each under its title."""
    body, y, width = [], 0.0, 0.0
    for row in range(0, len(panels), COLUMNS):
        x, height = 0.0, 0.0
        for title, panel in panels[row:row + COLUMNS]:
            w, h = (float(v) for v in VIEWBOX.search(panel).groups())
            body.append(f'<text x="{x + small.LEFT + small.WIDTH / 2:.0f}" y="{y + 12:.0f}" '
                        f'text-anchor="middle" font-size="11">{escape(title)}</text>')
            body.append(panel.replace("<svg ", f'<svg x="{x:.0f}" y="{y + TITLE:.0f}" ', 1))
            x, height = x + w, max(height, h)
        y, width = y + TITLE + height, max(width, x)
    return document(width, y, body, "panels: " + ", ".join(title for title, _ in panels))


def draw_panels(spec: PlotSpec, curves: pd.DataFrame, metrics: pd.DataFrame,
                entries: list[str], bounds: Bounds | None = None) -> tuple[str, list[str]] | None:
    """`spec.curves` vs step with bands, one panel per entry sharing the y axis; markers and a
    shaded span from metric means."""
    part = curves[curves["metric"].isin(spec.curves)]
    shown = [e for e in entries if set(spec.curves) <= set(part.loc[part["entry"] == e, "metric"])][:PANELS]
    if not shown:
        return None
    means = seed_means(part[part["entry"].isin(shown)], bounds)
    logy = spec.logy and positive(means["value"])
    also = means[["value", "low", "high"]].to_numpy(float).ravel()
    split = split_curves(means)
    panels = [(e, small.over_steps(spec, entry_curves(split, e), entry_values(metrics, e), also=also,
                                   logy=logy, points=False)) for e in shown]
    panels = [(e, svg) for e, svg in panels if svg is not None]  # (an entry without a finite mean)
    return (grid(panels), [e for e, _ in panels]) if panels else None


def draw_lines(spec: PlotSpec, curves: pd.DataFrame, metrics: pd.DataFrame,
               entries: list[str], bounds: Bounds | None = None) -> tuple[str, list[str]] | None:
    """The one curve of `spec.curves` vs step with its band, one line per entry."""
    name = spec.curves[0]
    part = curves[curves["metric"] == name]
    shown = [e for e in entries if e in set(part["entry"])][:LINES]
    if not shown:
        return None
    means = seed_means(part[part["entry"].isin(shown)], bounds)
    split = split_curves(means)
    series = [small.Series(e, *split[e, name], matplotlib.colors.to_hex(f"C{i}"))
              for i, e in enumerate(shown)]
    return small.svg(series, steps=True, logy=spec.logy and positive(means["value"]), xlabel="step",
                     ylabel=spec.ylabel), shown


def draw_dots(spec: PlotSpec, curves: pd.DataFrame, metrics: pd.DataFrame,
              entries: list[str], bounds: Bounds | None = None) -> tuple[str, list[str]] | None:
    """Mean and interval of each metric of `spec.metrics`, one row per entry."""
    rows = metrics[metrics["metric"].isin(spec.metrics)]
    valued = set(rows.loc[np.isfinite(rows["mean"].to_numpy(float)), "entry"])  # else an empty row
    shown = [e for e in entries if e in valued][:2 * LINES]
    if rows.empty or not shown:
        return None
    return dot_rows(spec, rows[rows["entry"].isin(shown)], shown), shown


def dot_rows(spec: PlotSpec, rows: pd.DataFrame, shown: list[str]) -> str:
    """One row per entry (named on the left), each metric's mean a dot and its interval a bar
    along one value axis (log where every value is positive), the legend above."""
    values = rows[["mean", "ci_low", "ci_high"]].to_numpy(float)
    ax = small.Axes(np.zeros(1), values.ravel(), steps=False, logy=positive(values))  # y: the value axis
    left = 12 + small.CHAR * max(len(e) for e in shown)

    def px(value) -> np.ndarray:
        return left + (ax.fy(value) - ax.y0) / (ax.y1 - ax.y0) * DOT_WIDTH

    names = [m for m in spec.metrics if m in set(rows["metric"])]
    colour = {m: c for m, (c, _) in zip(spec.metrics, small.style(spec, len(spec.metrics)), strict=True)}
    keys, top = small.legend([(small.label_of(spec, list(spec.metrics).index(m), m), colour[m], "")
                              for m in names], small.LEGEND_ROW)
    body = [f'<g transform="translate({left - small.LEFT:.0f} 0)">{"".join(keys)}</g>',
            f'<rect x="{left:.0f}" y="{top:.0f}" width="{DOT_WIDTH}" height="{DOT_ROW * len(shown)}" '
            'fill="none" stroke="#dde2e8"/>']
    row = {e: top + DOT_ROW * (i + 0.5) for i, e in enumerate(shown)}
    for e, y in row.items():
        body.append(f'<text x="{left - 6:.0f}" y="{y + 3:.1f}" text-anchor="end">{escape(e)}</text>')
    cells = rows[["entry", "metric", "mean", "ci_low", "ci_high"]].itertuples(index=False)
    for e, m, mean, low, high in cells:
        x, x0, x1 = (float(v) for v in px([mean, low, high]))
        if math.isfinite(x0) and math.isfinite(x1):
            body.append(f'<line x1="{x0:.1f}" y1="{row[e]:.1f}" x2="{x1:.1f}" y2="{row[e]:.1f}" '
                        f'stroke="{colour[m]}"/>')
        if math.isfinite(x):
            body.append(f'<circle cx="{x:.1f}" cy="{row[e]:.1f}" r="3" fill="{colour[m]}"/>')
    bottom = top + DOT_ROW * len(shown)
    for value, text in ax.yticks():
        x = float(px(value))
        body.append(f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 3}" stroke="#5d6773"/>'
                    f'<text x="{x:.1f}" y="{bottom + 13}" text-anchor="middle">{escape(text)}</text>')
    body.append(f'<text x="{left + DOT_WIDTH / 2:.0f}" y="{bottom + 27}" text-anchor="middle">'
                f'{escape(f"{spec.xlabel}, mean [{interval.METHOD}]")}</text>')
    return document(left + DOT_WIDTH + small.RIGHT, bottom + 34, body, f"{spec.xlabel} per entry")


def draw_path(spec: PlotSpec, curves: pd.DataFrame, metrics: pd.DataFrame,
              entries: list[str], bounds: Bounds | None = None) -> tuple[str, list[str]] | None:
    """Each path's curves (final values: mean over seeds, with bands) against `spec.x`, one panel
    per entry sharing the y axis."""
    part = curves[curves["metric"].isin(spec.names())].dropna(subset=["value"])
    shown = [e for e in entries if e in set(part["entry"])][:PANELS]
    if not shown:
        return None
    part = part[part["entry"].isin(shown)]
    last = part.sort_values("step").groupby(["entry", "seed", "metric"], as_index=False).last()
    means = seed_means(last.assign(step=0), bounds)
    also = means[["value", "low", "high"]].to_numpy(float).ravel()
    split = split_curves(means)
    finals = {e: {n: tuple(c[1:, -1]) for n, c in entry_curves(split, e).items()} for e in shown}
    panels = [(e, small.along_path(spec, finals[e], also=also)) for e in shown]
    panels = [(e, svg) for e, svg in panels if svg is not None]
    return (grid(panels), [e for e, _ in panels]) if panels else None


DRAW = {"panels": draw_panels, "lines": draw_lines, "dots": draw_dots, "path": draw_path}


def task_plots(specs: list[PlotSpec], curves: pd.DataFrame, metrics: pd.DataFrame,
               entries: list[str], bounds: Bounds | None = None) -> list[Plot]:
    """Every declared plot of a task whose curves or metrics exist, best entries first.

    specs: the task's `plots()`; curves: rows (entry, seed, step, metric, value) of the task;
    metrics: its scores rows (entry, metric, mean, ci_low, ci_high); entries: best first;
    bounds: each curve's valid range (the task's Curve.bounds), which its band is clipped to.
    """
    out = []
    for spec in specs:
        drawn = DRAW[spec.kind](spec, curves, metrics, entries, bounds)
        if drawn is not None:
            out.append(Plot(spec.key, spec.title, spec.caption, drawn[0], tuple(drawn[1])))
    return out
