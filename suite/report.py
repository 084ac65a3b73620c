"""Summary tables of results: each metric's mean and 95% confidence interval across seeds."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats
from tabulate import tabulate

ARROWS = {"min": "↓", "max": "↑"}


def mean_ci(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of the Student-t confidence interval (0 for a single seed)."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, math.nan
    sem = stats.sem(values)
    return mean, float(sem * stats.t.ppf((1 + confidence) / 2, len(values) - 1))


def format_number(x: float) -> str:
    if not math.isfinite(x):
        return str(x)
    if x == 0 or 1e-3 <= abs(x) < 1e5:
        return f"{x:.4g}"
    return f"{x:.3e}"


def describe(values: np.ndarray) -> str:
    """'mean ± ci', noting seeds that did not reach a target (inf) or have no result (NaN)."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    finite = values[np.isfinite(values)]
    notes = []
    if (never := int(np.isposinf(values).sum() + np.isneginf(values).sum())):
        notes.append(f"not reached {never}/{n}")
    if (missing := int(np.isnan(values).sum())):
        notes.append(f"no result {missing}/{n}")
    if len(finite) == 0:
        return ", ".join(notes)
    mean, half = mean_ci(finite)
    text = format_number(mean) + ("" if math.isnan(half) else f" ± {format_number(half)}")
    return text + (f" ({', '.join(notes)})" if notes else "")


def summary(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (entry, tier, profile, overrides, task, metric) with the seeds' mean ± 95% CI
    and run statuses: runs with other `--set`/`--hparam` overrides are never pooled."""
    rows = []
    keys = ["entry", "tier", "profile", "overrides", "task", "metric"]
    for key, group in runs.groupby(keys, sort=False):
        statuses = group.drop_duplicates("run_id")["status"].value_counts().to_dict()
        rows.append({
            **dict(zip(keys, key, strict=True)),
            "direction": ARROWS.get(group["direction"].iloc[0], "?"),
            "seeds": group["seed"].nunique(),
            "mean ± 95% CI": describe(group["value"].to_numpy()),
            "runs": ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())),
        })
    return pd.DataFrame(rows)


def render(runs: pd.DataFrame, fmt: str = "simple") -> str:
    """The summary as text, one block per (entry, tier, profile, overrides)."""
    table = summary(runs)
    blocks = []
    heads = ["entry", "tier", "profile", "overrides"]
    for (entry, tier, profile, overrides), group in table.groupby(heads, sort=False):
        title = f"entry {entry} · tier {tier} · profile {profile}"
        if str(overrides).strip() not in ("", "{}"):
            title += f" · overrides {overrides}"
        body = group.drop(columns=heads)
        blocks.append(title + "\n" + tabulate(body, headers="keys", tablefmt=fmt,
                                              showindex=False, disable_numparse=True))
    return "\n\n".join(blocks)
