"""The one training loop: lanes (networks) advanced in lockstep, with evaluation and divergence.

A *lane* is one network in training: its model, optimizer, data, batch stream and record.
`Trainer.run_lanes` advances a list of lanes step by step; how their gradients are computed
and their optimizers stepped is a *step function*: `plain_steps` (each lane by plain autograd
on its own model: one-by-one execution) or `suite.batched.SeedBatch` (the lanes' parameters
stacked and one vmapped gradient for all). Everything else (the evaluation schedule, eval
mode, divergence, progress, the entry's global-RNG state) is this one loop, whichever runs.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import warnings
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.nn.parameter import is_lazy
from torch.optim.lr_scheduler import LRScheduler

from suite import reuse, seeding
from suite.entry import Entry, EntryCodeError, entry_call
from suite.profiles import Profile
from suite.task import Task


class BatchingUnsupported(RuntimeError):
    """These lanes cannot run as one batch faithfully; the runner runs their seeds one by one."""


class NotApplicable(Exception):
    """The task cannot run this entry's model (the message says why): the run is recorded
    with status "not-applicable", neither missing nor failed."""


class ModelError(EntryCodeError):
    """An architecture entry's model breaks the task's model interface (wrong output shape,
    global RNG in make_model): the entry's failure, in one line saying what was expected."""


