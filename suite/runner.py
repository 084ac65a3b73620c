"""Runs a suite: every (task, seed) of one entry on one profile and tier, resumable on disk."""

from __future__ import annotations

import hashlib
import json
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from suite import profiles, registry, results
from suite.entry import Entry, EntryError, load_entry
from suite.loop import Trainer, Trajectory
from suite.task import Task


@dataclass(frozen=True)
class Plan:
    """One run to do: the configured task and its seed."""

    task: Task
    seed: int
    overrides: dict[str, Any]


def default_out(entry: Entry, profile: str, tier: str) -> Path:
    return entry.path / "results" / profile / tier


def run_id(*, entry: Entry, entry_hash: str, task: Task, seed: int, tier: str, profile: str,
           overrides: dict[str, Any]) -> str:
    """Stable id of a run: same entry files, task version, seed, tier, profile, overrides."""
    key = json.dumps([entry.name, entry_hash, task.name, task.version, seed, tier, profile,
                      overrides], sort_keys=True, default=str)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def make_plans(task_names: list[str], seeds: list[int], tier: str,
               sets: list[str]) -> list[Plan]:
    per_task = registry.split_overrides(sets, task_names)
    plans = []
    for name in task_names:
        task = registry.make_task(name, tier, per_task[name])
        overrides = {k: task.config[k] for k in per_task[name]}
        plans.extend(Plan(task, seed, overrides) for seed in seeds)
    return plans


def execute(plan: Plan, trainer: Trainer) -> tuple[Trajectory, dict[str, float], str | None]:
    """Run one plan; a non-finite loss is a result (diverged), an exception is an error."""
    try:
        traj = plan.task.run(plan.seed, trainer)
    except EntryError:
        raise  # a broken entry breaks every run: stop the suite and say so
    except Exception as err:  # noqa: BLE001 - recorded in the results, the suite goes on
        message = f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=3)}"
        return Trajectory(status="error"), plan.task.nan_metrics(), message
    if traj.status != "ok":
        return traj, plan.task.nan_metrics(), None
    steps, curves = traj.arrays()
    return traj, plan.task.summarize(steps, curves, traj.data), None


def rows_for(plan: Plan, traj: Trajectory, metrics: dict[str, float], error: str | None, *,
             rid: str, entry: Entry, entry_hash: str, tier: str, profile: str,
             fingerprint: dict[str, str], wall: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    task, declared = plan.task, plan.task.metrics()
    undeclared = set(metrics) - set(declared)
    if undeclared:
        raise RuntimeError(f"task {task.name} returned undeclared metrics {sorted(undeclared)}")
    base = dict(
        run_id=rid, task=task.name, task_version=task.version, family=task.family,
        entry=entry.name, entry_version=entry.version, entry_hash=entry_hash, seed=plan.seed,
        tier=tier, profile=profile, overrides=json.dumps(plan.overrides, sort_keys=True),
        config=json.dumps(task.config, sort_keys=True),
        hparams=json.dumps(entry.hparams_for(task.name), sort_keys=True),
        status=traj.status, diverged_step=traj.diverged_step, error=error, wall_time_s=wall,
        steps=traj.steps_done, suite_version=fingerprint["suite_version"],
        git_commit=fingerprint["git_commit"], fingerprint=json.dumps(fingerprint, sort_keys=True),
        created_at=pd.Timestamp.now(tz="UTC"),
    )
    runs = pd.DataFrame([
        {**base, "metric": name, "value": float(metrics.get(name, float("nan"))),
         "direction": metric.direction}
        for name, metric in declared.items()
    ])
    runs["diverged_step"] = runs["diverged_step"].astype("Int64")
    curves = pd.DataFrame(
        [(rid, task.name, entry.name, plan.seed, step, name, value)
         for name, values in traj.curves.items() for step, value in zip(traj.steps, values, strict=True)],
        columns=results.CURVE_SCHEMA.names,
    )
    return runs, curves


def run_suite(entry_dir: str | Path, *, tasks: list[str] | None = None, seeds: int = 1,
              tier: str = "smoke", profile: str = "cpu-2core", sets: list[str] | None = None,
              out: str | Path | None = None, progress: bool = True) -> pd.DataFrame:
    """Run every selected task for seeds 0..seeds-1 and return the run table of all of them.

    Finished runs already in `out` are skipped, so an interrupted suite resumes where it
    stopped; each run is appended to `out` atomically as soon as it ends.
    """
    entry = load_entry(entry_dir)
    prof = profiles.load(profile)
    prof.apply()
    task_names = tasks or list(registry.all_tasks())
    for name in task_names:
        registry.task_class(name)  # fail before any work on a typo
    plans = make_plans(task_names, list(range(seeds)), tier, sets or [])
    out = Path(out) if out else default_out(entry, profile, tier)
    digest, fingerprint = entry.hash, profiles.fingerprint(prof, entry.path)
    done = results.done_run_ids(out)
    ids = [run_id(entry=entry, entry_hash=digest, task=p.task, seed=p.seed, tier=tier,
                  profile=profile, overrides=p.overrides) for p in plans]
    todo = [(p, rid) for p, rid in zip(plans, ids, strict=True) if rid not in done]
    total = sum(p.task.config["steps"] for p, _ in todo)
    with tqdm(total=total, unit="step", disable=not progress, dynamic_ncols=True) as bar:
        for plan, rid in todo:
            bar.set_description(f"{plan.task.name} seed {plan.seed}")
            trainer = Trainer(plan.task, entry, prof, on_step=bar.update)
            start = time.perf_counter()
            traj, metrics, error = execute(plan, trainer)
            wall = time.perf_counter() - start
            runs, curves = rows_for(plan, traj, metrics, error, rid=rid, entry=entry,
                                    entry_hash=digest, tier=tier, profile=profile,
                                    fingerprint=fingerprint, wall=wall)
            results.append_run(out, runs, curves)
    all_runs, _ = results.read_results(out)
    return all_runs[all_runs["run_id"].isin(ids)]
