"""`ldbench tune`: a fixed-budget study over an entry's search space, resumable, then evaluated.

Protocol (also in submissions/README.md):
- budget N: N trial points per task, from a scrambled Halton design (scipy.stats.qmc) seeded by
  the design seed; the same N, design and seed for every entry, so a study can be re-run exactly;
- each trial runs on the tuning seeds TUNING_SEED_BASE + 0..k-1, disjoint from the evaluation
  seeds 0..n-1 that `ldbench run` and the leaderboard use;
- the best trial per task is chosen by the task's target (a steps-to-target metric): first the
  most tuning seeds that reached the target (a run that diverged, failed or timed out did not),
  then the best mean over those seeds (values within the metric's resolution are equal), then,
  for a task that declares a `tie_break` metric (mode-connectivity: test_error), its best mean
  over the same seeds (within its resolution), then the lowest trial index (the earlier design
  point). When no trial reached the target on any tuning seed, the study has no evidence for
  any point: the entry's own hyperparameters are kept for that task (best_trial null in
  tuned.json), not an arbitrary design point;
- the chosen point is run on the evaluation seeds; tuned.json holds it with the provenance.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import qmc

from suite import cluster, profiles, registry, results, runner, score, seeding
from suite.entry import Entry, EntryError, check_runnable, load_entry

TUNING_SEED_BASE = 1_000_000  # far above any evaluation seed count
STUDY_FILE, TUNED_FILE = "study.json", "tuned.json"
TRIALS, EVAL = "trials", "eval"
FINISHED = ("ok", "diverged", "timeout")  # a trial with one of these statuses is not rerun
KEPT = "no trial reached the target on any tuning seed: the entry's own hyperparameters"


@dataclass(frozen=True)
class Trial:
    """One design point of one task and the run ids of its tuning seeds."""

    task: str
    index: int
    hparams: dict[str, Any]
    run_ids: tuple[str, ...]


def space_hash(space: dict[str, dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(space, sort_keys=True).encode()).hexdigest()[:16]


def scale(name: str, spec: dict[str, Any], u: float) -> Any:
    """Map u in [0, 1) to the range `spec` (one of log_uniform, uniform, choice)."""
    (kind, values), = spec.items()
    if kind == "choice":
        return values[min(int(u * len(values)), len(values) - 1)]
    low, high = float(values[0]), float(values[1])
    if kind == "log_uniform":
        return float(math.exp(math.log(low) + u * (math.log(high) - math.log(low))))
    return float(low + u * (high - low))


def design(space: dict[str, dict[str, Any]], budget: int, design_seed: int) -> list[dict[str, Any]]:
    """`budget` points of a scrambled Halton design over the space (dimensions in name order)."""
    names = sorted(space)
    rng = np.random.default_rng(seeding.derive_seed(design_seed, "tune-design"))
    units = qmc.Halton(d=len(names), scramble=True, seed=rng).random(budget)  # (budget, dims)
    return [{name: scale(name, space[name], float(u)) for name, u in zip(names, row, strict=True)}
            for row in units]


def write_json(path: Path, data: dict) -> None:
    """Atomically (temp file, fsync, rename), like the results store."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            # allow_nan=False: strict JSON (no NaN or Infinity), which any JSON reader takes
            json.dump(data, handle, indent=1, sort_keys=True, default=str, allow_nan=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def plans_for(entry: Entry, task_name: str, spec: dict, hparams: dict[str, Any],
              seeds: list[int]) -> list[tuple[runner.Plan, str]]:
    """The runs of one hyperparameter point: recorded like `ldbench run --hparam` runs (the
    point's hyperparameters are the plans' overrides, which `runner.plan_entry` lays over the
    entry's own)."""
    tier, profile = spec["tier"], spec["profile"]
    plans = runner.make_plans([task_name], seeds, tier, task_sets(spec, task_name), {task_name: hparams})
    return [(p, runner.run_id(entry=entry, entry_hash=entry.hash, task=p.task, seed=p.seed,
                              tier=tier, profile=profile, overrides=p.overrides)) for p in plans]


def task_sets(spec: dict, task: str) -> list[str]:
    """The study's `--set` pairs that apply to `task`, as `task.key=value`: a bare key may belong
    to another of its tasks, and `other.key` names one (both are checked against all of them)."""
    resolved = registry.split_overrides(spec.get("sets", []), list(spec["tasks"]))[task]
    return [f"{task}.{key}={value}" for key, value in resolved.items()]


def study_spec(entry: Entry, tasks: list[str], *, budget: int, design_seed: int, tuning_seeds: int,
               eval_seeds: int, tier: str, profile: str, sets: list[str]) -> dict:
    """Everything that fixes a study's trials; a resumed study must match it."""
    spaces = {}
    for task in tasks:
        space = entry.search_for(task)
        if not space:
            raise EntryError(f"{entry.path / 'entry.toml'}: no search space for task {task}; "
                             "add a [search.default] or [search." + task + "] table")
        spaces[task] = {"space": space, "space_hash": space_hash(space),
                        "points": design(space, budget, design_seed)}
    return {"entry": entry.name, "entry_hash": entry.hash, "tier": tier, "profile": profile, "sets": sets,
            "budget": budget, "design": "scrambled Halton (scipy.stats.qmc)", "design_seed": design_seed,
            "tuning_seeds": [TUNING_SEED_BASE + i for i in range(tuning_seeds)],
            "eval_seeds": list(range(eval_seeds)), "tasks": spaces}


def read_study(folder: Path) -> dict:
    """A study's study.json, checked: a damaged file (a merge conflict in a committed study, a
    hand edit) is named in one line, never a traceback or a study read as empty."""
    path = Path(folder) / STUDY_FILE
    fix = "restore it (git checkout), or delete the study folder and rerun `ldbench tune`"
    spec = results.read_json(path, fix)
    shapes = {"entry": str, "entry_hash": str, "tier": str, "profile": str, "tasks": dict,
              "tuning_seeds": list, "eval_seeds": list}
    wrong = [key for key, kind in shapes.items() if not isinstance(spec, dict)
             or not isinstance(spec.get(key), kind)]
    if not wrong:
        wrong = [f"tasks.{task}" for task, info in spec["tasks"].items()
                 if not (isinstance(info, dict) and isinstance(info.get("space"), dict)
                         and isinstance(info.get("points"), list)
                         and all(isinstance(p, dict) for p in info["points"]))]
    if wrong:
        raise results.ResultsError(f"{path}: not a study's record ({wrong[0]} missing or of another "
                                   f"type); {fix}")
    return spec


def open_study(out: Path, spec: dict) -> None:
    """Write study.json, or check that the study already in `out` is this one."""
    path = out / STUDY_FILE
    if path.is_file():
        old = read_study(out)
        keys = [k for k in spec if k != "tasks"]
        diff = [k for k in keys if old.get(k) != spec[k]]
        diff += [f"tasks.{t}" for t in spec["tasks"] if old["tasks"].get(t) != spec["tasks"][t]]
        if diff:
            raise EntryError(f"{path}: a different study ({', '.join(diff)} differ); "
                             "pass another --out or delete that folder")
        spec["tasks"] = {**old["tasks"], **spec["tasks"]}
    write_json(path, spec)


def trial_list(entry: Entry, spec: dict) -> list[tuple[Trial, list]]:
    found = []
    for task, info in spec["tasks"].items():
        for index, point in enumerate(info["points"]):
            planned = plans_for(entry, task, spec, point, spec["tuning_seeds"])
            found.append((Trial(task, index, point, tuple(rid for _, rid in planned)), planned))
    return found


def finished_ids(folder: Path) -> set[str]:
    """Run ids of finished trial runs (a timeout is a result of a trial, never redone)."""
    if not results.results_folders(Path(folder)):  # no trial stored yet (a damaged table raises)
        return set()
    runs, _ = results.read_results(folder)
    return set(runs.loc[runs["status"].isin(FINISHED), "run_id"])


def execute(entry: Entry, todo: list[tuple[runner.Plan, str]], *, out: Path, spec: dict,
            prof: profiles.Profile, client, time_limit: float | None, progress: bool,
            size: int | None = None) -> None:
    """Run the plans in-process (client None) or on a Dask cluster, appending rows to `out`.

    Up to `size` (None: all, except one at a time for the profile's `unbatched` tasks) runs of
    one task train side by side, whatever their hyperparameters (a task's trials, when it has
    the default procedure: runner.group_plans). The batches do not depend on the cluster, so
    neither do the numbers."""
    jobs = [cluster.Job(entry, group) for group in runner.group_plans(todo, size, entry, prof.unbatched)]
    if client is not None:
        cluster.run_jobs(jobs, out=out, tier=spec["tier"], profile=spec["profile"], client=client,
                         time_limit=time_limit, progress=progress)
        results.compact(out)
        return
    fingerprint = profiles.fingerprint(prof, jobs[0].entry.path) if jobs else {}
    with runner.progress_bar(total=sum(len(j.group) for j in jobs), unit="run", disable=not progress) as bar:
        for job in jobs:
            rows = runner.run_group(job.group, job.entry, prof, tier=spec["tier"],
                                    profile=spec["profile"], fingerprint=fingerprint,
                                    time_limit=time_limit)
            results.append_run(out, *rows)
            bar.update(len(job.group))
    results.compact(out)  # the study's tables in their reviewable form


def trial_table(trials: list[Trial], runs: pd.DataFrame) -> pd.DataFrame:
    """One row per trial: its hyperparameters, target over tuning seeds and run statuses."""
    rows = []
    for trial in trials:
        cls = registry.task_class(trial.task)
        mine = runs[runs["run_id"].isin(trial.run_ids)]
        part = mine[mine["metric"] == cls.target]
        values = part["value"].to_numpy(np.float64)
        reached = np.isfinite(values)
        statuses = part["status"].value_counts().to_dict()
        row = {"task": trial.task, "trial": trial.index,
               "hparams": json.dumps(trial.hparams, sort_keys=True), "target": cls.target,
               "reached": int(reached.sum()), "seeds": len(trial.run_ids), "done": len(part),
               "target_mean": float(values[reached].mean()) if reached.any() else math.inf,
               "statuses": ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))}
        if cls.tie_break:  # over the seeds that reached the target, as target_mean
            seeds = set(part.loc[reached, "run_id"])
            ties = mine.loc[(mine["metric"] == cls.tie_break) & mine["run_id"].isin(seeds), "value"]
            row["tie_break"] = cls.tie_break
            row["tie_break_mean"] = float(ties.mean()) if len(ties) else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def error_notes(runs: pd.DataFrame, tasks: list[str], best: dict[str, int | None]) -> list[str]:
    """One line per task whose trials ended in errors: how many, the first error, and what the
    study keeps (the table shows only counts; the errors are in the trials' runs file)."""
    notes = []
    failed = runs[(runs["status"] == "error") & runs["task"].isin(tasks)].drop_duplicates("run_id")
    for task, part in failed.groupby("task", sort=True):
        first = str(part["error"].dropna().iloc[0]).splitlines()[0] if part["error"].notna().any() else ""
        kept = "keeps the entry's hyperparameters" if best.get(task) is None else "chose among the others"
        notes.append(f"note: {task}: {len(part)} of {runs.loc[runs['task'] == task, 'run_id'].nunique()} "
                     f"trial runs ended in an error (the study {kept}); the first: {first}")
    return notes


