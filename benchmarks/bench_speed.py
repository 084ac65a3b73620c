"""asv tracks of `speed.py`'s ratios: seed batching per task and the largest task's share of the matmul rate.

asv counts a larger value as a regression for every benchmark, so each ratio is tracked the way
round where lower is better: the batched wall time over the one-by-one wall time (1 / speed-up)
and the dense-matmul FLOP rate over the achieved one (1 / fraction of the matmul rate). A slower
batched path raises both, and `asv continuous` reports it. Everything is measured once per
commit (`setup_cache`), with speed.py's own functions, on shortened configurations: the smoke
tier's model sizes with SPEEDUP_STEPS steps for the speed-ups, the standard tier's sizes with
FLOP_STEPS steps for the FLOP rate (the quantity the README's target is about), Adam baseline,
8 seeds, median of REPEATS interleaved repeats. A task the commit lacks, or cannot batch, is NaN.
"""

from __future__ import annotations

import math

from .common import baseline_trainer, checkout_tasks, configured

TASKS = list(checkout_tasks())
SEEDS = list(range(8))
SPEEDUP_STEPS = 30  # a few seconds per task; per-run setup is part of both times alike
FLOP_STEPS = 30
REPEATS = 3


def speed_helpers():
    """benchmarks/speed.py and suite.batched, or NotImplementedError (asv: skipped) at a commit
    whose suite predates them."""
    try:
        from suite import batched

        from . import speed
    except ImportError as err:
        raise NotImplementedError(f"no seed batching at this commit ({err})") from None
    return speed, batched


def batching_ratio(name: str) -> float:
    """Batched over one-by-one wall time of 8 seeds on `name` (NaN: not batchable here)."""
    speed, batched = speed_helpers()
    task = configured(name, "smoke", SPEEDUP_STEPS, 2)
    if not batched.seed_batchable(task):
        return math.nan
    trainer = baseline_trainer(task)
    warm = configured(name, "smoke", 5, 2)
    speed.medians(warm, baseline_trainer(warm), SEEDS[:2], 1)  # load kernels once
    single, batch = speed.medians(task, trainer, SEEDS, REPEATS)
    return batch / single


def matmul_shortfall(names: list[str]) -> float:
    """Dense-matmul FLOP/s over the FLOP/s of the largest batchable task trained batched."""
    speed, batched = speed_helpers()
    tasks = {n: configured(n, "standard", FLOP_STEPS, 2) for n in names}
    tasks = {n: t for n, t in tasks.items() if batched.batchable(t)}
    if not tasks:
        return math.nan
    flops = {n: speed.step_flops(t, baseline_trainer(t)) for n, t in tasks.items()}
    largest = max(flops, key=flops.get)
    task, trainer = tasks[largest], baseline_trainer(tasks[largest])
    speed.batched_seconds(task, trainer, SEEDS[:2])  # warm-up
    seconds = min(speed.batched_seconds(task, trainer, SEEDS) for _ in range(REPEATS))
    achieved = flops[largest] * FLOP_STEPS * len(SEEDS) / seconds
    return speed.matmul_flop_rate() / achieved


class SpeedRatios:
    """speed.py's ratios at this commit (see the module docstring); lower is better."""

    timeout = 1200

    def setup_cache(self):
        from suite import registry

        present = [t for t in TASKS if t in registry.all_tasks()]
        values = {name: batching_ratio(name) for name in present}
        values["matmul"] = matmul_shortfall(present)
        return values

    def track_matmul_rate_over_largest_task_rate(self, values):
        return finite(values.get("matmul", math.nan))

    track_matmul_rate_over_largest_task_rate.unit = "dense matmul FLOP/s / achieved (1 / fraction)"


def finite(number: float) -> float:
    """NaN (asv: n/a) for a value that is not finite."""
    return number if math.isfinite(number) else math.nan


def seed_batching(task: str):
    """A track_ method: `task`'s batched / one-by-one wall time at 8 seeds."""

    def track(self, values):
        return finite(values.get(task, math.nan))

    track.unit = "batched / one-by-one time (1 / speed-up)"
    track.__doc__ = f"{task}: 8 seeds batched over one by one (n/a: not batchable at this commit)."
    return track


for _task in TASKS:
    setattr(SpeedRatios, f"track_seed_batching_{_task.replace('-', '_')}", seed_batching(_task))


TRIAL_TASKS = ("deep-linear-modes", "teacher-student", "mode-connectivity")
TRIALS = 8


def trial_batching_ratio(name: str) -> float:
    """A study's TRIALS trials of `name` batched over one at a time (speed.trial_medians, the
    Adam baseline, smoke sizes, SPEEDUP_STEPS steps); NaN where the commit cannot batch trials."""
    speed, _ = speed_helpers()
    if not hasattr(speed, "trial_medians"):
        return math.nan
    trainer = baseline_trainer(configured(name, "smoke", SPEEDUP_STEPS, 2))
    task, entry, prof = trainer.task, trainer.entry, trainer.profile
    speed.trial_medians(configured(name, "smoke", 5, 2), entry, prof,
                        speed.trial_plans(task, entry, 2), 1)  # load kernels once
    single, batch, _ = speed.trial_medians(task, entry, prof, speed.trial_plans(task, entry, TRIALS),
                                           REPEATS)
    return batch / single


class TrialRatios:
    """`ldbench tune`'s trial batching at this commit: batched / one-at-a-time wall time of a
    study's trials per task (lower is better)."""

    timeout = 1200

    def setup_cache(self):
        from suite import registry

        return {name: trial_batching_ratio(name) for name in TRIAL_TASKS if name in registry.all_tasks()}


def trial_batching(task: str):
    def track(self, values):
        return finite(values.get(task, math.nan))

    track.unit = "batched / one-at-a-time time (1 / speed-up)"
    track.__doc__ = f"{task}: {TRIALS} trials of a study batched over one at a time."
    return track


for _task in TRIAL_TASKS:
    setattr(TrialRatios, f"track_trial_batching_{_task.replace('-', '_')}", trial_batching(_task))
