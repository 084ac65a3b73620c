"""The leaderboard's plots, drawn with matplotlib to SVG; each is skipped when its curves are absent."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.text import Text

# Deterministic SVG (fixed ids, no date) so that a rebuild from the same results is byte-identical;
# text stays text (smaller, selectable, and escaped by matplotlib's SVG writer).
SVG_RC = {"svg.hashsalt": "ldbench", "svg.fonttype": "none", "font.size": 9,
          "axes.spines.top": False, "axes.spines.right": False}
PANELS = 4  # small multiples: one panel per top entry
LINES = 8  # one line per top entry
PATH_CURVE = re.compile(r"^path/(?P<pair>[^/]+)/(?P<kind>loss|error)@(?P<alpha>[-+0-9.eE]+)$")
MODE_CURVE = re.compile(r"^mode/(\d+)$")
STAGE_METRIC = re.compile(r"^stage_time/mode_(\d+)$")


@dataclass(frozen=True)
class Plot:
    """One rendered figure: `key` names its file, `svg` is the document."""

    key: str
    title: str
    caption: str
    svg: str


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
    with matplotlib.rc_context(SVG_RC):
        fig = Figure(figsize=(width * panels, height), layout="constrained")
        axes = fig.subplots(1, panels, squeeze=False, sharey=True)[0]
    return fig, list(axes)


def seed_means(curves: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds of each (entry, curve, step): columns entry, metric, step, value."""
    return curves.groupby(["entry", "metric", "step"], as_index=False)["value"].mean()


def log_steps(ax) -> None:
    ax.set_xscale("symlog", linthresh=1.0)  # step 0 (the initialisation) stays on the axis
    ax.set_xlim(left=0.0)  # no negative steps in the margin
    ax.set_xlabel("step")


def metric_mean(metrics: pd.DataFrame, entry: str, name: str) -> float:
    row = metrics[(metrics["entry"] == entry) & (metrics["metric"] == name)]
    return float(row["mean"].iloc[0]) if len(row) else float("nan")


def mode_strengths(curves: pd.DataFrame, metrics: pd.DataFrame, entries: list[str]) -> Plot | None:
    modes = sorted({m for m in curves["metric"] if MODE_CURVE.match(m)}, key=lambda m: int(m[5:]))
    shown = [e for e in entries if e in set(curves["entry"])][:PANELS]
    if not modes or not shown:
        return None
    means = seed_means(curves[curves["metric"].isin(modes)])
    fig, axes = figure(len(shown))
    colors = matplotlib.colormaps["viridis"](np.linspace(0.0, 0.85, len(modes)))
    for ax, entry in zip(axes, shown, strict=True):
        for i, (mode, color) in enumerate(zip(modes, colors, strict=True)):
            line = means[(means["entry"] == entry) & (means["metric"] == mode)]
            ax.plot(line["step"], line["value"], color=color, label=f"mode {i}")
            half = metric_mean(metrics, entry, f"stage_time/mode_{i}")
            if np.isfinite(half):  # the stage time: when the mode reaches half its strength
                ax.axvline(half, color=color, linestyle=":", linewidth=0.8)
        ax.set_title(entry, fontsize=9)
        log_steps(ax)
    axes[0].set_ylabel("mode strength u_α")
    axes[-1].legend(fontsize=7, frameon=False)
    return Plot("modes", "Mode strength curves", "Strength of each teacher mode over training "
                "(mean over seeds); dotted lines mark each mode's stage time (half strength).",
                render(fig))


def stage_times(curves: pd.DataFrame, metrics: pd.DataFrame, entries: list[str]) -> Plot | None:
    rows = metrics[np.array([bool(STAGE_METRIC.match(str(m))) for m in metrics["metric"]], dtype=bool)]
    shown = [e for e in entries if e in set(rows["entry"])][:2 * LINES]
    if rows.empty or not shown:
        return None
    names = sorted(set(rows["metric"]), key=lambda m: int(STAGE_METRIC.match(m).group(1)))
    fig, (ax,) = figure(1, width=6.0, height=1.6 + 0.28 * len(shown))
    colors = matplotlib.colormaps["viridis"](np.linspace(0.0, 0.85, len(names)))
    for i, (name, color) in enumerate(zip(names, colors, strict=True)):
        part = rows[rows["metric"] == name].set_index("entry").reindex(shown)
        y = np.arange(len(shown))
        err = np.abs(np.vstack([part["mean"] - part["ci_low"], part["ci_high"] - part["mean"]]))
        ax.errorbar(part["mean"], y, xerr=np.nan_to_num(err), fmt="o", color=color, markersize=4,
                    capsize=2, label=f"mode {i}")
    ax.set_yticks(np.arange(len(shown)), shown)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("stage time (steps, mean ± 95% CI)")
    # Above the axes, so that it never hides a point.
    ax.legend(fontsize=7, frameon=False, ncols=min(len(names), 6), loc="lower center",
              bbox_to_anchor=(0.5, 1.0))
    return Plot("stage-times", "Stage times", "Step at which each mode reaches half its strength, "
                "per entry: larger singular values should be learned first.", render(fig))


def lines_per_entry(curves: pd.DataFrame, entries: list[str], curve: str, *, key: str, title: str,
                    ylabel: str, caption: str, logy: bool = True) -> Plot | None:
    part = curves[curves["metric"] == curve]
    shown = [e for e in entries if e in set(part["entry"])][:LINES]
    if not shown:
        return None
    means = seed_means(part)
    fig, (ax,) = figure(1, width=5.0, height=3.0)
    for entry in shown:
        line = means[means["entry"] == entry]
        ax.plot(line["step"], line["value"], label=entry)
    log_steps(ax)
    if logy and (means["value"] > 0).all():
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, frameon=False)
    return Plot(key, title, caption, render(fig))