def best_trials(table: pd.DataFrame, tier: str) -> dict[str, int | None]:
    """The best trial index per task, None where no trial reached the target on any tuning
    seed (see the module docstring for the rule)."""
    best: dict[str, int | None] = {}
    for task, part in table.groupby("task", sort=False):
        if part["reached"].max() == 0:
            best[task] = None
            continue
        task_obj = registry.make_task(task, tier)
        tied = part[part["reached"] == part["reached"].max()]
        tied = best_within(tied, "target_mean", task_obj.metrics()[task_obj.target])
        if task_obj.tie_break and "tie_break_mean" in tied and tied["tie_break_mean"].notna().any():
            tied = best_within(tied, "tie_break_mean", task_obj.metrics()[task_obj.tie_break])
        best[task] = int(tied["trial"].min())
    return best


def best_within(trials: pd.DataFrame, column: str, spec) -> pd.DataFrame:
    """The trials whose `column` is the best by the metric's direction, or within its resolution
    of it (NaN is never the best)."""
    score = (1.0 if spec.direction == "min" else -1.0) * trials[column]
    return trials[score <= score.min() + (spec.resolution or 0.0)]


def tune(entry_dir: str | Path, *, budget: int, tasks: list[str] | None = None, tier: str = "smoke",
         profile: str = "cpu-2core", design_seed: int = 0, tuning_seeds: int = 1, eval_seeds: int = 2,
         out: str | Path | None = None, workers: int | None = 0, scheduler: str | None = None,
         time_limit: float | None = None, sets: list[str] | None = None, progress: bool = True,
         trial_batch: int | str = "auto") -> Path:
    """Run (or resume) a study and its evaluation; return the study folder.

    `trial_batch`: how many of a task's trial runs train as one batch ("auto": all of them;
    see runner.parse_seed_batch); the evaluation runs batch all seeds of a task. `workers=None`:
    the profile's `workers` when the study has at least two tasks (runner.run_suite).
    """
    entry = load_entry(entry_dir)
    check_runnable(entry)  # before any trial, and before a cluster starts
    size = runner.parse_seed_batch(trial_batch, "--trial-batch")
    prof = profiles.load(profile)
    prof.apply()
    tasks = tasks or list(registry.all_tasks())
    for name in tasks:
        registry.task_class(name)
    out = Path(out) if out else Path("studies") / entry.name / profile / tier / f"budget-{budget}"
    spec = study_spec(entry, tasks, budget=budget, design_seed=design_seed, tuning_seeds=tuning_seeds,
                      eval_seeds=eval_seeds, tier=tier, profile=profile, sets=list(sets or []))
    open_study(out, spec)
    if workers is None:  # counted in tasks: a study of one task stays in the process
        workers = prof.workers_for(len(tasks))
    try:
        with cluster.session(workers, scheduler) as client:  # one cluster for trials and evaluation
            return run_study(entry, out, spec, tasks, prof, client=client, time_limit=time_limit,
                             progress=progress, trial_batch=size)
    except KeyboardInterrupt:  # click then prints "Aborted!": say what was kept first
        kept = [len(results.done_run_ids(out / part)) for part in (TRIALS, EVAL)]
        print(f"interrupted: {kept[0]} trial runs and {kept[1]} evaluation runs have finished and are "
              f"kept in {out}; the same command resumes from there", file=sys.stderr)
        raise


