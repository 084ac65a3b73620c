"""The leaderboard's plots: each task's declared `Plot`s drawn with matplotlib to SVG, skipped when absent.

Curves are seed means with a band: the interval of the tables (suite.interval), at each step."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.text import Text

from suite import interval
from suite.score import seed_statistics
from suite.task import Plot as PlotSpec

# Deterministic SVG (fixed ids, no date) so that a rebuild from the same results is byte-identical;
# text stays text (smaller, selectable, and escaped by matplotlib's SVG writer).
SVG_RC = {"svg.hashsalt": "ldbench", "svg.fonttype": "none", "font.size": 9,
          "axes.spines.top": False, "axes.spines.right": False}
PANELS = 6  # small multiples: one panel per top entry, COLUMNS to a row
COLUMNS = 3
LINES = 8  # one line per top entry
BAND_ALPHA = 0.2  # the shaded interval of a curve's seed mean
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
    ticks: set[Text] = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            ticks |= set(axis.findobj(Text)) - {axis.label}
    for text in fig.findobj(Text):
        if text not in ticks:
            text.set_parse_math(False)


def figure(panels: int = 1, *, width: float = 3.2, height: float = 2.4) -> tuple[Figure, list]:
    """`panels` axes sharing y, COLUMNS to a row."""
    columns, rows = min(panels, COLUMNS), math.ceil(panels / COLUMNS)
    with matplotlib.rc_context(SVG_RC):
        fig = Figure(figsize=(width * columns, height * rows), layout="constrained")
        axes = list(fig.subplots(rows, columns, squeeze=False, sharey=True).flat)
    for ax in axes[panels:]:
        fig.delaxes(ax)
    return fig, axes[:panels]


def seed_means(curves: pd.DataFrame, bounds: Bounds | None = None, by: str = "entry") -> pd.DataFrame:
    """Mean over seeds of each (`by`, curve, step) and its interval (interval.METHOD, clipped
    to the curve's bounds, NaN below interval.MIN_SEEDS finite values), sorted by those keys:
    columns entry (the `by` value), metric, step, value, low, high. (Integer keys and bincounts
    rather than a pandas groupby: an entry's page computes this once per entry, by task.)"""
    if curves.empty:
        return pd.DataFrame({c: [] for c in ("entry", "metric", "step", "value", "low", "high")})
    entry, entries = pd.factorize(curves[by], sort=True)
    name, names = pd.factorize(curves["metric"], sort=True)
    step = curves["step"].to_numpy(np.int64)
    span = int(step.max()) - int(step.min()) + 1
    keys, group = np.unique((entry.astype(np.int64) * len(names) + name) * span + step - step.min(),
                            return_inverse=True)
    stats = seed_statistics(group=group, values=curves["value"].to_numpy(float), n_groups=len(keys))
    pair, at = np.divmod(keys, span)
    which, curve = np.divmod(pair, len(names))
    bounds = bounds or {}
    low, high = (np.array([bounds.get(n, (-math.inf, math.inf))[i] for n in names], dtype=float)[curve]
                 for i in (0, 1))
    low, high = interval.t_intervals(mean=stats["mean"], sd=stats["sd"], n=stats["n"], bounds=(low, high))
    return pd.DataFrame({"entry": np.asarray(entries, dtype=object)[which],
                         "metric": np.asarray(names, dtype=object)[curve], "step": at + step.min(),
                         "value": stats["mean"].to_numpy(), "low": low, "high": high})


def band(ax, x, rows: pd.DataFrame, color, *, positive: bool = False) -> None:
    """Shade `rows`' interval (columns low, high) along `x`; on a log axis only where positive."""
    low, high = rows["low"].to_numpy(float), rows["high"].to_numpy(float)
    if positive:
        low = np.where(low > 0, low, np.nan)
    if np.isfinite(low).any():
        ax.fill_between(np.asarray(x, float), low, high, color=color, alpha=BAND_ALPHA, linewidth=0)


def log_steps(ax) -> None:
    ax.set_xscale("symlog", linthresh=1.0)  # step 0 (the initialisation) stays on the axis
    ax.set_xlim(left=0.0)  # no negative steps in the margin
    ax.set_xlabel("step")


def metric_mean(metrics: pd.DataFrame, entry: str, name: str) -> float:
    row = metrics[(metrics["entry"] == entry) & (metrics["metric"] == name)]
    return float(row["mean"].iloc[0]) if len(row) else float("nan")


def colours(spec: PlotSpec, n: int) -> list:
    """One format per line: the spec's styles, else a viridis ramp (ordered curves, e.g. modes)."""
    if spec.styles:
        return [dict(fmt=style) for style in spec.styles]
    return [dict(fmt="-", color=c) for c in matplotlib.colormaps["viridis"](np.linspace(0.0, 0.85, n))]


def label_of(spec: PlotSpec, i: int, name: str) -> str:
    return spec.labels[i] if i < len(spec.labels) else name


def draw_panels(spec: PlotSpec, curves: pd.DataFrame, metrics: pd.DataFrame,
                entries: list[str], bounds: Bounds | None = None) -> tuple[Figure, list[str]] | None:
    """`spec.curves` vs step with bands, one panel per entry; markers and a shaded span from metric means."""
    part = curves[curves["metric"].isin(spec.curves)]
    shown = [e for e in entries if set(spec.curves) <= set(part.loc[part["entry"] == e, "metric"])][:PANELS]
    if not shown:
        return None
    means = seed_means(part[part["entry"].isin(shown)], bounds)
    fig, axes = figure(len(shown))
    styles = colours(spec, len(spec.curves))
    for ax, entry in zip(axes, shown, strict=True):
        mine = means[means["entry"] == entry]
        logy = spec.logy and (mine["value"] > 0).all()
        for i, (name, style) in enumerate(zip(spec.curves, styles, strict=True)):
            line = mine[mine["metric"] == name]
            extra = {"color": style["color"]} if "color" in style else {}
            ax.plot(line["step"], line["value"], style["fmt"], label=label_of(spec, i, name), **extra)
            band(ax, line["step"], line, ax.lines[-1].get_color(), positive=logy)
            at = metric_mean(metrics, entry, spec.markers[i]) if i < len(spec.markers) else np.nan
            if np.isfinite(at):  # e.g. a stage time: when the curve reaches half its strength
                ax.axvline(at, color=ax.lines[-1].get_color(), linestyle=":", linewidth=0.8)
        if spec.span:
            start, end = (metric_mean(metrics, entry, m) for m in spec.span)
            if np.isfinite(start) and np.isfinite(end) and end > start:
                ax.axvspan(start, end, color="C1", alpha=0.15, label=spec.span_label or None)
        ax.set_title(entry, fontsize=9)
        log_steps(ax)
        if logy:
            ax.set_yscale("log")
    axes[0].set_ylabel(spec.ylabel)
    axes[-1].legend(fontsize=7, frameon=False)
    return fig, shown


def draw_lines(spec: PlotSpec, curves: pd.DataFrame, metrics: pd.DataFrame,
               entries: list[str], bounds: Bounds | None = None) -> tuple[Figure, list[str]] | None:
    """The one curve of `spec.curves` vs step with its band, one line per entry."""
    part = curves[curves["metric"] == spec.curves[0]]
    shown = [e for e in entries if e in set(part["entry"])][:LINES]
    if not shown:
        return None
    means = seed_means(part[part["entry"].isin(shown)], bounds)
    logy = spec.logy and (means["value"] > 0).all()
    fig, (ax,) = figure(1, width=5.0, height=3.0)
    for entry in shown:
        line = means[means["entry"] == entry]
        ax.plot(line["step"], line["value"], label=entry)
        band(ax, line["step"], line, ax.lines[-1].get_color(), positive=logy)
    log_steps(ax)
    if logy:
        ax.set_yscale("log")
    ax.set_ylabel(spec.ylabel)
    ax.legend(fontsize=7, frameon=False)
    return fig, shown


def draw_dots(spec: PlotSpec, curves: pd.DataFrame, metrics: pd.DataFrame,
              entries: list[str], bounds: Bounds | None = None) -> tuple[Figure, list[str]] | None:
    """Mean and interval of each metric of `spec.metrics`, one row per entry."""
    rows = metrics[metrics["metric"].isin(spec.metrics)]
    shown = [e for e in entries if e in set(rows["entry"])][:2 * LINES]
    names = [m for m in spec.metrics if m in set(rows["metric"])]
    if rows.empty or not shown:
        return None
    fig, (ax,) = figure(1, width=6.0, height=1.6 + 0.28 * len(shown))
    colors = matplotlib.colormaps["viridis"](np.linspace(0.0, 0.85, len(names)))
    y = np.arange(len(shown))
    for name, color in zip(names, colors, strict=True):
        part = rows[rows["metric"] == name].set_index("entry").reindex(shown)
        err = np.abs(np.vstack([part["mean"] - part["ci_low"], part["ci_high"] - part["mean"]]))
        ax.errorbar(part["mean"], y, xerr=np.nan_to_num(err), fmt="o", color=color, markersize=4,
                    capsize=2, label=label_of(spec, list(spec.metrics).index(name), name))
    ax.set_yticks(y, shown)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel(f"{spec.xlabel}, mean [{interval.METHOD}]")
    # Above the axes, so that it never hides a point.
    ax.legend(fontsize=7, frameon=False, ncols=min(len(names), 6), loc="lower center",
              bbox_to_anchor=(0.5, 1.0))
    return fig, shown


def draw_path(spec: PlotSpec, curves: pd.DataFrame, metrics: pd.DataFrame,
              entries: list[str], bounds: Bounds | None = None) -> tuple[Figure, list[str]] | None:
    """Each path's curves (final values: mean over seeds, with bands) against `spec.x`, one panel
    per entry."""
    part = curves[curves["metric"].isin(spec.names())].dropna(subset=["value"])
    shown = [e for e in entries if e in set(part["entry"])][:PANELS]
    if not shown:
        return None
    part = part[part["entry"].isin(shown)]
    last = part.sort_values("step").groupby(["entry", "seed", "metric"], as_index=False).last()
    means = seed_means(last.assign(step=0), bounds).set_index(["entry", "metric"])
    fig, axes = figure(len(shown))
    for ax, entry in zip(axes, shown, strict=True):
        for label, names in spec.paths:
            rows = means.reindex([(entry, n) for n in names])
            if np.isfinite(rows["value"].to_numpy(float)).any():
                ax.plot(spec.x, rows["value"], marker=".", label=label)
                band(ax, spec.x, rows, ax.lines[-1].get_color())
        ax.set_title(entry, fontsize=9)
        ax.set_xlabel(spec.xlabel)
    axes[0].set_ylabel(spec.ylabel)
    axes[-1].legend(fontsize=7, frameon=False)
    return fig, shown


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
            out.append(Plot(spec.key, spec.title, spec.caption, render(drawn[0]), tuple(drawn[1])))
    return out
