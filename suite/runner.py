"""Runs a suite: every (task, seed) of one entry on one profile and tier, resumable on disk."""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from suite import batched, profiles, registry, results, seeding
from suite.entry import Entry, EntryCodeError, EntryError, check_runnable, load_entry, split_hparams
from suite.loop import BatchingUnsupported, NotApplicable, Trainer, Trajectory, check_host_rngs
from suite.task import Task


@dataclass(frozen=True)
class Plan:
    """One run to do: the configured task and its seed."""

    task: Task
    seed: int
    overrides: dict[str, Any]


def default_out(entry: Entry, profile: str, tier: str) -> Path:
    return entry.path / "results" / profile / tier


def check_own_results(folder: Path, entry: Entry) -> None:
    """An entry's own results folder holds its runs alone: another entry's there (a baseline's,
    copied with its folder as a template) would be refused by validate after the whole run."""
    if not results.results_folders(folder):
        return
    others = sorted(set(results.read_folder(folder)[0]["entry"].astype(str)) - {entry.name})
    if others:
        raise results.ResultsError(
            f"{folder}: holds runs of entry {others[0]!r}, not of {entry.name!r} (copied with the "
            f"folder it was made from, or made before the entry was renamed?); delete "
            f"{entry.path / 'results'} and run again")


def run_id(*, entry: Entry, entry_hash: str, task: Task, seed: int, tier: str, profile: str,
           overrides: dict[str, Any]) -> str:
    """Stable id of a run: same entry files, task version, seed, tier, profile, overrides."""
    key = json.dumps([entry.name, entry_hash, task.name, task.version, seed, tier, profile,
                      overrides], sort_keys=True, default=str)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def make_plans(task_names: list[str], seeds: list[int], tier: str, sets: list[str],
               hparams: dict[str, dict[str, Any]] | None = None) -> list[Plan]:
    """The runs to do. A run's overrides are its config overrides (`--set`) and, under the key
    "hparams", its hyperparameter overrides (`--hparam`); both enter its run id."""
    per_task = registry.split_overrides(sets, task_names)
    plans = []
    for name in task_names:
        task = registry.make_task(name, tier, per_task[name])
        overrides: dict[str, Any] = {k: task.config[k] for k in per_task[name]}
        if (hparams or {}).get(name):
            overrides["hparams"] = dict(sorted(hparams[name].items()))
        plans.extend(Plan(task, seed, overrides) for seed in seeds)
    return plans


def plan_entry(entry: Entry, plan: Plan) -> Entry:
    """The entry a plan runs: `entry` with the plan's hyperparameter overrides laid over it."""
    hparams = plan.overrides.get("hparams")
    return entry.with_hparams({plan.task.name: hparams}) if hparams else entry


def execute(plan: Plan, trainer: Trainer, note: str | None = None
            ) -> tuple[Trajectory, dict[str, float], str | None]:
    """Run one seed's plan by itself; a non-finite loss is a result (diverged), an exception
    an error. A task's own procedure trains its networks side by side when the trainer allows
    it (`trainer.batch_lanes`), and one by one if that batch is refused.

    `note` says why a plan that could have been batched runs by itself.
    """
    procedure = not batched.batchable(plan.task)
    execution: dict[str, Any] = {"mode": "one-by-one"}
    if procedure:  # a closure or create_graph entry's networks step one after another
        together = trainer.batch_lanes and not trainer.entry.steps_alone
        networks = "side by side" if together else "one by one"
        execution = {"mode": "procedure", "seeds": [plan.seed], "networks": networks}
    if note:
        execution["note"] = note
    trainer.lanes_refused = None
    try:
        with seeding.seeded_host_rngs(plan.seed):
            traj = plan.task.run(plan.seed, trainer)
    except EntryError:
        raise  # a broken entry breaks every run: stop the suite and say so
    except NotApplicable as err:
        return Trajectory(status="not-applicable", execution=execution), plan.task.nan_metrics(), str(err)
    except BatchingUnsupported as err:
        if not (procedure and trainer.batch_lanes):
            raise  # ldbench's own bug: only a batch refuses
        return execute(plan, alone(trainer), note=f"BatchingUnsupported: {err}")
    except Exception as err:  # noqa: BLE001 - recorded in the results, the suite goes on
        return Trajectory(status="error", execution=execution), plan.task.nan_metrics(), error_message(err)
    traj.execution = networks_refused(execution, trainer)
    return finish(plan, traj)