def run_study(entry: Entry, out: Path, spec: dict, tasks: list[str], prof: profiles.Profile, *,
              client, time_limit: float | None, progress: bool, trial_batch: int | None = None) -> Path:
    """The trials not finished yet, the choice of the best, its evaluation runs, tuned.json."""
    tier = spec["tier"]
    found = [t for t in trial_list(entry, spec) if t[0].task in tasks]
    done = finished_ids(out / TRIALS)
    # Two trials at one point (a choice-only space smaller than the budget) are the same runs:
    # each run id is trained once, and both trials read it.
    todo = list({p[1]: p for _, planned in found for p in planned if p[1] not in done}.values())
    if trial_batch is None and (note := runner.unbatched_note(prof, [p for p, _ in todo], "--trial-batch",
                                                              "trials")):
        print(note, file=sys.stderr)
    execute(entry, todo, out=out / TRIALS, spec=spec, prof=prof, client=client,
            time_limit=time_limit, progress=progress, size=trial_batch)
    trials = [t for t, _ in found]
    trial_runs = results.read_results(out / TRIALS)[0]
    table = trial_table(trials, trial_runs)
    best = best_trials(table, tier)
    for note in error_notes(trial_runs, tasks, best):
        print(note)
    by_index = {(t.task, t.index): t for t in trials}
    tuned = {task: entry.hparams_for(task) if best[task] is None else by_index[task, best[task]].hparams
             for task in tasks}
    done = results.done_run_ids(out / EVAL)
    todo = [p for task in tasks for p in plans_for(entry, task, spec, tuned[task], spec["eval_seeds"])
            if p[1] not in done]
    execute(entry, todo, out=out / EVAL, spec=spec, prof=prof, client=client,
            time_limit=time_limit, progress=progress)
    provenance = {k: v for k, v in spec.items() if k != "tasks"}
    provenance["tasks"] = {task: {"space": spec["tasks"][task]["space"],
                                  "space_hash": spec["tasks"][task]["space_hash"],
                                  "best_trial": best[task],
                                  "chosen": KEPT if best[task] is None else "best trial",
                                  "trials": [trial_record(r) for r in
                                             table[table["task"] == task].to_dict("records")]}
                           for task in tasks}
    written = {"tuned": tuned, "provenance": provenance}
    write_json(out / TUNED_FILE, with_other_tasks(out / TUNED_FILE, written))
    return out


