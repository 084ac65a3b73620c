"""Entries: a folder with `entry.toml` and `entry.py` (make_optimizer and/or make_model), loaded by path."""

from __future__ import annotations

import difflib
import hashlib
import importlib.metadata
import importlib.util
import inspect
import math
import os
import re
import sys
import tomllib
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from packaging.requirements import InvalidRequirement, Requirement
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

import suite
from suite.registry import all_tasks, did_you_mean, parse_value, split_pairs
from suite.task import TaskView

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
REQUIRED = {"name": str, "version": (int, str), "authors": list, "description": str}
OPTIONAL = {"requirements": list, "hparams": dict, "homepage": str, "paper": str, "search": dict,
            "closure": bool, "create_graph": bool}
# Files that are outputs or caches, not the entry's code: they never enter the hash.
HASH_EXCLUDE = {"results", "__pycache__", ".ipynb_checkpoints"}


class EntryError(ValueError):
    """A broken entry: the message names the file, the problem and the fix."""


@dataclass(frozen=True)
class Entry:
    """A parsed entry manifest. Loading it never imports the entry's code."""

    path: Path
    name: str
    version: str
    authors: list[str]
    description: str
    hparams: dict[str, dict[str, Any]] = field(default_factory=dict)
    requirements: list[str] = field(default_factory=list)
    # `closure = true`: the harness calls optimizer.step(closure), the closure recomputing the
    # loss and gradients on the same batch (LBFGS, SAM). `create_graph = true`: gradients keep
    # their graph (backward(create_graph=True)) for Hessian-vector products (AdaHessian, Sophia).
    closure: bool = False
    create_graph: bool = False
    search: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def steps_alone(self) -> bool:
        """Whether each network must step by itself (closure or create_graph): its step reruns
        or differentiates its own loss, which one batched gradient cannot give."""
        return self.closure or self.create_graph

    def search_for(self, task: str) -> dict[str, dict[str, Any]]:
        """The `[search.default]` ranges updated with the task's own (`ldbench tune`)."""
        return {**self.search.get("default", {}), **self.search.get(task, {})}

    def hparams_for(self, task: str) -> dict[str, Any]:
        """The `[hparams.default]` table updated with the task's own table."""
        return {**self.hparams.get("default", {}), **self.hparams.get(task, {})}

    def make_optimizer(self, model: torch.nn.Module, task: TaskView) -> torch.optim.Optimizer:
        """Call the entry's `make_optimizer(params, hparams, task[, model])` and check the result.

        `params` are the model's parameters in `task.param_names` order; an entry whose
        make_optimizer takes a fourth argument also receives the model (WSAM, or an optimizer
        that reads the model's layers).
        """
        hparams = self.hparams_for(task.name)
        module = load_module(self)
        if self.track == "architecture":  # the task's reference optimizer: only the model differs
            return task.interface.reference_optimizer(list(model.parameters()))
        extra = (model,) if accepts_model(module.make_optimizer) else ()
        with entry_call(self, "make_optimizer", hparams):
            optimizer = module.make_optimizer(list(model.parameters()), hparams, task, *extra)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise EntryError(
                f"{self.path / 'entry.py'}: make_optimizer returned {type(optimizer).__name__}, "
                "not a torch.optim.Optimizer; return an optimizer built on `params`"
            )
        if not self.closure and needs_closure(optimizer):
            raise EntryError(
                f"{self.path / 'entry.toml'}: {type(optimizer).__name__}.step needs a closure; "
                "add `closure = true` at the top level of entry.toml")
        if mistaken := boolean_numbers(optimizer):
            key, value, default = mistaken[0]
            raise EntryError(
                f"{self.path / 'entry.toml'}: {type(optimizer).__name__} got {key} = {str(value).lower()}, "
                f"a boolean, where it takes a number (its default is {default!r}), and trains with "
                f"{key} = {int(value)}; write the number (e.g. {key} = {default!r})")
        return optimizer

    @cached_property  # read per evaluation: loading the module hashes the entry's files
    def track(self) -> str:
        """"optimizer" (no make_model: the task's reference model, the entry's optimizer),
        "architecture" (make_model only: the entry's model, the task's reference optimizer) or
        "recipe" (both: an architecture-track entry that brings its own optimizer)."""
        module = load_module(self)
        if not callable(getattr(module, "make_model", None)):
            return "optimizer"
        return "recipe" if callable(getattr(module, "make_optimizer", None)) else "architecture"

    def make_model(self, task: TaskView, generator: torch.Generator) -> torch.nn.Module | None:
        """The entry's `make_model(task, hparams, generator)`: a Module, or None for a task it
        has no model for (recorded as not applicable)."""
        module = load_module(self)
        hparams = self.hparams_for(task.name)
        with entry_call(self, "make_model", hparams):
            model = module.make_model(task, hparams, generator)
        if model is not None and not isinstance(model, torch.nn.Module):
            raise EntryError(
                f"{self.path / 'entry.py'}: make_model returned {type(model).__name__}, not a "
                "torch.nn.Module; return the model (or None for a task it has no model for)")
        return model

    def make_schedule(self, optimizer: torch.optim.Optimizer, task: TaskView) -> LRScheduler | None:
        """The entry's `make_schedule(optimizer, hparams, task)`, if it defines one."""
        module = load_module(self)
        if not callable(getattr(module, "make_schedule", None)):
            return None
        hparams = self.hparams_for(task.name)
        with entry_call(self, "make_schedule", hparams):
            schedule = module.make_schedule(optimizer, hparams, task)
        if not isinstance(schedule, LRScheduler):  # e.g. pytorch_optimizer's own LinearScheduler
            raise EntryError(
                f"{self.path / 'entry.py'}: make_schedule returned {type(schedule).__name__}, which is not "
                "a torch.optim.lr_scheduler.LRScheduler (the harness steps it once after every optimizer "
                "step); return one, e.g. torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: factor)")
        if isinstance(schedule, ReduceLROnPlateau):
            raise EntryError(
                f"{self.path / 'entry.py'}: make_schedule returned ReduceLROnPlateau, whose step needs a "
                "metric; the harness steps the schedule once after every optimizer step, without one: "
                "return a schedule of the step count, e.g. LambdaLR(optimizer, lambda step: factor)")
        if schedule.optimizer is not optimizer:
            raise EntryError(
                f"{self.path / 'entry.py'}: make_schedule returned a {type(schedule).__name__} of another "
                "optimizer than the one it was given; build it on its `optimizer` argument")
        return schedule

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without the cached `hash` and `track`: a Dask worker computes them from the
        files it sees, which is how it refuses to run other files than the client's."""
        return {k: v for k, v in vars(self).items() if k not in ("hash", "track")}

    @cached_property
    def hash(self) -> str:
        """The hash of the entry's files when first asked (once per loaded Entry: a run records
        the code it started with, and it is read at every call into the entry's module)."""
        return entry_hash(self.path)

    def with_hparams(self, per_task: dict[str, dict[str, Any]]) -> Entry:
        """This entry with `per_task[task]` laid over each task's hyperparameters."""
        tables = {t: dict(v) for t, v in self.hparams.items()}
        for task, values in per_task.items():
            if values:
                tables[task] = {**tables.get(task, {}), **values}
        return replace(self, hparams=tables)


