"""Summary tables of results: each metric's mean and interval across seeds, for `ldbench run|show`."""

from __future__ import annotations

import fnmatch
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from suite import interval, registry
from suite.task import Metric, Task

ARROWS = {"min": "↓", "max": "↑"}
# Runs pool into one row only when everything that makes their numbers comparable is equal:
# the entry's files (hash), its hyperparameters, the --set/--hparam overrides, tier, profile.
RUN_KEYS = ["entry", "entry_hash", "hparams", "overrides", "tier", "profile"]
COLUMN = f"mean [{interval.METHOD}]"


def format_number(x: float) -> str:
    if not math.isfinite(x):
        return str(x)
    if x == 0 or 1e-3 <= abs(x) < 1e5:
        return f"{x:.4g}"
    return f"{x:.3e}"


def describe(values: np.ndarray, bounds: tuple[float, float] = (-math.inf, math.inf),
             applicable: np.ndarray | None = None) -> str:
    """'mean [low, high]', noting seeds that did not reach a target (inf), have no result (NaN)
    or for which the metric does not apply (`applicable` false: the model lacks what it reads).

    The interval is interval.METHOD, clipped to `bounds`; below interval.MIN_SEEDS finite
    values there is none, and the text says so.
    """
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    notes = []
    if applicable is not None and not applicable.all():
        notes.append(f"not applicable {int((~applicable).sum())}/{n}")
        values = values[applicable]
    if (never := int(np.isposinf(values).sum() + np.isneginf(values).sum())):
        notes.append(f"not reached {never}/{n}")
    if (missing := int(np.isnan(values).sum())):
        notes.append(f"no result {missing}/{n}")
    if not np.isfinite(values).any():
        return ", ".join(notes)
    mean, low, high = interval.t_interval(values, bounds=bounds)
    text = format_number(mean)
    if math.isnan(low):
        notes.append(interval.NO_INTERVAL)
    else:
        text += f" [{format_number(low)}, {format_number(high)}]"
    return text + (f" ({', '.join(notes)})" if notes else "")


def declared_metrics(task: str, config: str) -> dict[str, Metric]:
    """The task's metric declarations for a run's recorded config ({} for an unknown task)."""
    try:
        cls = registry.task_class(task)
        return cls({**cls.tiers["standard"], **json.loads(config or "{}")}).metrics()
    except (registry.RegistryError, ValueError, TypeError, KeyError):
        return {}


