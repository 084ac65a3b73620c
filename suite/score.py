"""Scores entries: seed means with t intervals and ranks, and time-to-target performance profiles."""

from __future__ import annotations

import hashlib
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from suite import interval, profiles, registry, results
from suite.entry import Entry, EntryError, load_entry, recordable
from suite.task import Task

SCORE_VERSION = 6  # raise when a change below alters scores: it invalidates built leaderboards
# (5: step counts of in-context-regression clipped at 0; stale and self-contradicting runs left out)
TAU_MAX = 4.0  # performance profiles are integrated over τ ∈ [1, TAU_MAX] (AlgoPerf uses 4)
ROOTS = ("baselines", "submissions")
SCORES_FILE = "scores.parquet"
# What `score` read (run rows, provenance, results folders), next to the scores: `leaderboard
# build` takes it instead of reading every runs file again when its digest is the inputs' now.
INPUTS_FILE = "inputs.parquet"
INPUTS_VERSION = "2"  # raise when Inputs or what collect() makes of the files changes (2: run_id)
META_RECORD = b"ldbench.record"
STUDIES = "studies"  # where `ldbench tune` writes studies (suite.tune)
TUNED_FILE = "tuned.json"
META_INPUTS = b"ldbench.inputs"
UNREAD = ["config", "hparams"]  # long JSON text that nothing here reads: not converted to pandas
# Run-table columns the scorer and the site keep; the heavy JSON ones go into `provenance`.
# `error`: why a run failed or does not apply, for the site's tooltips; `run_id`: which rows of
# a curves file belong to the scored runs (a results folder may also hold runs left out).
KEEP = ["profile", "tier", "family", "task", "task_version", "entry", "seed", "run_id", "status",
        "metric", "value", "direction", "track", "applicable", "error"]
READERS = min(4, os.cpu_count() or 1)  # threads reading runs files
TRACKS = ("optimizer", "architecture")  # an entry's "recipe" (model + optimizer) is scored on the second


@dataclass
class Inputs:
    """What the scorer read: entries, their run rows for one tier, provenance, and why rows were left out."""

    tier: str
    entries: dict[str, Entry] = field(default_factory=dict)
    runs: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=KEEP))
    provenance: pd.DataFrame = field(default_factory=pd.DataFrame)
    results_dirs: dict[tuple[str, str], Path] = field(default_factory=dict)  # (entry, profile)
    warnings: list[str] = field(default_factory=list)
    digest: str = ""
    view: str = ""  # what a tuned view compares (empty for the main leaderboard)
    tuned_files: dict[str, Path] = field(default_factory=dict)  # the tuned view: each entry's tuned.json
    untuned: list[str] = field(default_factory=list)  # the tuned view: entries without a study
    _run_ids: dict[tuple[str, str], frozenset[str]] | None = field(default=None, repr=False)

    def run_ids(self, entry: str, profile: str) -> frozenset[str]:
        """The ids of the runs scored of `entry` on `profile`: the only rows of its curves file
        the site may draw (a results folder also keeps runs that are left out: --set or --hparam
        overrides, older files of the entry, another entry's rows)."""
        if self._run_ids is None:
            found: dict[tuple[str, str], set[str]] = {}
            for entry_, profile_, run in zip(*(self.runs[c].tolist() for c in ("entry", "profile", "run_id")),
                                             strict=True):
                found.setdefault((entry_, profile_), set()).add(run)
            self._run_ids = {key: frozenset(ids) for key, ids in found.items()}
        return self._run_ids.get((entry, profile), frozenset())


def entry_folders(roots: list[str | Path]) -> list[Path]:
    """Folders holding an entry.toml directly under any of `roots` (missing roots are skipped)."""
    found = []
    for root in map(Path, roots):
        if root.is_dir():
            found += [p for p in sorted(root.iterdir()) if (p / "entry.toml").is_file()]
    return found


def tier_files(folder: Path, tier: str) -> list[Path]:
    """The Parquet tables of `folder`'s results for `tier`, every profile (plain files only)."""
    return [p for p in sorted((folder / "results").glob(f"*/{tier}/*.parquet")) if results.plain_file(p)]


def file_bytes(path: Path) -> bytes:
    """A manifest's or table's bytes for the digest; a marker for what is not a plain file (a
    symlink to /dev/zero or a FIFO in a pull request must not hang the scorer)."""
    if not results.plain_file(path):
        return b"\0not a plain file\0"
    try:
        return path.read_bytes()
    except OSError:  # unreadable (permissions): reading the table says so, and skips the entry
        return b"\0unreadable\0"


