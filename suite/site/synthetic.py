"""Synthetic entries with valid results (no training): for the site's tests and the build benchmark."""

from __future__ import annotations

import fnmatch
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from suite import registry, results, runner
from suite.entry import entry_hash, load_entry
from suite.task import Task

HEAD = '''"""A synthetic entry: its results were generated, not trained."""

import torch
'''
OPTIMIZER = '''

def make_optimizer(params, hparams, task):
    return torch.optim.SGD(params, lr=hparams["lr"])
'''
MODEL = '''

def make_model(task, hparams, generator):
    return task.reference_model(generator)
'''
CODE = {"optimizer": HEAD + OPTIMIZER, "architecture": HEAD + MODEL, "recipe": HEAD + MODEL + OPTIMIZER}


def write_manifest(folder: Path, name: str, *, description: str = "synthetic entry",
                   authors: tuple[str, ...] = ("Synthetic",), track: str = "optimizer") -> Path:
    """entry.toml (a default table and one task's, which sorts before it) and entry.py of `track`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "entry.toml").write_text(
        f"name = {json.dumps(name)}\nversion = 1\nauthors = {json.dumps(list(authors))}\n"
        f"description = {json.dumps(description)}\n\n[hparams.default]\nlr = 0.01\n\n"
        "[hparams.deep-linear-modes]\nlr = 0.02\n", encoding="utf-8")
    (folder / "entry.py").write_text(CODE[track])
    return folder


def not_applicable(task: Task, track: str, lacks: tuple[str, ...]) -> tuple[str | None, set[str]]:
    """Why `task` cannot run a model that lacks the methods `lacks` (None: it can), and which of
    its metrics do not apply; from the task's declared model interface, as `ldbench run` does."""
    interface = task.interface
    if track == "optimizer":
        return None, set()
    if interface is None:
        return f"{task.name} is optimizer-only: its metrics are defined for its reference model alone", set()
    missing = [m for m in interface.requires if m in lacks]
    if missing:
        return (f"the model has no {', '.join(m + '()' for m in missing)}, which {task.name} reads "
                "(its model interface)"), set()
    patterns = [p for method, names in interface.optional if method in lacks for p in names]
    return None, {m for m in task.metrics() if any(fnmatch.fnmatchcase(m, p) for p in patterns)}


def sigmoid_curve(steps: np.ndarray, *, start: float, end: float, half: float) -> np.ndarray:
    """A learning curve from `start` to `end` that is halfway at step `half` (in log steps)."""
    x = np.log1p(steps) - math.log1p(half)
    return start + (end - start) / (1.0 + np.exp(-3.0 * x))


def curves_for(task: Task, steps: np.ndarray, speed: float, rng: np.random.Generator) -> dict:
    """A plausible value for every curve the task declares; {name: (steps, values)}.

    Read from the task's declarations only: each curve falls along a learning curve (curve i of
    a plot later than curve i − 1, as modes are learned one after another); curves recorded at
    the end get one final value, with a bump in the middle of a plot's path.
    """
    half = task.config["steps"] * 0.1 * speed
    final = steps[-1:]
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, curve in task.curves().items():
        if curve.at_end:
            out[name] = final, np.array([0.1 + 0.02 * rng.random()])
        else:
            out[name] = steps, sigmoid_curve(steps, start=1.0, end=0.05, half=half)
    for plot in task.plots():
        for i, name in enumerate(plot.curves):
            out[name] = steps, sigmoid_curve(steps, start=1e-3, end=float(len(plot.curves) - i),
                                             half=half * (i + 1))
        for k, (_, names) in enumerate(plot.paths):
            x = np.asarray(plot.x) if plot.x else np.linspace(0.0, 1.0, len(names))
            bump = 0.1 + (0.3 / (k + 1)) * speed * np.sin(np.pi * x) + 0.02 * rng.random()
            out.update({n: (final, bump[j:j + 1]) for j, n in enumerate(names)})
    return out


