"""Scores entries: seed means with bootstrap CIs and ranks, and time-to-target performance profiles."""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scipy import stats

from suite import profiles, registry, results
from suite.entry import Entry, EntryError, load_entry
from suite.task import Task

SCORE_VERSION = 1  # raise when a change below alters scores: it invalidates built leaderboards
TAU_MAX = 4.0  # performance profiles are integrated over τ ∈ [1, TAU_MAX] (AlgoPerf uses 4)
N_RESAMPLES = 2000  # with 5 seeds there are only 126 distinct resamples: 2000 draws cover them
CI_SEED = 0  # the same draws for every row: an entry's CI never depends on the other entries
CONFIDENCE = 0.95
ROOTS = ("baselines", "submissions")
SCORES_FILE = "scores.parquet"
META_INPUTS = b"ldbench.inputs"
# Run-table columns the scorer and the site keep; the heavy JSON ones go into `provenance`.
KEEP = ["profile", "tier", "family", "task", "task_version", "entry", "seed", "status", "metric",
        "value", "direction"]


@dataclass
class Inputs:
    """What the scorer read: entries, their run rows for one tier, provenance, and why rows were left out."""

    tier: str
    entries: dict[str, Entry] = field(default_factory=dict)
    runs: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=KEEP))
    provenance: pd.DataFrame = field(default_factory=pd.DataFrame)
    results_dirs: dict[tuple[str, str], Path] = field(default_factory=dict)  # (entry, profile) ->
    warnings: list[str] = field(default_factory=list)
    digest: str = ""


def entry_folders(roots: list[str | Path]) -> list[Path]:
    """Folders holding an entry.toml directly under any of `roots` (missing roots are skipped)."""
    found = []
    for root in map(Path, roots):
        if root.is_dir():
            found += [p for p in sorted(root.iterdir()) if (p / "entry.toml").is_file()]
    return found


def tier_files(folder: Path, tier: str) -> list[Path]:
    """The Parquet tables of `folder`'s results for `tier`, every profile."""
    return sorted((folder / "results").glob(f"*/{tier}/*.parquet"))


def inputs_digest(folders: list[Path], tier: str, tasks: dict[str, type[Task]]) -> str:
    """sha256 of everything a leaderboard is built from: manifests, results, suite, scoring rules.

    A built leaderboard records it; when it differs from the digest of the committed files,
    the leaderboard is stale.
    """
    digest = hashlib.sha256()
    rules = {"score_version": SCORE_VERSION, "tau_max": TAU_MAX, "n_resamples": N_RESAMPLES,
             "tier": tier, "tasks": {n: [c.version, c.family, c.target] for n, c in tasks.items()}}
    digest.update(json.dumps(rules, sort_keys=True).encode())
    for folder in folders:
        for path in [folder / "entry.toml", *tier_files(folder, tier)]:
            name = f"{folder.parent.name}/{folder.name}/{path.relative_to(folder).as_posix()}"
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def has_results(roots: list[str | Path], tier: str) -> bool:
    return any(tier_files(f, tier) for f in entry_folders(roots))


def collect(roots: list[str | Path], *, tier: str = "standard",
            tasks: dict[str, type[Task]] | None = None) -> Inputs:
    """Read every entry's manifest and `tier` results under `roots`, without importing any code.

    Rows that cannot be compared are left out with a warning: unknown tasks or profiles, stale
    task versions, runs with --set overrides, and results of another entry.
    """
    tasks = tasks if tasks is not None else registry.all_tasks()
    folders = entry_folders(roots)
    inputs = Inputs(tier=tier, digest=inputs_digest(folders, tier, tasks))
    frames, prov = [], []
    for folder in folders:
        try:
            entry = load_entry(folder)
        except EntryError as err:
            inputs.warnings.append(f"skipped: {err}")
            continue
        if entry.name in inputs.entries:
            inputs.warnings.append(f"skipped {folder}: the name {entry.name!r} is already taken by "
                                   f"{inputs.entries[entry.name].path}")
            continue
        inputs.entries[entry.name] = entry
        for path in sorted((folder / "results").glob(f"*/{tier}/{results.RUNS_FILE}")):
            rows = usable_rows(path, entry, tier, tasks, inputs.warnings)
            if rows is not None and len(rows):
                frames.append(rows[KEEP])
                prov.append(provenance(rows, entry))
                inputs.results_dirs[entry.name, path.parent.parent.name] = path.parent
    if frames:
        inputs.runs = pd.concat(frames, ignore_index=True)
        inputs.provenance = pd.DataFrame(prov)
    return inputs


