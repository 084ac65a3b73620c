"""Helpers shared by the asv benchmarks and `speed.py`: shortened task configs, baseline trainers."""

from __future__ import annotations

from pathlib import Path

from suite import profiles, registry
from suite.entry import load_entry
from suite.loop import Trainer
from suite.task import Task

REPO = Path(__file__).resolve().parents[1]
BASELINES = REPO / "baselines"


def configured(name: str, tier: str, steps: int | None = None, evals: int | None = None) -> Task:
    """Task `name` on `tier`, its run cut to `steps` optimizer steps and `evals` evaluations.

    Model and data sizes stay those of the tier; spawn steps past the end are moved to it.
    """
    cfg = registry.task_class(name).tiers[tier]
    overrides = {}
    if steps is not None:
        overrides["steps"] = steps
        if "spawn_steps" in cfg:  # mode-connectivity spawns children at fixed steps
            overrides["spawn_steps"] = sorted({min(int(k), steps) for k in cfg["spawn_steps"]})
    if evals is not None:
        overrides["evals"] = evals
    return registry.make_task(name, tier, overrides)


def baseline_trainer(task: Task, baseline: str = "adam", profile: str = "cpu-2core") -> Trainer:
    """A Trainer for `task` with a baseline entry on a profile (applied: threads, determinism)."""
    prof = profiles.load(profile)
    prof.apply()
    return Trainer(task, load_entry(BASELINES / baseline), prof)
