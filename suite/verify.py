"""Re-runs a random sample of a submission's runs on this machine, as they were executed.

This imports and executes the submission's `entry.py` (as `ldbench run` does): run it only in a
sandbox without secrets, such as the pull-request CI job.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from suite import batched, cluster, profiles, registry, results, runner, seeding
from suite.entry import check_runnable, load_entry
from suite.loop import NotApplicable, Trainer, torch_threads
from suite.task import Task

# The profiles are deterministic, so a rerun on the same kind of machine matches to the last
# bit; another CPU model or BLAS may differ in the last digits, which a steps-to-target value
# (interpolated between evaluation steps) can amplify a little. Hence a relative tolerance,
# and below it each metric's declared resolution: differences under it are numerical noise.
RTOL, ATOL = 1e-3, 1e-8


@dataclass(frozen=True)
class Check:
    """One metric of one re-run: the submitted and the reproduced value."""

    task: str
    seed: int
    metric: str
    submitted: float
    reproduced: float
    submitted_status: str
    reproduced_status: str
    resolution: float = 0.0

    def matches(self, *, rtol: float = RTOL, atol: float = ATOL) -> bool:
        return (self.submitted_status == self.reproduced_status
                and same_value(self.submitted, self.reproduced, rtol=rtol, atol=atol,
                               resolution=self.resolution))

    def identical(self) -> bool:
        """The same status and the same value to the last bit (NaN equals NaN)."""
        return (self.submitted_status == self.reproduced_status
                and same_value(self.submitted, self.reproduced, rtol=0.0, atol=0.0))


def same_value(a: float, b: float, *, rtol: float, atol: float, resolution: float = 0.0) -> bool:
    """|a − b| ≤ max(resolution, atol + rtol·|a|); NaN matches NaN and an infinity only the
    same infinity."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= max(resolution, atol + rtol * abs(a))


def machine_bound(runs: pd.DataFrame) -> pd.Series:
    """Rows of runs that ended because of the machine, not the entry: past `--time-limit`
    ("timeout"), or whose Dask worker died on every try (recorded as a KilledWorker error)."""
    killed = runs["error"].fillna("").astype(str).str.startswith(cluster.KILLED)
    return (runs["status"] == "timeout") | ((runs["status"] == "error") & killed)


def pick_runs(runs: pd.DataFrame, k: int, seed: int) -> pd.DataFrame:
    """`k` distinct runs drawn uniformly (one row per run), reproducibly from `seed`."""
    per_run = runs.drop_duplicates("run_id").sort_values("run_id").reset_index(drop=True)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(per_run), size=min(k, len(per_run)), replace=False)
    return per_run.iloc[np.sort(chosen)]


def recorded_execution(run, submitted: pd.DataFrame) -> tuple[list[int], bool]:
    """(the seeds run `run` was trained with, whether networks were batched), as recorded.

    Files written before the execution mode was recorded came from `--seed-batch auto`: all
    seeds of the task (with the same overrides) batched together when the task used the
    default procedure, else each seed by itself with its networks one after another.
    """
    execution = json.loads(run.execution) if isinstance(run.execution, str) else None
    if execution is None:
        if not batched.batchable(registry.task_class(run.task)):
            return [int(run.seed)], False
        same = submitted[(submitted["task"] == run.task) & (submitted["overrides"] == run.overrides)]
        return sorted(int(s) for s in same["seed"].unique()), True
    if execution.get("hparams"):  # a study's trials, batched with other hyperparameters
        raise results.ResultsError(
            f"run {run.run_id} ({run.task}, seed {run.seed}) was a tuning trial batched with other "
            "trials' hyperparameters; verify re-runs an entry's own results: rerun the study with "
            "`ldbench tune` instead")
    if execution.get("mode") in ("batched", "procedure"):
        return [int(s) for s in execution["seeds"]], execution.get("networks") != "one by one"
    return [int(run.seed)], True


def results_folder(folder: str | Path, *, tier: str, profile: str, given: str | Path | None = None) -> Path:
    """Where the runs to verify are: `given` (results written with `ldbench run --out`), else
    the entry's results/PROFILE/TIER; ResultsError, with the fix, where there are none."""
    where = Path(given) if given is not None else Path(folder) / "results" / profile / tier
    if not (where / results.RUNS_FILE).exists():
        raise results.ResultsError(
            f"{where}: holds no {results.RUNS_FILE}; run `ldbench run {folder} --tier {tier} --profile "
            f"{profile}` first, or name the folder that `ldbench run --out` wrote with --results")
    return where


