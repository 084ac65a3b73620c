"""`ldbench compare`: entries side by side, per task and ranked metric, with their intervals."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from suite import registry, report, results
from suite.entry import EntryError, load_entry
from suite.interval import METHOD, clearly_better, t_interval
from suite.task import Metric

# The curve drawn per task by --plot when the task does not declare its curves (Task.curves):
# the first of these it recorded (the quantity its target is read from), else its first curve.
PREFERRED_CURVES = ("test_error", "test_acc", "subspace_distance", "loss", "test_loss")


@dataclass(frozen=True)
class Column:
    """The runs of one compared entry (one entry, tier, profile and set of overrides)."""

    label: str
    runs: pd.DataFrame
    curves: pd.DataFrame


def load(path: str | Path, *, tier: str | None, profile: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, curves) of an entry folder (its results/PROFILE), of a study (its chosen points'
    evaluation runs) or of any results folder."""
    from suite import tune  # tune imports the runner, which compare does not need otherwise

    path = Path(path)
    folder = path / "results" / profile if (path / "entry.toml").is_file() else path
    if folder != path and not results.results_folders(folder):  # an entry without results
        raise results.ResultsError(f"{path}: no results on profile {profile}; run `ldbench run "
                                   f"{path} --tier {tier or 'smoke'}` first")
    runs, curves = tune.chosen_results(folder) if tune.is_study(folder) else results.read_results(folder)
    runs = runs[runs["profile"] == profile] if "profile" in runs else runs
    if tier is None:
        tiers = sorted(set(runs["tier"]))
        if len(tiers) > 1:
            raise registry.RegistryError(f"{path}: results of several tiers {tiers}; pick one with --tier")
    else:
        runs = runs[runs["tier"] == tier]
    if runs.empty:
        raise results.ResultsError(f"{folder}: no {tier or ''} runs on profile {profile}; "
                                   f"run `ldbench run {path} --tier {tier or 'smoke'}` first")
    return runs, curves[curves["run_id"].isin(set(runs["run_id"]))]


def columns(paths: list[str | Path], *, tier: str | None, profile: str) -> list[Column]:
    """One column per (entry, entry files, tier, overrides) found in the paths; runs are never
    pooled across them. A results folder keeps the runs of an entry's older files beside the
    new ones (same seeds, other code): they are a column of their own, labelled with their
    files' hash, and `(older files ...)` where the entry folder says which files are current."""
    from suite import tune

    found = []
    for path in paths:
        runs, curves = load(path, tier=tier, profile=profile)
        if tune.is_study(Path(path)):  # each task's chosen point: one column, the study's result
            runs = runs.assign(overrides=f"(tuned, {Path(path).name})")
        now = current_hash(Path(path))
        hashes = runs.groupby("entry")["entry_hash"].nunique()
        groups = sorted(runs.groupby(["entry", "entry_hash", "tier", "overrides"], sort=False, dropna=False),
                        key=lambda group: now is not None and group[0][1] != now)  # current files first
        for (entry, files, tier_, overrides), part in groups:
            label = entry + ("" if overrides in ("", "{}") else f" {overrides}")  # a study: (tuned, ...)
            if now is not None and files != now:
                label += f" (older files {str(files)[:12]})"
            elif now is None and hashes[entry] > 1:
                label += f" (files {str(files)[:12]})"
            found.append((label, str(path), tier_, part, curves[curves["run_id"].isin(set(part["run_id"]))]))
    if len({f[2] for f in found}) > 1:
        raise registry.RegistryError(f"the compared results span tiers {sorted({f[2] for f in found})}; "
                                     "pick one with --tier")
    labels = [f[0] for f in found]
    return [Column(label if labels.count(label) == 1 else f"{label} ({path})", runs, curves)
            for label, path, _, runs, curves in found]