@dataclass
class Trajectory:
    """What one run recorded: evaluation steps, curves aligned with them, and how it ended."""

    steps: list[int] = field(default_factory=list)
    curves: dict[str, list[float]] = field(default_factory=dict)
    status: str = "ok"  # ok | diverged
    diverged_step: int | None = None
    steps_done: int = 0
    data: Any = None  # the run's data, handed back to Task.summarize
    # How the run was executed (recorded with its results; `verify` re-runs it the same way).
    execution: dict[str, Any] = field(default_factory=dict)
    # Metrics the model cannot have (it lacks a method the task's interface names for them).
    not_applicable: tuple[str, ...] = ()

    def record(self, step: int, values: dict[str, float]) -> None:
        self.steps.append(step)
        for name, value in values.items():
            self.curves.setdefault(name, []).append(float(value))

    def arrays(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        steps = np.asarray(self.steps, dtype=np.int64)
        return steps, {k: np.asarray(v, dtype=np.float64) for k, v in self.curves.items()}


@dataclass
class Lane:
    """One network in training; `Trainer.run_lanes` advances lanes together."""

    seed: int
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    data: Any
    stream: torch.Generator  # the random stream of its batches
    traj: Trajectory
    schedule: LRScheduler | None = None  # stepped once after every optimizer step
    network: str = "main"  # which network of the seed's run (a procedure trains several)
    observed: bool = True  # evaluated on the schedule (False: a network whose curves are unused)
    # The trainer of the lane's own run, when lanes of runs with different entries train
    # together (a tuning study's trials: each its own hyperparameters and global-RNG states);
    # None: the trainer that drives the lanes.
    owner: Trainer | None = None


# (trainer, active lanes, their batches, step) -> per lane: was its loss finite?
# A step function leaves every finite lane's optimizer stepped once.
StepFunction = Callable[["Trainer", list[Lane], list[Any], int], list[bool]]


def eval_steps(steps: int, evals: int) -> list[int]:
    """Step 0, `evals` log-spaced steps in [1, steps], and the final step (deduplicated).

    Log spacing resolves the fast early stages of learning without paying for dense late ones.
    """
    grid = np.unique(np.round(np.geomspace(1, max(steps, 1), max(evals, 1))).astype(int))
    return sorted({0, steps, *grid.tolist()})


def set_mode(optimizer: torch.optim.Optimizer, mode: str) -> None:
    """Call optimizer.train()/eval() if it has them (schedule-free optimizers need this)."""
    method = getattr(optimizer, mode, None)
    if callable(method):
        method()


def plain_steps(trainer: Trainer, lanes: list[Lane], batches: list[Any], step: int) -> list[bool]:
    """One step of each lane by plain autograd on its own model (one-by-one execution).

    With the entry's `closure = true` the optimizer is stepped with a closure that recomputes
    the loss and gradients on the same batch (after the harness's own forward and backward,
    whose gradients SAM-style optimizers use first); without it, no extra pass is paid.
    """
    finite = []
    create_graph = trainer.entry.create_graph
    for lane, batch in zip(lanes, batches, strict=True):
        run = trainer.run_of(lane)
        with run.entry_code(lane.seed, "optimizer.zero_grad", lane.network):
            lane.optimizer.zero_grad(set_to_none=True)
        with run.model_code(lane.seed, lane.network):
            loss = trainer.task.loss(lane.model, batch)
        finite.append(bool(torch.isfinite(loss).item()))
        if not finite[-1]:
            continue
        with warnings.catch_warnings():
            # create_graph's reference cycle (parameter <-> gradient) is broken by the
            # zero_grad(set_to_none=True) that starts every step, so torch's warning is moot.
            warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph")
            with run.entry_rng(lane.seed, lane.network):  # the entry's autograd hooks may draw
                loss.backward(create_graph=create_graph)
        with run.entry_code(lane.seed, "optimizer.step", lane.network):
            if trainer.entry.closure:
                lane.optimizer.step(loss_closure(trainer, lane, batch, create_graph))
            else:
                lane.optimizer.step()
        if lane.schedule is not None:
            with run.entry_code(lane.seed, "schedule.step", lane.network):
                lane.schedule.step()
    return finite


def loss_closure(trainer: Trainer, lane: Lane, batch: Any, create_graph: bool
                 ) -> Callable[[], torch.Tensor]:
    """The closure of `optimizer.step(closure)`: fresh gradients of the loss on the same batch."""
    def closure() -> torch.Tensor:
        with torch.enable_grad():  # optimizers call it from inside their no_grad step
            lane.optimizer.zero_grad(set_to_none=True)
            loss = trainer.task.loss(lane.model, batch)
            loss.backward(create_graph=create_graph)
        return loss
    return closure


def copy_training_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        schedule: LRScheduler | None):
    """A deep copy of (model, optimizer, schedule) as one object graph: the copy's optimizer
    holds the copy's parameters, and its schedule the copy's optimizer.

    Every attribute is copied: `Optimizer.__getstate__` keeps only the state dict, so a plain
    deepcopy (or load_state_dict) would silently reset state an optimizer keeps in its own
    attributes; the same holds for an optimizer that a wrapper holds (Lookahead's inner one,
    SAM's base optimizer), copied the same way, and for the model's parameters' own attributes.
    The step wrapper an LRScheduler installs on its optimizer points at the original (a weak
    reference), so the copy's is installed anew.
    """
    memo: dict[int, Any] = {}
    copied = copy_model(model, memo)
    return copied, attribute_copy(optimizer, memo), attribute_copy(schedule, memo)


def data_versions(data: Any) -> dict[str, int]:
    """The in-place version counter of each tensor of a task's data (a dict of tensors)."""
    if not isinstance(data, dict):
        return {}
    return {name: value._version for name, value in data.items() if isinstance(value, torch.Tensor)}


def copy_model(model: torch.nn.Module, memo: dict[int, Any] | None = None) -> torch.nn.Module:
    """copy.deepcopy(model), its parameters' Python attributes included (muP's `infshape`,
    which its layers read in forward): Parameter.__deepcopy__ drops them."""
    memo = {} if memo is None else memo
    copied = copy.deepcopy(model, memo)
    for old, new in zip(model.parameters(), copied.parameters(), strict=True):
        new.__dict__.update(copy.deepcopy(vars(old), memo))
    return copied