def subspace_distance(curves: pd.DataFrame, metrics: pd.DataFrame, entries: list[str]) -> Plot | None:
    return lines_per_entry(curves, entries, "subspace_distance", key="subspace",
                           title="Subspace distance over training", ylabel="sin of largest angle",
                           caption="Distance between the learned representation and the true "
                           "subspace (mean over seeds), one line per top entry.")


def train_test(curves: pd.DataFrame, metrics: pd.DataFrame, entries: list[str], *, kind: str
               ) -> Plot | None:
    """Train (dashed) and test (solid) curves per entry; for accuracy, the grokking delay shaded."""
    names = [f"train_{kind}", f"test_{kind}"]
    part = curves[curves["metric"].isin(names)]
    shown = [e for e in entries if set(names) <= set(part.loc[part["entry"] == e, "metric"])][:PANELS]
    if not shown:
        return None
    means = seed_means(part)
    fig, axes = figure(len(shown))
    for ax, entry in zip(axes, shown, strict=True):
        for name, style in zip(names, ("--", "-"), strict=True):
            line = means[(means["entry"] == entry) & (means["metric"] == name)]
            ax.plot(line["step"], line["value"], style, color="C0" if "train" in name else "C3",
                    label=name.replace("_", " "))
        start = metric_mean(metrics, entry, "steps_to_train")
        end = metric_mean(metrics, entry, "steps_to_test")
        if kind == "acc" and np.isfinite(start) and np.isfinite(end) and end > start:
            ax.axvspan(start, end, color="C1", alpha=0.15, label="grokking delay")
        ax.set_title(entry, fontsize=9)
        log_steps(ax)
        if kind == "error" and (means.loc[means["entry"] == entry, "value"] > 0).all():
            ax.set_yscale("log")
    axes[0].set_ylabel("accuracy" if kind == "acc" else "error")
    axes[-1].legend(fontsize=7, frameon=False)
    if kind == "acc":
        return Plot("accuracy", "Train and test accuracy", "Train (dashed) and test (solid) accuracy "
                    "over training; the shaded span is the grokking delay, from reaching the "
                    "train target to reaching the test target (means over seeds).", render(fig))
    return Plot("errors", "Train and test error", "Train (dashed) and test (solid) error over "
                "training (means over seeds).", render(fig))


def barrier_curves(curves: pd.DataFrame, metrics: pd.DataFrame, entries: list[str]) -> Plot | None:
    """Error (or loss) along the linear path α between two networks, per pair, before/after matching."""
    parsed = curves["metric"].str.extract(PATH_CURVE)
    part = curves[parsed["pair"].notna()].assign(**parsed[parsed["pair"].notna()])
    if part.empty:
        return None
    kind = "error" if (part["kind"] == "error").any() else "loss"
    part = part[part["kind"] == kind].assign(alpha=lambda f: f["alpha"].astype(float))
    shown = [e for e in entries if e in set(part["entry"])][:PANELS]
    if not shown:
        return None
    means = part.groupby(["entry", "pair", "alpha"], as_index=False)["value"].mean()
    labels = {"independent": "independent (before matching)", "matched": "after matching"}
    fig, axes = figure(len(shown))
    for ax, entry in zip(axes, shown, strict=True):
        mine = means[means["entry"] == entry]
        for pair in sorted(set(mine["pair"]), key=lambda p: (p not in labels, p)):
            line = mine[mine["pair"] == pair]
            spawned = re.fullmatch(r"spawn_(\d+)", pair)
            label = f"spawned at step {spawned.group(1)}" if spawned else labels.get(pair, pair)
            ax.plot(line["alpha"], line["value"], marker=".", label=label)
        ax.set_title(entry, fontsize=9)
        ax.set_xlabel("α")
    axes[0].set_ylabel(f"test {kind}")
    axes[-1].legend(fontsize=7, frameon=False)
    return Plot("barrier", "Barrier curves along α", f"Test {kind} along the linear path "
                "θ(α) = (1 − α)θ₁ + αθ₂ between two networks: independently trained (before "
                "matching), after permutation matching, and children spawned from one parent.",
                render(fig))


def fallback(curves: pd.DataFrame, metrics: pd.DataFrame, entries: list[str]) -> Plot | None:
    """For a task none of the plots above knows: its loss curve, or its first curve."""
    names = sorted(set(curves["metric"]) - {m for m in curves["metric"] if PATH_CURVE.match(m)})
    if not names:
        return None
    name = "loss" if "loss" in names else names[0]
    return lines_per_entry(curves, entries, name, key="curve", title=f"{name} over training",
                           ylabel=name, caption=f"{name} over training (mean over seeds).")


PLOTS: list[Callable[..., Plot | None]] = [
    mode_strengths, stage_times, subspace_distance,
    lambda c, m, e: train_test(c, m, e, kind="acc"),
    lambda c, m, e: train_test(c, m, e, kind="error"),
    barrier_curves,
]


def task_plots(curves: pd.DataFrame, metrics: pd.DataFrame, entries: list[str]) -> list[Plot]:
    """Every plot whose curves exist for a task, best entries first; a fallback when none does.

    curves: rows (entry, seed, step, metric, value) of the task; metrics: its scores rows
    (entry, metric, mean, ci_low, ci_high); entries: entry names, best first.
    """
    plots = [p for make in PLOTS if (p := make(curves, metrics, entries)) is not None]
    if not plots and len(curves):
        plots = [p for p in [fallback(curves, metrics, entries)] if p is not None]
    return plots
