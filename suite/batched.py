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
torch.func's per-call Python overhead. Safety (see `SeedBatch`): at the first step every seed's
vmapped loss and gradients are checked against plain autograd on its own model, and the stacked
optimizer's update against the seeds' own optimizers; a batch that cannot be trusted raises
BatchingUnsupported and the runner runs its seeds one by one.
"""

from __future__ import annotations

import copy
import functools
import inspect
import re
import warnings
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils import _pytree as pytree

from suite import seeding
from suite.entry import Entry, entry_code_error, entry_frames
from suite.loop import (
    BatchingUnsupported,
    Lane,
    Trainer,
    Trajectory,
    check_host_rngs,
    copy_model,
    one_thread,
    plain_steps,
)
from suite.task import Task

# torch optimizers whose update of each parameter entry depends only on that entry's gradient
# history, the group's hyperparameters and the step count: one instance over (S, ...) stacks is
# then S independent optimizers. Exact classes only: a subclass may override `step`.
ELEMENTWISE = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop,
               torch.optim.Adagrad)


def batchable(task: Task | type[Task]) -> bool:
    """True when the task (or task class) uses the default procedure (one model, one optimizer
    per seed). A task that overrides `Task.run` (spawning children, two networks) keeps its own
    procedure and runs seed by seed.
    """
    cls = task if isinstance(task, type) else type(task)
    return cls.run is Task.run


def seed_batchable(task: Task | type[Task]) -> bool:
    """True when several seeds of the task can run side by side: the default procedure, or a
    procedure that implements Task.run_seeds."""
    cls = task if isinstance(task, type) else type(task)
    return batchable(cls) or cls.run_seeds is not Task.run_seeds


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
    template = copy_model(model)
    for module in template.modules():
        if type(module) is nn.ParameterList:
            module.__class__ = SliceableParameterList
    return SeedLoss(task, template)


def seed_loss_function(template: SeedLoss):
    """(stacked-parameter rows by name, batch) -> one seed's loss: what vmap maps over seeds.

    The Python attributes of the model's parameters (muP's `infshape`, which its layers read in
    forward) are set on the tensors swapped in, which would not have them."""
    extras = {n: dict(vars(p)) for n, p in template.model.named_parameters() if vars(p)}

    def seed_loss(flat: dict[str, torch.Tensor], batch) -> torch.Tensor:
        for name, attributes in extras.items():
            vars(flat[name]).update(attributes)
        return functional_call(template, {f"model.{n}": t for n, t in flat.items()}, (batch,))
    return seed_loss


def check_gradients(task: Task, model: nn.Module, batch: Any, loss: torch.Tensor,
                    grads: dict[str, torch.Tensor]) -> None:
    """Compare one seed's vmapped loss and gradients with plain autograd on its own model.

    A loss that rebuilds parameters (e.g. wraps them in new nn.Parameters) or hides state
    would make the vmapped gradients silently wrong; checking once, at the first step, turns
    that into BatchingUnsupported and the seeds run one by one.

    Each tensor may differ by 1e-4 of its own largest gradient plus 1e-5 of the model's: a
    gradient that is zero in exact arithmetic (a bias before a LayerNorm that removes it) is
    rounding noise, ~1e-8 of the model's largest, which vmap's kernels round otherwise.
    """
    names, params = zip(*model.named_parameters(), strict=True)
    reference = task.loss(model, batch)
    found = torch.autograd.grad(reference, params, allow_unused=True)
    expected = [torch.zeros_like(grads[n]) if g is None else g for n, g in zip(names, found, strict=True)]
    largest = max((float(g.abs().max()) for g in expected if g.numel()), default=0.0)
    scale = lambda t: 1e-4 * float(t.abs().max()) + 1e-30  # noqa: E731 - tolerance of one tensor
    if abs(float(reference.detach()) - float(loss.detach())) > scale(reference.detach()):
        raise BatchingUnsupported("the vmapped loss differs from the single-seed loss")
    for name, want in zip(names, expected, strict=True):
        if float((grads[name] - want).abs().max()) > scale(want) + 1e-5 * largest:
            raise BatchingUnsupported(
                f"the vmapped gradient of {name!r} differs from the single-seed gradient (does the "
                "loss rebuild parameters, e.g. wrap them in new nn.Parameters?)")


def vmap_failure(err: Exception, entry: Entry) -> BatchingUnsupported | None:
    """Why the vmapped loss failed, where that is no fault of ldbench's (None otherwise: its own
    bug keeps its traceback). The seeds then run one by one, where this may well work."""
    if isinstance(err, RuntimeError) and "randomness" in str(err):
        # Dropout and the like: each seed must draw from its own network's stream, which
        # one vmapped call cannot give; one by one, each does (the entry's RNG is lent).
        return BatchingUnsupported("the model draws random numbers in its forward (e.g. dropout), "
                                   "which seeds trained together cannot each draw from their own stream")
    if entry_frames(err, entry):
        # The entry's model failed under torch.func (an op vmap cannot batch, .item(), code that
        # needs nn.Parameters where functional_call passes tensors): one line naming its line.
        return BatchingUnsupported(str(entry_code_error(err, entry, "model's forward under torch.func")))
    return None


def stack_parameters(models: list[nn.Module]) -> dict[str, torch.Tensor]:
    """Stack each parameter over seeds into one (S, ...) tensor; each model's parameter becomes
    a view of its row, so in-place optimizer updates on a seed's parameter write into the stack.
    """
    named = [dict(m.named_parameters()) for m in models]
    buffer = next((name for m in models for name, _ in m.named_buffers()), None)
    if buffer is not None:  # even a constant one: its seeds' values are not checked to agree
        raise BatchingUnsupported(f"the model has buffers (state outside the parameters), "
                                  f"e.g. {buffer!r}")
    frozen = [name for params in named for name, p in params.items() if not p.requires_grad]
    if frozen:  # the stacks' gradients would cover them, and the optimizer would move them
        raise BatchingUnsupported(f"parameter {frozen[0]!r} is frozen (requires_grad=False)")
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


# Keys of a param group that choose an implementation, not the update (a merged optimizer
# chooses its own; a schedule never sets them).
IMPLEMENTATION = ("params", "foreach", "fused", "capturable", "differentiable")


def group_names(optimizers: list[torch.optim.Optimizer], models: list[nn.Module]
                ) -> list[list[str]] | None:
    """The parameter names of each param group, or None unless every seed's optimizer is the
    same exact ELEMENTWISE class with groups of the same parameters (by name)."""
    cls = type(optimizers[0])
    if cls not in ELEMENTWISE or any(type(o) is not cls or stepped_otherwise(o) for o in optimizers):
        return None
    names = [{id(p): n for n, p in m.named_parameters()} for m in models]
    found = [[names[0].get(id(p)) for p in g["params"]] for g in optimizers[0].param_groups]
    for seed, opt in enumerate(optimizers):
        mine = [[names[seed].get(id(p)) for p in g["params"]] for g in opt.param_groups]
        if mine != found or any(None in params for params in mine):
            return None  # other groups, or a tensor that is not one of the model's parameters
    return found


def stepped_otherwise(optimizer: torch.optim.Optimizer) -> bool:
    """Whether `optimizer.step()` does more than its class's step: step hooks (its own or global
    ones) or a method replaced on the instance, which a fresh instance over the stacks would not
    run (a learning rate halved by a post-hook every 100 steps; gradients clipped by a pre-hook).
    The seeds' own optimizers then step, each running its hooks."""
    from torch.optim import optimizer as torch_optimizer
    hooks = (optimizer._optimizer_step_pre_hooks, optimizer._optimizer_step_post_hooks,
             torch_optimizer._global_optimizer_pre_hooks, torch_optimizer._global_optimizer_post_hooks)
    replaced = any(callable(v) and hasattr(type(optimizer), k) and not counted_by_schedule(optimizer, k, v)
                   for k, v in vars(optimizer).items())
    return any(hooks) or replaced