def verify_submission(folder: str | Path, *, k: int = 2, tier: str = "standard",
                      profile: str = "cpu-2core", pick_seed: int = 0, workers: int = 0,
                      scheduler: str | None = None, results_dir: str | Path | None = None,
                      notes: Callable[[str], None] = lambda _: None) -> list[Check]:
    """Re-run `k` random runs of `folder`'s results for (profile, tier) (or of the runs in
    `results_dir`); one Check per metric.

    Each run is re-run the way it was executed (its seed batch, or by itself), so an honest
    result reproduces to the last bit on the same kind of machine. With `workers` (a local Dask
    cluster) or `scheduler` the re-runs go to Dask workers, each applying the profile itself.
    Runs that ended because of the machine are left out (`machine_bound`; `notes` says how
    many): they have no values, only a failed seed in the scores.
    """
    folder = Path(folder)
    entry = load_entry(folder)
    check_runnable(entry)  # before any re-run, and before a cluster starts
    prof = profiles.load(profile)
    where = results_folder(folder, tier=tier, profile=profile, given=results_dir)
    submitted = results.read_table(where / results.RUNS_FILE)
    if submitted.empty:
        raise results.ResultsError(f"{where / results.RUNS_FILE}: holds no runs; run `ldbench run` first")
    if not (submitted["tier"] == tier).any():  # re-run on another tier's config, honest
        held = sorted(set(submitted["tier"].astype(str)))  # results would not reproduce
        raise results.ResultsError(f"{where / results.RUNS_FILE}: holds {', '.join(held)}-tier runs, "
                                   f"none of the {tier} tier; pass --tier {held[0]}")
    submitted = submitted[submitted["tier"] == tier]
    hashes = set(submitted["entry_hash"]) - {entry.hash}
    if hashes:
        raise results.ResultsError(
            f"{where / results.RUNS_FILE}: results come from other entry files (hash "
            f"{sorted(hashes)[0][:12]}), not the submitted ones; run `ldbench validate {folder}`")
    reproducible = submitted[~machine_bound(submitted)]
    total = submitted["run_id"].nunique()
    left_out = total - reproducible["run_id"].nunique()
    if left_out:
        notes(f"{left_out} of the {total} runs timed out (`--time-limit`) or lost their worker "
              "process: verify leaves them out, since when a limit strikes or a worker dies depends "
              "on the machine (they count as failed seeds in the scores)")
    if left_out == total:
        raise results.ResultsError(f"{where / results.RUNS_FILE}: every {tier}-tier run timed out or lost "
                                   "its worker: nothing to re-run; run them again (without --time-limit)")
    # A run of a task the entry's model does not apply to has no value to reproduce: drawn, it
    # would spend one of the k re-runs on nothing (5 of 8 tasks for a sequence model). Each such
    # task's claim is checked instead, by building the model without training (`claims`).
    applicable = reproducible[reproducible["status"] != "not-applicable"]
    claimed = reproducible[reproducible["status"] == "not-applicable"].drop_duplicates("task")
    if len(applicable) and len(claimed):
        notes(f"{len(claimed)} tasks are recorded as not applicable to the entry's model "
              f"({', '.join(sorted(claimed['task']))}): verify checks that claim without training, "
              "and draws its re-runs from the other tasks' runs")
        reproducible = applicable
    picked = list(pick_runs(reproducible, k, pick_seed).itertuples(index=False))
    keys = {}
    for run in picked:  # one re-run per recorded batch, however many of its runs were picked
        keys.setdefault(batch_key(run, submitted), None)
    claims = [(run.task, run.overrides, int(run.seed)) for run in claimed.itertuples(index=False)]
    with cluster.session(workers, scheduler) as client:
        if client is None:
            prof.apply()
            outcomes = {key: rerun(folder, key, tier=tier, profile=profile) for key in keys}
            reasons = [not_applicable_reason(folder, claim, tier=tier, profile=profile) for claim in claims]
        else:
            futures = {key: client.submit(rerun, folder.resolve(), key, tier=tier, profile=profile,
                                          pure=False) for key in keys}
            outcomes = {key: future.result() for key, future in futures.items()}
            reasons = [client.submit(not_applicable_reason, folder.resolve(), claim, tier=tier,
                                     profile=profile, pure=False).result() for claim in claims]
    curves = results.read_table(where / results.CURVES_FILE) if (where / results.CURVES_FILE).exists() \
        else pd.DataFrame(columns=["run_id", "step", "metric", "value"])
    checks = []
    for run in picked:
        status, metrics, reproduced = outcomes[batch_key(run, submitted)][int(run.seed)]
        rows = submitted[submitted["run_id"] == run.run_id].set_index("metric")
        task = registry.make_task(run.task, tier, config_of(run.overrides))
        for name, spec in task.metrics().items():
            value = float(rows["value"].get(name, math.nan))
            given = str(run.status) if name in rows.index else "no row"  # not a NaN value: absent
            checks.append(Check(run.task, int(run.seed), name, value, float(metrics.get(name, math.nan)),
                                given, status, spec.resolution or 0.0))
        checks += curve_checks(run, curves[curves["run_id"] == run.run_id], reproduced, status)
    for (task_name, _, seed), reason in zip(claims, reasons, strict=True):
        checks.append(Check(task_name, seed, "(task not applicable)", math.nan, math.nan,
                            "not-applicable", "not-applicable" if reason is not None else "applies"))
    return checks


