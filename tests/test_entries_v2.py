"""Entry contract v2: schedules, closures, second-order gradients, named parameters, task views."""

import numpy as np
import pytest
import torch

from suite import batched, profiles, registry, runner
from suite.entry import EntryError, load_entry, load_module
from suite.loop import Trainer

SHORT = {"steps": 40, "evals": 6}

COSINE = """
import math
import torch

def make_optimizer(params, hparams, task):
    return torch.optim.AdamW(params, lr=hparams["lr"])

def make_schedule(optimizer, hparams, task):
    warmup = max(1, task.steps // 10)
    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, task.steps - warmup)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
"""

# Counts closure calls; the momentum lives in a Python attribute, not in optimizer.state.
COUNTING_CLOSURE = """
import torch

class Counting(torch.optim.SGD):
    closures = []  # per step: the closure received (None when none was passed)

    def step(self, closure=None):
        type(self).closures.append(closure)
        if closure is not None:
            closure()
        return super().step()

def make_optimizer(params, hparams, task):
    return Counting(params, lr=hparams["lr"])
"""

LBFGS = """
import torch

def make_optimizer(params, hparams, task):
    return torch.optim.LBFGS(params, lr=0.5, max_iter=4, history_size=5)
"""

# Needs the gradient's graph: a Hessian-vector product along the gradient (AdaHessian-like).
HESSIAN = """
import torch

class HvpSGD(torch.optim.Optimizer):
    def __init__(self, params, lr):
        super().__init__(params, dict(lr=lr))

    @torch.no_grad()
    def step(self, closure=None):
        params = [p for g in self.param_groups for p in g["params"]]
        with torch.enable_grad():
            hv = torch.autograd.grad(params[0].grad, params[0], grad_outputs=params[0].grad.detach(),
                                     retain_graph=True)[0]
        self.state["curvature"] = float((hv * params[0].grad).sum())
        for p in params:
            p.add_(p.grad, alpha=-self.param_groups[0]["lr"])

def make_optimizer(params, hparams, task):
    return HvpSGD(params, lr=hparams["lr"])
"""

NAMED = """
import torch

def make_optimizer(params, hparams, task, model):
    assert [p for p in model.parameters()] == params
    hidden = [p for p, role in zip(params, task.param_roles) if role == "hidden matrix"]
    rest = [p for p, role in zip(params, task.param_roles) if role != "hidden matrix"]
    groups = [{"params": hidden, "lr": hparams["lr"]}] + ([{"params": rest, "lr": 0.0}] if rest else [])
    return torch.optim.SGD(groups)
"""

MUTATING = """
import torch

def make_optimizer(params, hparams, task):
    task.config["steps"] = 1
    return torch.optim.SGD(params, lr=0.01)
"""


@pytest.fixture(scope="module")
def profile():
    prof = profiles.load("cpu-2core")
    prof.apply()
    return prof


def test_a_schedule_steps_once_per_optimizer_step_batched_and_not(make_entry, profile):
    task = registry.make_task("deep-linear-modes", "smoke", SHORT)
    entry = load_entry(make_entry(code=COSINE))
    single = task.run(0, Trainer(task, entry, profile))
    trainer = Trainer(task, entry, profile)
    model = task.make_model(0)
    optimizer, schedule = trainer.make_optimizer(model, seed=0)
    trainer.train(model, optimizer, task.make_data(0), seed=0, steps=SHORT["steps"], schedule=schedule)
    assert schedule.last_epoch == SHORT["steps"]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine reached 0
    batch = batched.train_seeds(task, Trainer(task, entry, profile), [0, 1])
    assert batch[0].execution["optimizer"] == "stacked"  # the schedule keeps the fast path
    np.testing.assert_allclose(batch[0].curves["loss"], single.curves["loss"], rtol=1e-4, atol=1e-6)