def accepts_model(make_optimizer) -> bool:
    """True when make_optimizer takes a fourth positional parameter or a `model` keyword."""
    try:
        params = list(inspect.signature(make_optimizer).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 4 or any(p.name == "model" for p in params)


def needs_closure(optimizer: torch.optim.Optimizer) -> bool:
    """True when the optimizer's step has a required `closure` argument (LBFGS)."""
    try:
        closure = inspect.signature(optimizer.step).parameters.get("closure")
    except (TypeError, ValueError):
        return False
    return closure is not None and closure.default is inspect.Parameter.empty


def boolean_numbers(optimizer: torch.optim.Optimizer) -> list[tuple[str, bool, float]]:
    """(key, value, default) of each param-group value that is a boolean where the optimizer's
    constructor defaults that argument to a number: `lr = true` in entry.toml reaches Adam as
    lr = 1 (Python's bool is an int), and trains without complaint."""
    try:
        defaults = {name: p.default for name, p in inspect.signature(type(optimizer)).parameters.items()}
    except (TypeError, ValueError):
        return []
    found = {(key, value, defaults[key]) for group in optimizer.param_groups for key, value in group.items()
             if isinstance(value, bool) and isinstance(defaults.get(key), int | float)
             and not isinstance(defaults[key], bool)}
    return sorted(found)


def split_hparams(pairs: list[str], entry: Entry, task_names: list[str]) -> dict[str, dict[str, Any]]:
    """Per-task hyperparameter overrides from `--hparam key=value` / `task.key=value` pairs.

    Keys are those the entry's tables give each task (as `--set` takes the tier's config keys);
    values take the type of the current one, a number staying a number (`weight_decay = 1` in
    TOML still takes 0.5).
    """
    hint = (f" in {entry.path / 'entry.toml'} (a new one goes into its [hparams.default] or "
            "[hparams.TASK] table first)")
    raw = split_pairs(pairs, task_names, option="--hparam", keys_of=entry.hparams_for, hint=hint)
    per_task: dict[str, dict[str, Any]] = {}
    for task, values in raw.items():
        per_task[task] = {}
        for key, text in values.items():
            current = entry.hparams_for(task)[key]
            number = isinstance(current, int) and not isinstance(current, bool)
            value = parse_value(text, 0.0 if number else current, key, "--hparam")
            per_task[task][key] = int(value) if number and value.is_integer() and "." not in text else value
            if not recordable(per_task[task][key]):
                raise EntryError(f"--hparam {key}={text}: not a finite number; runs record their "
                                 "hyperparameters as JSON, which has no NaN or infinity")
    return per_task


def fail(path: Path, problem: str, fix: str) -> EntryError:
    return EntryError(f"{path}: {problem}; {fix}")


def load_entry(folder: str | Path) -> Entry:
    """Parse and check `folder/entry.toml` (and that `entry.py` exists); imports nothing."""
    folder = Path(folder)
    manifest = folder / "entry.toml"
    if not folder.is_dir():
        parent = folder.parent if folder.parent.is_dir() else None
        near = [p.name for p in parent.iterdir() if (p / "entry.toml").is_file()] if parent else []
        close = difflib.get_close_matches(folder.name, near, n=1)
        hint = f"; did you mean {folder.parent / close[0]}?" if close else ""
        raise fail(folder, "is not a directory", f"pass the path of an entry folder{hint}")
    if not manifest.is_file():
        raise fail(manifest, "is missing", "every entry folder needs an entry.toml manifest")
    if not (folder / "entry.py").is_file():
        raise fail(folder / "entry.py", "is missing", "define make_optimizer(params, hparams, task)")
    try:
        raw = tomllib.loads(manifest.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise fail(manifest, f"is not valid TOML ({err})", "fix the syntax") from None
    check_fields(manifest, raw)
    hparams = raw.get("hparams", {})
    check_hparams(manifest, hparams)
    check_search(manifest, raw)
    return Entry(
        path=folder,
        name=raw["name"],
        version=str(raw["version"]),
        authors=list(raw["authors"]),
        description=raw["description"],
        hparams=hparams,
        requirements=list(raw.get("requirements", [])),
        closure=raw.get("closure", False),
        create_graph=raw.get("create_graph", False),
        search=raw.get("search", {}),
    )


def check_fields(manifest: Path, raw: dict[str, Any]) -> None:
    """The top-level fields: every problem of their names and types said at once (a misspelt
    field is both missing and unknown: said once, as a rename), then the values."""
    known = list(REQUIRED) + list(OPTIONAL)
    unknown = [key for key in raw if key not in known]
    renames = {}  # misspelt -> meant
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=1)
        if close and close[0] not in raw and close[0] not in renames.values():
            renames[key] = close[0]
    problems = [f"field {key!r} should be {meant!r} (rename it)" for key, meant in renames.items()]
    problems += [f"lacks the field {key!r} (add {key} = ... at the top level)" for key in REQUIRED
                 if key not in raw and key not in renames.values()]
    problems += [f"has an unknown field {key!r} (remove it{did_you_mean(key, known)})"
                 for key in unknown if key not in renames]
    for key, value in raw.items():
        kind = REQUIRED.get(key) or OPTIONAL.get(key)
        wrong = kind is not None and not isinstance(value, kind)
        if wrong or (kind is not None and isinstance(value, bool) and kind is not bool):
            wanted = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            problems.append(f"field {key!r} has type {type(value).__name__}, not {wanted}")
    if problems:
        raise EntryError(f"{manifest}: " + "; ".join(problems))
    if not NAME_PATTERN.match(raw["name"]):
        raise fail(manifest, f"name {raw['name']!r} is not allowed",
                   "use 1-64 characters from a-z, 0-9, '-' and '_', starting with a letter or digit")
    if not all(isinstance(a, str) for a in raw["authors"]):
        raise fail(manifest, "authors must be a list of strings", 'write authors = ["Ada Lovelace"]')
    if not all(isinstance(r, str) for r in raw.get("requirements", [])):
        raise fail(manifest, "requirements must be a list of strings", 'e.g. ["lion-pytorch>=0.2"]')


def check_hparams(manifest: Path, hparams: dict[str, Any]) -> None:
    check_tables(manifest, hparams, "hparams")
    for table, values in hparams.items():
        for key, value in values.items():
            if isinstance(value, str) and is_number(value.strip()):  # TOML quotes make text
                raise fail(manifest, f"hparams.{table}.{key} = {value!r} is a string",
                           f"write the number without quotes: {key} = {value.strip()}")
            if not recordable(value):
                raise fail(manifest, f"hparams.{table}.{key} = {value!r} is not a finite number",
                           "every run records its hyperparameters as JSON, which has no NaN or "
                           "infinity: write a large finite number (1e30) or leave it out")


def recordable(value: Any) -> bool:
    """A hyperparameter value JSON holds as it is: a string, a boolean, a finite number, or a
    list or table of those (TOML's NaN and infinities are not)."""
    if isinstance(value, bool | str):
        return True
    if isinstance(value, int | float):
        try:
            return math.isfinite(float(value))
        except OverflowError:
            return False
    if isinstance(value, list):
        return all(recordable(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and recordable(v) for k, v in value.items())
    return False


def check_tables(manifest: Path, tables: dict[str, Any], kind: str) -> None:
    """[KIND.default] / [KIND.TASK]: each a table, each TASK a task of the suite."""
    tasks = all_tasks()
    for table, values in tables.items():
        if table != "default" and table not in tasks:
            raise fail(manifest, f"[{kind}.{table}] names an unknown task",
                       f"use [{kind}.default] or a task name{did_you_mean(table, tasks)}")
        if not isinstance(values, dict):
            raise fail(manifest, f"{kind}.{table} is not a table", f"write [{kind}.{table}]")


def load_module(entry: Entry):
    """Import `entry.py` by path under a private module name (entries are not packages)."""
    path = entry.path / "entry.py"
    module_name = f"ldbench_entry_{entry.name.replace('-', '_')}_{entry.hash[:12]}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        fix = missing_module_fix(entry, err) if isinstance(err, ModuleNotFoundError) else "fix the error"
        raise fail(path, f"failed to import ({type(err).__name__}: {err})", fix) from err
    if not any(callable(getattr(module, f, None)) for f in ("make_optimizer", "make_model")):
        defined = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        close = [m for f in FACTORIES for m in difflib.get_close_matches(f, defined, n=1, cutoff=0.8)]
        hint = f" (it defines {close[0]!r}: a misspelling?)" if close else ""
        raise fail(path, f"defines neither make_optimizer nor make_model{hint}",
                   "add def make_optimizer(params, hparams, task) "
                   "or def make_model(task, hparams, generator)")
    sys.modules[module_name] = module
    return module


def missing_module_fix(entry: Entry, err: ModuleNotFoundError) -> str:
    """What to do about a module entry.py imports that is not installed."""
    top = (err.name or "").split(".")[0]
    if top and ((entry.path / f"{top}.py").is_file() or (entry.path / top).is_dir()):
        # A vendored file (a model's code not on PyPI): the folder is not on Python's path.
        return (f"{top!r} is in the entry's folder, which is not on Python's import path: load it by "
                f"path in entry.py (importlib.util.spec_from_file_location(\"{top}\", "
                f"Path(__file__).parent / \"{top}.py\")) or copy its code into entry.py")
    if entry.requirements:
        listed = " ".join(f"'{r}'" for r in entry.requirements)
        return (f"install the entry's requirements (pip install {listed}), and list the module's "
                "package in entry.toml's requirements if it is not among them")
    return "pip install the package it comes from, and list it in entry.toml's requirements"


# The calls the harness makes, by factory: the arguments it passes (make_optimizer may take a
# fourth, the model; see accepts_model).
FACTORIES = {"make_optimizer": ("params", "hparams", "task"),
             "make_model": ("task", "hparams", "generator"),
             "make_schedule": ("optimizer", "hparams", "task")}


def check_runnable(entry: Entry) -> None:
    """Refuse, before any run (or cluster) starts, an entry that cannot run here: a declared
    requirement not installed or in another version, entry.py failing to import, or a factory
    that cannot be called with the harness's arguments. Each is one EntryError line."""
    check_requirements(entry)
    module = load_module(entry)
    for name, args in FACTORIES.items():
        factory = getattr(module, name, None)
        if callable(factory):
            check_signature(entry, name, factory, args)


def check_requirements(entry: Entry) -> None:
    """Each requirement in entry.toml (those whose environment marker holds) is installed, in
    a version it allows: results must come from the code the manifest names."""
    manifest = entry.path / "entry.toml"
    for text in entry.requirements:
        try:
            req = Requirement(text)
        except InvalidRequirement as err:
            raise fail(manifest, f"requirement {text!r} cannot be parsed ({err})",
                       'write a name and version range, e.g. "lion-pytorch>=0.2"') from None
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            installed = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            raise fail(manifest, f"requirement {text!r} is not installed", f"pip install '{text}'") from None
        if not req.specifier.contains(installed, prereleases=True):
            raise fail(manifest, f"requirement {text!r} is not met: {req.name} {installed} is installed",
                       f"pip install '{text}'")


def check_signature(entry: Entry, name: str, factory, args: tuple[str, ...]) -> None:
    """`factory` takes the harness's positional arguments `args` (make_optimizer: and the model,
    where it asks for it)."""
    if name == "make_optimizer" and accepts_model(factory):
        args = (*args, "model")
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return  # a builtin or C callable: nothing to check before calling it
    try:
        signature.bind(*args)
    except TypeError:
        code = getattr(factory, "__code__", None)
        where = f"{code.co_filename}:{code.co_firstlineno}" if code else str(entry.path / "entry.py")
        raise EntryError(f"{where}: {name}{signature} cannot be called as {name}({', '.join(args)}); "
                         f"define def {name}({', '.join(args[:3])})") from None


def entry_files(folder: Path) -> list[Path]:
    """The files that make up an entry (sorted), excluding results and caches. Symlinked folders
    are not entered (as Path.rglob); a symlinked file counts with its target's content."""
    files = []
    for root, folders, names in os.walk(folder):
        folders[:] = [f for f in folders if f not in HASH_EXCLUDE]  # not into results/: its many files
        files += [path for name in names if name not in HASH_EXCLUDE and (path := Path(root, name)).is_file()]
    return sorted(files)


def entry_hash(folder: str | Path) -> str:
    """sha256 over the entry's relative file names and contents: names exactly what ran.

    entry.toml's [search.*] tables (what `ldbench tune` may try, not what ran) are left out,
    so declaring a search space keeps the entry's existing results valid.
    """
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in entry_files(folder):
        data = path.read_bytes()
        if path == folder / "entry.toml":
            data = without_search(data)
        # os.fsencode: the name's bytes as on disk, also where they are not UTF-8 (validate
        # refuses such names; score and show still hash the folder)
        digest.update(os.fsencode(path.relative_to(folder).as_posix()) + b"\0")
        digest.update(data + b"\0")
    return digest.hexdigest()


class EntryCodeError(RuntimeError):
    """An exception raised inside the entry's own code: the entry's failure, not the harness's."""


def entry_code_error(err: BaseException, entry: Entry, call: str,
                     hparams: dict[str, Any] | None = None) -> EntryCodeError:
    """One line naming the entry's file and line (the last frame inside its folder) and the error,
    with the likely fix of a common mistake (`code_hint`).

    Without a frame in the entry folder (a library optimizer raising on its own), the last
    frame of the call outside torch and ldbench is named instead (the library's), else the
    last one (torch's: a torch scheduler the entry built, stepped by the harness).
    """
    frames = traceback.extract_tb(err.__traceback__)
    frame = (entry_frames(err, entry) or library_frames(frames) or frames or [None])[-1]
    where = f" at {frame.filename}:{frame.lineno} ({frame.name})" if frame else ""
    return EntryCodeError(f"the entry's {call} failed{where}: {type(err).__name__}: {err}"
                          f"{code_hint(err, entry, call, hparams)}")


def library_frames(frames: list[traceback.FrameSummary]) -> list[traceback.FrameSummary]:
    """The frames in neither torch's nor ldbench's own files: where a library optimizer misused
    torch (GSAM unpacking a closure's loss as (outputs, loss) failed inside torch's
    Tensor.__iter__). ldbench's frames only call the entry's objects (a schedule's step)."""
    roots = [Path(module.__file__).resolve().parent for module in (torch, suite)]
    return [frame for frame in frames
            if not any(Path(frame.filename).resolve().is_relative_to(root) for root in roots)]


def entry_frames(err: BaseException, entry: Entry) -> list[traceback.FrameSummary]:
    """The frames of `err`'s traceback in the entry's own files (its folder)."""
    root = entry.path.resolve()
    return [frame for frame in traceback.extract_tb(err.__traceback__)
            if Path(frame.filename).resolve().is_relative_to(root)]


def code_hint(err: BaseException, entry: Entry, call: str, hparams: dict[str, Any] | None) -> str:
    """'; ' and what probably fixes `err`, for mistakes third-party code makes easy; else ''.

    `hparams`: the hyperparameters a factory was given (None for other calls)."""
    text, top = str(err), "at the top level of entry.toml"
    if isinstance(err, ModuleNotFoundError):  # imported inside a factory or the model's code
        return "; " + missing_module_fix(entry, err)
    key = err.args[0] if isinstance(err, KeyError) and err.args else None
    if hparams is not None and isinstance(key, str) and key not in hparams:
        close = difflib.get_close_matches(key, list(hparams), n=1)
        found = f"; did you mean {close[0]!r}?" if close else f"; it has {sorted(hparams) or 'none'}"
        return (f"; the task's hparams have no {key!r} (set it in entry.toml's [hparams.default] "
                f"or [hparams.TASK]){found}")
    if call == "optimizer.step" and not entry.closure and "closure" in text.lower():
        return f"; if the optimizer's step needs a closure (SAM, LBFGS), add `closure = true` {top}"
    if call == "optimizer.step" and "capturable" in text:
        return "; capturable=True is for CUDA graphs: leave it out where the parameters are on the CPU"
    if call == "optimizer.step" and not entry.create_graph and "does not require grad" in text:
        return (f"; if the optimizer takes Hessian-vector products (AdaHessian, Sophia), add "
                f"`create_graph = true` {top}")
    if call == "schedule.step" and "Tried to step" in text:  # OneCycleLR past its total_steps
        return ("; the harness steps the schedule once after every optimizer step, task.steps "
                "times in all: build it for that many (e.g. total_steps=task.steps)")
    return ""


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@contextmanager
def entry_call(entry: Entry, call: str, hparams: dict[str, Any] | None = None) -> Iterator[None]:
    """Run entry code: an exception it raises becomes an EntryCodeError pointing at its line.
    `hparams`: those a factory is given (they name the fix of a missing or quoted one)."""
    try:
        yield
    except (EntryError, EntryCodeError):
        raise
    except Exception as err:
        raise entry_code_error(err, entry, call, hparams) from err


# -- search spaces (`ldbench tune`, issue 12) ----------------------------------------------------

SEARCH_KINDS = ("log_uniform", "uniform", "choice")
SEARCH_HEADER = re.compile(rb"^\[search(\.[^\]]*)?\]\s*(#.*)?$")


def without_search(data: bytes) -> bytes:
    """entry.toml's bytes without its [search.*] tables (unchanged if it has none)."""
    lines, kept, inside = data.splitlines(keepends=True), [], False
    for line in lines:
        if line.startswith(b"["):
            inside = bool(SEARCH_HEADER.match(line.strip()))
        if not inside:
            kept.append(line)
    if len(kept) == len(lines):
        return data
    return b"".join(kept).rstrip(b"\n") + b"\n"


def check_search(manifest: Path, raw: dict[str, Any]) -> None:
    """[search.default] / [search.TASK] tables of `name = { log_uniform | uniform | choice = [...] }`."""
    search = raw.get("search", {})
    if search and "search" in tomllib.loads(without_search(manifest.read_bytes()).decode()):
        raise fail(manifest, "declares search ranges outside [search.default]/[search.TASK] tables",
                   "write each as a [search.TABLE] section (not dotted keys or inline tables)")
    check_tables(manifest, search, "search")
    for table, ranges in search.items():
        known = raw.get("hparams", {}).get("default", {}) if table == "default" else {
            **raw.get("hparams", {}).get("default", {}), **raw.get("hparams", {}).get(table, {})}
        for name, spec in ranges.items():
            check_range(manifest, f"search.{table}.{name}", spec)
            if name not in known:
                where = "[hparams.default]" + ("" if table == "default" else f" or [hparams.{table}]")
                raise fail(manifest, f"search.{table}.{name} is not a hyperparameter of {where}",
                           f"add {name} there first{did_you_mean(name, known)}")
            kind = next(iter(spec))
            if kind != "choice" and isinstance(known[name], int) and not isinstance(known[name], bool):
                # uniform draws floats: every trial of an integer hyperparameter failed
                raise fail(manifest, f"search.{table}.{name} searches an integer hyperparameter (it is "
                           f"{known[name]}) with {kind}, which draws floats",
                           f"list the integers to try: {name} = {{ choice = [...] }}")
            if kind == "choice" and (bad := [v for v in spec[kind] if not same_kind(v, known[name])]):
                # a trial with "0.01" or 1.5 for a float or an integer fails inside the entry's code
                raise fail(manifest, f"search.{table}.{name}: choice values must be of the "
                           f"hyperparameter's type ({kind_name(known[name])}: it is {known[name]!r}), "
                           f"got {bad[0]!r}", f"write each as {with_article(kind_name(known[name]))}, "
                           "without quotes")


def with_article(noun: str) -> str:
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


def kind_name(value: Any) -> str:
    """The kind of a hyperparameter's value, as a choice of it must match."""
    if isinstance(value, bool):
        return "boolean"
    return "integer" if isinstance(value, int) else "number" if isinstance(value, float) else \
        "string" if isinstance(value, str) else type(value).__name__


def same_kind(choice: Any, value: Any) -> bool:
    """Whether a choice can stand for `value`: booleans for a boolean, integers for an integer,
    numbers for a float, strings for a string (other values are not checked)."""
    if isinstance(value, bool) or isinstance(choice, bool):
        return isinstance(value, bool) and isinstance(choice, bool)
    if isinstance(value, int):
        return isinstance(choice, int)
    if isinstance(value, float):
        return isinstance(choice, int | float)
    return isinstance(choice, str) if isinstance(value, str) else True


def check_range(manifest: Path, where: str, spec: Any) -> None:
    example = ("write e.g. lr = { log_uniform = [1e-4, 1e-1] }, { uniform = [0.8, 0.99] } "
               "or { choice = [0, 1] }")
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in SEARCH_KINDS:
        raise fail(manifest, f"{where} is not one of {', '.join(SEARCH_KINDS)}", example)
    kind, values = next(iter(spec.items()))
    if not isinstance(values, list) or not values:
        raise fail(manifest, f"{where}: {kind} needs a non-empty list", example)
    if not recordable(values):  # a trial's point is recorded as JSON with its runs
        raise fail(manifest, f"{where}: {kind} holds NaN or an infinity, got {values}",
                   "give finite numbers: every trial records its point as JSON")
    if kind == "choice":
        return
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    if len(values) != 2 or not numbers or not values[0] < values[1]:
        raise fail(manifest, f"{where}: {kind} needs [low, high] with low < high, got {values}", example)
    if kind == "log_uniform" and values[0] <= 0:
        raise fail(manifest, f"{where}: log_uniform needs low > 0, got {values[0]}", "use uniform or low > 0")
