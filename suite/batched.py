"""Seed-batched execution: the seeds of one (task, entry) trained as one vectorized computation.

Task files are written for a single seed. Here the S seeds' parameters are stacked into (S, ...)
tensors, `Task.loss` is vmapped over them with `torch.func`, and every seed's model keeps its own
parameters as views (row i of each stack), so evaluation, summaries and the entry's optimizer
see exactly the single-seed objects of the one-by-one loop (`suite.loop.Trainer.train`).

Optimizers: each seed gets its own instance from the entry's `make_optimizer`, built on its own
views, so an optimizer whose state couples all parameters (a global gradient norm, a global
step-size estimate, a per-tensor trust ratio) sees one seed's parameters alone. The fast path:
when every seed's optimizer is an exact instance of a torch optimizer whose update is elementwise
(`ELEMENTWISE`), one instance over the stacks does what the S instances would, in S times fewer
calls.

A seed whose loss is non-finite is frozen at that step and recorded as diverged, as in the
one-by-one loop; the others finish. vmap computes each seed's loss and gradient separately, so
a diverged seed's NaNs never reach another seed's numbers.

Speed: the vmapped gradient is traced once into a graph of aten ops (`make_fx`), which removes
torch.func's per-call Python overhead. Safety: at the first step one seed's vmapped loss and
gradients are checked against plain autograd on its own model; a task whose loss cannot be
vmapped faithfully raises BatchingUnsupported and the runner runs its seeds one by one.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils import _pytree as pytree

from suite import seeding
from suite.loop import Trainer, Trajectory, eval_steps, set_mode
from suite.task import Task

# torch optimizers whose update of each parameter entry depends only on that entry's gradient
# history, the group's hyperparameters and the step count: one instance over (S, ...) stacks is
# then S independent optimizers. Exact classes only: a subclass may override `step`.
ELEMENTWISE = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop,
               torch.optim.Adagrad)


class BatchingUnsupported(RuntimeError):
    """The task or its model cannot be seed-batched; the runner runs its seeds one by one."""


def batchable(task: Task) -> bool:
    """True when the task uses the default procedure (one model, one optimizer per seed).

    A task that overrides `Task.run` (spawning children, two networks) keeps its own procedure
    and runs seed by seed.
    """
    return type(task).run is Task.run


class SeedLoss(nn.Module):
    """`task.loss(model, batch)` as a module call, so functional_call can swap the parameters.

    (functional_call only swaps parameters for the duration of a module's forward; the loss
    may read parameters directly, e.g. `model.B`, rather than calling `model(x)`.)
    """

    def __init__(self, task: Task, model: nn.Module) -> None:
        super().__init__()
        self.task = task
        self.model = model

    def forward(self, batch: Any) -> torch.Tensor:
        return self.task.loss(self.model, batch)


class SliceableParameterList(nn.ParameterList):
    """An nn.ParameterList whose slices keep the tensors functional_call swapped in.

    torch's `ParameterList[a:b]` builds a new list and wraps each tensor in a new Parameter,
    which detaches it from torch.func's transforms: the gradient through a sliced list would be
    lost. Slices here are plain lists of the same tensors.
    """

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return [self[i] for i in range(len(self))[idx]]
        return super().__getitem__(idx)


def loss_template(task: Task, model: nn.Module) -> SeedLoss:
    """A copy of one seed's model, wrapped for functional_call, with sliceable ParameterLists."""
    template = copy.deepcopy(model)
    for module in template.modules():
        if type(module) is nn.ParameterList:
            module.__class__ = SliceableParameterList
    return SeedLoss(task, template)


def check_gradients(task: Task, model: nn.Module, batch: Any, loss: torch.Tensor,
                    grads: dict[str, torch.Tensor]) -> None:
    """Compare one seed's vmapped loss and gradients with plain autograd on its own model.

    A loss that rebuilds parameters (e.g. wraps them in new nn.Parameters) or hides state
    would make the vmapped gradients silently wrong; checking once, at the first step, turns
    that into BatchingUnsupported and the seeds run one by one.
    """
    names, params = zip(*model.named_parameters(), strict=True)
    reference = task.loss(model, batch)
    expected = torch.autograd.grad(reference, params, allow_unused=True)
    scale = lambda t: 1e-4 * float(t.abs().max()) + 1e-30  # noqa: E731 - tolerance of one tensor
    if abs(float(reference.detach()) - float(loss.detach())) > scale(reference.detach()):
        raise BatchingUnsupported("the vmapped loss differs from the single-seed loss")
    for name, want in zip(names, expected, strict=True):
        want = torch.zeros_like(grads[name]) if want is None else want
        if float((grads[name] - want).abs().max()) > scale(want):
            raise BatchingUnsupported(
                f"the vmapped gradient of {name!r} differs from the single-seed gradient (does the "
                "loss rebuild parameters, e.g. wrap them in new nn.Parameters?)")