def tracks_note(cols: list[Column]) -> str | None:
    """A note where the columns span tracks: the leaderboard ranks each track by itself (an
    architecture entry trains the task's reference optimizer; an optimizer entry its model)."""
    tracks = {c.label: set(c.runs["track"].fillna("optimizer")) if "track" in c.runs else {"optimizer"}
              for c in cols}
    ranked = {"architecture" if t == "recipe" else t for t in set().union(*tracks.values())}
    if len(ranked) < 2:  # a recipe (model + optimizer) is ranked on the architecture track
        return None
    listed = "; ".join(f"{label}: {', '.join(sorted(t))}" for label, t in tracks.items())
    return (f"note: the columns span tracks ({listed}); the leaderboard ranks each track by itself, "
            "so a difference here compares a model against an optimizer")


def current_hash(path: Path) -> str | None:
    """The hash of an entry folder's files now; None for a plain results folder (or an entry
    that no longer loads: its runs are then told apart by hash alone)."""
    if not (path / "entry.toml").is_file():
        return None
    try:
        return load_entry(path).hash
    except EntryError:
        return None


def declared_metrics(runs: pd.DataFrame) -> dict[str, dict[str, Metric]]:
    """Each task's Metric declarations for the config that ran (None for a task no longer known)."""
    declared = {}
    for task, part in runs.groupby("task", sort=False):
        try:
            cls = registry.task_class(task)
        except registry.RegistryError:
            continue
        try:
            declared[task] = cls(json.loads(part["config"].iloc[0])).metrics()
        except (KeyError, TypeError, ValueError):  # a config an older version of the task recorded
            declared[task] = registry.make_task(task, str(part["tier"].iloc[0])).metrics()
    return declared


def ranked(spec: Metric | None, specs: dict[str, Metric]) -> bool:
    """Ranked metrics only; every metric while the task declares no roles yet."""
    if spec is None or all(s.role is None for s in specs.values()):
        return True
    return spec.role == "ranked"


def interval(values: np.ndarray, spec: Metric | None) -> tuple[float, float, float]:
    """(mean, low, high) over the finite values, clipped to the metric's bounds; NaN if unknown."""
    return t_interval(values, bounds=spec.bounds if spec else (-math.inf, math.inf))


def better(a: np.ndarray, b: np.ndarray, spec: Metric | None, direction: str) -> bool:
    """Whether `a` is better than `b` with separated intervals.

    Any missing result (NaN: diverged or failed) and a side with one seed make no claim. For a
    steps-to-target metric, all seeds reaching the target beats no seed reaching it; a mix makes
    no claim. Otherwise `a`'s interval must be better than `b`'s by more than the metric's
    resolution (`interval.clearly_better`, the leaderboard's rule: intervals that were merely
    disjoint, with means a resolution apart, were "better" here and tied there).
    """
    if np.isnan(a).any() or np.isnan(b).any() or min(len(a), len(b)) < 2:
        return False
    fin_a, fin_b = np.isfinite(a), np.isfinite(b)
    if not (fin_a.all() and fin_b.all()):
        return fin_a.all() and not fin_b.any() and direction == "min"
    (_, la, ha), (_, lb, hb) = interval(a, spec), interval(b, spec)
    resolution = (spec.resolution or 0.0) if spec else 0.0
    if direction == "min":
        return bool(clearly_better(high_a=ha, low_b=lb, resolution=resolution))
    return bool(clearly_better(high_a=-la, low_b=-hb, resolution=resolution))


def verdict(values: dict[str, np.ndarray], spec: Metric | None, direction: str) -> str:
    """'A' if A beats every other entry, 'A > B, C' if it beats only some of them, '' otherwise."""
    claims = []
    for label, mine in values.items():
        beaten = [o for o, theirs in values.items() if o != label and better(mine, theirs, spec, direction)]
        if len(beaten) == len(values) - 1:
            return label
        if beaten:
            claims.append(f"{label} > {', '.join(beaten)}")
    return "; ".join(claims)