def with_other_tasks(path: Path, written: dict) -> dict:
    """tuned.json's content, keeping the choices an earlier run of the study (`path`) made for
    tasks this one did not tune: a study tuned a task at a time (`--tasks`) holds them all."""
    try:
        before = json.loads(path.read_text(encoding="utf-8"))
        kept = {t: (before["tuned"][t], before["provenance"]["tasks"][t]) for t in before["tuned"]
                if t not in written["tuned"]}
        kept = {t: (hp, {**info, "trials": [trial_record(r) for r in info.get("trials", [])]})
                for t, (hp, info) in kept.items()}  # a file written before trials were strict JSON
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return written  # none yet (or unreadable: this run's choices are what there is)
    tuned = {**{t: hp for t, (hp, _) in kept.items()}, **written["tuned"]}
    tasks = {**{t: info for t, (_, info) in kept.items()}, **written["provenance"]["tasks"]}
    return {"tuned": dict(sorted(tuned.items())),
            "provenance": {**written["provenance"], "tasks": dict(sorted(tasks.items()))}}


def trial_record(row: dict) -> dict:
    """A trial as tuned.json records it, strict JSON: its hyperparameters as an object, and null
    for a target mean no tuning seed reached and for a tie break the task does not declare.
    Also reads a record written before 2026-11-27 (hyperparameters as a JSON string, Infinity
    and NaN)."""
    def plain(key: str, value):
        if key == "hparams" and isinstance(value, str):
            return json.loads(value)
        return None if isinstance(value, float) and not math.isfinite(value) else value
    return {key: plain(key, value) for key, value in row.items()}


