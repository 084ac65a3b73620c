"""The training loop of one run: seeding, evaluation schedule, eval mode and divergence."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from suite import seeding
from suite.entry import Entry
from suite.profiles import Profile
from suite.task import Task


@dataclass
class Trajectory:
    """What one run recorded: evaluation steps, curves aligned with them, and how it ended."""

    steps: list[int] = field(default_factory=list)
    curves: dict[str, list[float]] = field(default_factory=dict)
    status: str = "ok"  # ok | diverged
    diverged_step: int | None = None
    steps_done: int = 0
    data: Any = None  # the run's data, handed back to Task.summarize

    def record(self, step: int, values: dict[str, float]) -> None:
        self.steps.append(step)
        for name, value in values.items():
            self.curves.setdefault(name, []).append(float(value))

    def arrays(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        steps = np.asarray(self.steps, dtype=np.int64)
        return steps, {k: np.asarray(v, dtype=np.float64) for k, v in self.curves.items()}


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


class Trainer:
    """The pieces of one run a task may use: device placement, the optimizer, the loop.

    Task.run (default or special) composes these; it never writes its own training loop.
    """

    def __init__(self, task: Task, entry: Entry, profile: Profile,
                 on_step: Callable[[int], None] | None = None) -> None:
        self.task = task
        self.entry = entry
        self.profile = profile
        self.on_step = on_step

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

    def make_optimizer(self, params) -> torch.optim.Optimizer:
        return self.entry.make_optimizer(params, self.task)

    def observe(self, model, optimizer, data) -> dict[str, float]:
        set_mode(optimizer, "eval")
        with torch.no_grad():
            values = self.task.observe(model, data)
        set_mode(optimizer, "train")
        return values

    def train(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, data, *,
              seed: int, steps: int, start: int = 0, purpose: str = "batches",
              trajectory: Trajectory | None = None) -> Trajectory:
        """Train from step `start` to `steps`, evaluating on the task's log-spaced schedule.

        A non-finite loss stops the run: status "diverged" and the step it happened at.
        `purpose` names the random stream of the batches (two children spawned from one parent
        pass different purposes to see different data orders).
        """
        traj = trajectory if trajectory is not None else Trajectory()
        traj.data = data
        schedule = set(eval_steps(self.task.config["steps"], self.task.config["evals"]))
        gen = seeding.generator(seed, purpose, device=self.device)
        set_mode(optimizer, "train")
        model.train()
        if start in schedule and start not in traj.steps:
            traj.record(start, self.observe(model, optimizer, data))
        for step in range(start + 1, steps + 1):
            batch = self.task.sample_batch(data, step, gen)
            optimizer.zero_grad(set_to_none=True)
            loss = self.task.loss(model, batch)
            if not torch.isfinite(loss).item():
                traj.status, traj.diverged_step = "diverged", step
                return traj
            loss.backward()
            optimizer.step()
            traj.steps_done += 1
            if self.on_step is not None:
                self.on_step(1)
            if step in schedule:
                traj.record(step, self.observe(model, optimizer, data))
        return traj