def table(cols: list[Column]) -> pd.DataFrame:
    """One row per (task, ranked metric): each column's 'mean ± CI' and who is better."""
    everything = pd.concat([c.runs for c in cols], ignore_index=True)
    declared = declared_metrics(everything)
    rows = []
    for (task, metric), _ in everything.groupby(["task", "metric"], sort=False):
        specs = declared.get(task, {})
        spec = specs.get(metric)
        if not ranked(spec, specs):
            continue
        direction = spec.direction if spec else everything.loc[everything["metric"] == metric,
                                                              "direction"].iloc[0]
        picked = {c.label: c.runs[(c.runs["task"] == task) & (c.runs["metric"] == metric)] for c in cols}
        applies = {k: report.applicable_mask(v) for k, v in picked.items()}
        values = {k: v["value"].to_numpy(np.float64)[applies[k]] for k, v in picked.items()}
        present = {k: v for k, v in values.items() if len(v)}  # metrics that apply only
        bounds = spec.bounds if spec else (-math.inf, math.inf)
        rows.append({"task": task, "metric": metric, "": report.ARROWS.get(direction, "?"),
                     **{k: report.describe(v["value"].to_numpy(np.float64), bounds, applies[k])
                        if len(v) else "—" for k, v in picked.items()},
                     "better": verdict(present, spec, direction) if len(present) > 1 else ""})
    tasks = list(registry.all_tasks())
    rows.sort(key=lambda row: row_order(row, tasks, declared))
    return pd.DataFrame(rows)


def row_order(row: dict, tasks: list[str], declared: dict[str, dict[str, Metric]]) -> tuple:
    """Tasks in the registry's order and metrics in their task's, whatever order the runs
    files hold them in (it follows which runs finished first)."""
    metrics = list(declared.get(row["task"], {}))
    return (tasks.index(row["task"]) if row["task"] in tasks else len(tasks), row["task"],
            metrics.index(row["metric"]) if row["metric"] in metrics else len(metrics))


def render(cols: list[Column], fmt: str = "simple") -> str:
    """The table as text; `fmt` "markdown" gives a GitHub table for pasting into a PR."""
    seeds = ", ".join(f"{c.label}: {c.runs['seed'].nunique()} seeds" for c in cols)
    tablefmt = "github" if fmt == "markdown" else fmt
    body = tabulate(table(cols), headers="keys", tablefmt=tablefmt, showindex=False,
                    disable_numparse=True)
    return (f"tier {cols[0].runs['tier'].iloc[0]} · {seeds} · mean [{METHOD}]; 'better' "
            f"where the intervals separate\n\n{body}")


def plot_curve(task: str, recorded: set[str], config: dict) -> str | None:
    try:
        declared = list(registry.task_class(task)(config).curves())
    except (NotImplementedError, registry.RegistryError):
        declared = []
    for name in [*PREFERRED_CURVES, *declared, *sorted(recorded)]:
        if name in recorded:
            return name
    return None


def plot(cols: list[Column], path: str | Path) -> Path:
    """An SVG with one panel per task: the target curve's seed mean and min-max band per entry."""
    import matplotlib
    from matplotlib.figure import Figure

    from suite.site import plots  # matplotlib only for --plot

    curves = pd.concat([c.curves.assign(label=c.label) for c in cols], ignore_index=True)
    runs = pd.concat([c.runs for c in cols], ignore_index=True)
    tasks = list(dict.fromkeys(runs["task"]))
    with matplotlib.rc_context(plots.SVG_RC):  # panels keep their own y axes: tasks differ in scale
        fig = Figure(figsize=(3.2 * len(tasks), 2.6), layout="constrained")
        axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    for ax, task in zip(axes, tasks, strict=True):
        part = curves[curves["task"] == task]
        config = json.loads(runs.loc[runs["task"] == task, "config"].iloc[0])
        name = plot_curve(task, set(part["metric"]), config)
        ax.set_title(task if name is None else f"{task}: {name}", fontsize=8)
        for label, line in part[part["metric"] == name].groupby("label", sort=False):
            # band: the range over seeds at each evaluation step (steps are shared by all seeds)
            stats = line.groupby("step")["value"].agg(["mean", "min", "max"])
            ax.plot(stats.index, stats["mean"], label=label)
            ax.fill_between(stats.index, stats["min"], stats["max"], alpha=0.2)
        plots.log_steps(ax)
        ax.legend(fontsize=6, frameon=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(plots.render(fig), encoding="utf-8")
    return path