def counted_by_schedule(optimizer: torch.optim.Optimizer, name: str, method) -> bool:
    """Whether an instance attribute is the wrapper torch's LR schedulers put on `step` (it only
    records that step was called) around the class's own step."""
    return (name == "step" and getattr(method, "_wrapped_by_lr_sched", False)
            and getattr(method, "__wrapped__", None) is type(optimizer).step)


def hook_problem(models: list[nn.Module]) -> str:
    """Why hooks on the seeds' models make a batch untrustworthy, or '': the vmapped loss runs
    a template copy of the model and its gradients are assigned to the parameters, so forward
    and backward hooks of a seed's modules and autograd hooks on its parameters (LOMO's fused
    update, gradient noise or scaling) would not run as they do one by one."""
    from torch.nn.modules import module as torch_module
    for kind in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks"):
        if getattr(torch_module, kind, None):
            return f"a global module hook is registered (torch.nn.modules.module.{kind})"
    for model in models:
        for name, module in model.named_modules():
            for kind in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
                if getattr(module, kind, None):
                    return (f"module {name or '(the model)'} has {kind.strip('_').replace('_', ' ')}, which "
                            "the batch's vmapped forward and backward would not run for each seed")
        for name, param in model.named_parameters():
            if param._backward_hooks or getattr(param, "_post_accumulate_grad_hooks", None):
                return (f"parameter {name!r} has an autograd hook (register_hook or "
                        "register_post_accumulate_grad_hook), which the batch's gradients would not run")
    return ""