def networks_refused(execution: dict[str, Any], trainer: Trainer) -> dict[str, Any]:
    """A procedure's execution record, saying so when its networks could not be batched and
    trained one after another instead (the batch's reason as the note)."""
    if execution.get("mode") != "procedure" or trainer.lanes_refused is None:
        return execution
    return {**execution, "networks": "one by one", "note": f"BatchingUnsupported: {trainer.lanes_refused}"}


def progress_bar(**kwargs: Any) -> tqdm:
    """A tqdm bar that redraws at most every 10 s where stderr is not a terminal (a CI log or a
    pipe keeps every redraw as a line: thousands in a run), as often as it likes on one."""
    return tqdm(mininterval=0.1 if sys.stderr.isatty() else 10.0, dynamic_ncols=True, **kwargs)


def alone(trainer: Trainer) -> Trainer:
    """A fresh trainer of the same task and entry that trains every network by itself."""
    fresh = trainer.with_entry(trainer.entry)
    fresh.batch_lanes = False
    return fresh


def error_message(err: Exception) -> str:
    """The entry's own failures in one line pointing at its code; ldbench's with a traceback."""
    if isinstance(err, EntryCodeError):
        return str(err)
    return f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=-4)}"


def finish(plan: Plan, traj: Trajectory) -> tuple[Trajectory, dict[str, float], str | None]:
    """The final metrics of a trajectory (NaN unless it ended ok)."""
    if traj.status != "ok":
        return traj, plan.task.nan_metrics(), None
    steps, curves = traj.arrays()
    try:
        metrics = plan.task.summarize(steps, curves, traj.data)
        return traj, {**metrics, **dict.fromkeys(traj.not_applicable, math.nan)}, None
    except Exception as err:  # noqa: BLE001 - recorded in the results, the suite goes on
        failed = Trajectory(status="error", execution=traj.execution)
        return failed, plan.task.nan_metrics(), error_message(err)


def execute_batch(plans: list[Plan], trainer: Trainer, notes: Callable[[str], None] = print
                  ) -> list[tuple[Trajectory, dict[str, float], str | None]]:
    """Run the plans (seeds of one task, see group_plans) as one seed-batched computation.

    Plans whose hyperparameter overrides differ (a tuning study's trials) each run their own
    entry (`plan_entry` of the trainer's), side by side. A batch that cannot be trusted
    (suite.batched refuses it) runs its seeds one by one, and `notes` says why; so does a batch
    in which the entry's own code failed, so that each seed records its own outcome exactly as
    one by one. Either way no seed's numbers come from a batch that differs from its one-by-one
    run.
    """
    entries = [plan_entry(trainer.entry, p) for p in plans]
    own = any(e.hparams != entries[0].hparams for e in entries)
    if not own and entries[0].hparams != trainer.entry.hparams:
        trainer = trainer.with_entry(entries[0])
    runs = [trainer.with_entry(e) for e in entries] if own else [trainer] * len(plans)
    if len(plans) == 1:
        outcome = execute(plans[0], trainer)
        if note := refused_networks_note(plans[0].task.name, [plans[0].seed], outcome[0].execution):
            notes(note)
        return [outcome]
    task, seeds = plans[0].task, [p.seed for p in plans]
    # The steps check between evaluations; this checks the whole batch, make_optimizer and
    # make_schedule included (a spawned child's too): one by one, they draw from seeded RNGs.
    host = seeding.host_rng_states()
    try:
        if batched.batchable(task):
            trajs = batched.train_seeds(task, trainer, seeds, runs if own else None)
        else:  # the task's own procedure, all runs' networks side by side
            trainer.lanes_refused = None
            trajs = task.run_seeds(seeds, trainer, runs if own else None)
            for traj in trajs:
                traj.execution = networks_refused(
                    {"mode": "procedure", "seeds": seeds, "networks": "side by side"}, trainer)
            if note := refused_networks_note(task.name, seeds, trajs[0].execution):
                notes(note)
        check_host_rngs(host)
        if own:  # a study's trials: each run's hyperparameters for this task, in batch order
            for traj in trajs:
                traj.execution["hparams"] = [e.hparams_for(task.name) for e in entries]
        if looped := batched.looped_ops(trainer):
            notes(f"note: {task.name}: torch.func has no batching rule for {', '.join(looped)}, "
                  "so each batched step runs them seed after seed (slower; the same numbers); "
                  "plain tensor ops batch (see baselines/transformer-1l's attention)")
            for traj in trajs:
                traj.execution["looped_ops"] = looped
    except EntryError:
        raise
    except EntryCodeError:  # each seed records its own outcome, as alone
        return [execute(plan, alone(run)) for plan, run in zip(plans, runs, strict=True)]
    except NotApplicable:  # nothing trains: each seed says why, recorded as --seed-batch 1 does
        return [execute(plan, run) for plan, run in zip(plans, runs, strict=True)]
    except Exception as err:  # noqa: BLE001 - the one-by-one path records or avoids it
        reason = f"{type(err).__name__}: {err}"
        if not isinstance(err, BatchingUnsupported):  # ldbench's own bug: keep its traceback
            reason += "\n" + traceback.format_exc(limit=-4)
        notes(f"note: {task.name}: {which_runs(seeds)} run one by one, not batched: "
              f"{reason}")
        return [execute(plan, alone(run), note=reason.splitlines()[0])
                for plan, run in zip(plans, runs, strict=True)]
    return [finish(plan, traj) for plan, traj in zip(plans, trajs, strict=True)]