def inputs_digest(folders: list[Path], tier: str, tasks: dict[str, type[Task]],
                  budget: int | None = None, studies: Path = Path(STUDIES)) -> str:
    """sha256 of everything a leaderboard is built from: manifests, results, suite, scoring rules.

    A built leaderboard records it; when it differs from the digest of the committed files,
    the leaderboard is stale.
    """
    digest = hashlib.sha256()
    rules = {"score_version": SCORE_VERSION, "tau_max": TAU_MAX, "interval": interval.METHOD,
             "tier": tier, "tasks": {n: [c.version, c.family, c.target] for n, c in tasks.items()}}
    digest.update(json.dumps(rules, sort_keys=True).encode())
    for folder in folders:
        for path in [folder / "entry.toml", *tier_files(folder, tier)]:
            name = f"{folder.parent.name}/{folder.name}/{path.relative_to(folder).as_posix()}"
            digest.update(os.fsencode(name) + b"\0" + file_bytes(path) + b"\0")
        if budget is not None:  # the tuned view: the entry's studies at that budget
            for path in sorted((studies / folder.name).glob(f"*/{tier}/budget-{budget}/**/*")):
                if results.plain_file(path) and (path.suffix == ".parquet" or path.name == TUNED_FILE):
                    digest.update(os.fsencode(path.as_posix()) + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def has_results(roots: list[str | Path], tier: str) -> bool:
    return any(tier_files(f, tier) for f in entry_folders(roots))


def collect(roots: list[str | Path], *, tier: str = "standard",
            tasks: dict[str, type[Task]] | None = None, budget: int | None = None,
            studies: str | Path = STUDIES) -> Inputs:
    """Read every entry's manifest and `tier` results under `roots`, without importing any code.

    Rows that cannot be compared are left out with a warning: runs of older files of the entry
    (stale), unknown tasks or profiles, stale task versions, runs with --set or --hparam
    overrides, and results of another entry.

    With a `budget`, the *tuned view*: instead of its results, each entry's evaluation runs of
    its `ldbench tune` study at that budget (`studies/ENTRY/PROFILE/TIER/budget-N/eval/`), the
    runs of the hyperparameters its study chose (and no others), so that every entry is
    compared at the same tuning budget.
    """
    tasks = tasks if tasks is not None else registry.all_tasks()
    folders = entry_folders(roots)
    inputs = Inputs(tier=tier, digest=inputs_digest(folders, tier, tasks, budget, Path(studies)))
    tables, paths, profiles_ = [], [], []
    with ThreadPoolExecutor(READERS) as pool:
        for event in entry_files(folders, inputs, tier, budget, Path(studies), pool):
            if isinstance(event, str):
                inputs.warnings.append(event)
                continue
            read, name, path, profile = event
            table = read.result()
            if isinstance(table, results.ResultsError):
                inputs.warnings.append(f"skipped: {table}")
                continue
            n = len(table)  # which file and entry each row came from, to check and to report
            tables.append(table.append_column("_file", pa.array([len(paths)] * n, pa.int32()))
                          .append_column("_entry", pa.array([name] * n, pa.string())))
            paths.append(path)
            profiles_.append(profile)
    if budget is not None:
        inputs.view = (f"Each entry at the hyperparameters its ldbench tune study chose with "
                       f"{budget} trials per task (a scrambled Halton design over the entry's "
                       f"declared search space, tuning seeds disjoint from the evaluation seeds); "
                       f"the rows are the chosen point's runs on the evaluation seeds.")
        if inputs.untuned:
            inputs.view += (f" Not shown, having no study at this budget: {', '.join(inputs.untuned)} "
                            f"(`ldbench tune ENTRY --budget {budget} --tier {tier} --seeds 5`).")
    if not tables:
        return inputs
    runs = pa.concat_tables(tables).drop_columns(UNREAD).to_pandas()
    runs["_profile"] = np.array(profiles_, dtype=object)[runs["_file"]]
    keep = usable(runs, tier, tasks)
    for i, dropped in runs.loc[~keep].groupby("_file")["task"]:
        inputs.warnings.append(
            f"{paths[i]}: left out {len(dropped)} rows of tasks {sorted(set(dropped.astype(str)))[:5]} "
            "(missing values, unknown profile or task, stale task version, --set or --hparam overrides, "
            "or another entry's rows); "
            "`ldbench validate` names each problem")
    # Runs of older files of the entry measure other code than it has now (`show` marks them stale).
    stale = keep & (runs["entry_hash"] != runs["_entry"].map({n: e.hash for n, e in inputs.entries.items()}))
    rerun = "`ldbench run`" if budget is None else f"`ldbench tune` (--budget {budget})"
    for i, dropped in runs.loc[stale].groupby("_file")["run_id"]:
        inputs.warnings.append(
            f"{paths[i]}: left out {dropped.nunique()} runs made with older files of the entry (it "
            f"changed since they ran); rerun {rerun} on it to replace them")
    keep &= ~stale
    for i, reason in contradictions(runs[keep]).items():
        inputs.warnings.append(f"skipped {paths[i]}: {reason}; `ldbench validate` names each problem")
        keep &= runs["_file"] != i
    runs = runs[keep]
    # A run without a result has none, whatever values its rows keep (validate refuses those).
    runs.loc[runs["status"] != "ok", "value"] = np.nan
    runs["applicable"] = runs["applicable"].astype("boolean").fillna(True).astype(bool)  # older files
    runs["track"] = runs["track"].fillna("optimizer")
    # In seed order whatever order the files hold (Dask appends runs as they finish): a mean
    # over seeds sums them in one order, so the same runs always give the same scores, bit for bit.
    inputs.runs = runs[KEEP].sort_values(["entry", "profile", "task", "metric", "seed"],
                                         kind="stable").reset_index(drop=True)
    inputs.provenance = provenance(runs)
    inputs.results_dirs = {(e, p): paths[i].parent for e, p, i in
                           runs[["entry", "profile", "_file"]].drop_duplicates().itertuples(index=False)}
    return inputs


def entry_files(folders: list[Path], inputs: Inputs, tier: str, budget: int | None, studies: Path,
                pool: ThreadPoolExecutor) -> list:
    """Load each entry into `inputs` and start reading its runs files in `pool`: in folder order,
    a warning (str) or (the read's future, entry name, path, profile). Arrow reads the files
    with the GIL released: two cores read them in about half the time."""
    events: list = []
    for folder in folders:
        try:
            entry = load_entry(folder)
        except EntryError as err:
            events.append(f"skipped: {err}")
            continue
        if entry.name != folder.name:  # validate refuses it; it could take another's name here
            events.append(f"skipped {folder}: entry.toml names it {entry.name!r}, not its folder's name; "
                          "`ldbench validate` names the fix")
            continue
        if entry.name in inputs.entries:
            events.append(f"skipped {folder}: the name {entry.name!r} is already taken by "
                          f"{inputs.entries[entry.name].path}")
            continue
        found = sorted((folder / "results").glob(f"*/{tier}/*.parquet"))
        odd = [p for p in found if not results.plain_file(p)]
        events += [f"skipped {p}: not a plain file (a symlink, folder or special file); results are "
                   "plain Parquet files written by `ldbench run`" for p in odd]
        files = result_files(folder, entry.name, tier, budget, studies)
        if budget is None and not files:
            events.append(f"skipped {folder}: no {tier}-tier results, so it is not on this leaderboard; "
                          f"`ldbench run {folder} --tier {tier} --seeds 5` makes them")
        if budget is not None and not files:
            inputs.untuned.append(entry.name if entry.search else f"{entry.name} (no search space)")
            continue  # no study at this budget: not in the tuned view
        if budget is not None:  # its pages show the hyperparameters the study chose
            tuned_file = files[0][0].parent.parent / TUNED_FILE
            try:
                entry = entry.with_hparams(read_tuned(tuned_file))
            except results.ResultsError as err:  # an interrupted study: this entry is left out
                events.append(f"skipped: {err}")
                continue
            inputs.tuned_files[entry.name] = tuned_file
        inputs.entries[entry.name] = entry
        events += [(pool.submit(read_rows, path, budget), entry.name, path, profile)
                   for path, profile in files]
    return events


def read_rows(path: Path, budget: int | None) -> pa.Table | results.ResultsError:
    """A runs file's rows (in the tuned view, those of the chosen point), or why it is skipped."""
    try:
        table = read_runs(path)
        return tuned_rows(table, path.parent.parent / TUNED_FILE) if budget is not None else table
    except results.ResultsError as err:
        return err


def scored_inputs(roots: list[str | Path], out: Path, *, tier: str = "standard",
                  budget: int | None = None, studies: str | Path = STUDIES) -> tuple[pd.DataFrame, Inputs]:
    """The scores in `out` and the inputs they were computed from, for `leaderboard build`.

    Refuses scores whose digest is not that of the files under `roots` now (ResultsError).
    The inputs are those `score` recorded next to the scores (INPUTS_FILE) when that record
    has the same digest, so no runs file is read twice; else the files are read again.
    """
    tasks = registry.all_tasks()
    folders = entry_folders(roots)
    digest = inputs_digest(folders, tier, tasks, budget, Path(studies))
    scores, recorded = read_scores(out / SCORES_FILE)
    if recorded != digest:
        command = f"ldbench score --tier {tier}" + (f" --tuned {budget}" if budget is not None else "")
        other = [t for t in registry.TIERS if t != tier
                 and recorded == inputs_digest(folders, t, tasks, budget, Path(studies))]
        why = (f"scores of the {other[0]} tier, not the {tier} tier" if other else
               "scores are older than the results or manifests")
        raise results.ResultsError(f"{out / SCORES_FILE}: {why}; run `{command}` first")
    inputs = recorded_inputs(out / INPUTS_FILE, digest, folders)
    if inputs is None:
        inputs = collect(roots, tier=tier, tasks=tasks, budget=budget, studies=studies)
    return scores, inputs


def result_files(folder: Path, name: str, tier: str, budget: int | None,
                 studies: Path) -> list[tuple[Path, str]]:
    """(runs file, its profile) of an entry: its results, or its studies' evaluations."""
    if budget is None:
        return [(p, p.parent.parent.name)
                for p in sorted((folder / "results").glob(f"*/{tier}/{results.RUNS_FILE}"))
                if results.plain_file(p)]
    found = sorted((studies / name).glob(f"*/{tier}/budget-{budget}/eval/{results.RUNS_FILE}"))
    return [(p, p.parent.parent.parent.parent.name) for p in found]


def read_tuned(tuned_file: Path) -> dict[str, dict]:
    """A study's chosen hyperparameters per task (tuned.json)."""
    written = results.read_json(tuned_file, "rerun `ldbench tune`")
    try:
        tuned = written["tuned"]
    except (KeyError, TypeError) as err:
        raise results.ResultsError(f"{tuned_file}: unreadable ({err}); rerun `ldbench tune`") from None
    if not isinstance(tuned, dict) or not all(isinstance(v, dict) for v in tuned.values()):
        raise results.ResultsError(f"{tuned_file}: 'tuned' is not a table per task; rerun `ldbench tune`")
    odd = [f"{task}.{name} = {value!r}" for task, values in tuned.items() for name, value in values.items()
           if not recordable(value)]
    if odd:  # no run was made with it: its task would silently have no rows
        raise results.ResultsError(f"{tuned_file}: 'tuned' gives {odd[0]}, which no run can have recorded "
                                   "(NaN, an infinity or a number beyond float); rerun `ldbench tune`")
    return tuned


def tuned_rows(table: pa.Table, tuned_file: Path) -> pa.Table:
    """A study's evaluation rows of the hyperparameters it chose (recorded as --hparam
    overrides), their overrides cleared so that they compare like plain results."""
    tuned = read_tuned(tuned_file)
    frame = table.to_pandas()
    chosen = [json_object(o) == ({"hparams": tuned.get(t)} if tuned.get(t) else {})
              for t, o in zip(frame["task"], frame["overrides"], strict=True)]
    kept = table.filter(pa.array(chosen, pa.bool_()))
    column = kept.schema.get_field_index("overrides")
    return kept.set_column(column, "overrides", pa.array(["{}"] * len(kept), pa.string()))


def read_runs(path: Path) -> pa.Table:
    """A runs table as Arrow, checked (schema, UTF-8, row and decoded-size caps): ResultsError."""
    table = results.read_arrow(path, max_rows=results.MAX_ROWS[results.RUNS_FILE],
                               max_bytes=results.MAX_DECODED_BYTES)
    return table.select(results.RUN_SCHEMA.names).replace_schema_metadata(None)


def usable(runs: pd.DataFrame, tier: str, tasks: dict[str, type[Task]]) -> pd.Series:
    """Rows that can be compared: this entry's, this tier's, a known profile, current task versions."""
    versions = {name: cls.version for name, cls in tasks.items()}
    needed = [c for c in KEEP if c not in ("value", "track", "applicable", "error")]  # may be null
    complete = runs[needed + ["overrides"]].notna().all(axis=1)
    return (complete & (runs["entry"] == runs["_entry"]) & (runs["tier"] == tier)
            & (runs["profile"] == runs["_profile"]) & runs["profile"].isin(list(profiles.available()))
            & (runs["overrides"].astype(str).str.strip() == "{}")
            & (runs["task"].map(versions) == runs["task_version"]))


def contradictions(runs: pd.DataFrame) -> dict[int, str]:
    """Files (by `_file`) whose rows contradict themselves, and how: a metric of a run given
    twice, two runs of one seed of a task, an unknown status. validate refuses such files (and
    checks more: values against each metric's declaration); score leaves each whole file out
    rather than guess which rows to trust (a duplicated row would otherwise move a mean and
    still count as one seed)."""
    found: dict[int, str] = {}
    checks = [
        (runs.duplicated(["_file", "run_id", "metric"], keep=False), "a run's metric appears twice"),
        (runs.drop_duplicates(["_file", "run_id"]).duplicated(["_file", "task", "seed"], keep=False)
         .reindex(runs.index, fill_value=False), "two runs of one seed of a task"),
        (~runs["status"].isin(results.STATUSES), f"a run status that is not one of {list(results.STATUSES)}"),
    ]
    for mask, reason in checks:
        for i in runs.loc[mask, "_file"].unique():
            found.setdefault(int(i), reason)
    return found


def provenance(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (entry, profile): where and when its results were made, for its page."""
    if runs.empty:
        return pd.DataFrame()
    keys = ["entry", "profile"]
    created = pd.to_datetime(runs["created_at"], utc=True, errors="coerce")
    out = runs.assign(created=created).groupby(keys).agg(
        tier=("tier", "first"), entry_hash=("entry_hash", "first"), git_commit=("git_commit", "first"),
        fingerprint=("fingerprint", "first"), first_run=("created", "min"), last_run=("created", "max"),
        runs=("run_id", "nunique"), seeds=("seed", "nunique"))
    suites = runs.groupby(keys)["suite_version"].unique().to_dict()
    versions: dict[tuple, dict[str, int]] = {}  # one pass: a lookup per entry costs 1 ms
    for (*key, task), version in runs.groupby([*keys, "task"])["task_version"].first().items():
        versions.setdefault(tuple(key), {})[str(task)] = int(version)
    out["suite_versions"] = [sorted(map(str, suites[k])) for k in out.index]
    out["task_versions"] = [versions[k] for k in out.index]
    out["fingerprint"] = out["fingerprint"].map(json_object)
    out["git_commit"] = out["git_commit"].fillna("").astype(str)
    return out.reset_index()


def write_inputs(inputs: Inputs, path: Path) -> None:
    """Record what `collect` made of the files next to the scores: the run rows as the table,
    the rest (entry folders, provenance, results folders) as JSON in its metadata."""
    prov = inputs.provenance.astype(object).where(inputs.provenance.notna(), None)
    for col in ("first_run", "last_run"):  # Timestamps as ISO text, NaT as null
        if col in prov:
            prov[col] = [None if v is None else v.isoformat() for v in prov[col]]
    record = {"version": INPUTS_VERSION, "tier": inputs.tier, "view": inputs.view,
              "warnings": inputs.warnings, "provenance": prov.to_dict("records"),
              "entries": {name: str(entry.path) for name, entry in inputs.entries.items()},
              "tuned_files": {name: str(p) for name, p in inputs.tuned_files.items()},
              "results_dirs": [[e, p, str(d)] for (e, p), d in inputs.results_dirs.items()]}
    table = pa.Table.from_pandas(inputs.runs, preserve_index=False)
    meta = {META_INPUTS: inputs.digest.encode(), META_RECORD: json.dumps(record).encode()}
    results.write_atomic(table.replace_schema_metadata(meta), path)


def recorded_inputs(path: Path, digest: str, folders: list[Path]) -> Inputs | None:
    """The Inputs `write_inputs` recorded at `path` if they were read from the files whose
    digest is `digest` (the same bytes, suite rules and tier) in `folders` as this process
    finds them (the record's paths are as `score` was given them: another working directory
    would name other folders), by this version of the record; else None (missing, unreadable,
    stale, elsewhere): then the files must be read again."""
    try:
        table = pq.read_table(path)
        meta = table.schema.metadata or {}
        record = json.loads(meta[META_RECORD]) if meta.get(META_INPUTS) == digest.encode() else {}
    except (pa.ArrowException, OSError, KeyError, ValueError):
        return None
    if record.get("version") != INPUTS_VERSION:
        return None
    here = {folder.resolve() for folder in folders}
    if any(Path(folder).resolve() not in here for folder in record["entries"].values()):
        return None
    inputs = Inputs(tier=record["tier"], digest=digest, view=record["view"], warnings=record["warnings"],
                    runs=table.replace_schema_metadata(None).to_pandas(),
                    tuned_files={name: Path(p) for name, p in record["tuned_files"].items()},
                    results_dirs={(e, p): Path(d) for e, p, d in record["results_dirs"]})
    for name, folder in record["entries"].items():  # manifests are in the digest: unchanged
        entry = load_entry(folder)
        inputs.entries[name] = entry.with_hparams(read_tuned(inputs.tuned_files[name])) \
            if name in inputs.tuned_files else entry
    inputs.provenance = pd.DataFrame(record["provenance"])
    for col in ("first_run", "last_run"):
        if col in inputs.provenance:
            inputs.provenance[col] = pd.to_datetime(inputs.provenance[col], utc=True)
    return inputs


def json_object(text) -> dict:
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


# -- statistics -------------------------------------------------------------------------------

def seed_statistics(*, group: np.ndarray, values: np.ndarray, n_groups: int) -> pd.DataFrame:
    """Per group: seeds, failures (non-finite values), of which unreached (infinite: a target
    never met), and the mean, sample sd and count of the finite values.

    group: (rows,) group index of each seed value; values: (rows,). Intervals come later
    (`interval.t_intervals`), once each group's metric bounds are known.
    """
    group, values = np.asarray(group), np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    seeds = np.bincount(group, minlength=n_groups)
    counts = np.bincount(group[finite], minlength=n_groups)
    sums = np.bincount(group[finite], weights=values[finite], minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        # Two passes (deviations from the mean), not Σx² − n·mean², which cancels badly.
        dev2 = np.bincount(group[finite], weights=(values[finite] - mean[group[finite]]) ** 2,
                           minlength=n_groups)
        sd = np.where(counts > 1, np.sqrt(dev2 / np.maximum(counts - 1, 1)), np.nan)
    unreached = np.bincount(group[np.isinf(values)], minlength=n_groups)
    return pd.DataFrame({"seeds": seeds, "failures": seeds - counts, "unreached": unreached,
                         "mean": mean, "sd": sd, "n": counts})


def ranks_with_ties(*, mean: np.ndarray, low: np.ndarray, high: np.ndarray, failed: np.ndarray,
                    direction: str, resolution: float = 0.0) -> np.ndarray:
    """1 + the number of entries clearly better: fewer failed seeds, or as many and an interval
    entirely better by more than the metric's resolution.

    Entries whose intervals overlap, or are closer than `resolution` (numerical noise), share
    a rank. `failed` is the fraction of failed seeds. Without an interval (fewer than
    interval.MIN_SEEDS finite values) an entry is neither clearly better nor clearly worse than
    one with as many failures: two means of two seeds each say nothing clearly.
    """
    sign = 1.0 if direction == "min" else -1.0
    # Orient so that lower is better: the interval [lo, hi] of sign·value.
    lo, hi = low * sign, high * sign
    lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
    has = np.isfinite(mean) & ~np.isnan(lo) & ~np.isnan(hi)
    fewer = failed[:, None] < failed[None, :]  # [i, j]: i failed less often than j
    disjoint = (interval.clearly_better(high_a=hi[:, None], low_b=lo[None, :], resolution=resolution)
                & has[:, None] & has[None, :])
    better = fewer | ((failed[:, None] == failed[None, :]) & disjoint)
    return 1 + better.sum(axis=0)


def time_to_target(values: np.ndarray) -> float:
    """Median steps-to-target over seeds; an unreached (inf) or missing (NaN) seed is a failure.

    The median is +inf, i.e. the task is not solved, unless more than half the seeds reach it
    (with an even number of seeds, half is not enough: the median then averages a finite time
    and +inf).
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
    """The scores table: one row per (profile, tier, track, task, entry, metric) and per
    family/overall. The optimizer and architecture tracks are ranked and scored separately;
    a metric that does not apply to an entry's model has a row with applicable false and no
    statistics; a task an entry has no runs of makes it incomplete (not a failure)."""
    tasks = tasks if tasks is not None else registry.all_tasks()
    runs = inputs.runs
    if runs.empty:
        return pd.DataFrame(columns=COLUMNS)
    runs = runs.drop_duplicates(["profile", "tier", "task", "entry", "metric", "seed"], keep="last")
    runs = runs.assign(recipe=runs["track"] == "recipe",
                       track=np.where(runs["track"] == "optimizer", "optimizer", "architecture"))
    keys = ["profile", "tier", "track", "family", "task", "metric", "direction", "entry"]
    off = runs[~runs["applicable"]]
    runs = runs[runs["applicable"]].sort_values(keys, kind="stable")
    table = metric_rows(runs, keys, tasks)
    targets = {name: cls.target for name, cls in tasks.items()}
    table["target"] = table["metric"] == table["task"].map(targets)
    covered = coverage(inputs.runs, tasks)
    overall = covered[(covered["level"] == "overall") & covered["complete"]]
    complete = set(overall[["profile", "tier", "track", "entry"]].itertuples(index=False, name=None))
    profiles_ = target_profiles(runs, targets, tasks, complete=complete)
    table = table.merge(profiles_[["profile", "tier", "track", "task", "entry", "time_to_target", "ratio"]]
                        .assign(target=True), on=["profile", "tier", "track", "task", "entry", "target"],
                        how="left")
    table = pd.concat([table, not_applicable_rows(off, table, keys, targets),
                       family_scores(profiles_, covered)], ignore_index=True)
    recipes = set(inputs.runs.loc[inputs.runs["track"] == "recipe", "entry"])
    table["recipe"] = table["entry"].isin(recipes)
    table["applicable"] = table["applicable"].astype("boolean").fillna(True)
    for col in ("mean", "ci_low", "ci_high", "time_to_target", "ratio", "score"):
        table[col] = pd.to_numeric(table[col], errors="coerce").astype(float)
    return table.reindex(columns=COLUMNS)


COLUMNS = ["level", "profile", "tier", "track", "recipe", "family", "task", "entry", "metric",
           "direction", "role", "target", "applicable", "seeds", "failures", "unreached", "mean",
           "ci_low", "ci_high", "rank", "time_to_target", "ratio", "score", "solved", "tasks",
           "complete"]


def metric_rows(runs: pd.DataFrame, keys: list[str], tasks: dict[str, type[Task]]) -> pd.DataFrame:
    """Per (keys): seeds' statistics, interval and rank among the entries of its track."""
    grouped = runs.groupby(keys, sort=True)
    table = grouped.size().index.to_frame(index=False)
    stats_ = seed_statistics(group=grouped.ngroup().to_numpy(), values=runs["value"].to_numpy(),
                             n_groups=len(table))
    table = pd.concat([table, stats_], axis=1)
    specs = metric_specs(table, tasks)
    table["role"] = [spec.role if spec else "ranked" for spec in specs]
    table["ci_low"], table["ci_high"] = interval.t_intervals(
        mean=table["mean"], sd=table["sd"], n=table["n"],
        bounds=(np.array([spec.bounds[0] if spec else -math.inf for spec in specs]),
                np.array([spec.bounds[1] if spec else math.inf for spec in specs])))
    table["level"] = "metric"
    table["rank"] = pd.array([pd.NA] * len(table), dtype="Int64")
    resolution = {i: (spec.resolution or 0.0) if spec else 0.0 for i, spec in enumerate(specs)}
    for _, idx in table.groupby(["profile", "tier", "track", "task", "metric"]).groups.items():
        part = table.loc[idx]
        if part["role"].iloc[0] == "diagnostic":
            continue  # shown, never ranked
        table.loc[idx, "rank"] = ranks_with_ties(
            mean=part["mean"].to_numpy(), low=part["ci_low"].to_numpy(), high=part["ci_high"].to_numpy(),
            failed=(part["failures"] / part["seeds"]).to_numpy(), direction=part["direction"].iloc[0],
            resolution=resolution[idx[0]])
    return table


def not_applicable_rows(off: pd.DataFrame, table: pd.DataFrame, keys: list[str],
                        targets: dict[str, str]) -> pd.DataFrame:
    """One row per (keys) whose metric does not apply to the entry's model: no statistics."""
    if off.empty:
        return pd.DataFrame(columns=COLUMNS)
    rows = off.groupby(keys, sort=True).size().rename("seeds").reset_index()
    return rows.assign(level="metric", applicable=False, failures=0, unreached=0,
                       target=rows["metric"] == rows["task"].map(targets))


def metric_specs(table: pd.DataFrame, tasks: dict[str, type[Task]]) -> list:
    """The Metric declaration of each (tier, task, metric) row, or None for an unknown one."""
    declared = {}
    for tier, task in table[["tier", "task"]].drop_duplicates().itertuples(index=False):
        cls = tasks.get(task)
        declared[tier, task] = cls(cls.tiers[tier]).metrics() if cls and tier in cls.tiers else {}
    rows = zip(*(table[c].tolist() for c in ("tier", "task", "metric")), strict=True)
    return [declared[t, k].get(m) for t, k, m in rows]


def target_profiles(runs: pd.DataFrame, targets: dict[str, str], tasks: dict[str, type[Task]],
                    complete: set[tuple[str, str, str, str]]) -> pd.DataFrame:
    """Per (profile, tier, track, task, entry): time to the task's target and its performance
    ratio: over the best time of the track's `complete` entries (profile, tier, track, entry:
    runs of every task of the suite) that ran the task, or of every entry where none is complete.

    An incomplete entry is shown, not ranked (see family_scores), and does not set the best time:
    a submission of one task would otherwise move every ranked entry's scores.
    """
    mine = runs[runs["metric"] == runs["task"].map(targets)]
    keys = ["profile", "tier", "track", "task"]
    columns = [*keys, "family", "entry", "time_to_target", "ratio"]
    if mine.empty:
        return pd.DataFrame(columns=columns)
    grouped = mine.groupby([*keys, "entry"], sort=True)
    times = grouped.size().index.to_frame(index=False)
    times["time_to_target"] = group_medians(grouped.ngroup().to_numpy(), mine["value"].to_numpy(float),
                                            len(times))
    # performance_ratios per (keys), vectorized: t / min t, all inf where none solves the task.
    steps = np.maximum(times["time_to_target"].to_numpy(float), 1.0)
    rows = zip(*(times[k].tolist() for k in ("profile", "tier", "track", "entry")), strict=True)
    ranked = np.array([row in complete for row in rows], dtype=bool)
    by_group = [times[k] for k in keys]
    anyone = pd.Series(ranked).groupby(by_group).transform("any").to_numpy()
    pool = np.where(ranked | ~anyone, steps, np.inf)  # the complete entries, or all where none is
    best = pd.Series(pool).groupby(by_group).transform("min").to_numpy()
    with np.errstate(invalid="ignore"):
        times["ratio"] = np.where(np.isfinite(best), steps / best, np.inf)
    times["family"] = times["task"].map({name: cls.family for name, cls in tasks.items()})
    return times[columns]


def group_medians(group: np.ndarray, values: np.ndarray, n_groups: int) -> np.ndarray:
    """`time_to_target` of each group at once: NaN counts as inf, and an even count averages
    the two middle values as np.median does ((a + b) / 2), so the results are equal bit for bit."""
    values = np.where(np.isnan(values), np.inf, values)
    order = np.lexsort((values, group))
    values = values[order]
    counts = np.bincount(group, minlength=n_groups)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    low, high = values[starts + (counts - 1) // 2], values[starts + counts // 2]
    with np.errstate(invalid="ignore"):
        return np.where(counts > 0, (low + high) / 2.0, np.inf)


def per_group(group: np.ndarray, values: np.ndarray, n_groups: int, reduce) -> np.ndarray:
    """`reduce(values of the group)` for each group index 0..n_groups-1, in one sort: the same
    numpy call per group as a pandas `agg(reduce)`, without pandas' per-group overhead."""
    order = np.argsort(group, kind="stable")
    cuts = np.searchsorted(group[order], np.arange(1, n_groups))
    return np.array([reduce(part) for part in np.split(values[order], cuts)], dtype=np.float64)


def coverage(runs: pd.DataFrame, tasks: dict[str, type[Task]]) -> pd.DataFrame:
    """Per level (family, overall), profile, tier, track, family and entry: the tasks of the
    suite the entry has runs of (not-applicable runs count) and whether that is all of them.

    Complete means every task of the suite (of the family) at that tier, whoever else ran what:
    an entry alone in a view, or in a view of entries as partial as itself, is still incomplete.
    """
    covered = runs.assign(track=np.where(runs["track"] == "optimizer", "optimizer", "architecture"),
                          family=runs["task"].map({name: cls.family for name, cls in tasks.items()}))
    suite_tasks = pd.DataFrame([(tier, cls.family) for cls in tasks.values() for tier in cls.tiers],
                               columns=["tier", "family"])
    parts = []
    for level, keys in (("family", ["profile", "tier", "track", "family", "entry"]),
                        ("overall", ["profile", "tier", "track", "entry"])):
        part = covered.groupby(keys)["task"].nunique().rename("have").reset_index()
        scope = ["tier", "family"] if level == "family" else ["tier"]
        part = part.join(suite_tasks.groupby(scope).size().rename("expected"), on=scope)
        parts.append(part.assign(level=level, complete=part["have"] >= part["expected"],
                                 family=part["family"] if level == "family" else ""))
    return pd.concat(parts, ignore_index=True)


def family_scores(per_task: pd.DataFrame, covered: pd.DataFrame) -> pd.DataFrame:
    """Per (profile, tier, track, family or overall, entry): area under the performance profile
    over the tasks whose target applies to the entry's model; `tasks` counts those.

    `complete` (from `coverage`): the entry has runs (or not-applicable runs) of every task of
    the suite (of the family) at that profile and tier. Only complete entries are ranked; an
    incomplete one is shown, never ranked as if it had failed the tasks it lacks.
    """
    columns = ["level", "profile", "tier", "track", "family", "entry", "score", "solved", "tasks",
               "rank", "complete"]
    if per_task.empty:
        return pd.DataFrame(columns=columns)
    scored = per_task.assign(solved=np.isfinite(per_task["ratio"]))
    parts = []
    for level, keys in (("family", ["profile", "tier", "track", "family", "entry"]),
                        ("overall", ["profile", "tier", "track", "entry"])):
        grouped = scored.groupby(keys)
        part = pd.DataFrame({"solved": grouped["solved"].sum().astype(int), "tasks": grouped.size()})
        part.insert(0, "score", per_group(grouped.ngroup().to_numpy(), scored["ratio"].to_numpy(float),
                                          len(part), lambda r: profile_score(ratios=r)))
        part = part.reset_index()
        complete = covered.loc[covered["level"] == level].set_index(keys)["complete"]
        part["complete"] = complete.reindex(pd.MultiIndex.from_frame(part[keys])).fillna(False).to_numpy(bool)
        parts.append(part.assign(level=level, family=part["family"] if level == "family" else ""))
    out = pd.concat(parts, ignore_index=True)
    ranked = out["score"].where(out["complete"])
    out["rank"] = (ranked.groupby([out[k] for k in ("level", "profile", "tier", "track", "family")])
                   .rank(method="min", ascending=False).astype("Int64"))
    return out[columns]


def write_scores(table: pd.DataFrame, path: Path, digest: str) -> None:
    """Write the scores atomically, recording the digest of the inputs they came from."""
    frame = table.reindex(columns=COLUMNS).copy()
    for col in ("seeds", "failures", "unreached", "rank", "solved", "tasks"):
        frame[col] = pd.array(frame[col], dtype="Int64")
    for col in ("target", "recipe", "applicable", "complete"):
        frame[col] = frame[col].astype("boolean")
    arrow = pa.Table.from_pandas(frame, preserve_index=False)
    meta = {META_INPUTS: digest.encode(), results.META_VERSION: str(SCORE_VERSION).encode()}
    results.write_atomic(arrow.replace_schema_metadata(meta), path)


def same_scores(a: pd.DataFrame, b: pd.DataFrame, rtol: float = 1e-9) -> bool:
    """Whether two scores tables agree: the same rows and labels, and numbers equal up to
    `rtol` (another scipy or numpy may move a t quantile or a sum by an ulp)."""
    if list(a.columns) != list(b.columns) or len(a) != len(b):
        return False
    for col in a.columns:
        x, y = a[col], b[col]
        if pd.api.types.is_float_dtype(x.dtype) and pd.api.types.is_float_dtype(y.dtype):
            if not np.allclose(x.to_numpy(float, na_value=np.nan), y.to_numpy(float, na_value=np.nan),
                               rtol=rtol, atol=0.0, equal_nan=True):
                return False
        elif not x.equals(y):
            return False
    return True


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
