"""Synthetic entries with valid results (no training): for the site's tests and the build benchmark."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from suite import registry, results, runner
from suite.entry import entry_hash, load_entry
from suite.task import Task

CODE = '''"""A synthetic entry: its results were generated, not trained."""

import torch


def make_optimizer(params, hparams, task):
    return torch.optim.SGD(params, lr=hparams["lr"])
'''
PAIRS = ("spawn_0", "independent", "matched")


def write_manifest(folder: Path, name: str, *, description: str = "synthetic entry",
                   authors: tuple[str, ...] = ("Synthetic",)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "entry.toml").write_text(
        f"name = {json.dumps(name)}\nversion = 1\nauthors = {json.dumps(list(authors))}\n"
        f"description = {json.dumps(description)}\n\n[hparams.default]\nlr = 0.01\n", encoding="utf-8")
    (folder / "entry.py").write_text(CODE)
    return folder


def sigmoid_curve(steps: np.ndarray, *, start: float, end: float, half: float) -> np.ndarray:
    """A learning curve from `start` to `end` that is halfway at step `half` (in log steps)."""
    x = np.log1p(steps) - math.log1p(half)
    return start + (end - start) / (1.0 + np.exp(-3.0 * x))


def curves_for(task: Task, steps: np.ndarray, speed: float, rng: np.random.Generator) -> dict:
    """Curves with the names the site plots, by the task's family; {name: (steps, values)}."""
    half = task.config["steps"] * 0.1 * speed
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if task.family == "stage-timing":
        modes = [m for m in task.metrics() if re.fullmatch(r"stage_time/mode_\d+", m)] or ["0", "1"]
        for i in range(len(modes)):
            s = float(len(modes) - i)
            out[f"mode/{i}"] = steps, sigmoid_curve(steps, start=1e-3, end=s, half=half * (i + 1))
        out["loss"] = steps, sigmoid_curve(steps, start=10.0, end=1e-4, half=half)
    elif task.family == "representation-recovery":
        out["subspace_distance"] = steps, sigmoid_curve(steps, start=1.0, end=0.02, half=half)
        out["effective_rank"] = steps, sigmoid_curve(steps, start=6.0, end=3.0, half=half)
    elif task.family == "generalization-gap":
        out["train_acc"] = steps, sigmoid_curve(steps, start=0.01, end=1.0, half=half / 4)
        out["test_acc"] = steps, sigmoid_curve(steps, start=0.01, end=0.995, half=half)
        out["train_error"] = steps, sigmoid_curve(steps, start=1.0, end=0.01, half=half / 4)
        out["test_error"] = steps, sigmoid_curve(steps, start=1.0, end=0.2, half=half)
    elif task.family == "linear-connectivity":
        alphas = np.linspace(0.0, 1.0, 11)
        final = np.full(len(alphas), int(steps[-1]))
        for k, pair in enumerate(PAIRS):
            bump = (0.3 / (k + 1)) * speed * np.sin(np.pi * alphas) + 0.02 * rng.random()
            for kind, scale in (("error", 1.0), ("loss", 2.0)):
                out.update({f"path/{pair}/{kind}@{a:.4f}": (final[:1], scale * (0.1 + bump[j:j + 1]))
                            for j, a in enumerate(alphas)})
    return out


def metric_value(name: str, spec, task: Task, speed: float, rng: np.random.Generator) -> float:
    if spec.steps_to_target:
        if rng.random() < 0.05 * speed:  # slow entries miss targets more often
            return math.inf
        return float(task.config["steps"] * 0.2 * speed * rng.lognormal(0.0, 0.1))
    value = float(rng.lognormal(math.log(0.1 * speed), 0.2))
    return min(value, 1.0) if spec.direction == "max" else value


def synthetic_results(folder: Path, *, tier: str = "standard", profile: str = "cpu-2core",
                      seeds: int = 5, tasks: dict[str, type[Task]] | None = None,
                      rng: np.random.Generator, speed: float = 1.0,
                      evals: int = 30) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write valid results tables for the entry in `folder` as `ldbench run` would, untrained.

    `speed` scales every time to target (lower is faster); run ids, entry hash and versions
    are the real ones, so `ldbench validate` accepts the folder.
    """
    entry = load_entry(folder)
    digest = entry_hash(folder)
    tasks = tasks if tasks is not None else registry.all_tasks()
    run_rows, curve_rows = [], []
    fingerprint = json.dumps({"cpu_model": "synthetic", "torch_version": "n/a", "suite_version": "0"})
    for name, cls in tasks.items():
        task = cls(cls.tiers[tier])
        steps = np.unique(np.round(np.geomspace(1, task.config["steps"], evals)).astype(int))
        steps = np.concatenate([[0], steps])
        for seed in range(seeds):
            rid = runner.run_id(entry=entry, entry_hash=digest, task=task, seed=seed, tier=tier,
                                profile=profile, overrides={})
            base = dict(run_id=rid, task=name, task_version=cls.version, family=cls.family,
                        entry=entry.name, entry_version=entry.version, entry_hash=digest, seed=seed,
                        tier=tier, profile=profile, overrides="{}", config=json.dumps(task.config),
                        hparams=json.dumps(entry.hparams_for(name)), status="ok", diverged_step=None,
                        error=None, wall_time_s=1.0, steps=task.config["steps"], suite_version="0",
                        git_commit="", fingerprint=fingerprint,
                        created_at=pd.Timestamp("2025-01-01", tz="UTC"))
            run_rows += [{**base, "metric": m, "value": metric_value(m, spec, task, speed, rng),
                          "direction": spec.direction} for m, spec in task.metrics().items()]
            for curve, (at, values) in curves_for(task, steps, speed, rng).items():
                noisy = values * rng.lognormal(0.0, 0.02, size=len(values))
                curve_rows += [(rid, name, entry.name, seed, int(s), curve, float(v))
                               for s, v in zip(at, noisy, strict=True)]
    runs = pd.DataFrame(run_rows)
    runs["diverged_step"] = runs["diverged_step"].astype("Int64")
    curves = pd.DataFrame(curve_rows, columns=results.CURVE_SCHEMA.names)
    out = folder / "results" / profile / tier
    results.write_atomic(results.to_table(curves, results.CURVE_SCHEMA, results.CURVES_FILE),
                         out / results.CURVES_FILE)
    results.write_atomic(results.to_table(runs, results.RUN_SCHEMA, results.RUNS_FILE),
                         out / results.RUNS_FILE)
    return runs, curves


def synthetic_entry(root: Path, name: str, *, rng: np.random.Generator, speed: float = 1.0,
                    **kwargs) -> Path:
    """A complete synthetic entry folder `root/name` with results."""
    folder = write_manifest(root / name, name, description=kwargs.pop("description", "synthetic entry"),
                            authors=kwargs.pop("authors", ("Synthetic",)))
    synthetic_results(folder, rng=rng, speed=speed, **kwargs)
    return folder
