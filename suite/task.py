"""The Task contract: what one file in `suite/tasks/` defines, and the default run procedure."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

import torch

if TYPE_CHECKING:  # the harness imports tasks, tasks only need its type for hints
    from suite.loop import Trainer, Trajectory

DIRECTIONS = ("min", "max")
ROLES = ("ranked", "diagnostic")
PLOT_KINDS = ("panels", "lines", "dots", "path")


class ConfigError(ValueError):
    """A tier config value outside its allowed range: the message names the key and the range."""


@dataclass(frozen=True)
class Metric:
    """How to read one final metric of a task.

    direction: "min" if lower is better, "max" if higher is better.
    steps_to_target: the value counts steps until a target is reached; +inf means the target
        was not reached within the run's budget (a failure, never a zero).
    role: "ranked" (enters ranks and scores) or "diagnostic" (shown, never ranked: reference
        values, and end-state quantities that an under-trained run would win). Every task
        declares it per metric and says why in its docstring.
    resolution: absolute floor below which two values of this metric are numerical noise
        (e.g. float32 rounding amplified by the metric); ranks, `show`, `compare` and `verify`
        treat values closer than this as equal. Every task declares it per metric.
    bounds: the metric's valid range (a fraction lies in [0, 1]); intervals are clipped to it.
    undefined_ok: the value may be NaN in a run that finished ("undefined": e.g. the plateau of
        a stage the run never left); NaN otherwise means no result and needs a failed status.
    """

    direction: str
    description: str
    unit: str = ""
    steps_to_target: bool = False
    role: str | None = None
    resolution: float | None = None
    bounds: tuple[float, float] = (-math.inf, math.inf)
    undefined_ok: bool = False

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"metric direction must be one of {DIRECTIONS}, got {self.direction!r}")
        if self.role is not None and self.role not in ROLES:
            raise ValueError(f"metric role must be one of {ROLES}, got {self.role!r}")
        if self.resolution is not None and not self.resolution >= 0:
            raise ValueError(f"metric resolution must be >= 0, got {self.resolution!r}")


@dataclass(frozen=True)
class Curve:
    """One curve a task records at each evaluation step (a key of `Task.observe`'s dict).

    at_end: recorded only at the last step (NaN before), e.g. values measured after training.
    """

    description: str
    unit: str = ""
    at_end: bool = False


@dataclass(frozen=True)
class Plot:
    """One figure of a task's leaderboard section: which declared curves or metrics it shows.

    The site draws each kind generically, so a task never needs site code:
      "panels": `curves` vs step, one panel per entry (mode strengths, train and test curves);
          `markers[i]` names a metric whose mean is drawn as a dotted line in curve i's colour,
          `span` two metrics whose means bound a shaded interval named `span_label`.
      "lines": the one curve in `curves` vs step, one line per entry.
      "dots": the mean and interval of each metric in `metrics`, one row per entry.
      "path": each of `paths` (label, curves) is one line through its curves' final values
          at x = `x` (values along a linear path between two networks), one panel per entry.
    `labels` name the curves (panels) or metrics (dots) in the legend; `styles` are matplotlib
    format strings per curve (default: a viridis ramp).
    """

    kind: str
    key: str
    title: str
    caption: str
    ylabel: str = ""
    curves: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    styles: tuple[str, ...] = ()
    markers: tuple[str, ...] = ()
    span: tuple[str, str] | None = None
    span_label: str = ""
    metrics: tuple[str, ...] = ()
    paths: tuple[tuple[str, tuple[str, ...]], ...] = ()
    x: tuple[float, ...] = ()
    xlabel: str = "step"
    logy: bool = False

    def __post_init__(self) -> None:
        if self.kind not in PLOT_KINDS:
            raise ValueError(f"plot kind must be one of {PLOT_KINDS}, got {self.kind!r}")

    def names(self) -> set[str]:
        """Every curve the plot reads."""
        return set(self.curves) | {c for _, curves in self.paths for c in curves}


PARAM_ROLES = ("hidden matrix", "embedding", "readout", "bias", "gain")


@dataclass(frozen=True)
class TaskView:
    """What an entry's code sees of a task: a read-only copy, never the object the harness runs.

    name, version, family: the task's.
    config: the tier config that runs (read-only; `--set` overrides included).
    steps: the optimizer steps each network of a run takes, the budget a schedule decays over
        (a mode-connectivity child continues its parent's schedule rather than starting one).
    param_names, param_roles: the name and role (one of PARAM_ROLES) of each tensor in `params`,
        in the same order, so that e.g. a Muon-style optimizer can put hidden matrices in one
        group and embeddings, readouts, biases and gains in another without guessing.
    """

    name: str
    version: int
    family: str
    config: Mapping[str, Any]
    steps: int
    param_names: tuple[str, ...] = ()
    param_roles: tuple[str, ...] = ()


def default_role(name: str, param: torch.Tensor) -> str:
    """A role from a parameter's shape, for tasks that declare none: matrices are hidden."""
    return "hidden matrix" if param.dim() >= 2 else "bias"


class Task:
    """One benchmark task. A subclass lives alone in a file of `suite/tasks/` and defines:

    Class attributes
        name: registry name, lowercase with dashes (e.g. "deep-linear-modes").
        version: integer written into every result row; raise it whenever a change alters results.
        family: a lowercase-dashed word grouping related tasks (e.g. "stage-timing"); the
            leaderboard groups tasks by whatever families exist.
        description: one paragraph, shown by `ldbench tasks` and on the leaderboard.
        tiers: {"smoke": {...}, "standard": {...}}: every config value of each tier. Both tiers
            must have the same keys; "steps" (optimizer steps) and "evals" (number of
            log-spaced evaluation steps) are read by the harness.
        target: name of the steps-to-target metric the scorer ranks entries by (role "ranked").
        invalid_configs: config overrides that check_config must reject (the conformance suite
            tries each, besides steps=0).
        quick_config: overrides of the smoke tier for a run of a few seconds (the conformance
            suite trains with it); a task whose other keys depend on `steps` adjusts them too.

    Methods (all per seed: the harness decides how seeds are executed)
        metrics() -> {name: Metric}: the final metrics, for the current config.
        curves() -> {name: Curve}: the curves `observe` (or `run`) records, for the current config.
        plots() -> [Plot]: the leaderboard figures of the curves (default: every declared
            curve vs step, one panel per entry).
        check_config() -> None: raise ConfigError naming the key and its allowed range for a
            nonsense config value (steps=0, hidden=0, ...); called before any run.
        make_data(seed) -> dict of tensors: the task's data, drawn from `seeding.generator`.
        make_model(seed) -> nn.Module: the default single-seed model, initialised from a
            generator (never the global RNG).
        loss(model, batch) -> scalar tensor: the training objective on one batch; a pure
            function of the model's parameters and the batch, so the harness may vmap it.
        observe(model, data) -> {curve: float}: what is recorded at each evaluation step
            (called under torch.no_grad() with the optimizer in eval mode).
        summarize(steps, curves, data) -> {metric: float}: final metrics from the recorded
            curves (steps: int64 array of evaluation steps; curves: name -> float64 array).

    Optional
        sample_batch(data, step, generator) -> batch: minibatch or fresh samples for one step
            (default: the full data, i.e. full-batch training).
        run(seed, trainer) -> Trajectory: a special procedure (spawning children, two
            networks...) built from `trainer`'s pieces. Override only when one training run per
            seed does not describe the task; the default is one model, one optimizer, `steps`.
        run_seeds(seeds, trainer) -> [Trajectory]: the special procedure for several seeds side
            by side; a task that overrides `run` should provide it (see mode-connectivity).
        optimizer_steps() -> int: the optimizer steps `run` takes over all its networks (the
            progress bar's total); override it with `run`.
    """

    name: ClassVar[str]
    version: ClassVar[int]
    family: ClassVar[str]
    description: ClassVar[str]
    tiers: ClassVar[dict[str, dict[str, Any]]]
    target: ClassVar[str]
    invalid_configs: ClassVar[tuple[dict[str, Any], ...]] = ()
    quick_config: ClassVar[dict[str, Any]] = {"steps": 20, "evals": 5}

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = dict(config)

    # -- to implement -------------------------------------------------------------------------
    def metrics(self) -> dict[str, Metric]:
        raise NotImplementedError

    def curves(self) -> dict[str, Curve]:
        raise NotImplementedError

    def make_data(self, seed: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def make_model(self, seed: int) -> torch.nn.Module:
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        raise NotImplementedError

    def observe(self, model: torch.nn.Module, data: dict[str, torch.Tensor]) -> dict[str, float]:
        raise NotImplementedError

    def summarize(self, steps, curves, data) -> dict[str, float]:
        raise NotImplementedError

    # -- defaults -----------------------------------------------------------------------------
    def param_roles(self, model: torch.nn.Module) -> dict[str, str]:
        """name -> role (PARAM_ROLES) of each parameter of the task's model; override to declare."""
        return {name: default_role(name, p) for name, p in model.named_parameters()}

    def view(self, model: torch.nn.Module | None = None) -> TaskView:
        """The read-only view an entry's code receives (with `model`'s parameter names and roles)."""
        names = tuple(n for n, _ in model.named_parameters()) if model is not None else ()
        roles = self.param_roles(model) if model is not None else {}
        return TaskView(self.name, self.version, self.family,
                        MappingProxyType(copy.deepcopy(self.config)), int(self.config["steps"]),
                        names, tuple(roles[n] for n in names))

    def check_config(self) -> None:
        """The harness's own keys; a task extends this (calling super) for its keys."""
        for key in ("steps", "evals"):
            value = self.config.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{self.name}: config {key}={value!r} must be an integer >= 1")

    def plots(self) -> list[Plot]:
        """A generic figure of the declared curves, for a task that declares none."""
        names = tuple(n for n, c in self.curves().items() if not c.at_end)[:8]
        if not names:
            return []
        return [Plot("panels", "curves", "Curves over training", "Every curve the task records, "
                     "over training (mean over seeds).", curves=names)]

    def require(self, key: str, ok: bool, allowed: str) -> None:
        """Raise ConfigError naming `key`, its value and the `allowed` range unless `ok`."""
        if not ok:
            raise ConfigError(f"{self.name}: config {key}={self.config[key]!r} must be {allowed}")

    def require_int(self, key: str, low: int = 1, high: float = math.inf) -> None:
        value = self.config[key]
        within = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
        self.require(key, within, f"an integer in [{low}, {high:g}]" if high < math.inf
                     else f"an integer >= {low}")

    def require_number(self, key: str, low: float, high: float = math.inf, *,
                       open_low: bool = False) -> None:
        value = self.config[key]
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        within = number and (value > low if open_low else value >= low) and value <= high
        left = "(" if open_low else "["
        self.require(key, within, f"a number in {left}{low:g}, {high:g}]" if high < math.inf
                     else f"a number {'>' if open_low else '>='} {low:g}")

    def sample_batch(self, data: dict[str, torch.Tensor], step: int, generator: torch.Generator):
        return data

    def run(self, seed: int, trainer: Trainer) -> Trajectory:
        data = trainer.to_device(self.make_data(seed))
        model = trainer.to_device(self.make_model(seed))
        optimizer, schedule = trainer.make_optimizer(model, seed=seed)
        return trainer.train(model, optimizer, data, seed=seed, steps=self.config["steps"],
                             schedule=schedule)

    def run_seeds(self, seeds: list[int], trainer: Trainer) -> list[Trajectory]:
        """Optional, with `run`: the special procedure for several seeds side by side (the
        networks of every seed trained as one batch through `suite.batched.train_lanes`);
        `run(seed)` is then `run_seeds([seed])[0]`. Without it, seeds run one by one."""
        raise NotImplementedError

    def optimizer_steps(self) -> int:
        return int(self.config["steps"])

    # -- helpers for the harness --------------------------------------------------------------
    def nan_metrics(self) -> dict[str, float]:
        """The metric row of a run that produced no result (diverged or failed)."""
        return {name: math.nan for name in self.metrics()}