def stack_parameters(models: list[nn.Module]) -> dict[str, torch.Tensor]:
    """Stack each parameter over seeds into one (S, ...) tensor; each model's parameter becomes
    a view of its row, so in-place optimizer updates on a seed's parameter write into the stack.
    """
    named = [dict(m.named_parameters()) for m in models]
    if any(True for m in models for _ in m.buffers()):
        raise BatchingUnsupported("the model has buffers (state outside the parameters)")
    names = list(named[0])
    stacks = {}
    for name in names:
        rows = [params.get(name) for params in named]
        if any(r is None or r.shape != rows[0].shape or r.dtype != rows[0].dtype for r in rows):
            raise BatchingUnsupported(f"parameter {name!r} differs in shape or dtype across seeds")
        stacks[name] = torch.stack([r.detach() for r in rows])  # (S, *shape)
        for i, param in enumerate(rows):
            param.data = stacks[name][i]
    return stacks


def stack_batches(batches: list[Any]) -> tuple[Any, Any]:
    """One pytree whose tensors are stacked over seeds (S, ...), and vmap's in_dims for it.

    Non-tensor leaves (a size, a flag) are passed unbatched and must agree across seeds.
    """
    leaves, spec = pytree.tree_flatten(batches[0])
    others = [pytree.tree_flatten(b) for b in batches[1:]]
    if any(s != spec for _, s in others):
        raise BatchingUnsupported("sample_batch returned differently structured batches per seed")
    stacked, dims = [], []
    for j, leaf in enumerate(leaves):
        column = [leaf] + [o[0][j] for o in others]
        if isinstance(leaf, torch.Tensor):
            stacked.append(torch.stack(column))
            dims.append(0)
        else:
            if any(v != leaf for v in column):
                raise BatchingUnsupported("a non-tensor batch value differs across seeds")
            stacked.append(leaf)
            dims.append(None)
    return pytree.tree_unflatten(stacked, spec), pytree.tree_unflatten(dims, spec)