def chosen_evaluations(runs: pd.DataFrame, tuned: dict[str, dict]) -> pd.DataFrame:
    """The evaluation runs of each task's chosen point (an earlier choice's runs stay in the
    folder when a study is re-chosen, e.g. under a new rule; they are not its result)."""
    def chosen(task: str, overrides: str) -> bool:
        return json.loads(overrides or "{}").get("hparams", {}) == tuned.get(task, {})
    return runs[[chosen(t, o) for t, o in zip(runs["task"], runs["overrides"], strict=True)]]


def chosen_results(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, curves) of a study's result: each task's chosen point on the evaluation seeds
    (not its trials, whose tuning seeds chose the point). ResultsError before it is chosen."""
    folder = Path(folder)
    if not (folder / TUNED_FILE).is_file():
        raise results.ResultsError(f"{folder}: the study has chosen no point yet (no {TUNED_FILE}); "
                                   "run the same `ldbench tune` command to finish it")
    tuned = score.read_tuned(folder / TUNED_FILE)  # checked: a damaged file is named
    runs, curves = results.read_results(folder / EVAL)
    runs = chosen_evaluations(runs, tuned)
    return runs, curves[curves["run_id"].isin(set(runs["run_id"]))]


def is_study(folder: Path) -> bool:
    return (Path(folder) / STUDY_FILE).is_file()


def show(folder: Path) -> tuple[pd.DataFrame, dict]:
    """A study's trial table (marking the best trial) and its tuned hyperparameters."""
    folder = Path(folder)
    spec = read_study(folder)
    entry_stub = Entry(path=folder, name=spec["entry"], version="", authors=[], description="")
    trials = []
    for task, info in spec["tasks"].items():
        for index, point in enumerate(info["points"]):
            plans = runner.make_plans([task], spec["tuning_seeds"], spec["tier"],
                                      task_sets(spec, task), {task: point})
            ids = tuple(runner.run_id(entry=entry_stub, entry_hash=spec["entry_hash"], task=p.task,
                                      seed=p.seed, tier=spec["tier"], profile=spec["profile"],
                                      overrides=p.overrides) for p in plans)
            trials.append(Trial(task, index, point, ids))
    if results.results_folders(folder / TRIALS):  # a damaged table raises, naming itself
        runs = results.read_results(folder / TRIALS)[0]
    else:  # no trial stored yet
        runs = pd.DataFrame(columns=["run_id", "metric", "value", "status"])
    table = trial_table(trials, runs)
    tuned, best = {}, {}
    if (folder / TUNED_FILE).is_file():
        tuned = score.read_tuned(folder / TUNED_FILE)  # checked: a damaged file is named
        best = chosen_trials(folder / TUNED_FILE)
    table["best"] = ["*" if best.get(t) == i else "" for t, i in zip(table["task"], table["trial"],
                                                                     strict=True)]
    return table, tuned


