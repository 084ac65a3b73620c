"""The Task contract: what one file in `suite/tasks/` defines, and the default run procedure."""

from __future__ import annotations

import copy
import fnmatch
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from suite import seeding

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
    bounds: the curve's valid range (an accuracy lies in [0, 1]); the site clips the interval
        band of its seed mean to it.
    """

    description: str
    unit: str = ""
    at_end: bool = False
    bounds: tuple[float, float] = (-math.inf, math.inf)


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
REFERENCE_OPTIMIZERS = ("sgd", "adam", "adamw")  # torch.optim.SGD, Adam, AdamW


@dataclass(frozen=True)
class ModelInterface:
    """What a model must do on a task for an architecture entry's model to run it.

    A task declares one as `Task.interface` (None: the task is optimizer-only, and an
    architecture entry's runs of it are recorded as not applicable).
    inputs, outputs: the forward's contract in words, dtypes and shapes included, e.g.
        "int64 (N, 2): operand pairs (a, b)" and "float (N, p): logits of (a + b) mod p".
        The first forward (`Task.probe`) is checked against them before any training.
    requires: methods the task's loss or ranked metrics call (deep-linear-modes reads the
        end-to-end map through `product()`); a model without one of them cannot run the task,
        and its runs are recorded as not applicable, naming the method.
    optional: (method, metrics that read it) pairs; a model without the method runs the task
        and those metrics are recorded as not applicable.
    unsupported: (reason, metrics) pairs for what no method can express (e.g. a weight layout
        the metrics permute): the task's `inapplicable` decides which models lack it, and the
        reason is what `ldbench run`, `show` and the site say about those metrics.
    optimizer: (name in REFERENCE_OPTIMIZERS, keyword arguments): the reference optimizer an
        architecture entry without `make_optimizer` trains with, so that only the
        architecture differs from the task's reference model.
    """

    inputs: str
    outputs: str
    optimizer: tuple[str, tuple[tuple[str, Any], ...]]
    requires: tuple[str, ...] = ()
    optional: tuple[tuple[str, tuple[str, ...]], ...] = ()
    unsupported: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def __post_init__(self) -> None:
        if self.optimizer[0] not in REFERENCE_OPTIMIZERS:
            raise ValueError(f"reference optimizer must be one of {REFERENCE_OPTIMIZERS}, "
                             f"got {self.optimizer[0]!r}")

    def missing(self, model: torch.nn.Module) -> tuple[str, ...]:
        """The required methods `model` lacks."""
        return tuple(m for m in self.requires if not callable(getattr(model, m, None)))

    def not_applicable(self, model: torch.nn.Module, metrics: list[str]) -> tuple[str, ...]:
        """Those of `metrics` that `model` cannot have: they read an optional method it lacks
        (`optional` may name metrics by fnmatch patterns, e.g. "attention_step/*")."""
        patterns = [p for method, names in self.optional
                    if not callable(getattr(model, method, None)) for p in names]
        return tuple(m for m in metrics if any(fnmatch.fnmatchcase(m, p) for p in patterns))

    def unsupported_metrics(self, metrics: list[str]) -> tuple[str, ...]:
        """Those of `metrics` that `unsupported` names (fnmatch patterns)."""
        patterns = [p for _, names in self.unsupported for p in names]
        return tuple(m for m in metrics if any(fnmatch.fnmatchcase(m, p) for p in patterns))

    def reference_optimizer(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        name, kwargs = self.optimizer
        cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
        return cls(params, **dict(kwargs))


@dataclass(frozen=True)
class TaskView:
    """What an entry's code sees of a task: a read-only copy, never the object the harness runs.

    name, version, family: the task's.
    config: the tier config that runs (read-only; `--set` overrides included).
    steps: the optimizer steps each network of a run takes, the budget a schedule decays over
        (a mode-connectivity child continues its parent's schedule rather than starting one).
    param_names, param_roles: the name and role (one of PARAM_ROLES) of each tensor in `params`,
        in the same order, so that e.g. a Muon-style optimizer can put hidden matrices in one
        group and embeddings, readouts, biases and gains in another without guessing. Roles
        come from the task for its reference model, from the model's own `param_roles()`
        (name -> role) for an architecture entry's model that defines it, else from shapes.
    interface: the task's ModelInterface (None: optimizer-only).
    reference_model: builds the task's reference model from a torch.Generator (on a copy of
        the task): an architecture entry may start from it or wrap it.
    """

    name: str
    version: int
    family: str
    config: Mapping[str, Any]
    steps: int
    param_names: tuple[str, ...] = ()
    param_roles: tuple[str, ...] = ()
    interface: ModelInterface | None = None
    reference_model: Callable[[torch.Generator], torch.nn.Module] | None = None


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
        tie_break: optional name of a ranked metric that decides between tuning trials whose
            targets tie (`ldbench tune`), for a target with few distinct values (None: the
            earlier design point wins a tie).
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
        reference_model(generator) -> nn.Module: the task's reference model, every random number
            drawn from `generator` (never the global RNG); `make_model(seed)` builds it from
            the seed's "init" stream.
        loss(model, batch) -> scalar tensor: the training objective on one batch; a pure
            function of the model's parameters and the batch, so the harness may vmap it.
        observe(model, data) -> {curve: float}: what is recorded at each evaluation step
            (called under torch.no_grad() with the optimizer in eval mode).
        summarize(steps, curves, data) -> {metric: float}: final metrics from the recorded
            curves (steps: int64 array of evaluation steps; curves: name -> float64 array).

    Optional
        interface: a ModelInterface (class attribute): the contract an architecture entry's
            model must meet, and the reference optimizer it trains with. None (the default):
            optimizer-only, every architecture entry's run is "not applicable". A task with an
            interface also defines probe(data) -> (input, expected output shape): the first
            forward every architecture entry's model is checked with before training.
        model_problem(model, x) -> str | None: what the interface asks beyond shapes, checked
            with the probe's input (markov-attention: causality); None when the model meets it.
        sample_batch(data, step, generator) -> batch: minibatch or fresh samples for one step
            (default: the full data, i.e. full-batch training). It runs on one thread
            (loop.one_thread), so its batches must not depend on the thread count: the
            conformance suite compares them bit for bit against the profile's threads.
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
    tie_break: ClassVar[str | None] = None
    invalid_configs: ClassVar[tuple[dict[str, Any], ...]] = ()
    interface: ClassVar[ModelInterface | None] = None
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

    def reference_model(self, generator: torch.Generator) -> torch.nn.Module:
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        raise NotImplementedError

    def observe(self, model: torch.nn.Module, data: dict[str, torch.Tensor]) -> dict[str, float]:
        raise NotImplementedError

    def summarize(self, steps, curves, data) -> dict[str, float]:
        raise NotImplementedError

    # -- defaults -----------------------------------------------------------------------------
    def make_model(self, seed: int, purpose: str = "init") -> torch.nn.Module:
        """The reference model of `seed`, from the generator of `purpose` (a procedure's second
        network draws its own, e.g. mode-connectivity's independent networks)."""
        return self.reference_model(seeding.generator(seed, purpose))

    def inapplicable(self, model: torch.nn.Module) -> tuple[str, ...]:
        """The metrics `model` cannot have (recorded with applicable = false): by default those
        reading a method of the interface's `optional` that it lacks; a task extends this for
        what a method cannot express (e.g. a layout its metrics read)."""
        if self.interface is None:
            return ()
        return self.interface.not_applicable(model, list(self.metrics()))

    def probe(self, data: dict[str, torch.Tensor]) -> tuple[torch.Tensor, tuple[int, ...]]:
        """(input, expected output shape) of the first forward an architecture entry's model
        is checked with; every task with an `interface` defines it."""
        raise NotImplementedError

    def model_problem(self, model: torch.nn.Module, x: torch.Tensor) -> str | None:
        """What the interface asks of a model beyond its output's shape and dtype, checked on an
        architecture entry's model with the probe's input `x` (in eval mode, without
        gradients): a phrase saying how `model` breaks it ("row 3 reads later tokens"), or
        None. Default: nothing more to check."""
        return None

    def param_roles(self, model: torch.nn.Module) -> dict[str, str]:
        """name -> role (PARAM_ROLES) of each parameter of the task's model; override to declare."""
        return {name: default_role(name, p) for name, p in model.named_parameters()}

    def view(self, model: torch.nn.Module | None = None) -> TaskView:
        """The read-only view an entry's code receives (with `model`'s parameter names and roles)."""
        names = tuple(n for n, _ in model.named_parameters()) if model is not None else ()
        roles = self.param_roles(model) if model is not None else {}
        if set(roles) != set(names):  # an architecture entry's model
            own = getattr(model, "param_roles", None)
            roles = own() if callable(own) else {n: default_role(n, p) for n, p in model.named_parameters()}
            bad = {n: r for n, r in roles.items() if r not in PARAM_ROLES}
            if set(roles) != set(names) or bad:
                raise ValueError(f"the model's param_roles() must map each parameter name to one of "
                                 f"{PARAM_ROLES}; got {roles!r}")
        config = copy.deepcopy(self.config)
        return TaskView(self.name, self.version, self.family, MappingProxyType(config),
                        int(self.config["steps"]), names, tuple(roles[n] for n in names),
                        self.interface, type(self)(copy.deepcopy(self.config)).reference_model)

    def check_config(self) -> None:
        """The harness's own keys; a task extends this (calling super) for its keys."""
        for key in ("steps", "evals"):
            value = self.config.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{self.name}: config {key}={value!r} must be an integer >= 1")

    def plots(self) -> list[Plot]:
        """A generic figure of the declared curves, for a task that declares none."""
        every = tuple(n for n, c in self.curves().items() if not c.at_end)
        names = every[:8]  # more lines than a panel can tell apart
        if not names:
            return []
        which = "Every curve the task records" if len(names) == len(every) else \
            f"The first {len(names)} of the {len(every)} curves the task records"
        return [Plot("panels", "curves", "Curves over training", f"{which}, over training (mean "
                     "over seeds).", curves=names)]

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
        model = trainer.make_model(seed, data)
        optimizer, schedule = trainer.make_optimizer(model, seed=seed)
        return trainer.train(model, optimizer, data, seed=seed, steps=self.config["steps"],
                             schedule=schedule)

    def run_seeds(self, seeds: list[int], trainer: Trainer,
                  runs: list[Trainer] | None = None) -> list[Trajectory]:
        """Optional, with `run`: the special procedure for several seeds side by side (the
        networks of every seed trained as one batch through `suite.batched.train_lanes`);
        `run(seed)` is then `run_seeds([seed])[0]`. Without it, seeds run one by one.

        `runs`: one trainer per seed when the runs have entries of their own (a tuning study's
        trials: a seed may repeat): run i builds its networks with `runs[i]` and gives its lanes
        `owner=runs[i]`, as `suite.batched.train_seeds` does; None: `trainer` for every run."""
        raise NotImplementedError

    def optimizer_steps(self) -> int:
        return int(self.config["steps"])

    # -- helpers for the harness --------------------------------------------------------------
    def nan_metrics(self) -> dict[str, float]:
        """The metric row of a run that produced no result (diverged or failed)."""
        return {name: math.nan for name in self.metrics()}
