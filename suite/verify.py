"""Re-runs a random sample of a submission's runs on this machine and compares the metrics.

This imports and executes the submission's `entry.py` (as `ldbench run` does): run it only in a
sandbox without secrets, such as the pull-request CI job.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from suite import profiles, registry, results, runner
from suite.entry import load_entry
from suite.loop import Trainer

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


def same_value(a: float, b: float, *, rtol: float, atol: float, resolution: float = 0.0) -> bool:
    """|a − b| ≤ max(resolution, atol + rtol·|a|); NaN matches NaN and an infinity only the
    same infinity."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= max(resolution, atol + rtol * abs(a))


def pick_runs(runs: pd.DataFrame, k: int, seed: int) -> pd.DataFrame:
    """`k` distinct runs drawn uniformly (one row per run), reproducibly from `seed`."""
    per_run = runs.drop_duplicates("run_id").sort_values("run_id").reset_index(drop=True)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(per_run), size=min(k, len(per_run)), replace=False)
    return per_run.iloc[np.sort(chosen)]


def verify_submission(folder: str | Path, *, k: int = 2, tier: str = "standard",
                      profile: str = "cpu-2core", pick_seed: int = 0) -> list[Check]:
    """Re-run `k` random runs of `folder`'s results for (profile, tier); one Check per metric."""
    folder = Path(folder)
    entry = load_entry(folder)
    prof = profiles.load(profile)
    where = folder / "results" / profile / tier
    submitted = results.read_table(where / results.RUNS_FILE)
    if submitted.empty:
        raise results.ResultsError(f"{where / results.RUNS_FILE}: holds no runs; run `ldbench run` first")
    hashes = set(submitted["entry_hash"]) - {entry.hash}
    if hashes:
        raise results.ResultsError(
            f"{where / results.RUNS_FILE}: results come from other entry files (hash "
            f"{sorted(hashes)[0][:12]}), not the submitted ones; run `ldbench validate {folder}`")
    prof.apply()
    checks = []
    for run in pick_runs(submitted, k, pick_seed).itertuples(index=False):
        overrides = json.loads(run.overrides or "{}")
        config = {k: v for k, v in overrides.items() if k != "hparams"}
        task = registry.make_task(run.task, tier, config)
        plan = runner.Plan(task, int(run.seed), overrides)
        tuned = entry.with_hparams({run.task: overrides.get("hparams", {})})
        traj, metrics, _ = runner.execute(plan, Trainer(task, tuned, prof))
        rows = submitted[submitted["run_id"] == run.run_id].set_index("metric")
        for name, spec in task.metrics().items():
            value = float(rows["value"].get(name, math.nan))
            checks.append(Check(run.task, int(run.seed), name, value, float(metrics.get(name, math.nan)),
                                str(run.status), traj.status, spec.resolution or 0.0))
    return checks