def chosen_trials(tuned_file: Path) -> dict[str, int | None]:
    """Each task's chosen trial index in tuned.json (None: no trial reached the target)."""
    written = results.read_json(tuned_file, "rerun `ldbench tune`")
    try:
        tasks = written["provenance"]["tasks"]
        best = {task: info["best_trial"] for task, info in tasks.items()}
    except (KeyError, TypeError, AttributeError) as err:
        raise results.ResultsError(f"{tuned_file}: its provenance is unreadable ({type(err).__name__}: "
                                   f"{err}); rerun `ldbench tune`") from None
    odd = [t for t, b in best.items() if b is not None and (isinstance(b, bool) or not isinstance(b, int))]
    if odd:
        raise results.ResultsError(f"{tuned_file}: provenance.tasks.{odd[0]}.best_trial is "
                                   f"{best[odd[0]]!r}, not a trial index; rerun `ldbench tune`")
    return best


def plot(folder: Path, path: str | Path) -> Path:
    """An SVG per study: each task's target (mean over tuning seeds) against each hyperparameter.

    Trials that reached the target on no seed are drawn at the top edge as crosses; the best
    trial is circled.
    """
    import matplotlib
    from matplotlib.figure import Figure

    from suite.site import plots

    table, _ = show(folder)
    spec = read_study(folder)
    panels = [(task, name, info["space"][name]) for task, info in spec["tasks"].items()
              for name in sorted(info["space"])]
    with matplotlib.rc_context(plots.SVG_RC):
        fig = Figure(figsize=(3.0 * len(panels), 2.6), layout="constrained")
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (task, name, space) in zip(axes, panels, strict=True):
        part = table[table["task"] == task]
        x = np.array([json.loads(h)[name] for h in part["hparams"]], dtype=object)
        y = part["target_mean"].to_numpy(np.float64)
        finite = np.isfinite(y)
        top = y[finite].max() * 1.1 if finite.any() else 1.0
        if "log_uniform" in space:
            ax.set_xscale("log")
        if "choice" in space:  # in the order the space lists them (not of first appearance)
            order = {json.dumps(c): i for i, c in enumerate(space["choice"])}
            xs = np.array([order[json.dumps(v)] for v in x], dtype=float)
            ax.set_xticks(range(len(order)), [str(c) for c in space["choice"]])
        else:
            xs = x.astype(float)
        ax.scatter(xs[finite], y[finite], s=14)
        ax.scatter(xs[~finite], np.full((~finite).sum(), top), marker="x", s=14, color="tab:red")
        best = (part["best"] == "*").to_numpy()
        ax.scatter(xs[best], np.where(finite[best], y[best], top), s=60, facecolors="none",
                   edgecolors="k")
        ax.set_xlabel(name)
        ax.set_ylabel(str(part["target"].iloc[0]) if len(part) else "")
        ax.set_title(task, fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(plots.render(fig), encoding="utf-8")
    return path