def not_applicable_reason(folder: Path, claim: tuple[str, str, int], *, tier: str,
                          profile: str) -> str | None:
    """Why the entry's model does not apply to a task (NotApplicable's message), or None when it
    does: a not-applicable run's claim, checked by building the model, without training.
    `claim`: (task, overrides, seed) of one such run."""
    task_name, overrides, seed = claim
    task, trainer = rerun_trainer(folder, task_name, overrides, tier=tier, profile=profile)
    try:
        with seeding.seeded_host_rngs(seed):
            trainer.make_model(seed, trainer.to_device(task.make_data(seed)))
    except NotApplicable as err:
        return str(err)
    return None


def curve_checks(run, submitted: pd.DataFrame, reproduced: dict[str, dict[int, float]],
                 status: str) -> list[Check]:
    """One Check per curve of the re-run (named `curve NAME @ step`), at its point furthest from
    the submitted curve: the site plots the curves, so forged points must not pass. A point one
    side lacks is NaN there."""
    checks = []
    given = {name: dict(zip(part["step"].tolist(), part["value"].tolist(), strict=True))
             for name, part in submitted.groupby("metric")}
    for name in sorted(set(reproduced) | set(given)):
        mine, theirs = reproduced.get(name, {}), given.get(name, {})
        points = [(theirs.get(step, math.nan), mine.get(step, math.nan), step)
                  for step in sorted(set(mine) | set(theirs))]
        worst = max(points, key=lambda p: (not same_value(p[0], p[1], rtol=RTOL, atol=ATOL),
                                           abs(p[0] - p[1]) if math.isfinite(p[0] - p[1]) else 0.0))
        checks.append(Check(run.task, int(run.seed), f"curve {name} @ {worst[2]}", float(worst[0]),
                            float(worst[1]), str(run.status), status))
    return checks


def batch_key(run, submitted: pd.DataFrame) -> tuple:
    """What one re-run reproduces: (task, overrides, seeds, networks batched, threads)."""
    seeds, batch_lanes = recorded_execution(run, submitted)
    return run.task, run.overrides, tuple(seeds), batch_lanes, recorded_threads(run.fingerprint)


def check_as_recorded(key: tuple, trajs: list, notes: list[str]) -> None:
    """Refuse a re-run of a recorded batch whose seeds ran one by one, or whose networks did
    not run side by side as recorded: its numbers differ from the batch's by float32 rounding,
    so comparing them would blame an honest submission (ResultsError naming why)."""
    task, _, seeds, batch_lanes, _ = key
    apart = len(seeds) > 1 and any(t.execution.get("mode") == "one-by-one" for t in trajs)
    if not apart and not (batch_lanes and any(t.execution.get("networks") == "one by one" for t in trajs)):
        return
    why = next((t.execution["note"] for t in trajs if "note" in t.execution), "; ".join(notes))
    raise results.ResultsError(
        f"{task}, seeds {', '.join(map(str, seeds))}: the runs were trained together, but here the "
        f"re-run could not be ({why}), so its numbers would differ by float32 rounding and prove "
        "nothing; verify on a machine where the batch runs, or ask the entry's authors why it "
        "was refused")