def hyperparameters(group: dict) -> dict:
    return {k: v for k, v in group.items() if k != "params"}


def stacked_optimizer(optimizers: list[torch.optim.Optimizer], models: list[nn.Module],
                      stacks: dict[str, torch.Tensor]) -> torch.optim.Optimizer | None:
    """One optimizer over the stacks that equals the S per-seed optimizers, or None if unsure.

    Only for exact ELEMENTWISE classes whose per-seed instances have the same groups (same
    parameters by name, same hyperparameters). State they already hold (a spawned child's, a
    procedure's next phase) is stacked into it (`stack_state`); `unstack_state` hands it back.
    """
    params = group_names(optimizers, models)
    if params is None:
        return None
    groups = []
    for g, names in enumerate(params):
        hyper = hyperparameters(optimizers[0].param_groups[g])
        if not all(same_value(v, opt.param_groups[g].get(k)) for opt in optimizers[1:]
                   for k, v in hyper.items()):
            return None  # other hyperparameters per seed: see merged_optimizer
        groups.append({"params": [stacks[n] for n in names], **hyper})
    cls = type(optimizers[0])
    accepted = inspect.signature(cls).parameters
    defaults = {k: v for k, v in optimizers[0].defaults.items() if k in accepted}
    shared = fused(cls, groups, defaults) or cls(groups, **defaults)
    return shared if stack_state(shared, optimizers, models, stacks) else None


def merged_optimizer(optimizers: list[torch.optim.Optimizer], models: list[nn.Module]
                     ) -> tuple[torch.optim.Optimizer, list[list[int]]] | None:
    """One instance holding every seed's param groups (its own parameters, which are rows of the
    stacks, and its own hyperparameters), or None if unsure: for runs whose hyperparameters
    differ (a tuning study's trials), where one stacked optimizer cannot serve. Also returns,
    per seed and group, the index of the merged group that holds it.

    Same ELEMENTWISE class and structure as for stacking; torch steps its groups one after
    another with their own hyperparameters, so this is the S optimizers in one `step` call,
    with the multi-tensor (foreach) implementation: 6x faster than S single-tensor steps for
    16 seeds of Adam at teacher-student's size. Groups with the same hyperparameters (the
    networks of one trial in a procedure) are one group: fewer, larger foreach calls. The state
    is a copy of the seeds' (handed back by `finish_merged`).
    """
    if group_names(optimizers, models) is None:
        return None
    cls = type(optimizers[0])
    accepted = inspect.signature(cls).parameters
    if "foreach" not in accepted or optimizers[0].defaults.get("differentiable"):
        return None
    groups: list[dict] = []
    where: list[list[int]] = []
    for opt in optimizers:
        where.append([])
        for group in opt.param_groups:
            hyper = {**hyperparameters(group), "foreach": not group.get("fused")}
            same = [j for j, m in enumerate(groups) if m.keys() - {"params"} == hyper.keys()
                    and all(same_value(v, m[k]) for k, v in hyper.items())]
            if same:
                groups[same[0]]["params"] += list(group["params"])
            else:
                groups.append({"params": list(group["params"]), **hyper})
            where[-1].append(same[0] if same else len(groups) - 1)
    defaults = {k: v for k, v in optimizers[0].defaults.items() if k in accepted}
    merged = cls(groups, **defaults)
    for opt in optimizers:
        for p, state in opt.state.items():
            merged.state[p] = {k: v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)
                               for k, v in state.items()}
    return merged, where


def finish_merged(merged: torch.optim.Optimizer, optimizers: list[torch.optim.Optimizer]) -> None:
    """Hand the merged optimizer's state back to the seeds' own optimizers."""
    for opt in optimizers:
        for group in opt.param_groups:
            for p in group["params"]:
                if p in merged.state:
                    opt.state[p] = merged.state[p]


def fused(cls: type[torch.optim.Optimizer], groups: list[dict], defaults: dict
          ) -> torch.optim.Optimizer | None:
    """The stacked optimizer with torch's fused kernel (one pass over each stack instead of one
    per arithmetic op: 3-6x faster on CPU for Adam), or None where torch has none for it.

    Same update as the seeds' single-tensor or foreach implementation up to float32 rounding
    (the first step's check compares them, as for every stacked step).
    """
    if "fused" not in inspect.signature(cls).parameters or defaults.get("differentiable"):
        return None
    settings = {"fused": True, "foreach": None}
    try:
        return cls([{**g, **settings} for g in groups], **{**defaults, **settings})
    except (RuntimeError, ValueError, TypeError):  # a device, dtype or option fused lacks
        return None