def test_the_closure_is_called_exactly_when_asked(make_entry, profile, tmp_path):
    task = registry.make_task("deep-linear-modes", "smoke", SHORT)
    for flag, name in (("closure = true", "with"), ("", "without")):
        entry = load_entry(make_entry(name, code=COUNTING_CLOSURE, extra=flag))
        task.run(0, Trainer(task, entry, profile))
        received = load_module(entry).Counting.closures
        assert len(received) == SHORT["steps"]
        assert all((c is not None) == bool(flag) for c in received)


def test_lbfgs_needs_the_flag_and_runs_with_it(make_entry, tmp_path, capsys):
    with pytest.raises(EntryError, match="needs a closure; add `closure = true`"):
        runner.run_suite(make_entry("nolbfgs", code=LBFGS), tasks=["deep-linear-modes"],
                         out=tmp_path / "a", progress=False)
    capsys.readouterr()
    runs = runner.run_suite(make_entry("lbfgs", code=LBFGS, extra="closure = true"),
                            tasks=["deep-linear-modes"], seeds=2, out=tmp_path / "b", progress=False,
                            sets=["steps=30"])
    assert set(runs["status"]) == {"ok"}
    assert set(runs["execution"]) == {'{"mode": "one-by-one"}'}
    # Said once: the seeds could have trained together, and why they do not.
    assert capsys.readouterr().err.splitlines() == [
        "note: lbfgs steps with a closure (closure = true): each seed trains by itself, not batched "
        "with the others"]


def test_create_graph_lets_an_optimizer_take_hessian_vector_products(make_entry, tmp_path):
    entry = make_entry(code=HESSIAN, extra="create_graph = true")
    runs = runner.run_suite(entry, seeds=1, out=tmp_path, progress=False,  # every task's model
                            sets=["steps=10", "mode-connectivity.spawn_steps=[0, 5, 10]"])
    assert set(runs["status"]) == {"ok"}, runs["error"].dropna().tolist()
    without = make_entry("nograph", code=HESSIAN)
    failed = runner.run_suite(without, tasks=["deep-linear-modes"], seeds=1, out=tmp_path / "b",
                              progress=False, sets=["steps=20"])
    assert "does not require grad" in failed["error"].iloc[0]


def test_entries_get_named_roled_parameters_and_the_model(make_entry, profile):
    task = registry.make_task("mode-connectivity", "smoke")
    entry = load_entry(make_entry(code=NAMED))
    model = task.make_model(0)
    optimizer, _ = Trainer(task, entry, profile).make_optimizer(model, seed=0)
    assert [g["lr"] for g in optimizer.param_groups] == [0.01, 0.0]
    view = task.view(model)
    assert view.param_names == ("0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias")
    assert view.param_roles[:2] == ("hidden matrix", "bias")


def test_the_entry_sees_a_read_only_view_of_the_task(make_entry, tmp_path):
    runs = runner.run_suite(make_entry(code=MUTATING), tasks=["deep-linear-modes"], out=tmp_path,
                            progress=False)
    assert "does not support item assignment" in runs["error"].iloc[0]
    assert runs["error"].iloc[0].startswith("the entry's make_optimizer failed at ")


# A Lookahead-style wrapper around an optimizer that keeps state in its own attributes (as
# pytorch-optimizer's Lookahead(Lamb(...)) does with Lamb's pre_norm): the inner one was copied by
# plain deepcopy, which keeps only its state dict, so a spawned child lost the attributes.
WRAPPED = """
import torch

class Inner(torch.optim.SGD):
    def __init__(self, params, lr):
        super().__init__(params, lr=lr)
        self.velocity = None  # state kept in a Python attribute

    @torch.no_grad()
    def step(self, closure=None):
        params = [p for g in self.param_groups for p in g["params"]]
        if self.velocity is None:
            self.velocity = [torch.zeros_like(p) for p in params]
        for p, v in zip(params, self.velocity):
            v.mul_(0.9).add_(p.grad)
            p.add_(v, alpha=-self.param_groups[0]["lr"])

class Wrapper(torch.optim.Optimizer):
    def __init__(self, inner):
        self.optimizer, self.param_groups, self.defaults, self.state = inner, inner.param_groups, {}, {}
        self._optimizer_step_pre_hooks, self._optimizer_step_post_hooks = {}, {}  # as Lookahead's
        self.slow = [p.detach().clone() for g in inner.param_groups for p in g["params"]]
        self.calls = 0

    @torch.no_grad()
    def step(self, closure=None):
        self.optimizer.step()
        self.calls += 1
        if self.calls % 5 == 0:  # pull the fast weights half-way back to the slow ones
            for p, s in zip([p for g in self.param_groups for p in g["params"]], self.slow):
                s.add_(p - s, alpha=0.5)
                p.copy_(s)

def make_optimizer(params, hparams, task):
    return Wrapper(Inner(params, lr=hparams["lr"]))
"""