def attribute_copy(obj: Any, memo: dict[int, Any]) -> Any:
    """`obj` (an optimizer or schedule, or None) copied attribute by attribute into `memo`'s
    object graph, the optimizers and schedules among its attributes first."""
    if obj is None or id(obj) in memo:
        return memo.get(id(obj))
    new = object.__new__(type(obj))
    memo[id(obj)] = new
    attrs = {k: v for k, v in vars(obj).items() if not getattr(v, "_wrapped_by_lr_sched", False)}
    for value in attrs.values():  # a wrapper's inner optimizer, directly or in a list or dict
        items = value.values() if isinstance(value, dict) else (
            value if isinstance(value, list | tuple) else [value])
        for item in items:
            if isinstance(item, torch.optim.Optimizer | LRScheduler):
                attribute_copy(item, memo)
    new.__dict__.update(copy.deepcopy(attrs, memo))
    if "step" in vars(obj) and getattr(obj.step, "_wrapped_by_lr_sched", False):
        new.step = counted_step(new)
    return new


def counted_step(optimizer: torch.optim.Optimizer) -> Callable:
    """optimizer.step marked as called, as LRScheduler's own wrapper does (for its warning)."""
    func, ref = type(optimizer).step, weakref.ref(optimizer)

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        opt = ref()
        opt._opt_called = True
        return func.__get__(opt, type(opt))(*args, **kwargs)

    wrapper._wrapped_by_lr_sched = True
    return wrapper