def metric_value(name: str, spec, task: Task, speed: float, rng: np.random.Generator) -> float:
    if spec.steps_to_target:
        if rng.random() < 0.05 * speed:  # slow entries miss targets more often
            return math.inf
        return float(task.config["steps"] * 0.2 * speed * rng.lognormal(0.0, 0.1))
    value = float(rng.lognormal(math.log(0.1 * speed), 0.2))
    value = min(value, 1.0) if spec.direction == "max" else value
    low, high = spec.bounds  # e.g. an effective rank >= 1, a ratio to an optimum >= 1
    return float(np.clip(value, low, high))


def synthetic_results(folder: Path, *, tier: str = "standard", profile: str = "cpu-2core",
                      seeds: int = 5, tasks: dict[str, type[Task]] | None = None,
                      rng: np.random.Generator, speed: float = 1.0, evals: int = 30,
                      track: str = "optimizer", lacks: tuple[str, ...] = (), skip: tuple[str, ...] = (),
                      failed: dict[str, int] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write valid results tables for the entry in `folder` as `ldbench run` would, untrained.

    `speed` scales every time to target (lower is faster); run ids, entry hash and versions
    are the real ones, so `ldbench validate` accepts the folder (unless it is incomplete).
    track: the entry's (Entry.track); on the architecture track its model lacks the methods
    `lacks`, so some tasks or metrics are not applicable, as their interfaces declare.
    skip: tasks without runs (an incomplete entry); failed: task -> how many seeds end in error.
    """
    entry = load_entry(folder)
    digest = entry_hash(folder)
    tasks = tasks if tasks is not None else registry.all_tasks()
    run_rows, curve_rows = [], []
    fingerprint = json.dumps({"cpu_model": "synthetic", "torch_version": "n/a", "suite_version": "0"})
    for name, cls in tasks.items():
        if name in skip:
            continue
        task = cls(cls.tiers[tier])
        steps = np.unique(np.round(np.geomspace(1, task.config["steps"], evals)).astype(int))
        steps = np.concatenate([[0], steps])
        reason, off = not_applicable(task, track, lacks)
        for seed in range(seeds):
            rid = runner.run_id(entry=entry, entry_hash=digest, task=task, seed=seed, tier=tier,
                                profile=profile, overrides={})
            base = dict(run_id=rid, task=name, task_version=cls.version, family=cls.family,
                        entry=entry.name, entry_version=entry.version, entry_hash=digest, seed=seed,
                        tier=tier, profile=profile, overrides="{}", config=json.dumps(task.config),
                        hparams=json.dumps(entry.hparams_for(name)), status="ok", diverged_step=None,
                        error=None, wall_time_s=1.0, steps=task.config["steps"], suite_version="0",
                        git_commit="", fingerprint=fingerprint, track=track,
                        created_at=pd.Timestamp("2025-01-01", tz="UTC"))
            if reason is not None or seed < (failed or {}).get(name, 0):
                base.update(status="not-applicable" if reason else "error", steps=0,
                            error=reason or "RuntimeError: a synthetic failure")
                run_rows += [{**base, "metric": m, "value": math.nan, "direction": spec.direction,
                              "applicable": reason is None} for m, spec in task.metrics().items()]
                continue
            run_rows += [{**base, "metric": m, "direction": spec.direction, "applicable": m not in off,
                          "value": math.nan if m in off else metric_value(m, spec, task, speed, rng)}
                         for m, spec in task.metrics().items()]
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
                    track: str = "optimizer", **kwargs) -> Path:
    """A synthetic entry folder `root/name` of `track` with results (see synthetic_results)."""
    folder = write_manifest(root / name, name, description=kwargs.pop("description", "synthetic entry"),
                            authors=kwargs.pop("authors", ("Synthetic",)), track=track)
    synthetic_results(folder, rng=rng, speed=speed, track=track, **kwargs)
    return folder
