"""Helpers shared by the asv benchmarks and `speed.py`: task lists, shortened configs, baselines.

asv imports these benchmarks from this checkout but runs them against the suite installed at
each benchmarked commit, so nothing here may assume that commit's task list: the benchmarked
tasks are read from this checkout's source files, a task the installed suite lacks is skipped,
and baseline entries are copied with only the hyperparameter tables that suite knows.
"""

from __future__ import annotations

import ast
import atexit
import shutil
import tempfile
import tomllib
from functools import cache
from pathlib import Path

from suite import profiles, registry
from suite.entry import Entry, load_entry
from suite.loop import Trainer
from suite.task import Task

REPO = Path(__file__).resolve().parents[1]
BASELINES = REPO / "baselines"


def checkout_tasks() -> dict[str, str]:
    """name -> target metric of every task class in this checkout's `suite/tasks/` (sorted).

    Read from the source, not the registry: asv needs the same parameter list at every commit.
    """
    found = {}
    for path in sorted((REPO / "suite" / "tasks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                attrs = {t.id: s.value.value for s in node.body if isinstance(s, ast.Assign)
                         for t in s.targets if isinstance(t, ast.Name)
                         and isinstance(s.value, ast.Constant) and isinstance(s.value.value, str)}
                if "name" in attrs and "target" in attrs:
                    found[attrs["name"]] = attrs["target"]
    return dict(sorted(found.items()))


def require_task(name: str) -> None:
    """Skip (asv: NotImplementedError) a benchmark of a task the installed suite lacks."""
    if name not in registry.all_tasks():
        raise NotImplementedError(f"task {name} is not in the suite at this commit")


def configured(name: str, tier: str, steps: int | None = None, evals: int | None = None) -> Task:
    """Task `name` on `tier`, its run cut to `steps` optimizer steps and `evals` evaluations.

    Model and data sizes stay those of the tier; spawn steps past the end are moved to it.
    """
    require_task(name)
    cfg = registry.task_class(name).tiers[tier]
    overrides = {}
    if steps is not None:
        overrides["steps"] = steps
        if "spawn_steps" in cfg:  # mode-connectivity spawns children at fixed steps
            overrides["spawn_steps"] = sorted({min(int(k), steps) for k in cfg["spawn_steps"]})
    if evals is not None:
        overrides["evals"] = evals
    return registry.make_task(name, tier, overrides)


@cache
def baseline(name: str) -> Path:
    """A copy of `baselines/NAME` whose [hparams.TASK] tables name only installed tasks.

    (An older suite rejects an entry that configures a task it does not have.)
    """
    folder = Path(tempfile.mkdtemp(prefix=f"ldbench-{name}-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    source = BASELINES / name
    shutil.copy(source / "entry.py", folder / "entry.py")
    manifest = tomllib.loads((source / "entry.toml").read_text(encoding="utf-8"))
    manifest.pop("search", None)  # tune's search space: not needed here, and older suites reject it
    tables = {t: v for t, v in manifest.pop("hparams", {}).items()
              if t == "default" or t in registry.all_tasks()}
    lines = [f"{key} = {toml_value(value)}" for key, value in manifest.items()]
    for table, values in tables.items():
        lines += [f"[hparams.{table}]"] + [f"{k} = {toml_value(v)}" for k, v in values.items()]
    (folder / "entry.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def toml_value(value) -> str:
    """TOML for the values a manifest holds: strings, numbers, booleans and lists of them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def baseline_entry(name: str) -> Entry:
    return load_entry(baseline(name))


def baseline_trainer(task: Task, name: str = "adam", profile: str = "cpu-2core") -> Trainer:
    """A Trainer for `task` with a baseline entry on a profile (applied: threads, determinism)."""
    prof = profiles.load(profile)
    prof.apply()
    return Trainer(task, baseline_entry(name), prof)