def summary(runs: pd.DataFrame, current: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per (RUN_KEYS, task, metric): the seeds' mean and interval, and run statuses.

    Runs of other entry files, hyperparameters or overrides are never pooled. `current` maps
    an entry name to the hash of its files now: rows of another hash are marked stale.
    """
    rows = []
    keys = [*RUN_KEYS, "task", "metric"]
    runs = runs.assign(hparams=runs["hparams"].fillna("{}"), overrides=runs["overrides"].fillna("{}"))
    for key, group in runs.groupby(keys, sort=False, dropna=False):
        fields = dict(zip(keys, key, strict=True))
        spec = declared_metrics(fields["task"], group["config"].iloc[0]).get(fields["metric"])
        statuses = group.drop_duplicates("run_id")["status"].value_counts().to_dict()
        now = (current or {}).get(fields["entry"], fields["entry_hash"])
        arrow = ARROWS.get(group["direction"].iloc[0], "?")
        rows.append({
            **fields, "stale": now != fields["entry_hash"],
            "direction": "diagnostic" if spec and spec.role == "diagnostic" else arrow,
            "seeds": group["seed"].nunique(),
            COLUMN: describe(group["value"].to_numpy(), spec.bounds if spec else (-math.inf, math.inf),
                             applicable=applicable_mask(group)),
            "resolution": format_number(spec.resolution) if spec and spec.resolution is not None else "?",
            "runs": ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())),
        })
    return pd.DataFrame(rows)


def applicable_mask(rows: pd.DataFrame) -> np.ndarray:
    """Per row: does the metric apply (null in files written before it was recorded: yes)."""
    if "applicable" not in rows.columns:
        return np.ones(len(rows), dtype=bool)
    return rows["applicable"].astype("boolean").fillna(True).to_numpy(dtype=bool)


def render(runs: pd.DataFrame, fmt: str = "simple", current: dict[str, str] | None = None) -> str:
    """The summary as text, one block per (entry files, hparams, overrides, tier, profile);
    blocks of an entry's older files come after the current ones, marked stale."""
    table = summary(runs, current)
    if table.empty:
        return "no runs"
    blocks = []
    heads = [k for k in RUN_KEYS if k != "hparams"] + ["stale"]  # hparams: fixed by hash and overrides
    for fields, group in sorted(table.groupby(heads, sort=False), key=lambda kv: kv[0][-1]):
        info = dict(zip(heads, fields, strict=True))
        title = (f"entry {info['entry']} · tier {info['tier']} · profile {info['profile']}"
                 f" · files {str(info['entry_hash'])[:12]}")
        track = runs.loc[runs["entry_hash"] == info["entry_hash"]].get("track")
        if track is not None and track.notna().any() and track.dropna().iloc[0] != "optimizer":
            kind = track.dropna().iloc[0]  # a recipe is ranked on the architecture track
            title += " · architecture track (recipe)" if kind == "recipe" else f" · {kind} track"
        if str(info["overrides"]).strip() not in ("", "{}"):
            title += f" · overrides {info['overrides']}"
        if info["stale"]:
            title += " · STALE: the entry's files have changed since these runs"
        body = group.drop(columns=[*heads, "hparams"])
        mine = runs[(runs["entry"] == info["entry"]) & (runs["entry_hash"] == info["entry_hash"])
                    & (runs["tier"] == info["tier"]) & (runs["profile"] == info["profile"])
                    & (runs["overrides"].fillna("{}") == info["overrides"])]
        notes = "".join(f"\nn/a {note}" for note in not_applicable_notes(mine))
        blocks.append(title + "\n" + tabulate(body, headers="keys", tablefmt=fmt,
                                              showindex=False, disable_numparse=True) + notes)
    return "\n\n".join(blocks)


def not_applicable_notes(runs: pd.DataFrame) -> list[str]:
    """Why tasks or metrics do not apply to the entry's model: for a whole task, the task's own
    words (recorded as the run's error); for single metrics, the model method they read."""
    notes = []
    whole = runs[runs["status"] == "not-applicable"].drop_duplicates("task")
    for task, error in zip(whole["task"], whole["error"].fillna(""), strict=True):
        notes.append(f"{task}: {error or 'the task cannot run this model'}")
    partly = runs[(runs["status"] == "ok") & ~applicable_mask(runs)]
    for task, rows in partly.groupby("task", sort=False):
        try:
            cls = registry.task_class(task)
        except registry.RegistryError:
            continue
        reasons: dict[str, list[str]] = {}
        for metric in sorted(set(rows["metric"])):
            reasons.setdefault(na_reason(cls, metric), []).append(metric)
        notes += [f"{task}: {', '.join(metrics)}: {reason}" for reason, metrics in reasons.items()]
    return notes


def na_reason(cls: type[Task], metric: str) -> str:
    """Why `metric` does not apply to an entry's model, from the task's model interface."""
    interface = cls.interface
    for method, names in interface.optional if interface else ():
        if any(fnmatch.fnmatchcase(metric, pattern) for pattern in names):
            return f"not applicable: the model has no {method}(), which this metric reads"
    for reason, names in interface.unsupported if interface else ():
        if any(fnmatch.fnmatchcase(metric, pattern) for pattern in names):
            return f"not applicable: {reason}"
    return "not applicable to this entry's model"


def entry_folder(results_dir: str | Path) -> Path | None:
    """The entry folder a results folder belongs to (ENTRY/results/PROFILE/TIER), if any."""
    path = Path(results_dir).resolve()
    for folder in [path, *path.parents][:4]:
        if (folder / "entry.toml").is_file():
            return folder
    return None


NUMBER = re.compile(r"\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def failure_lines(errors: pd.DataFrame) -> list[str]:
    """One line per task and failure (rows with task, seed, error), naming the seeds it happened
    in: a model a check refuses fails the same way on every seed, and one line says so. Messages
    that differ only in their numbers (what a check measured) are one failure, quoted from the
    first seed."""
    found: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for task, seed, error in sorted(zip(errors["task"], errors["seed"], errors["error"].astype(str),
                                        strict=True)):
        found.setdefault((task, NUMBER.sub("#", error)), []).append((int(seed), error))
    lines = []
    for (task, _), failures in found.items():
        seeds = [seed for seed, _ in failures]
        which = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"
        numbers = "" if len({e for _, e in failures}) == 1 else f" (the numbers are seed {seeds[0]}'s)"
        lines.append(f"run {task} {which} failed: {failures[0][1]}{numbers}")
    return lines