class Trainer:
    """The pieces of one run a task may use: device placement, the optimizer, the loop.

    Task.run (default or special) composes these; it never writes its own training loop.
    Every call into entry code goes through `entry_code`, which lends the seed's own
    global-RNG state and turns an exception into an EntryCodeError naming the entry's line.
    """

    def __init__(self, task: Task, entry: Entry, profile: Profile,
                 on_step: Callable[[int], None] | None = None) -> None:
        self.task = task
        self.entry = entry
        self.profile = profile
        self.on_step = on_step
        self.rngs: dict[tuple[int, str], seeding.EntryRNG] = {}
        # Whether lanes trained together may run as one vmapped batch (False: each by itself,
        # the one-by-one execution a refused batch falls back to).
        self.batch_lanes = True
        # Why a procedure's networks, refused as a batch before their first step, trained one
        # after another instead (suite.batched.train_lanes); recorded in the runs' execution.
        self.lanes_refused: str | None = None
        self.traces: dict[Any, Any] = {}  # traced batched gradients, by shapes (suite.batched)

    def with_entry(self, entry: Entry) -> Trainer:
        """A trainer of the same task for a run of `entry` (its own global-RNG states)."""
        fresh = Trainer(self.task, entry, self.profile, self.on_step)
        fresh.batch_lanes = self.batch_lanes
        return fresh

    def run_of(self, lane: Lane) -> Trainer:
        """The trainer whose entry `lane` runs (see Lane.owner)."""
        return lane.owner if lane.owner is not None else self

    @property
    def device(self) -> torch.device:
        return torch.device(self.profile.device)

    def to_device(self, obj):
        """Move a Module or a dict of tensors to the profile's device and float dtype."""
        dtype = self.profile.torch_dtype
        if isinstance(obj, torch.nn.Module):
            return obj.to(device=self.device, dtype=dtype)
        if isinstance(obj, dict):
            return {k: self.to_device(v) for k, v in obj.items()}
        if isinstance(obj, torch.Tensor):
            return obj.to(self.device, dtype=dtype if obj.is_floating_point() else None)
        return obj

    def entry_rng(self, seed: int, network: str = "main") -> seeding.EntryRNG:
        """The global-RNG state of one network of a seed's run (each network has its own, so
        networks trained side by side draw what they would draw one after another)."""
        key = (seed, network)
        if key not in self.rngs:
            self.rngs[key] = seeding.EntryRNG(seeding.derive_seed(seed, f"network:{network}"),
                                              self.device)
        return self.rngs[key]

    def fork_entry_rng(self, seed: int, parent: str, child: str) -> None:
        """A spawned network continues its parent's global-RNG stream from where it stands."""
        self.entry_rng(seed, child).state = self.entry_rng(seed, parent).state.clone()

    @contextmanager
    def entry_code(self, seed: int, call: str, network: str = "main") -> Iterator[None]:
        """Around a call into entry code: the network's global-RNG state, errors located."""
        with self.entry_rng(seed, network), entry_call(self.entry, call):
            yield

    def make_model(self, seed: int, data: dict[str, torch.Tensor], *, network: str = "main",
                   purpose: str = "init") -> torch.nn.Module:
        """The model one network of a seed trains, on the profile's device: the task's reference
        model, or the architecture entry's (checked against the task's interface).

        Both draw from the generator of (seed, `purpose`); the entry's make_model must draw
        from nothing else. Raises NotApplicable when the task cannot run the entry's model.
        """
        if self.entry.track == "optimizer":
            return self.to_device(self.task.make_model(seed, purpose))
        interface = self.task.interface
        if interface is None:
            raise NotApplicable(f"{self.task.name} is optimizer-only: its metrics are defined "
                                "for its reference model alone")
        rng, host = self.entry_rng(seed, network), seeding.host_rng_states()
        before = (rng.state.clone(), rng.cuda_state.clone() if rng.cuda else None)
        with self.entry_code(seed, "make_model", network):
            model = self.entry.make_model(self.task.view(), seeding.generator(seed, purpose))
        drew = not seeding.same_host_rng_states(host, seeding.host_rng_states())
        drew |= not torch.equal(before[0], rng.state)
        if drew or (rng.cuda and not torch.equal(before[1], rng.cuda_state)):
            raise ModelError(
                f"{self.entry.path / 'entry.py'}: make_model drew from a global RNG (torch's, numpy's "
                "or Python's; nn.Linear and most torch modules do when built); draw only from the "
                "`generator` argument: wrap the construction in "
                "suite.init.from_generator(lambda: ..., generator), or build modules with "
                "device='meta', then .to_empty() and initialise them with "
                "torch.nn.init.*(..., generator=generator)")
        if model is None:
            raise NotApplicable(f"the entry's make_model returned None for {self.task.name} "
                                "(it has no model for this task)")
        meta = next((name for name, t in [*model.named_parameters(), *model.named_buffers()]
                     if t.is_meta), None)
        if meta is not None:
            raise ModelError(
                f"{self.entry.path / 'entry.py'}: make_model returned a model whose {meta!r} is on "
                "the meta device (built with device='meta' and never given storage): call "
                ".to_empty(device='cpu') on it, then initialise its weights with "
                "torch.nn.init.*(..., generator=generator)")
        reused = reuse.returned_before(model) or reuse.trained_before(model)
        reuse.record_built(model)
        if reused is not None:
            raise ModelError(
                f"{self.entry.path / 'entry.py'}: make_model returned a model whose parameter "
                f"{reused!r} is one it returned before (for another seed or network), or lies "
                "where one trained before, with its values: build new tensors on every call (a "
                "cached model or tensor would train one set of weights for every seed, and a later "
                "seed would start from trained weights)")
        missing = interface.missing(model)
        if missing:
            raise NotApplicable(f"the model has no {', '.join(m + '()' for m in missing)}, which "
                                f"{self.task.name} reads (its model interface)")
        model = self.to_device(model)
        self.check_forward(model, data, seed=seed, network=network)
        return model

    def check_forward(self, model: torch.nn.Module, data, *, seed: int, network: str) -> None:
        """The first forward of an architecture entry's model, against the task's interface.
        The probes leave the model's buffers as they were (a BatchNorm's running statistics
        would otherwise start training with the probe batch folded in)."""
        kept = {name: b.detach().clone() for name, b in model.named_buffers() if not is_lazy(b)}
        versions = data_versions(data)  # the probe's input is a view of the task's data
        try:
            self.probe_forward(model, data, seed=seed, network=network)
            self.check_data_of(data, versions, self)
        finally:
            now = dict(model.named_buffers())
            with torch.no_grad():
                for name, value in kept.items():
                    if name in now and now[name].shape == value.shape:
                        now[name].copy_(value)

    def probe_forward(self, model: torch.nn.Module, data, *, seed: int, network: str) -> None:
        x, expected = self.task.probe(data)
        interface = self.task.interface
        try:
            with torch.no_grad(), self.model_code(seed, network, "model's forward"):
                out = model(x)
        except EntryCodeError as err:  # say what the input was: the interface, not a guess
            raise type(err)(f"{err} (the first forward, on {self.task.name}'s input of shape "
                            f"{tuple(x.shape)}: {interface.inputs})") from err
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
        # The profile's dtype too: a forward computing in another one (a .double() inside)
        # would give numbers of another precision than every other entry on the profile.
        dtype = self.profile.torch_dtype
        if shape != tuple(expected) or out.dtype != dtype:
            got = (f"{out.dtype} {shape}" if shape is not None else type(out).__name__)
            raise ModelError(
                f"{self.entry.path / 'entry.py'}: on {self.task.name}, the model maps "
                f"{interface.inputs}, here {tuple(x.shape)}, to {interface.outputs}: expected "
                f"{dtype} of shape {tuple(expected)} (the profile's dtype), got {got}")
        training = model.training
        model.eval()  # dropout would make two forwards differ whatever the model reads
        with torch.no_grad(), self.model_code(seed, network, "model's forward"):
            first, again = model(x), model(x)
            problem = self.task.model_problem(model, x)
        model.train(training)
        if not bool(((first == again) | (first.isnan() & again.isnan())).all()):
            # F.dropout(x, p) without training=self.training (a NaN output is the same twice)
            raise ModelError(
                f"{self.entry.path / 'entry.py'}: on {self.task.name}, the model's forward in eval mode "
                "is random or stateful (two calls on the same input differ), so every evaluation would "
                "measure one draw; make its randomness depend on self.training (nn.Dropout does; with "
                "F.dropout, pass training=self.training)")
        if problem:
            raise ModelError(f"{self.entry.path / 'entry.py'}: on {self.task.name}, the model must "
                             f"map {interface.inputs} to {interface.outputs}, but {problem}")

    def model_code(self, seed: int, network: str = "main", call: str = "model's forward"):
        """Around a forward of the model: the entry's code on the architecture track (its
        errors located, its global-RNG draws its own, e.g. dropout), the task's otherwise."""
        if self.entry.track == "optimizer":
            return contextlib.nullcontext()
        return self.entry_code(seed, call, network)

    def make_optimizer(self, model: torch.nn.Module, *, seed: int, network: str = "main"
                       ) -> tuple[torch.optim.Optimizer, LRScheduler | None]:
        """The entry's optimizer for `model`, and its schedule if it defines `make_schedule`
        (an architecture entry without make_optimizer: the task's reference optimizer)."""
        with self.model_code(seed, network, "model.param_roles"):
            view = self.task.view(model)
        with self.entry_code(seed, "make_optimizer", network):
            optimizer = self.entry.make_optimizer(model, view)
        with self.entry_code(seed, "make_schedule", network):
            return optimizer, self.entry.make_schedule(optimizer, view)

    def observe(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, data, *,
                seed: int, network: str = "main") -> dict[str, float]:
        """The task's evaluation, with the optimizer in eval mode (schedule-free optimizers)."""
        with self.entry_code(seed, "optimizer.eval", network):
            set_mode(optimizer, "eval")
        model.eval()  # dropout off, normalisation on running statistics, as at evaluation
        with torch.no_grad(), self.model_code(seed, network):
            values = self.task.observe(model, data)
        model.train()
        with self.entry_code(seed, "optimizer.train", network):
            set_mode(optimizer, "train")
        return values

    def observe_lane(self, lane: Lane) -> dict[str, float]:
        return self.run_of(lane).observe(lane.model, lane.optimizer, lane.data, seed=lane.seed,
                                         network=lane.network)

    def train(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, data, *,
              seed: int, steps: int, start: int = 0, purpose: str = "batches",
              trajectory: Trajectory | None = None, schedule: LRScheduler | None = None,
              network: str = "main") -> Trajectory:
        """Train one network from step `start` to `steps` (one-by-one execution).

        `purpose` names the random stream of the batches (two children spawned from one parent
        pass different purposes to see different data orders).
        """
        traj = trajectory if trajectory is not None else Trajectory()
        traj.data = data
        lane = Lane(seed, model, optimizer, data, seeding.generator(seed, purpose, self.device), traj,
                    schedule, network)
        self.run_lanes([lane], start=start, end=steps, step_function=plain_steps)
        return traj

    def run_lanes(self, lanes: list[Lane], *, start: int, end: int,
                  step_function: StepFunction) -> None:
        """Advance `lanes` from step `start` to `end`, evaluating on the task's log-spaced schedule.

        A lane whose loss is non-finite stops there: status "diverged" and the step; the others
        go on. Lanes trained together must not draw from Python's or numpy's global RNG (their
        draws would interleave): that is checked at every evaluation step and at the end.
        """
        schedule = set(eval_steps(self.task.config["steps"], self.task.config["evals"]))
        versions = [data_versions(lane.data) for lane in lanes]
        for lane in lanes:
            lane.traj.not_applicable = self.task.inapplicable(lane.model)
            with self.run_of(lane).entry_code(lane.seed, "optimizer.train", lane.network):
                set_mode(lane.optimizer, "train")
            lane.model.train()
            if lane.observed and start in schedule and start not in lane.traj.steps:
                lane.traj.record(start, self.observe_lane(lane))
        host = seeding.host_rng_states() if len(lanes) > 1 else None
        active = list(lanes)
        for step in range(start + 1, end + 1):
            with one_thread():
                batches = [self.task.sample_batch(lane.data, step, lane.stream) for lane in active]
            finite = step_function(self, active, batches, step)
            for lane, ok in zip(active, finite, strict=True):
                if not ok:
                    lane.traj.status, lane.traj.diverged_step = "diverged", step
            active = [lane for lane, ok in zip(active, finite, strict=True) if ok]
            for lane in active:
                lane.traj.steps_done += 1
            if self.on_step is not None:
                self.on_step(len(active))
            if not active:
                break
            if step in schedule:
                host = check_host_rngs(host)
                for lane in (lane for lane in active if lane.observed):
                    lane.traj.record(step, self.observe_lane(lane))
                self.check_data(lanes, versions)
        check_host_rngs(host)
        self.check_data(lanes, versions)
        for lane in lanes:
            if self.run_of(lane).entry.track != "optimizer":
                reuse.record_trained(lane.model)

    def check_data(self, lanes: list[Lane], versions: list[dict[str, int]]) -> None:
        """Refuse a run whose model changed the task's data in place (`x.div_()` on its input):
        every later step and metric, the task's own references included, would read the
        changed tensors."""
        for lane, before in zip(lanes, versions, strict=True):
            self.check_data_of(lane.data, before, self.run_of(lane))

    def check_data_of(self, data: Any, before: dict[str, int], run: Trainer) -> None:
        """Raise if a tensor of `data` was written in place since `before` (data_versions)."""
        changed = [name for name, v in data_versions(data).items() if before.get(name, v) != v]
        if not changed:
            return
        where = (f"{run.entry.path / 'entry.py'}: the model" if self.entry.track != "optimizer"
                 else f"{self.task.name}: the task's code")
        error = ModelError if self.entry.track != "optimizer" else RuntimeError
        raise error(f"{where} wrote to the task's data tensor {changed[0]!r} in place (an in-place "
                    "op such as x.div_(), x += or x[...] = on its input): the later steps and "
                    "metrics would read what it wrote; compute out of place (x = x / ...)")


@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one intra-op thread for the duration (drawing batches).

    Drawing is serial (each lane's one generator) and its ops are small: with two threads,
    every op pays for waking the idle one (up to 3× the op's own time), which is all the
    second thread would add. The numbers are the same on any thread count for the suite's
    tasks (tests/test_conformance.py checks every task's batches bit for bit).
    """
    with torch_threads(1):
        yield


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch on `threads` intra-op threads for the duration, then back to what it had."""
    before = torch.get_num_threads()
    if threads == before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def check_host_rngs(before: tuple | None) -> tuple | None:
    """Refuse a batch whose entry code drew from Python's or numpy's global RNG since `before`."""
    if before is None:
        return None
    now = seeding.host_rng_states()
    if not seeding.same_host_rng_states(before, now):
        raise BatchingUnsupported("the entry's code draws from Python's or numpy's global RNG, "
                                  "so seeds trained together would share one stream")
    return now