def refused_networks_note(task_name: str, seeds: list[int], execution: dict | None) -> str | None:
    """The console note of a procedure whose networks trained one after another because their
    batch was refused (its execution record says so and why), as a refused batch of seeds has."""
    if not execution or execution.get("networks") != "one by one" or "note" not in execution:
        return None
    whose = "its" if len(seeds) == 1 else "their"
    return (f"note: {task_name}: {which_runs(seeds)}: {whose} networks train one after another, "
            f"not batched: {execution['note']}")


def which_runs(seeds: list[int]) -> str:
    """'seed 1', 'seeds 0, 1', or for runs sharing a seed (a study's trials) '4 runs (trials) of
    seed 1000000'."""
    if len(set(seeds)) == len(seeds):
        return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
    shared = sorted(set(seeds))
    return f"{len(seeds)} runs (trials) of seed{'s' if len(shared) > 1 else ''} {', '.join(map(str, shared))}"


def parse_seed_batch(value: int | str, option: str = "--seed-batch") -> int | None:
    """`--seed-batch` (or `option`): "auto" (None: all runs of a task together) or a positive
    integer."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    try:
        size = int(value)
    except (TypeError, ValueError):
        size = 0
    if size < 1:
        raise registry.RegistryError(
            f"{option} {value!r}: expected 'auto' or a positive integer (1 runs them one by one)")
    return size


def group_plans(todo: list[tuple[Plan, str]], size: int | None, entry: Entry,
                unbatched: tuple[str, ...] = ()) -> list[list[tuple[Plan, str]]]:
    """Consecutive plans of one task in groups of `size` runs (None, "auto": all of them, except
    for the tasks the profile lists as `unbatched`, one run each).

    A task that overrides Task.run has its own procedure, and an entry that steps with a
    closure or keeps the gradients' graph steps per seed: those always run seed by seed.
    Plans of the same task configuration with other hyperparameters (a study's trials) group
    together.
    """
    groups: list[list[tuple[Plan, str]]] = []
    alone = entry.steps_alone
    for item in todo:
        plan = item[0]
        apart = alone or (size is None and plan.task.name in unbatched)
        limit = (size or len(todo)) if batched.seed_batchable(plan.task) and not apart else 1
        last = groups[-1][0][0] if groups else None
        if last and batches_with(last, plan) and len(groups[-1]) < limit:
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


def batchable_tasks(plans: list[Plan]) -> set[str]:
    """The tasks of which several seeds could train as one batch."""
    seeds = Counter(p.task.name for p in plans if batched.seed_batchable(p.task))
    return {name for name, n in seeds.items() if n > 1}


def seed_by_seed(entry: Entry, plans: list[Plan]) -> str:
    """A note when the entry's way of stepping keeps seeds of one task that could batch apart."""
    if not entry.steps_alone or not batchable_tasks(plans):
        return ""
    why = "steps with a closure (closure = true)" if entry.closure else \
        "keeps the gradients' graph (create_graph = true)"
    return f"note: {entry.name} {why}: each seed trains by itself, not batched with the others"


def unbatched_note(prof: profiles.Profile, plans: list[Plan], option: str = "--seed-batch",
                   what: str = "seeds") -> str:
    """A note when the profile trains the runs (`what`) of some of these tasks one by one;
    `option` is the command's option that batches them anyway."""
    names = sorted(batchable_tasks(plans) & set(prof.unbatched))
    if not names:
        return ""
    return (f"note: profile {prof.name} trains the {what} of {', '.join(names)} one by one, not "
            f"batched (measured faster there; {option} N batches them anyway)")


def batches_with(a: Plan, b: Plan) -> bool:
    """Whether two plans may train in one batch: the same task configuration (their
    hyperparameters may differ: each run keeps its own entry, see execute_batch)."""
    return a.task is b.task or (type(a.task) is type(b.task) and a.task.config == b.task.config)


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
        execution=json.dumps(traj.execution, sort_keys=True) if traj.execution else None,
        track=entry.track,
    )
    whole = traj.status == "not-applicable"
    runs = pd.DataFrame([
        {**base, "metric": name, "value": float(metrics.get(name, float("nan"))),
         "direction": metric.direction,
         "applicable": not whole and name not in traj.not_applicable}
        for name, metric in declared.items()
    ])
    runs["diverged_step"] = runs["diverged_step"].astype("Int64")
    # NaN marks "not observed at this step" (e.g. a curve recorded only at the final step):
    # the long format needs no placeholders, so those rows are dropped.
    curves = pd.DataFrame(
        [(rid, task.name, entry.name, plan.seed, step, name, value)
         for name, values in traj.curves.items()
         for step, value in zip(traj.steps, values, strict=True) if not math.isnan(value)],
        columns=results.CURVE_SCHEMA.names,
    )
    return runs, curves