def test_a_child_of_a_wrapped_optimizer_continues_as_its_parent_would_have(make_entry, profile):
    task = registry.make_task("mode-connectivity", "smoke")
    trainer = Trainer(task, load_entry(make_entry(code=WRAPPED)), profile)
    data, parent = task.make_data(0), task.make_model(0)
    opt, _ = trainer.make_optimizer(parent, seed=0)
    trainer.train(parent, opt, data, seed=0, steps=12, purpose="p")
    child, child_opt, _ = task.spawn(parent, opt, None)
    inner = child_opt.optimizer
    assert inner is not opt.optimizer and inner.velocity is not None
    assert inner.param_groups[0]["params"][0] is next(child.parameters())  # the child's own
    assert child_opt.param_groups is inner.param_groups and child_opt.calls == 12
    for net, o in ((parent, opt), (child, child_opt)):
        trainer.train(net, o, data, seed=0, steps=30, start=12, purpose="rest")
    assert all(torch.equal(a, b) for a, b in zip(parent.parameters(), child.parameters(), strict=True))


def test_a_child_continues_exactly_as_its_parent_would_have(make_entry, profile):
    """Spawned at step k and trained on the parent's own data order, a child reproduces the
    parent's trajectory, for an optimizer with attribute state and a schedule."""
    task = registry.make_task("mode-connectivity", "smoke")
    code = COSINE.replace("torch.optim.AdamW(params, lr=hparams[\"lr\"])", "Attr(params, lr=hparams['lr'])")
    code = code.replace("import torch\n", """import torch

class Attr(torch.optim.SGD):
    def __init__(self, params, lr):
        super().__init__(params, lr=lr)
        self.velocity = None  # state kept in a Python attribute

    @torch.no_grad()
    def step(self, closure=None):
        grads = [p.grad for g in self.param_groups for p in g["params"]]
        if self.velocity is None:
            self.velocity = [torch.zeros_like(g) for g in grads]
        for v, g in zip(self.velocity, grads):
            v.mul_(0.9).add_(g)
        for p, v in zip([p for g in self.param_groups for p in g["params"]], self.velocity):
            p.add_(v, alpha=-self.param_groups[0]["lr"])
""", 1)
    trainer = Trainer(task, load_entry(make_entry(code=code)), profile)
    data = task.make_data(0)
    parent = task.make_model(0)
    opt, schedule = trainer.make_optimizer(parent, seed=0)
    trainer.train(parent, opt, data, seed=0, steps=50, purpose="p", schedule=schedule)
    child, child_opt, child_schedule = task.spawn(parent, opt, schedule)
    assert child_opt.velocity is not None and child_opt.velocity[0] is not opt.velocity[0]
    # Parent and child continue from step 50 on the same data order (the stream "rest").
    for net, o, s in ((parent, opt, schedule), (child, child_opt, child_schedule)):
        trainer.train(net, o, data, seed=0, steps=120, start=50, purpose="rest", schedule=s)
    assert all(torch.equal(a, b) for a, b in zip(parent.parameters(), child.parameters(), strict=True))
    assert schedule.last_epoch == child_schedule.last_epoch == 120
    assert not any(p is q for p in parent.parameters() for q in child.parameters())