def recorded_profile(fingerprint: str) -> dict:
    """The profile fields a run's fingerprint records ({} if it records none)."""
    try:
        recorded = json.loads(json.loads(fingerprint)["profile"])
    except (ValueError, KeyError, TypeError):
        return {}
    return recorded if isinstance(recorded, dict) else {}


def recorded_threads(fingerprint: str) -> int | None:
    """The intra-op threads a run's fingerprint records (None if it records none).

    A run is re-run on them, as it was made: the thread count can change a reduction's order,
    and over thousands of steps a chaotic metric amplifies that last bit (cpu-2core's runs made
    with two threads before it pinned one moved by up to 9% on one seed's mode-connectivity
    barriers when re-made with one).
    """
    threads = recorded_profile(fingerprint).get("threads")
    return threads if isinstance(threads, int) and not isinstance(threads, bool) and threads > 0 else None


def profile_changes(folder: str | Path, *, tier: str, profile: str,
                    results_dir: str | Path | None = None) -> list[str]:
    """How the profile the submitted runs recorded (in their fingerprints) differs from the
    profile file now, one line per field (cpu-2core went from two threads to one: such runs
    are re-run on the threads they recorded)."""
    now = asdict(profiles.load(profile))
    try:
        where = results_folder(folder, tier=tier, profile=profile, given=results_dir)
        runs = results.read_table(where / results.RUNS_FILE)
    except results.ResultsError:
        return []  # verify_submission says what is wrong with the file
    changed: dict[str, set[str]] = {}
    for text in set(runs["fingerprint"].astype(str)):
        recorded = recorded_profile(text)
        for field in ("threads", "dtype", "deterministic", "tf32", "device"):
            if field in recorded and recorded[field] != now[field]:
                changed.setdefault(field, set()).add(json.dumps(recorded[field]))
    return [f"the submitted runs were made with {field} = {' or '.join(sorted(values))}; {profile} "
            f"now pins {json.dumps(now[field])}" + (": they are re-run on the threads they recorded"
                                                   if field == "threads" else "")
            for field, values in sorted(changed.items())]


def config_of(overrides: str | None) -> dict:
    """The tier-config overrides a run recorded (its hparams overrides left out)."""
    return {k: v for k, v in json.loads(overrides or "{}").items() if k != "hparams"}


def rerun_trainer(folder: Path, task_name: str, overrides: str, *, tier: str,
                  profile: str) -> tuple[Task, Trainer]:
    """The task and trainer of a recorded run, here or on a Dask worker (which applies the
    profile itself): the tier's config with the run's --set overrides, the entry with its
    --hparam ones."""
    prof = profiles.load(profile)
    prof.apply()
    entry = load_entry(folder)
    task = registry.make_task(task_name, tier, config_of(overrides))
    tuned = entry.with_hparams({task_name: json.loads(overrides or "{}").get("hparams", {})})
    return task, Trainer(task, tuned, prof)


def rerun(folder: Path, key: tuple, *, tier: str, profile: str) -> dict[int, tuple[str, dict]]:
    """Re-run one recorded batch (task, overrides, seeds, networks batched, threads): per
    seed, the status and metrics. Runs here or on a Dask worker (which applies the profile
    itself), on the threads the runs recorded (recorded_threads)."""
    task_name, overrides, seeds, batch_lanes, threads = key
    task, trainer = rerun_trainer(folder, task_name, overrides, tier=tier, profile=profile)
    prof = trainer.profile
    plans = [runner.Plan(task, seed, json.loads(overrides or "{}")) for seed in seeds]
    trainer.batch_lanes = batch_lanes
    notes: list[str] = []
    # On a Dask worker, the worker's own threads draw from Python's and numpy's global RNGs;
    # without this block a batch's check sees their draws and runs the seeds one by one.
    with torch_threads(threads if threads is not None and prof.device == "cpu" else prof.threads), \
            seeding.own_host_rngs():
        outcomes = runner.execute_batch(plans, trainer, notes=notes.append)
    check_as_recorded(key, [traj for traj, _, _ in outcomes], notes)
    return {seed: (traj.status, metrics, {name: dict(zip(traj.steps, values, strict=True))
                                          for name, values in traj.curves.items()})
            for seed, (traj, metrics, _) in zip(seeds, outcomes, strict=True)}