def concat_rows(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Stack the rows of several runs (skipping empty frames, which pandas warns about)."""
    kept = [f for f in frames if len(f)]
    return pd.concat(kept, ignore_index=True) if kept else frames[0]


def run_suite(entry_dir: str | Path, *, tasks: list[str] | None = None, seeds: int = 1,
              tier: str = "smoke", profile: str = "cpu-2core", sets: list[str] | None = None,
              out: str | Path | None = None, progress: bool = True,
              seed_batch: int | str = "auto", hparams: list[str] | None = None,
              workers: int | None = 0, scheduler: str | None = None,
              time_limit: float | None = None) -> pd.DataFrame:
    """Run every selected task for seeds 0..seeds-1 and return the run table of all of them.

    Finished runs already in `out` are skipped, so an interrupted suite resumes where it
    stopped; each batch of runs is appended to `out` atomically as soon as it ends.
    `seed_batch`: "auto" trains all seeds of a task as one batched computation (see
    `suite.batched`), N at most N seeds together, 1 one by one. `sets` override tier config
    values and `hparams` the entry's hyperparameters (`key=value` or `task.key=value` each).
    `workers`/`scheduler`: run the batches on a Dask cluster (suite.cluster); `workers=None`:
    the profile's `workers`, where there are at least two groups of runs; `time_limit`:
    seconds per run, past which a run is recorded with status "timeout".
    """
    entry = load_entry(entry_dir)
    check_runnable(entry)  # before any run, and before a cluster starts
    prof = profiles.load(profile)
    size = parse_seed_batch(seed_batch)
    prof.apply()
    task_names = tasks or list(registry.all_tasks())
    for name in task_names:
        registry.task_class(name)  # fail before any work on a typo
    per_task_hparams = split_hparams(hparams or [], entry, task_names)
    entry = entry.with_hparams(per_task_hparams)
    plans = make_plans(task_names, list(range(seeds)), tier, sets or [], per_task_hparams)
    out = Path(out) if out else default_out(entry, profile, tier)
    digest, fingerprint = entry.hash, profiles.fingerprint(prof, entry.path)
    done = results.done_run_ids(out)
    if out.absolute() == default_out(entry, profile, tier).absolute():
        check_own_results(out, entry)
    ids = [run_id(entry=entry, entry_hash=digest, task=p.task, seed=p.seed, tier=tier,
                  profile=profile, overrides=p.overrides) for p in plans]
    todo = [(p, rid) for p, rid in zip(plans, ids, strict=True) if rid not in done]
    groups = group_plans(todo, size, entry, prof.unbatched)
    if size != 1 and (note := seed_by_seed(entry, [p for p, _ in todo])):
        tqdm.write(note, file=sys.stderr)
    if size is None and (note := unbatched_note(prof, [p for p, _ in todo])):
        tqdm.write(note, file=sys.stderr)
    if workers is None:
        workers = prof.workers_for(len(groups))
    try:
        execute_groups(groups, entry, prof, out=out, tier=tier, profile=profile, workers=workers,
                       scheduler=scheduler, time_limit=time_limit, progress=progress,
                       fingerprint=fingerprint)
    except KeyboardInterrupt:  # click then prints "Aborted!": say what was kept first
        kept = len(set(ids) & results.done_run_ids(out))
        tqdm.write(f"interrupted: {kept} of the {len(ids)} runs have finished and are kept in {out}; "
                   "the same command resumes from there", file=sys.stderr)
        raise
    results.compact(out)  # one O(rows) merge per `ldbench run`, not one per stored run
    all_runs, _ = results.read_results(out)
    return all_runs[all_runs["run_id"].isin(ids)]


def execute_groups(groups: list[list[tuple[Plan, str]]], entry: Entry, prof: profiles.Profile, *,
                   out: Path, tier: str, profile: str, workers: int, scheduler: str | None,
                   time_limit: float | None, progress: bool, fingerprint: dict) -> None:
    """Run the groups on a Dask cluster (`workers` or `scheduler`) or here, appending each
    group's rows to `out` as it ends."""
    if workers or scheduler:  # issue 12: the same groups, on a Dask cluster
        from suite import cluster

        # Batches first, single runs last (Dask starts jobs in the order they are submitted):
        # a worker that finishes early then takes the short jobs, and the workers end together.
        # The numbers do not depend on the order.
        jobs = [cluster.Job(entry, group) for group in sorted(groups, key=len, reverse=True)]
        cluster.run_jobs(jobs, out=out, tier=tier, profile=profile, workers=workers,
                         scheduler=scheduler, time_limit=time_limit, progress=progress)
        return
    total = sum(p.task.optimizer_steps() for group in groups for p, _ in group)
    with progress_bar(total=total, unit="step", disable=not progress or not groups) as bar:
        for group in groups:
            batch = [plan for plan, _ in group]
            bar.set_description(f"{batch[0].task.name} seed {','.join(str(p.seed) for p in batch)}")
            rows = run_group(group, entry, prof, tier=tier, profile=profile, fingerprint=fingerprint,
                             on_step=bar.update, time_limit=time_limit,
                             notes=lambda text: bar.write(text, file=sys.stderr))
            results.append_run(out, *rows)


# -- one group of runs: the unit that run_suite and Dask workers (suite/cluster.py) execute -----


class RunTimeout(BaseException):
    """A run past its time limit. A BaseException so that execute's `except Exception` (which
    records the task's own failures) lets it through to run_group, which records "timeout"."""


def step_clock(limit: float | None, on_step: Callable[[int], None] | None, runs: int = 1
               ) -> Callable[[int], None]:
    """An on_step callback that raises RunTimeout once `limit` seconds per run have passed
    (`runs` runs trained together get `runs` times as long).

    The clock is read after every optimizer step: a single step that never returns is not
    caught here (on a Dask cluster, killing its worker moves the run elsewhere).
    """
    deadline = math.inf if limit is None else time.monotonic() + limit * runs
    shared = f" ({runs} runs trained together: {limit * runs:g} s)" if runs > 1 and limit else ""

    def tick(n: int) -> None:
        if on_step is not None:
            on_step(n)
        if time.monotonic() > deadline:
            raise RunTimeout(f"exceeded the time limit of {limit:g} s per run{shared}")
    return tick


def run_group(group: list[tuple[Plan, str]], entry: Entry, prof: profiles.Profile, *, tier: str,
              profile: str, fingerprint: dict[str, str], on_step: Callable[[int], None] | None = None,
              time_limit: float | None = None, notes: Callable[[str], None] = print
              ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run one group (seeds of one task, see group_plans) and return its (runs, curves) rows.

    `time_limit` is per run: a seed-batched group of k seeds gets k times as long. `notes`
    receives the one-line notes of batches that ran one by one.
    """
    batch = [plan for plan, _ in group]
    trainer = Trainer(batch[0].task, entry, prof, on_step=step_clock(time_limit, on_step, len(batch)))
    start = time.perf_counter()
    try:
        outcomes = execute_batch(batch, trainer, notes=notes)
    except RunTimeout as err:
        outcomes = [(Trajectory(status="timeout"), p.task.nan_metrics(), str(err)) for p in batch]
    # The seeds of a batch share one computation: each is charged an equal share of it.
    wall = (time.perf_counter() - start) / len(batch)
    frames = [rows_for(plan, traj, metrics, error, rid=rid, entry=plan_entry(entry, plan),
                       entry_hash=entry.hash, tier=tier, profile=profile, fingerprint=fingerprint,
                       wall=wall)
              for (plan, rid), (traj, metrics, error) in zip(group, outcomes, strict=True)]
    return tuple(concat_rows([f[k] for f in frames]) for k in (0, 1))