def seed_params(models: list[nn.Module], name: str) -> list[torch.Tensor]:
    return [dict(m.named_parameters())[name] for m in models]


def stack_state(shared: torch.optim.Optimizer, optimizers: list[torch.optim.Optimizer],
                models: list[nn.Module], stacks: dict[str, torch.Tensor]) -> bool:
    """Put the seeds' optimizer state into `shared`, stacked per parameter; False if it cannot.

    A state entry with the parameter's shape (Adam's moments) is stacked over seeds; any other
    (the step count) must be equal across seeds and is shared.
    """
    for name, stack in stacks.items():
        states = [opt.state.get(p, {}) for opt, p in zip(optimizers, seed_params(models, name), strict=True)]
        if not any(states):
            continue
        if any(set(st) != set(states[0]) for st in states):
            return False
        stacked = {}
        for key, first in states[0].items():
            values = [st[key] for st in states]
            if isinstance(first, torch.Tensor) and first.shape == stack.shape[1:] and first.dim() > 0:
                stacked[key] = torch.stack([v.detach() for v in values])
            elif all(same_value(v, first) for v in values):
                stacked[key] = first.clone() if isinstance(first, torch.Tensor) else first
            else:
                return False
        shared.state[stack] = stacked
    return True


def unstack_state(shared: torch.optim.Optimizer, optimizers: list[torch.optim.Optimizer],
                  models: list[nn.Module], stacks: dict[str, torch.Tensor]) -> None:
    """Hand the stacked state back to each seed's optimizer (row i to seed i), so that whatever
    uses them next (a spawned child, the next phase of a procedure) continues from it."""
    for name, stack in stacks.items():
        stacked = shared.state.get(stack)
        if not stacked:
            continue
        for i, (opt, p) in enumerate(zip(optimizers, seed_params(models, name), strict=True)):
            opt.state[p] = {k: v[i].clone() if isinstance(v, torch.Tensor) and v.shape == stack.shape
                            and v.dim() > 0 else (v.clone() if isinstance(v, torch.Tensor) else v)
                            for k, v in stacked.items()}


def signature(batch: Any) -> Any:
    """What a traced graph depends on: the batch's structure, tensor shapes and other values."""
    leaves, spec = pytree.tree_flatten(batch)
    return str(spec), tuple((tuple(x.shape), x.dtype, x.device) if isinstance(x, torch.Tensor)
                            else x for x in leaves)


def gradient_function(seed_loss, stacks: dict[str, torch.Tensor], batch: Any, dims: Any
                      ) -> tuple[Any, tuple[str, ...]]:
    """vmap(grad_and_value(seed_loss)) over the seeds, traced once into a graph of aten ops; and
    the aten ops that vmap runs seed after seed in a loop, having no batching rule for them.

    At these model sizes the Python overhead of torch.func's transforms (~1 ms a call) costs
    more than the arithmetic; the traced graph replays the same kernels without it. vmap
    already forbids reading tensor values in Python (`.item()`, data-dependent branches), so
    the graph depends only on the batch signature, and a batch of another signature gets its
    own trace. If tracing fails, the eager transform is used. torch warns of each looped op in
    two lines (torch's fused CPU attention, say); the runner says it once in a note instead.
    """
    eager = vmap(grad_and_value(seed_loss), in_dims=(0, dims))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            traced = make_fx(eager)(stacks, batch)
        except Exception:  # noqa: BLE001 - the eager transform runs the same computation
            traced = eager
    looped = []
    for warning in caught:
        found = LOOPED.search(str(warning.message))
        if found:
            looped.append(found[1])
        else:  # anyone else's warning (the entry's own) is shown as it would be
            warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                   warning.lineno, source=warning.source)
    return traced, tuple(dict.fromkeys(looped))


# torch.func's warning for an op without a batching rule (functorch/BatchedFallback.cpp).
LOOPED = re.compile(r"not yet implemented the batching rule for (aten::\w+(?:\.\w+)?)")


def looped_ops(trainer: Trainer) -> list[str]:
    """The aten ops that the trainer's batches ran seed after seed (gradient_function)."""
    return sorted({op for _, ops in trainer.traces.values() for op in ops})


def tensor_attributes(model: nn.Module) -> list[str]:
    """Names of the model's tensors that are neither parameters nor buffers.

    The vmapped loss runs one copy of one seed's model with each seed's parameters swapped
    in: a plain tensor attribute (a fixed random projection drawn per seed, say) would be
    that one seed's tensor for every seed, so such a model is refused.
    """
    found = []
    for prefix, module in model.named_modules():
        for key, value in vars(module).items():
            if key in ("_parameters", "_buffers", "_modules"):
                continue
            if any(isinstance(leaf, torch.Tensor) for leaf in pytree.tree_leaves(value)):
                found.append(f"{prefix}.{key}" if prefix else key)
    return found