def usable_rows(path: Path, entry: Entry, tier: str, tasks: dict[str, type[Task]],
                notes: list[str]) -> pd.DataFrame | None:
    try:
        runs = results.read_table(path)
    except results.ResultsError as err:
        notes.append(f"skipped: {err}")
        return None
    profile = path.parent.parent.name
    versions = {name: cls.version for name, cls in tasks.items()}
    keep = ((runs["entry"] == entry.name) & (runs["tier"] == tier) & (runs["profile"] == profile)
            & (runs["overrides"].astype(str).str.strip() == "{}")
            & (runs["task"].map(versions) == runs["task_version"]))
    if profile not in profiles.available():
        keep &= False
    if (~keep).any():
        dropped = runs.loc[~keep, "task"].astype(str).unique()
        notes.append(f"{path}: left out {int((~keep).sum())} rows of tasks {sorted(dropped)[:5]} "
                     "(unknown profile or task, stale task version, --set overrides, or another "
                     "entry's rows); `ldbench validate` names each problem")
    return runs[keep]


def provenance(rows: pd.DataFrame, entry: Entry) -> dict:
    """One line of where and when an entry's results were made, for its leaderboard page."""
    first = rows.iloc[0]
    try:
        machine = json.loads(first["fingerprint"])
    except (TypeError, ValueError):
        machine = {}
    created = pd.to_datetime(rows["created_at"], utc=True, errors="coerce")
    return {
        "entry": entry.name, "profile": first["profile"], "tier": first["tier"],
        "entry_hash": first["entry_hash"],
        "suite_versions": sorted(rows["suite_version"].astype(str).unique()),
        "task_versions": {str(t): int(v) for t, v in rows.groupby("task")["task_version"].first().items()},
        "git_commit": str(first["git_commit"] or ""), "fingerprint": machine,
        "first_run": created.min(), "last_run": created.max(),
        "runs": int(rows["run_id"].nunique()), "seeds": int(rows["seed"].nunique()),
    }


# -- statistics -------------------------------------------------------------------------------

