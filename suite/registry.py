"""Finds tasks by scanning `suite/tasks/` and builds them for a tier, failing loudly on typos."""

from __future__ import annotations

import difflib
import importlib
import json
import pkgutil
import re
from collections.abc import Callable, Iterable
from functools import cache
from typing import Any

import suite.tasks
from suite.task import Task

TIERS = ("smoke", "standard")


class RegistryError(ValueError):
    """An unknown task, tier or config key, with a 'did you mean' hint."""


def did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; choose from {sorted(choices)}"


@cache
def all_tasks() -> dict[str, type[Task]]:
    """name -> Task subclass, one per module of `suite/tasks/` (benchopt-style scan)."""
    found: dict[str, type[Task]] = {}
    for info in pkgutil.iter_modules(suite.tasks.__path__):
        module = importlib.import_module(f"suite.tasks.{info.name}")
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, Task) and obj.__module__ == module.__name__:
                check_task_class(obj)
                if obj.name in found:
                    raise RegistryError(f"two tasks are named {obj.name!r}: {module.__name__}")
                found[obj.name] = obj
    return dict(sorted(found.items()))


def check_task_class(cls: type[Task]) -> None:
    """Catch a malformed task at import time rather than in the middle of a suite."""
    where = f"task class {cls.__name__} in {cls.__module__}"
    for attr in ("name", "version", "family", "description", "tiers", "target"):
        if not hasattr(cls, attr):
            raise RegistryError(f"{where} lacks the class attribute {attr!r}")
    # A family is any word the task declares: adding a task never means editing a closed list.
    if not isinstance(cls.family, str) or not re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", cls.family):
        raise RegistryError(f"{where}: family {cls.family!r} must be a lowercase-dashed word "
                            "such as 'stage-timing'")
    if set(cls.tiers) != set(TIERS):
        raise RegistryError(f"{where}: tiers must be exactly {TIERS}, got {sorted(cls.tiers)}")
    keys = [set(cfg) for cfg in cls.tiers.values()]
    if keys[0] != keys[1] or not {"steps", "evals"} <= keys[0]:
        raise RegistryError(f"{where}: both tiers need the same keys, including steps and evals")


def task_class(name: str) -> type[Task]:
    tasks = all_tasks()
    if name not in tasks:
        raise RegistryError(f"unknown task {name!r}{did_you_mean(name, tasks)}")
    return tasks[name]


def parse_value(raw: str, default: Any, key: str, option: str = "--set") -> Any:
    """Parse an `option key=value` string to the type of the current (tier or entry) value."""
    try:
        if isinstance(default, bool):
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError("expected true or false")
            return raw.lower() in ("true", "1")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, (list, tuple)):
            value = json.loads(raw)
            if not isinstance(value, list):
                raise ValueError("expected a JSON list such as [3, 2, 1]")
            return value
        return raw
    except ValueError as err:
        raise RegistryError(
            f"{option} {key}={raw}: cannot read {raw!r} as {type(default).__name__} ({err})"
        ) from None


def make_task(name: str, tier: str, overrides: dict[str, Any] | None = None) -> Task:
    """The task `name` configured for `tier`, with `overrides` (key -> value or raw string).

    Raises ConfigError (one line naming the key and its allowed range) for a nonsense value,
    so that `ldbench run --set steps=0` fails before any run.
    """
    cls = task_class(name)
    if tier not in TIERS:
        raise RegistryError(f"unknown tier {tier!r}{did_you_mean(tier, TIERS)}")
    config = dict(cls.tiers[tier])
    for key, value in (overrides or {}).items():
        if key not in config:
            raise RegistryError(f"task {name!r} has no config key {key!r}{did_you_mean(key, config)}")
        config[key] = parse_value(value, config[key], key) if isinstance(value, str) else value
    task = cls(config)
    task.check_config()
    return task


@cache
def tier_steps(task: str, tier: str) -> int | None:
    """The steps a task's runs take on a tier, the range its curves' steps lie in (None for a
    task or tier this suite lacks): what validate and the site check curves files against."""
    cls = all_tasks().get(task)
    return cls.tiers[tier]["steps"] if cls and tier in cls.tiers else None


def split_overrides(pairs: list[str], task_names: list[str]) -> dict[str, dict[str, str]]:
    """Turn CLI `--set key=value` / `task.key=value` pairs into per-task config overrides."""
    return split_pairs(pairs, task_names, option="--set",
                       keys_of=lambda task: task_class(task).tiers["standard"])


def split_pairs(pairs: list[str], task_names: list[str], *, option: str,
                keys_of: Callable[[str], Iterable[str]], hint: str = "") -> dict[str, dict[str, str]]:
    """Per selected task, the raw values of CLI `key=value` / `task.key=value` pairs.

    A bare key applies to every selected task that has it (`keys_of(task)`; at least one must);
    `task.key` targets one task, which must have it. `hint` says where a missing key would go.
    """
    per_task: dict[str, dict[str, str]] = {name: {} for name in task_names}
    for pair in pairs:
        if "=" not in pair:
            raise RegistryError(f"{option} {pair!r}: expected key=value or task.key=value")
        key, raw = pair.split("=", 1)
        targets = task_names
        prefix = key.split(".", 1)[0] if "." in key else ""
        if prefix and prefix not in all_tasks() and prefix.replace("_", "-") in all_tasks():
            raise RegistryError(f"{option} {pair!r}: no task {prefix!r}; task names use hyphens: "
                                f"{prefix.replace('_', '-')}.{key.split('.', 1)[1]}={raw}")
        if prefix in all_tasks():
            task, key = key.split(".", 1)
            if task not in per_task:
                raise RegistryError(f"{option} {pair!r}: task {task!r} is not among the selected tasks")
            targets = [task]
        owners = [t for t in targets if key in keys_of(t)]
        if not owners:
            known = {k for t in targets for k in keys_of(t)}
            which = f"task {targets[0]!r}" if len(targets) == 1 else "no selected task"
            verb = "has no" if len(targets) == 1 else "has"
            raise RegistryError(f"{option} {pair!r}: {which} {verb} {key!r}{hint}"
                                f"{did_you_mean(key, known)}")
        for task in owners:
            per_task[task][key] = raw
    return per_task