def same_value(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def stacked_optimizer(optimizers: list[torch.optim.Optimizer], models: list[nn.Module],
                      stacks: dict[str, torch.Tensor]) -> torch.optim.Optimizer | None:
    """One optimizer over the stacks that equals the S per-seed optimizers, or None if unsure.

    Only for exact ELEMENTWISE classes whose per-seed instances have the same groups (same
    parameters by name, same hyperparameters) and no state yet.
    """
    cls = type(optimizers[0])
    if cls not in ELEMENTWISE or any(type(o) is not cls or o.state for o in optimizers):
        return None
    names = [{id(p): n for n, p in m.named_parameters()} for m in models]
    groups = []
    for g, group in enumerate(optimizers[0].param_groups):
        hyper = {k: v for k, v in group.items() if k != "params"}
        params = [names[0].get(id(p)) for p in group["params"]]
        if None in params:
            return None  # the optimizer holds a tensor that is not one of the model's parameters
        for seed, opt in enumerate(optimizers[1:], start=1):
            other = opt.param_groups[g] if g < len(opt.param_groups) else None
            if (other is None or len(opt.param_groups) != len(optimizers[0].param_groups)
                    or [names[seed].get(id(p)) for p in other["params"]] != params
                    or not all(same_value(v, other.get(k)) for k, v in hyper.items())):
                return None
        groups.append({"params": [stacks[n] for n in params], **hyper})
    accepted = inspect.signature(cls).parameters
    return cls(groups, **{k: v for k, v in optimizers[0].defaults.items() if k in accepted})


def signature(batch: Any) -> Any:
    """What a traced graph depends on: the batch's structure, tensor shapes and other values."""
    leaves, spec = pytree.tree_flatten(batch)
    return str(spec), tuple((tuple(x.shape), x.dtype, x.device) if isinstance(x, torch.Tensor)
                            else x for x in leaves)


def gradient_function(seed_loss, stacks: dict[str, torch.Tensor], batch: Any, dims: Any):
    """vmap(grad_and_value(seed_loss)) over the seeds, traced once into a graph of aten ops.

    At these model sizes the Python overhead of torch.func's transforms (~1 ms a call) costs
    more than the arithmetic; the traced graph replays the same kernels without it. vmap
    already forbids reading tensor values in Python (`.item()`, data-dependent branches), so
    the graph depends only on the batch signature, and a batch of another signature gets its
    own trace. If tracing fails, the eager transform is used.
    """
    eager = vmap(grad_and_value(seed_loss), in_dims=(0, dims))
    try:
        return make_fx(eager)(stacks, batch)
    except Exception:  # noqa: BLE001 - the eager transform runs the same computation
        return eager


def train_seeds(task: Task, trainer: Trainer, seeds: list[int]) -> list[Trajectory]:
    """Train `seeds` of `task` together with the default procedure; one Trajectory per seed.

    Each trajectory is what `task.run(seed, trainer)` returns for that seed, up to the
    floating-point rounding of the batched kernels. Raises BatchingUnsupported (before any
    optimizer step) when the task cannot be batched faithfully.
    """
    if not batchable(task):
        raise BatchingUnsupported(f"task {task.name} overrides Task.run")
    steps, S = task.config["steps"], len(seeds)
    datas = [trainer.to_device(task.make_data(seed)) for seed in seeds]
    models = [trainer.to_device(task.make_model(seed)) for seed in seeds]
    template = loss_template(task, models[0])
    stacks = stack_parameters(models)  # name -> (S, ...); models[i]'s parameters are rows i
    optimizers = [trainer.make_optimizer(m.parameters()) for m in models]
    shared = stacked_optimizer(optimizers, models, stacks)
    params = [dict(m.named_parameters()) for m in models]
    gens = [seeding.generator(seed, "batches", device=trainer.device) for seed in seeds]
    trajs = [Trajectory(data=data) for data in datas]
    schedule = set(eval_steps(steps, task.config["evals"]))

    def seed_loss(flat: dict[str, torch.Tensor], batch) -> torch.Tensor:
        return functional_call(template, {f"model.{n}": t for n, t in flat.items()}, (batch,))

    # Full-batch tasks (the default sample_batch) see the same data every step: stack it once.
    fixed = type(task).sample_batch is Task.sample_batch
    batches = datas if fixed else None
    batch, dims = stack_batches(datas) if fixed else (None, None)
    traced: dict[Any, Any] = {}  # batch signature -> traced gradient function

    active = list(range(S))
    for i in active:
        set_mode(optimizers[i], "train")
        models[i].train()
        if 0 in schedule:
            trajs[i].record(0, trainer.observe(models[i], optimizers[i], datas[i]))
    for step in range(1, steps + 1):
        if not fixed:
            batches = [task.sample_batch(datas[i], step, gens[i]) for i in range(S)]
            batch, dims = stack_batches(batches)
        key = signature(batch)
        if key not in traced:
            traced[key] = gradient_function(seed_loss, stacks, batch, dims)
        grads, losses = traced[key](stacks, batch)  # grads: name -> (S, ...); losses: (S,)
        finite = torch.isfinite(losses).tolist()
        if step == 1 and any(finite):
            i = finite.index(True)
            check_gradients(task, models[i], batches[i], losses[i],
                            {name: g[i] for name, g in grads.items()})
        for i in [i for i in active if not finite[i]]:
            trajs[i].status, trajs[i].diverged_step = "diverged", step
            active.remove(i)
        if not active:
            break
        if shared is not None:
            step_shared(shared, stacks, grads, frozen=[i for i in range(S) if i not in active])
        else:
            for i in active:
                for name, g in grads.items():
                    params[i][name].grad = g[i]
                optimizers[i].step()
        for i in active:
            trajs[i].steps_done += 1
        if trainer.on_step is not None:
            trainer.on_step(len(active))
        if step in schedule:
            for i in active:
                trajs[i].record(step, trainer.observe(models[i], optimizers[i], datas[i]))
    return trajs


def step_shared(optimizer: torch.optim.Optimizer, stacks: dict[str, torch.Tensor],
                grads: dict[str, torch.Tensor], *, frozen: list[int]) -> None:
    """One step of the stacked optimizer; the rows of diverged (frozen) seeds do not move.

    Their gradients are zeroed (no NaN arithmetic) and their parameters restored after the
    step; their optimizer state rows change, but nothing reads them again.
    """
    kept = {}
    for name, stack in stacks.items():
        stack.grad = grads[name]
        if frozen:
            stack.grad[frozen] = 0.0
            kept[name] = stack[frozen].clone()
    optimizer.step()
    for name, rows in kept.items():
        stacks[name][frozen] = rows