def plain_attributes(model: nn.Module) -> dict[str, Any]:
    """Each submodule's type and public attributes, as comparable values: what its forward may
    read besides parameters and buffers (a logit cap, a head count, an activation function)."""
    out: dict[str, Any] = {}
    for prefix, module in model.named_modules():
        out[f"{prefix or '(model)'} type"] = type(module)
        for key, value in vars(module).items():
            if not key.startswith("_") and key != "training":
                out[f"{prefix}.{key}" if prefix else key] = value
    return out


def comparable(value: Any, depth: int = 0) -> Any:
    """`value` as something == compares faithfully: numbers exactly (NaN equal to NaN),
    containers by their items, functions by their code and captured values, classes and
    builtins by identity, other objects by their type and attributes (a few levels deep; past
    that, or without attributes, by type alone: their contents cannot be compared safely)."""
    if depth > 4:
        return ("instance of", type(value))
    deeper = functools.partial(comparable, depth=depth + 1)
    if value is None or isinstance(value, bool | int | str | bytes):
        return value
    if isinstance(value, float):
        return ("float", value.hex())
    if isinstance(value, tuple | list):
        return (type(value).__name__, tuple(deeper(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((repr(k), deeper(v)) for k, v in value.items()))
    if isinstance(value, functools.partial):
        return ("partial", deeper(value.func), deeper(value.args), deeper(value.keywords))
    if inspect.ismethod(value):
        return ("method", id(value.__func__))
    if inspect.isfunction(value):  # a lambda made per instance: its code and captured values
        cells = tuple(deeper(cell_value(c)) for c in value.__closure__ or ())
        return ("function", id(value.__code__), cells, deeper(value.__defaults__))
    if isinstance(value, type) or inspect.isbuiltin(value) or inspect.ismodule(value):
        return ("object", id(value))
    if isinstance(value, torch.Tensor) or not hasattr(value, "__dict__"):
        return ("instance of", type(value))
    return ("instance", type(value), deeper(vars(value)))  # x-transformers' always(value), a config


def cell_value(cell) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # a cell not filled yet
        return "(empty cell)"


def attribute_difference(models: list[nn.Module]) -> str | None:
    """Why the models are not one function of their parameters, or None: the batch runs the
    first model's forward with every model's parameters, so a model whose attributes differ
    (trials of a study searching a logit cap) would train as the first one silently."""
    shapes = [{n: (p.shape, p.dtype) for n, p in m.named_parameters()} for m in models]
    if any(s != shapes[0] for s in shapes[1:]):
        return None  # stack_parameters says which parameter differs in shape
    first = plain_attributes(models[0])
    for model in models[1:]:
        other = plain_attributes(model)
        for name in sorted(set(first) | set(other)):
            a, b = first.get(name, "(absent)"), other.get(name, "(absent)")
            if comparable(a) != comparable(b):
                return (f"the runs' models differ beyond their parameters: {name} is {a!r} in one "
                        f"and {b!r} in another (one model's forward would serve them all)")
    return None


def train_seeds(task: Task, trainer: Trainer, seeds: list[int],
                runs: list[Trainer] | None = None) -> list[Trajectory]:
    """Train `seeds` of `task` together with the default procedure; one Trajectory per seed.

    Each trajectory is what `task.run(seed, trainer)` returns for that seed, up to the
    floating-point rounding of the batched kernels. `runs`: one trainer per seed when the runs
    have entries of their own (a tuning study's trials: the same code, other hyperparameters;
    a seed may then repeat), each run then as `task.run(seed, runs[i])`. Raises
    BatchingUnsupported (at the latest at the first step) when the task or entry cannot be
    batched faithfully.
    """
    if not batchable(task):
        raise BatchingUnsupported(f"task {task.name} overrides Task.run")
    runs = runs or [trainer] * len(seeds)
    datas = [trainer.to_device(task.make_data(seed)) for seed in seeds]
    models = [run.make_model(seed, data) for run, seed, data in zip(runs, seeds, datas, strict=True)]
    made = [run.make_optimizer(m, seed=s) for run, m, s in zip(runs, models, seeds, strict=True)]
    lanes = [Lane(seed, model, opt, data, seeding.generator(seed, "batches", device=trainer.device),
                  Trajectory(data=data), schedule, owner=run if run is not trainer else None)
             for run, seed, model, (opt, schedule), data in zip(runs, seeds, models, made, datas,
                                                                strict=True)]
    batch = SeedBatch.build(task, trainer, lanes)
    trainer.run_lanes(lanes, start=0, end=task.config["steps"], step_function=batch)
    batch.finish()
    for lane in lanes:
        lane.traj.execution = batch.execution()
    return [lane.traj for lane in lanes]


def train_lanes(trainer: Trainer, lanes: list[Lane], *, start: int, end: int) -> None:
    """Train lanes from `start` to `end`: as one batch when the trainer allows it and they can
    be batched faithfully, else one after another, each by itself.

    For procedures that train several networks (Task.run_seeds). A batch refused before its
    first step trains its lanes one after another; one refused later (at the first step's
    checks, or by a host-RNG draw) raises BatchingUnsupported, and the runner then runs the
    procedure's seeds one by one with `trainer.batch_lanes = False`.
    """
    batch = None
    if trainer.batch_lanes and len(lanes) > 1:
        try:
            batch = SeedBatch.build(trainer.task, trainer, lanes)
        except BatchingUnsupported as err:
            batch, trainer.lanes_refused = None, trainer.lanes_refused or str(err)
    if batch is not None:
        trainer.run_lanes(lanes, start=start, end=end, step_function=batch)
        batch.finish()
        return
    for lane in lanes:
        trainer.run_lanes([lane], start=start, end=end, step_function=plain_steps)


class SeedBatch:
    """The step function of a seed batch: one vmapped gradient for all lanes, then their steps.

    Before the batch is trusted, at its first step, every seed's vmapped loss and gradients
    are checked against plain autograd on its own model, and the stacked optimizer's update
    (the fast path) against the seeds' own optimizers. At every step, a parameter that the
    entry's optimizer rebound (`p.data = ...`) instead of updating in place is stacked anew,
    so the batch keeps following it.
    """

    @classmethod
    def build(cls, task: Task, trainer: Trainer, lanes: list[Lane]) -> SeedBatch:
        """The batch of `lanes` (same architecture), or BatchingUnsupported before any step."""
        if trainer.entry.steps_alone:
            raise BatchingUnsupported("closure and create_graph entries step seed by seed")
        models = [lane.model for lane in lanes]
        hooked = hook_problem(models)
        if hooked:
            raise BatchingUnsupported(hooked)
        hidden = tensor_attributes(models[0])
        if hidden:
            raise BatchingUnsupported(
                f"model attribute {hidden[0]!r} is a tensor that is neither a parameter nor a "
                "buffer (every seed would see seed 0's); register it with register_buffer or "
                "make it a parameter")
        differs = attribute_difference(models)
        if differs:
            raise BatchingUnsupported(differs)
        template = loss_template(task, models[0])
        stacks = stack_parameters(models)  # name -> (S, ...); models[i]'s parameters are rows i
        optimizers = [lane.optimizer for lane in lanes]
        shared = stacked_optimizer(optimizers, models, stacks)
        merged = merged_optimizer(optimizers, models) if shared is None else None
        # Traces depend only on shapes (the parameters and the batch are inputs): batches of
        # one trainer (a procedure's successive phases) share them instead of re-tracing.
        return cls(task, template, lanes, stacks, shared or (merged and merged[0]),
                   group_of=merged[1] if merged else None, traced=trainer.traces)

    def __init__(self, task: Task, template: SeedLoss, lanes: list[Lane],
                 stacks: dict[str, torch.Tensor], shared: torch.optim.Optimizer | None, *,
                 group_of: list[list[int]] | None, traced: dict[Any, Any]) -> None:
        # shared: the seeds' optimizers as one, over the stacks (stacked_optimizer) or over
        # the seeds' own parameters (merged_optimizer: `group_of[i][g]` is the merged group of
        # seed i's group g); None: each seed's optimizer steps.
        self.task, self.lanes, self.stacks, self.shared = task, lanes, stacks, shared
        self.merged, self.group_of = group_of is not None, group_of
        self.row = {id(lane): i for i, lane in enumerate(lanes)}
        self.params = [dict(lane.model.named_parameters()) for lane in lanes]
        self.traced = traced  # (batch signature, stack shapes) -> traced gradient function
        self.checked = False

        self.seed_loss = seed_loss_function(template)
        # Full-batch tasks (the default sample_batch) see the same data every step: stack it once.
        self.fixed = stack_batches([lane.data for lane in lanes]) \
            if type(task).sample_batch is Task.sample_batch else None

    def finish(self) -> None:
        """After the last step: the seeds' own optimizers take the stacked optimizer's state."""
        self.refuse_late_hooks("during training")
        optimizers = [lane.optimizer for lane in self.lanes]
        if self.merged and self.shared is not None:
            finish_merged(self.shared, optimizers)
        elif self.shared is not None:
            unstack_state(self.shared, optimizers, [lane.model for lane in self.lanes], self.stacks)

    def execution(self) -> dict[str, Any]:
        optimizer = "per-seed" if self.shared is None else "merged" if self.merged else "stacked"
        return {"mode": "batched", "seeds": [lane.seed for lane in self.lanes], "optimizer": optimizer}

    def stacked_batch(self, lanes: list[Lane], batches: list[Any]) -> tuple[Any, Any]:
        if self.fixed is not None:
            return self.fixed
        # Every seed's row is computed; a diverged seed's row reuses a live seed's batch and
        # is never read.
        per_row = [batches[0]] * len(self.lanes)
        for lane, batch in zip(lanes, batches, strict=True):
            per_row[self.row[id(lane)]] = batch
        return stack_batches(per_row)

    def __call__(self, trainer: Trainer, lanes: list[Lane], batches: list[Any], step: int) -> list[bool]:
        with one_thread():  # copies of small tensors: see loop.one_thread
            batch, dims = self.stacked_batch(lanes, batches)
        key = (signature(batch), tuple((n, s.shape, s.dtype) for n, s in self.stacks.items()))
        host = None if self.checked else seeding.host_rng_states()  # the forward's own draws, below
        try:
            if key not in self.traced:  # tracing runs the model's forward
                self.traced[key] = gradient_function(self.seed_loss, self.stacks, batch, dims)
            gradients, _ = self.traced[key]
            grads, losses = gradients(self.stacks, batch)  # name -> (S, ...); losses: (S,)
        except Exception as err:
            unsupported = vmap_failure(err, trainer.entry)
            if unsupported is None:
                raise
            raise unsupported from None
        rows = [self.row[id(lane)] for lane in lanes]
        finite = [bool(f) for f in torch.isfinite(losses[rows]).tolist()]
        live = [(lane, i, b) for lane, i, b, ok in zip(lanes, rows, batches, finite, strict=True) if ok]
        if not self.checked and live:
            check_host_rngs(host)  # first: a forward drawing from them is why its losses differ
            for lane, i, b in live:
                check_gradients(self.task, lane.model, b, losses[i], {n: g[i] for n, g in grads.items()})
        if self.shared is not None:
            frozen = sorted(set(range(len(self.lanes))) - {i for _, i, _ in live})
            if self.checked:
                self.shared_step(grads, frozen)
            else:
                self.first_shared_step(trainer, live, grads, frozen)
        else:
            for lane, i, _ in live:
                self.step_seed(trainer, lane, i, grads)
            self.follow_rebinding()
        self.step_schedules(trainer, [lane for lane, _, _ in live])
        if not self.checked and live:
            self.refuse_late_hooks("during the first step")
        self.checked = self.checked or bool(live)
        return finite

    def refuse_late_hooks(self, when: str) -> None:
        """Hooks that the entry's code registered after the batch was built (lazily, inside its
        first step or a schedule) would be skipped by the batch just the same: refuse it, and the
        runner trains the seeds one by one. Checked after the first step and at the end, not at
        every step: a step's cost must not grow with the model's size."""
        hooked = hook_problem([lane.model for lane in self.lanes])
        if hooked:
            raise BatchingUnsupported(f"{hooked} (registered {when})")
        if self.shared is not None and any(stepped_otherwise(lane.optimizer) for lane in self.lanes):
            raise BatchingUnsupported(f"an optimizer step hook was registered {when}, which the "
                                      "batch's one optimizer over the stacks would not run")

    def step_schedules(self, trainer: Trainer, live: list[Lane]) -> None:
        """Each seed's schedule steps its own optimizer's groups; the stacked optimizer takes
        their hyperparameters, which must agree across seeds (else the batch is refused)."""
        if not any(lane.schedule is not None for lane in live):
            return
        for lane in live:
            with trainer.run_of(lane).entry_code(lane.seed, "schedule.step", lane.network):
                lane.schedule.step()
        if self.shared is None:
            return
        if self.merged:  # each merged group follows the schedules of the groups it holds
            pairs = [(group, self.shared.param_groups[self.group_of[self.row[id(lane)]][g]])
                     for lane in live for g, group in enumerate(lane.optimizer.param_groups)]
            for group, merged in pairs:
                merged.update({k: v for k, v in group.items() if k not in IMPLEMENTATION})
            for group, merged in pairs:
                if not all(same_value(v, merged[k]) for k, v in group.items() if k not in IMPLEMENTATION):
                    raise BatchingUnsupported("the schedules set the hyperparameters of runs that "
                                              "shared them differently")
            return
        for g, group in enumerate(self.shared.param_groups):
            for key in group:
                if key == "params":
                    continue
                values = [lane.optimizer.param_groups[g][key] for lane in live]
                if not all(same_value(v, values[0]) for v in values):
                    raise BatchingUnsupported(f"the schedules set {key!r} differently across seeds")
                group[key] = values[0]

    def step_seed(self, trainer: Trainer, lane: Lane, i: int, grads: dict[str, torch.Tensor]) -> None:
        """The seed's own optimizer steps on its views of the stacks, as it would one by one."""
        run = trainer.run_of(lane)
        with run.entry_code(lane.seed, "optimizer.zero_grad", lane.network):
            lane.optimizer.zero_grad(set_to_none=True)
        for name, g in grads.items():
            self.params[i][name].grad = g[i]
        with run.entry_code(lane.seed, "optimizer.step", lane.network):
            lane.optimizer.step()

    def first_shared_step(self, trainer: Trainer, live, grads: dict[str, torch.Tensor],
                          frozen: list[int]) -> None:
        """The stacked optimizer's first step, checked against every seed's own optimizer.

        The seeds' optimizers step first (the reference); then the stacks are reset and the
        stacked optimizer steps. If the two disagree, the batch keeps the reference and goes
        on with the seeds' own optimizers, whose state is then the consistent one.
        """
        before = {n: s.clone() for n, s in self.stacks.items()}
        for lane, i, _ in live:
            self.step_seed(trainer, lane, i, grads)
        reference = {n: s.clone() for n, s in self.stacks.items()}
        for name, stack in self.stacks.items():
            stack.copy_(before[name])
        try:
            self.shared_step(grads, frozen)
        except (RuntimeError, ValueError, TypeError):  # e.g. a fused kernel refusing an option
            for n, s in self.stacks.items():
                s.copy_(reference[n])
            self.shared = None
            return
        for name, stack in self.stacks.items():
            want = reference[name]
            if float((stack - want).abs().max()) > 1e-4 * float(want.abs().max()) + 1e-30:
                for n, s in self.stacks.items():
                    s.copy_(reference[n])
                self.shared = None
                return

    def shared_step(self, grads: dict[str, torch.Tensor], frozen: list[int]) -> None:
        if self.merged:
            step_merged(self.shared, self.params, grads, frozen=frozen)
        else:
            step_shared(self.shared, self.stacks, grads, frozen=frozen)

    def follow_rebinding(self) -> None:
        """Stack anew every parameter whose tensor an optimizer replaced instead of updating it.

        A new stack (not a copy into the old one) leaves any tensor the optimizer kept of the
        old values untouched, exactly as one by one.
        """
        for name, stack in self.stacks.items():
            rows = [params[name] for params in self.params]
            if all(r.data_ptr() == stack[i].data_ptr() and r.shape == stack.shape[1:]
                   for i, r in enumerate(rows)):
                continue
            if any(r.shape != stack.shape[1:] or r.dtype != stack.dtype for r in rows):
                raise BatchingUnsupported(f"the optimizer changed the shape or dtype of {name!r}")
            self.stacks[name] = torch.stack([r.detach() for r in rows])
            for i, r in enumerate(rows):
                r.data = self.stacks[name][i]


def laid_out_like(grad: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """`grad` with `param`'s strides. The traced graph may return a transposed view; torch's
    fused CPU kernels read a gradient in its parameter's memory order (measured: a strided
    gradient gave updates of the wrong sign, which the first step's check caught)."""
    return grad if grad.stride() == param.stride() else torch.empty_like(param).copy_(grad)


def step_merged(optimizer: torch.optim.Optimizer, params: list[dict[str, torch.Tensor]],
                grads: dict[str, torch.Tensor], *, frozen: list[int]) -> None:
    """One step of the merged optimizer: seed i's parameters take row i of the gradients; a
    diverged (frozen) seed's take none, and torch's optimizers skip a parameter without one."""
    skip = set(frozen)
    fused = any(group.get("fused") for group in optimizer.param_groups)
    rows = {name: g.unbind(0) for name, g in grads.items()}  # one call per stack, not per seed
    for i, named in enumerate(params):
        for name, p in named.items():
            grad = None if i in skip else rows[name][i]
            p.grad = laid_out_like(grad, p) if fused and grad is not None else grad
    optimizer.step()


def step_shared(optimizer: torch.optim.Optimizer, stacks: dict[str, torch.Tensor],
                grads: dict[str, torch.Tensor], *, frozen: list[int]) -> None:
    """One step of the stacked optimizer; the rows of diverged (frozen) seeds do not move.

    Their gradients are zeroed (no NaN arithmetic) and their parameters restored after the
    step; their optimizer state rows change, but nothing reads them again.
    """
    kept = {}
    for name, stack in stacks.items():
        stack.grad = laid_out_like(grads[name], stack)
        if frozen:
            stack.grad[frozen] = 0.0
            kept[name] = stack[frozen].clone()
    optimizer.step()
    for name, rows in kept.items():
        stacks[name][frozen] = rows