def bootstrap_ci(values: np.ndarray, *, confidence: float = CONFIDENCE,
                 n_resamples: int = N_RESAMPLES, seed: int = CI_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Percentile-bootstrap CI of the mean of each row of `values` (rows, seeds), via scipy.

    scipy draws one matrix of resample indices per call and applies it to every row, so a
    row's interval equals that of a call on the row alone with the same seed. Rows of one
    constant value get the point interval; fewer than 2 values give NaN.
    """
    values = np.asarray(values, dtype=np.float64)
    rows, n = values.shape
    low, high = np.full(rows, np.nan), np.full(rows, np.nan)
    if n < 2 or rows == 0:
        return low, high
    chunk = max(1, 2**22 // (n_resamples * n))  # bound the (chunk, n_resamples, n) resample array
    for start in range(0, rows, chunk):
        part = values[start:start + chunk]
        res = stats.bootstrap((part,), np.mean, axis=-1, n_resamples=n_resamples,
                              confidence_level=confidence, method="percentile",
                              rng=np.random.default_rng(seed))
        low[start:start + chunk] = res.confidence_interval.low
        high[start:start + chunk] = res.confidence_interval.high
    constant = np.all(values == values[:, :1], axis=1)
    low[constant], high[constant] = values[constant, 0], values[constant, 0]
    return low, high


def seed_statistics(groups: pd.Series) -> pd.DataFrame:
    """Per group of seed values: seeds, failures (non-finite), mean and CI over the finite values.

    Groups are batched by their number of finite values so that scipy's bootstrap runs
    vectorised over all groups of one size.
    """
    keys = groups.index
    finite = [np.asarray(v, dtype=np.float64)[np.isfinite(v)] for v in groups]
    out = pd.DataFrame(index=keys)
    out["seeds"] = [len(v) for v in groups]
    out["failures"] = out["seeds"] - np.array([len(f) for f in finite])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the mean of no finite value is NaN
        out["mean"] = [float(np.mean(f)) if len(f) else math.nan for f in finite]
    low, high = np.full(len(finite), np.nan), np.full(len(finite), np.nan)
    sizes = np.array([len(f) for f in finite])
    for size in np.unique(sizes):
        where = np.flatnonzero(sizes == size)
        lo, hi = bootstrap_ci(np.stack([finite[i] for i in where]) if size else np.empty((len(where), 0)))
        low[where], high[where] = lo, hi
    out["ci_low"], out["ci_high"] = low, high
    return out


def ranks_with_ties(*, mean: np.ndarray, low: np.ndarray, high: np.ndarray, failed: np.ndarray,
                    direction: str) -> np.ndarray:
    """1 + the number of entries clearly better: fewer failed seeds, or as many and a disjoint CI.

    Entries whose intervals overlap share a rank. `failed` is the fraction of failed seeds;
    a missing interval (one finite value) is the point `mean`; no finite value never wins.
    """
    sign = 1.0 if direction == "min" else -1.0
    # Orient so that lower is better: the interval [lo, hi] of sign·value.
    lo = np.where(np.isnan(low), mean, low) * sign
    hi = np.where(np.isnan(high), mean, high) * sign
    lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
    has = np.isfinite(mean)
    fewer = failed[:, None] < failed[None, :]  # [i, j]: i failed less often than j
    disjoint = (hi[:, None] < lo[None, :]) & has[:, None] & has[None, :]
    better = fewer | ((failed[:, None] == failed[None, :]) & disjoint)
    return 1 + better.sum(axis=0)


def time_to_target(values: np.ndarray) -> float:
    """Median steps-to-target over seeds; an unreached (inf) or missing (NaN) seed is a failure.

    The median is +inf, i.e. the task is not solved, unless at least half the seeds reach it.
    """
    values = np.asarray(values, dtype=np.float64)
    return float(np.median(np.where(np.isnan(values), np.inf, values))) if len(values) else math.inf


def performance_ratios(times: np.ndarray) -> np.ndarray:
    """t / min t over the entries of one task; inf for unsolved, and for all when none solves it.

    A target met at step 0 counts as 1 step, so that ratios stay defined.
    """
    times = np.maximum(np.asarray(times, dtype=np.float64), 1.0)
    best = np.min(times) if len(times) else math.inf
    if not math.isfinite(best):
        return np.full(len(times), np.inf)
    return times / best


def profile_score(*, ratios: np.ndarray, tau_max: float = TAU_MAX) -> float:
    """Normalised area under the performance profile ρ(τ) = P(ratio ≤ τ), τ ∈ [1, tau_max].

    ρ is a step function, so the area is exact: a task solved with ratio r ≤ tau_max adds
    (tau_max − r) / (tau_max − 1); an unsolved one adds 0. 1 means best on every task.
    """
    ratios = np.asarray(ratios, dtype=np.float64)
    if len(ratios) == 0:
        return math.nan
    return float(np.mean(np.clip((tau_max - ratios) / (tau_max - 1.0), 0.0, 1.0)))


# -- the scores table --------------------------------------------------------------------------

def score(inputs: Inputs, tasks: dict[str, type[Task]] | None = None) -> pd.DataFrame:
    """The scores table: one row per (profile, tier, task, entry, metric) and per family/overall."""
    tasks = tasks if tasks is not None else registry.all_tasks()
    runs = inputs.runs
    if runs.empty:
        return pd.DataFrame(columns=COLUMNS)
    runs = runs.drop_duplicates(["profile", "tier", "task", "entry", "metric", "seed"], keep="last")
    keys = ["profile", "tier", "family", "task", "metric", "direction", "entry"]
    groups = runs.groupby(keys, sort=True)["value"].agg(list)
    table = seed_statistics(groups).reset_index()
    table["level"] = "metric"
    table["rank"] = 0
    for _, idx in table.groupby(["profile", "tier", "task", "metric"]).groups.items():
        part = table.loc[idx]
        table.loc[idx, "rank"] = ranks_with_ties(
            mean=part["mean"].to_numpy(), low=part["ci_low"].to_numpy(), high=part["ci_high"].to_numpy(),
            failed=(part["failures"] / part["seeds"]).to_numpy(), direction=part["direction"].iloc[0])
    targets = {name: cls.target for name, cls in tasks.items()}
    table["target"] = table["metric"] == table["task"].map(targets)
    profiles_ = target_profiles(groups, targets, tasks)
    table = table.merge(profiles_[["profile", "tier", "task", "entry", "time_to_target", "ratio"]]
                        .assign(target=True), on=["profile", "tier", "task", "entry", "target"],
                        how="left")
    table = pd.concat([table, family_scores(profiles_, tasks)], ignore_index=True)
    return table.reindex(columns=COLUMNS)


COLUMNS = ["level", "profile", "tier", "family", "task", "entry", "metric", "direction", "target",
           "seeds", "failures", "mean", "ci_low", "ci_high", "rank", "time_to_target", "ratio",
           "score", "solved", "tasks"]


def target_profiles(groups: pd.Series, targets: dict[str, str],
                    tasks: dict[str, type[Task]]) -> pd.DataFrame:
    """Per (profile, tier, task, entry): time to the task's target and its performance ratio.

    Every entry with results in a (profile, tier) is compared on every task any entry ran
    there; an entry without runs of a task has not solved it.
    """
    rows = []
    flat = groups.reset_index()
    for (prof, tier), part in flat.groupby(["profile", "tier"]):
        entries = sorted(part["entry"].unique())
        for task in sorted(set(part["task"]) & set(targets)):
            mine = part[(part["task"] == task) & (part["metric"] == targets[task])]
            times = dict(zip(mine["entry"], map(time_to_target, mine["value"]), strict=True))
            t = np.array([times.get(e, math.inf) for e in entries])
            for entry, steps, ratio in zip(entries, t, performance_ratios(t), strict=True):
                rows.append({"profile": prof, "tier": tier, "task": task, "family": tasks[task].family,
                             "entry": entry, "time_to_target": steps, "ratio": ratio})
    return pd.DataFrame(rows, columns=["profile", "tier", "task", "family", "entry", "time_to_target",
                                       "ratio"])


def family_scores(per_task: pd.DataFrame, tasks: dict[str, type[Task]]) -> pd.DataFrame:
    """Per (profile, tier, family or overall, entry): area under the performance profile."""
    rows = []
    scopes = [("family", f, per_task[per_task["family"] == f]) for f in sorted(set(per_task["family"]))]
    scopes.append(("overall", "", per_task))
    for level, family, part in scopes:
        for (prof, tier, entry), mine in part.groupby(["profile", "tier", "entry"]):
            ratios = mine["ratio"].to_numpy()
            rows.append({"level": level, "profile": prof, "tier": tier, "family": family,
                         "entry": entry, "score": profile_score(ratios=ratios),
                         "solved": int(np.isfinite(ratios).sum()), "tasks": len(ratios)})
    out = pd.DataFrame(rows, columns=["level", "profile", "tier", "family", "entry", "score", "solved",
                                      "tasks"])
    if len(out):
        out["rank"] = (out.groupby(["level", "profile", "tier", "family"])["score"]
                       .rank(method="min", ascending=False).astype(int))
    return out


def write_scores(table: pd.DataFrame, path: Path, digest: str) -> None:
    """Write the scores atomically, recording the digest of the inputs they came from."""
    frame = table.reindex(columns=COLUMNS).copy()
    for col in ("seeds", "failures", "rank", "solved", "tasks"):
        frame[col] = pd.array(frame[col], dtype="Int64")
    frame["target"] = frame["target"].astype("boolean")
    arrow = pa.Table.from_pandas(frame, preserve_index=False)
    meta = {META_INPUTS: digest.encode(), results.META_VERSION: str(SCORE_VERSION).encode()}
    results.write_atomic(arrow.replace_schema_metadata(meta), path)


def read_scores(path: Path) -> tuple[pd.DataFrame, str]:
    """The scores table and the digest of the inputs it was computed from."""
    if not path.is_file():
        raise results.ResultsError(f"{path}: no scores yet; run `ldbench score` first")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise results.ResultsError(f"{path}: unreadable ({err}); run `ldbench score` again") from None
    meta = table.schema.metadata or {}
    return table.to_pandas(), meta.get(META_INPUTS, b"").decode()
