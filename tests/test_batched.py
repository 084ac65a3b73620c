"""Seed-batched execution: every seed's numbers equal the one-by-one run, seeds stay isolated."""

import dataclasses
import json
import math
import re

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from suite import batched, profiles, registry, runner
from suite.cli import main
from suite.entry import load_entry
from suite.loop import Trainer
from suite.task import Task
from suite.tasks.deep_linear_modes import DeepLinear, DeepLinearModes
from suite.tasks.mode_connectivity import ModeConnectivity as ModeConnectivityTask

SEEDS = [0, 1, 2]
SHORT = {"steps": 60, "evals": 8}

ADAM = """
import torch

def make_optimizer(params, hparams, task):
    return torch.optim.Adam(params, lr=hparams["lr"])
"""

# One entry per torch optimizer of the fast path, with the options that change its update.
ELEMENTWISE_CODE = {
    "sgd-momentum": "torch.optim.SGD(params, lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-3)",
    "adam-amsgrad": "torch.optim.Adam(params, lr=3e-3, amsgrad=True)",
    "adamw": "torch.optim.AdamW(params, lr=3e-3, weight_decay=0.1)",
    "rmsprop-centered": "torch.optim.RMSprop(params, lr=1e-3, momentum=0.5, centered=True)",
    "adagrad": "torch.optim.Adagrad(params, lr=0.05, lr_decay=1e-3)",
}

# A layer-wise trust ratio (LARS/LAMB): the step of each tensor scales with ‖p‖ / ‖m‖.
LARS = """
import torch

class LARS(torch.optim.Optimizer):
    def __init__(self, params, lr):
        super().__init__(params, dict(lr=lr))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                m = self.state[p].setdefault("m", torch.zeros_like(p))
                m.mul_(0.9).add_(p.grad)
                trust = p.norm() / (m.norm() + 1e-12)
                p.add_(m, alpha=-group["lr"] * float(trust))

def make_optimizer(params, hparams, task):
    return LARS(params, lr=0.05)
"""

# Couples all parameters of a run: the gradient is clipped to a global norm inside the step.
GLOBAL_CLIP = """
import torch

class GlobalClipSGD(torch.optim.SGD):
    @torch.no_grad()
    def step(self, closure=None):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        for g in grads:
            g.mul_(torch.clamp(0.05 / (norm + 1e-12), max=1.0))
        return super().step(closure)

def make_optimizer(params, hparams, task):
    return GlobalClipSGD(params, lr=0.02)
"""

# A global step-size estimate (distance over gradients, Ivgi et al. 2023):
# η_t = max_{s≤t} ‖x_s − x_0‖ / sqrt(Σ_s ‖g_s‖²), both norms over all parameters of the run.
DOG = """
import torch

class DoG(torch.optim.Optimizer):
    def __init__(self, params, r0=1e-3):
        super().__init__(params, dict(r0=r0))
        self.x0 = [p.detach().clone() for g in self.param_groups for p in g["params"]]
        self.rbar, self.gsum = r0, 0.0

    @torch.no_grad()
    def step(self, closure=None):
        params = [p for g in self.param_groups for p in g["params"]]
        dist = sum(float((p - x0).pow(2).sum()) for p, x0 in zip(params, self.x0)) ** 0.5
        self.rbar = max(self.rbar, dist)
        self.gsum += sum(float(p.grad.pow(2).sum()) for p in params)
        eta = self.rbar / (self.gsum ** 0.5 + 1e-12)
        for p in params:
            p.add_(p.grad, alpha=-eta)

def make_optimizer(params, hparams, task):
    return DoG(params)
"""


def entry_code(call: str) -> str:
    return f"import torch\n\ndef make_optimizer(params, hparams, task):\n    return {call}\n"


@pytest.fixture(scope="module")
def profile():
    prof = profiles.load("cpu-2core")
    prof.apply()
    return prof


def both_ways(task, entry_dir, profile, seeds=SEEDS):
    """(one-by-one trajectories, batched trajectories) of `seeds`."""
    trainer = Trainer(task, load_entry(entry_dir), profile)
    return [task.run(s, trainer) for s in seeds], batched.train_seeds(task, trainer, seeds)


def assert_same_run(single, batch, rtol=1e-4, atol=1e-6, nudged=None):
    """The same run up to float32 rounding: within `rtol`, or, given `nudged` (the run from
    initial weights one ulp away), within 10x the relative distance rounding alone puts
    between the two on that curve."""
    assert batch.status == single.status
    assert batch.diverged_step == single.diverged_step
    assert batch.steps_done == single.steps_done
    assert batch.steps == single.steps
    assert batch.curves.keys() == single.curves.keys()
    for name, values in single.curves.items():
        spread = relative_distance(nudged.curves[name], values) if nudged else 0.0
        np.testing.assert_allclose(batch.curves[name], values, rtol=max(rtol, 10 * spread), atol=atol,
                                   err_msg=name)


def relative_distance(a, b) -> float:
    """max |a - b| / |b| over the finite points of two curves."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    both = np.isfinite(a) & np.isfinite(b) & (b != 0)
    return float(np.max(np.abs(a[both] - b[both]) / np.abs(b[both]), initial=0.0))


def nudged_runs(task, entry_dir, profile, seeds=SEEDS):
    """One-by-one runs from every initial weight one ulp up: how far float32 rounding alone
    moves each trajectory. On modular-addition's steep fall (smoke tier, 40 steps, Adam) it moves
    the last loss by up to 1.8e-4 relative, and the order of a batched matmul's sums as much."""
    trainer = Trainer(task, load_entry(entry_dir), profile)
    make_model = task.make_model

    def one_ulp_up(*args):
        model = make_model(*args)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.nextafter(p, torch.full_like(p, math.inf)))
        return model

    task.make_model = one_ulp_up
    try:
        return [task.run(s, trainer) for s in seeds]
    finally:
        del task.make_model


def batchable_tasks():
    return [name for name, cls in registry.all_tasks().items() if cls.run is Task.run]


@pytest.mark.parametrize("name", batchable_tasks())
def test_every_batchable_task_matches_one_by_one_with_adam(name, make_entry, profile):
    task, entry = registry.make_task(name, "smoke", {"steps": 40, "evals": 6}), make_entry(code=ADAM)
    singles, batch = both_ways(task, entry, profile)
    for single, b, nudged in zip(singles, batch, nudged_runs(task, entry, profile), strict=True):
        assert_same_run(single, b, nudged=nudged)
    # The seeds really are different runs (a shared computation would make them equal).
    first = next(iter(singles[0].curves))
    assert singles[0].curves[first] != singles[1].curves[first]


@pytest.mark.parametrize("kind", sorted(ELEMENTWISE_CODE))
def test_fast_path_optimizers_match_one_by_one(kind, make_entry, profile):
    task = registry.make_task("deep-linear-modes", "smoke", SHORT)
    singles, batch = both_ways(task, make_entry(code=entry_code(ELEMENTWISE_CODE[kind])), profile)
    for single, b in zip(singles, batch, strict=True):
        assert_same_run(single, b)


@pytest.mark.parametrize("kind", sorted(ELEMENTWISE_CODE))
@pytest.mark.parametrize("name", [n for n in registry.all_tasks()
                                  if batched.batchable(registry.task_class(n))])
def test_the_fast_path_holds_on_every_task(kind, name, make_entry, profile):
    """The stacked optimizer passes its first-step check on every batchable task: a check that
    failed would fall back to per-seed optimizers silently (right numbers, lost speed), as
    torch's fused Adam did on markov-attention's transposed gradients before they were
    laid out like their parameters."""
    task = registry.make_task(name, "smoke", {"steps": 2, "evals": 1})
    entry = load_entry(make_entry(code=entry_code(ELEMENTWISE_CODE[kind])))
    trajectories = batched.train_seeds(task, Trainer(task, entry, profile), SEEDS)
    assert trajectories[0].execution["optimizer"] == "stacked"


@pytest.mark.parametrize("kind", ["fused", "plain"])
def test_a_strided_gradient_steps_the_stack_like_a_contiguous_one(kind):
    """torch's fused CPU kernels read a gradient in memory order, whatever its strides."""
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(3, 4, 5, generator=gen)
    grad = torch.randn(3, 5, 4, generator=gen).transpose(1, 2)  # (3, 4, 5), not contiguous
    stacks = {"w": start.clone()}
    shared = torch.optim.Adam([stacks["w"]], lr=0.1, fused=kind == "fused")
    batched.step_shared(shared, stacks, {"w": grad}, frozen=[])
    reference = start.clone()
    reference.grad = grad.contiguous()
    torch.optim.Adam([reference], lr=0.1).step()
    torch.testing.assert_close(stacks["w"], reference.detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("code", [LARS, GLOBAL_CLIP, DOG], ids=["lars", "global-clip", "dog"])
@pytest.mark.parametrize("name", ["deep-linear-modes", "shared-representation"])
def test_per_seed_optimizers_see_their_own_seed_alone(code, name, make_entry, profile):
    task = registry.make_task(name, "smoke", SHORT)
    singles, batch = both_ways(task, make_entry(code=code), profile)
    for single, b in zip(singles, batch, strict=True):
        assert_same_run(single, b)


def test_pooling_seeds_in_one_coupled_optimizer_is_caught_at_the_first_step(make_entry, profile,
                                                                            monkeypatch):
    """If the fast path wrongly accepted a coupled optimizer (one instance over all seeds'
    stacks clips with the norm of every seed together), the first-step check against the
    seeds' own optimizers catches it and the batch goes on with those: same numbers."""
    entry = make_entry(code=GLOBAL_CLIP)
    task = registry.make_task("deep-linear-modes", "smoke", SHORT)
    singles, _ = both_ways(task, entry, profile)
    cls = type(Trainer(task, load_entry(entry), profile).make_optimizer(task.make_model(0), seed=0)[0])
    monkeypatch.setattr(batched, "ELEMENTWISE", batched.ELEMENTWISE + (cls,))
    _, pooled = both_ways(task, entry, profile)
    for single, b in zip(singles, pooled, strict=True):
        assert_same_run(single, b)
        assert b.execution["optimizer"] == "per-seed"
    # ... and an honest fast-path optimizer keeps the stacked path.
    _, adam = both_ways(task, make_entry("adam", code=ADAM), profile)
    assert adam[0].execution == {"mode": "batched", "seeds": SEEDS, "optimizer": "stacked"}


def test_fast_path_only_for_exact_elementwise_torch_optimizers(make_entry, profile):
    task = registry.make_task("deep-linear-modes", "smoke", SHORT)
    models = [task.make_model(s) for s in SEEDS]
    stacks = batched.stack_parameters(models)

    def shared(code):
        trainer = Trainer(task, load_entry(make_entry(code=code)), profile)
        return batched.stacked_optimizer([trainer.make_optimizer(m, seed=0)[0] for m in models],
                                         models, stacks)

    fast = shared(ADAM)
    assert isinstance(fast, torch.optim.Adam)
    assert [p.shape for p in fast.param_groups[0]["params"]] == [(3, 6, 6), (3, 6, 6)]
    assert shared(LARS) is None and shared(GLOBAL_CLIP) is None  # subclasses keep their own step


def test_the_stacked_step_equals_separate_optimizers_and_leaves_frozen_rows_alone():
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(3, 4, 5, generator=gen)  # three seeds' (4, 5) parameter
    grads = [torch.randn(4, 5, generator=gen) for _ in range(2)]  # two steps of gradients
    separate = [rows[i].clone() for i in range(3)]
    optimizers = [torch.optim.Adam([p], lr=0.1) for p in separate]
    stacks = {"w": rows.clone()}
    shared = torch.optim.Adam([stacks["w"]], lr=0.1)
    for k, g in enumerate(grads):
        for i, (p, opt) in enumerate(zip(separate, optimizers, strict=True)):
            if not (k == 1 and i == 1):  # seed 1 diverged at the second step
                p.grad = g * (i + 1)
                opt.step()
        stacked = torch.stack([g * (i + 1) for i in range(3)])
        if k == 1:
            stacked[1] = float("nan")
        batched.step_shared(shared, stacks, {"w": stacked}, frozen=[1] if k == 1 else [])
    for i in range(3):
        torch.testing.assert_close(stacks["w"][i], separate[i], rtol=1e-6, atol=1e-7)


class Exploding(DeepLinearModes):
    """Seed 1's targets are 10⁴ times larger: its loss overflows, the other seeds are fine."""

    def make_data(self, seed):
        data = super().make_data(seed)
        if seed == 1:
            data["y"] = 1e4 * data["y"]
        return data


@pytest.mark.parametrize("call", ["torch.optim.SGD(params, lr=0.05)",
                                  "type('PlainSGD', (torch.optim.SGD,), {})(params, lr=0.05)"],
                         ids=["fast-path", "per-seed"])
def test_a_diverging_seed_is_frozen_and_the_others_finish(call, make_entry, profile):
    task = Exploding(dict(DeepLinearModes.tiers["smoke"], **SHORT))
    singles, batch = both_ways(task, make_entry(code=entry_code(call)), profile)
    assert singles[1].status == "diverged" and 1 <= singles[1].diverged_step < SHORT["steps"]
    assert [b.status for b in batch] == ["ok", "diverged", "ok"]
    assert batch[0].steps_done == batch[2].steps_done == SHORT["steps"]
    for single, b in zip(singles, batch, strict=True):
        assert_same_run(single, b)


class CachedReference(nn.Module):
    """Reads its weight through a plain list: functional_call cannot swap that reference."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w)
        self.cache = [self.w]


class Plain(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w)


class CachingTask(DeepLinearModes):
    def make_model(self, seed, purpose="init"):
        return CachedReference(super().make_model(seed).product().detach())

    def loss(self, model, batch):
        return 0.5 * (batch["x"] @ model.cache[0].T - batch["y"]).pow(2).sum()

    def observe(self, model, data):
        return {"loss": float(self.loss(model, data))}


class DetachingTask(DeepLinearModes):
    """A loss that rebuilds its parameter as a new leaf: vmap sees no gradient through it."""

    def make_model(self, seed, purpose="init"):
        return Plain(super().make_model(seed).product().detach())

    def loss(self, model, batch):
        # functional_call swaps in plain tensors: the batched loss sees a constant.
        w = model.w if isinstance(model.w, nn.Parameter) else model.w.detach()
        return 0.5 * (batch["x"] @ w.T - batch["y"]).pow(2).sum()

    def observe(self, model, data):
        return {"loss": float(self.loss(model, data))}


def test_a_loss_that_hides_parameters_from_vmap_is_refused_before_any_step(make_entry, profile):
    # A reference kept in a plain attribute: refused before the batch is built.
    task = CachingTask(dict(DeepLinearModes.tiers["smoke"], **SHORT))
    trainer = Trainer(task, load_entry(make_entry()), profile)
    with pytest.raises(batched.BatchingUnsupported, match="'cache' is a tensor"):
        batched.train_seeds(task, trainer, SEEDS)
    # A loss whose vmapped gradient is wrong: refused by the first step's per-seed check.
    task = DetachingTask(dict(DeepLinearModes.tiers["smoke"], **SHORT))
    trainer = Trainer(task, load_entry(make_entry("other")), profile)
    with pytest.raises(batched.BatchingUnsupported, match="gradient of 'w' differs"):
        batched.train_seeds(task, trainer, SEEDS)


class Mixing(Plain):
    """w after a kernel-1 convolution over 4 channels whose outputs a layer norm then
    normalises along the features: the convolution's bias adds a constant there, removed again."""

    def __init__(self, w):
        super().__init__(w)
        self.conv = nn.Conv1d(1, 4, kernel_size=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.linspace(0.5, 2.0, 4).view(4, 1, 1))
            self.conv.bias.copy_(torch.linspace(-0.3, 0.3, 4))


class NormedConvTask(DeepLinearModes):
    """The convolution's bias has gradient 0 in exact arithmetic: in float32, rounding noise
    (as MLP-Mixer's token-mixing biases before its LayerNorm), and vmap's grouped convolution
    rounds it differently from the plain one."""

    def make_model(self, seed, purpose="init"):
        return Mixing(super().make_model(seed).product().detach())

    def loss(self, model, batch):
        d = batch["x"].shape[1]
        mixed = torch.nn.functional.layer_norm(model.conv(batch["x"].unsqueeze(1)), (d,))  # (N, 4, d)
        return 0.5 * (mixed.sum(1) @ model.w.T - batch["y"]).pow(2).sum()

    def observe(self, model, data):
        return {"loss": float(self.loss(model, data))}


def test_a_gradient_that_is_zero_but_for_rounding_does_not_refuse_the_batch(make_entry, profile):
    """The first step's check allows each tensor 1e-4 of its own largest gradient plus 1e-5 of
    the model's. The convolution's bias has only rounding noise for a gradient (~1e-10 against
    the model's ~10), which vmap's kernels round otherwise: 1e-4 of its own noise refused the
    batch (MLP-Mixer ran one by one on every task), while a wrong gradient is still refused."""
    task = NormedConvTask(dict(DeepLinearModes.tiers["smoke"], **SHORT))
    model = task.make_model(0)
    batch = task.sample_batch(task.make_data(0), 0, torch.Generator().manual_seed(0))
    loss = task.loss(model, batch)
    grads = dict(zip([n for n, _ in model.named_parameters()],
                     torch.autograd.grad(loss, list(model.parameters())), strict=True))
    assert float(grads["conv.bias"].abs().max()) < 1e-6 * float(grads["w"].abs().max())
    noisy = {**grads, "conv.bias": grads["conv.bias"] + 3e-9}  # rounding-sized
    batched.check_gradients(task, model, batch, loss.detach(), noisy)
    for name, wrong in (("conv.bias", 1e-3), ("w", 1e-3 * float(grads["w"].abs().max()))):
        with pytest.raises(batched.BatchingUnsupported, match=f"gradient of '{name}' differs"):
            batched.check_gradients(task, model, batch, loss.detach(), {**grads, name: grads[name] + wrong})
    # And the batch trains as one by one does.
    trainer = Trainer(task, load_entry(make_entry(code=ADAM)), profile)
    singles = [task.run(s, trainer) for s in SEEDS]
    together = batched.train_seeds(task, trainer, SEEDS)
    assert together[0].execution["mode"] == "batched"
    for single, b in zip(singles, together, strict=True):
        assert_same_run(single, b)


def test_parameter_list_slices_keep_their_gradients():
    """torch's ParameterList[1:] wraps tensors in new Parameters; the template's slices do not."""
    weights = [torch.randn(3, 3) for _ in range(3)]
    loss = batched.loss_template(DeepLinearModes(DeepLinearModes.tiers["smoke"]), DeepLinear(weights))
    batch = {"x": torch.eye(3), "y": torch.ones(3, 3)}
    params = {f"model.weights.{i}": w for i, w in enumerate(weights)}
    grads = torch.func.grad(lambda p: torch.func.functional_call(loss, p, (batch,)))(params)
    model = DeepLinear([w.clone() for w in weights])
    expected = torch.autograd.grad(loss.task.loss(model, batch), list(model.parameters()))
    for i, want in enumerate(expected):
        torch.testing.assert_close(grads[f"model.weights.{i}"], want)


class Buffered(DeepLinearModes):
    def make_model(self, seed, purpose="init"):
        model = super().make_model(seed)
        model.register_buffer("scale", torch.ones(()))
        return model


def test_an_unbatchable_model_falls_back_to_one_by_one(make_entry, profile):
    task = Buffered(dict(DeepLinearModes.tiers["smoke"], **SHORT))
    plans = [runner.Plan(task, seed, {}) for seed in SEEDS]
    trainer = Trainer(task, load_entry(make_entry()), profile)
    notes = []
    outcomes = runner.execute_batch(plans, trainer, notes=notes.append)
    assert len(notes) == 1 and "run one by one" in notes[0] and "buffers" in notes[0]
    for plan, (traj, metrics, error) in zip(plans, outcomes, strict=True):
        ref_traj, ref_metrics, _ = runner.execute(plan, trainer)
        assert error is None and metrics == ref_metrics and traj.curves == ref_traj.curves


class PythonRandom(DeepLinearModes):
    def loss(self, model, batch):  # a forward drawing from Python's global RNG (random.random)
        import random

        return super().loss(model, batch) * (1.0 + 0.01 * random.random())


def test_a_loss_drawing_from_pythons_global_rng_falls_back_naming_the_draw(make_entry, profile):
    """The first step's checks said 'the vmapped loss differs from the single-seed loss' (the
    traced forward's draw against the check's), not what makes the batch untrustworthy."""
    task = PythonRandom(dict(DeepLinearModes.tiers["smoke"], **SHORT))
    plans = [runner.Plan(task, seed, {}) for seed in SEEDS]
    notes = []
    trainer = Trainer(task, load_entry(make_entry()), profile)
    outcomes = runner.execute_batch(plans, trainer, notes=notes.append)
    assert len(notes) == 1 and "draws from Python's or numpy's global RNG" in notes[0]
    assert all(error is None for _, _, error in outcomes)


def test_seeds_are_grouped_per_task_and_procedures_without_run_seeds_run_alone(make_entry):
    plans = runner.make_plans(["mode-connectivity", "deep-linear-modes"], [0, 1, 2], "smoke", [])
    todo = [(p, str(i)) for i, p in enumerate(plans)]
    entry = load_entry(make_entry())
    # mode-connectivity's procedure implements run_seeds: its seeds are grouped too.
    assert [len(g) for g in runner.group_plans(todo, None, entry)] == [3, 3]
    assert [len(g) for g in runner.group_plans(todo, 2, entry)] == [2, 1, 2, 1]
    assert [len(g) for g in runner.group_plans(todo, 1, entry)] == [1] * 6
    # A profile's unbatched tasks run seed by seed under "auto", and batch when a size is given.
    apart = ("deep-linear-modes",)
    assert [len(g) for g in runner.group_plans(todo, None, entry, apart)] == [3, 1, 1, 1]
    assert [len(g) for g in runner.group_plans(todo, 2, entry, apart)] == [2, 1, 2, 1]
    # Entries stepping with a closure (LBFGS) or keeping the graph step seed by seed.
    closure = load_entry(make_entry("lbfgs", extra="closure = true"))
    assert [len(g) for g in runner.group_plans(todo, None, closure)] == [1] * 6

    class NoRunSeeds(ModeConnectivityTask):
        run_seeds = Task.run_seeds  # a procedure that cannot put seeds side by side

    task = NoRunSeeds(todo[0][0].task.config)
    alone = [(runner.Plan(task, p.seed, {}), i) for p, i in todo[:3]]
    assert [len(g) for g in runner.group_plans(alone, None, entry)] == [1, 1, 1]


def suite_rows(entry, out, seed_batch):
    runs = runner.run_suite(entry, tasks=["deep-linear-modes", "shared-representation"], seeds=3,
                            tier="smoke", sets=["steps=40", "evals=6"], out=out, progress=False,
                            seed_batch=seed_batch)
    curves = pd.read_parquet(out / "curves.parquet")
    return (runs.sort_values(["run_id", "metric"]).reset_index(drop=True),
            curves.sort_values(["run_id", "metric", "step"]).reset_index(drop=True))


def test_runner_rows_are_the_same_batched_or_not(make_entry, tmp_path, monkeypatch):
    entry = make_entry(code=ADAM)
    runs_1, curves_1 = suite_rows(entry, tmp_path / "one", 1)
    runs_b, curves_b = suite_rows(entry, tmp_path / "batched", "auto")
    assert list(runs_b.columns) == list(runs_1.columns) and len(runs_b) == len(runs_1)
    for column in ("run_id", "task", "seed", "metric", "status", "steps", "direction"):
        assert list(runs_b[column]) == list(runs_1[column]), column
    np.testing.assert_allclose(runs_b.value, runs_1.value, rtol=1e-4, atol=1e-6)
    assert list(curves_b.run_id) == list(curves_1.run_id)
    np.testing.assert_allclose(curves_b.value, curves_1.value, rtol=1e-4, atol=1e-6)
    # One batch per task: its seeds share the batch's wall time equally.
    walls = runs_b.groupby("task").wall_time_s.nunique()
    assert (walls == 1).all()
    # Resuming skips the finished runs: no training happens.
    monkeypatch.setattr(batched, "train_seeds", lambda *a: pytest.fail("trained again"))
    monkeypatch.setattr(runner, "execute", lambda *a: pytest.fail("trained again"))
    again, _ = suite_rows(entry, tmp_path / "batched", "auto")
    assert len(again) == len(runs_b)


def test_a_profiles_unbatched_task_runs_seed_by_seed_under_auto_only(make_entry, tmp_path,
                                                                      monkeypatch, capsys):
    """`unbatched` tasks of the profile train one run per seed with --seed-batch auto (a note
    says so once) and batch with an explicit size; the others still batch."""
    real = profiles.load
    monkeypatch.setattr(profiles, "load", lambda name: dataclasses.replace(
        real(name), unbatched=("deep-linear-modes",)))
    entry = make_entry(code=ADAM)
    auto, _ = suite_rows(entry, tmp_path / "auto", "auto")
    modes = auto.groupby("task")["execution"].first().map(lambda e: json.loads(e)["mode"])
    assert modes.to_dict() == {"deep-linear-modes": "one-by-one", "shared-representation": "batched"}
    assert "trains the seeds of deep-linear-modes one by one" in capsys.readouterr().err
    sized, _ = suite_rows(entry, tmp_path / "sized", 3)
    assert set(sized["execution"].map(lambda e: json.loads(e)["mode"])) == {"batched"}


@pytest.mark.parametrize("bad", ["0", "-2", "many"])
def test_a_bad_seed_batch_is_a_clear_error(bad, make_entry, tmp_path):
    result = CliRunner().invoke(main, ["run", str(make_entry()), "--seed-batch", bad,
                                       "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "--seed-batch" in result.output and "positive integer" in result.output


def test_a_stacked_step_that_raises_falls_back_to_the_seeds_own_optimizers(make_entry, profile,
                                                                           monkeypatch):
    """A fused kernel refusing something at its first step (not at construction) must not fail
    the runs: the batch goes on with the seeds' own optimizers, with the same numbers."""
    task = registry.make_task("deep-linear-modes", "smoke", SHORT)
    entry = make_entry("adam", code=ADAM)
    singles, _ = both_ways(task, entry, profile)

    def refuse(*args, **kwargs):
        raise RuntimeError("fused kernel: unsupported")

    monkeypatch.setattr(batched, "step_shared", refuse)
    _, batch = both_ways(task, entry, profile)
    for single, b in zip(singles, batch, strict=True):
        assert_same_run(single, b)
        assert b.execution["optimizer"] == "per-seed"


# The fast-path optimizers with the learning rate a study's trial sets (hparams["lr"]).
TRIAL_CODE = {kind: entry_code(re.sub(r"\blr=[0-9.e-]+", 'lr=hparams["lr"]', call))
              for kind, call in ELEMENTWISE_CODE.items()}
WARMUP = """
def make_schedule(optimizer, hparams, task):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 10))
"""


def trial_plans(task, lrs, seed=1_000_000):
    """A study's trials of one task: the same seed, another learning rate each."""
    return [runner.Plan(task, seed, {"hparams": {"lr": lr}}) for lr in lrs]


def trials_both_ways(task, entry_dir, profile, lrs):
    """(each trial run by itself, the trials as one batch) through the runner."""
    entry, plans = load_entry(entry_dir), trial_plans(task, lrs)
    alone = [runner.execute_batch([p], Trainer(task, entry, profile))[0] for p in plans]
    return alone, runner.execute_batch(plans, Trainer(task, entry, profile))


@pytest.mark.parametrize("kind", sorted(TRIAL_CODE))
def test_trials_with_their_own_hyperparameters_match_each_trial_alone(kind, make_entry, profile):
    """Trials batch with a merged optimizer (each trial's groups and hyperparameters); a trial
    whose learning rate diverges stops there while the others go on."""
    task = registry.make_task("deep-linear-modes", "smoke", SHORT)
    lrs = [1e-3, 1e-2, 3e-2, 1e30]
    alone, batch = trials_both_ways(task, make_entry(code=TRIAL_CODE[kind]), profile, lrs)
    for (single, metrics, _), (b, b_metrics, _) in zip(alone, batch, strict=True):
        assert single.execution["mode"] == "one-by-one"
        assert b.execution["optimizer"] == "merged"
        assert [h["lr"] for h in b.execution["hparams"]] == lrs
        assert_same_run(single, b)
        np.testing.assert_allclose(list(b_metrics.values()), list(metrics.values()), rtol=1e-4,
                                   atol=1e-6)
    assert [t.status for t, _, _ in batch][:3] == ["ok"] * 3 and batch[3][0].status == "diverged"
    # Different learning rates really give different runs.
    first = next(iter(batch[0][0].curves))
    assert batch[0][0].curves[first] != batch[1][0].curves[first]


@pytest.mark.parametrize("kind", sorted(TRIAL_CODE))
@pytest.mark.parametrize("name", [n for n in registry.all_tasks()
                                  if batched.batchable(registry.task_class(n))])
def test_the_merged_fast_path_holds_on_every_task(kind, name, make_entry, profile):
    task = registry.make_task(name, "smoke", {"steps": 2, "evals": 1})
    entry = load_entry(make_entry(code=TRIAL_CODE[kind]))
    outcomes = runner.execute_batch(trial_plans(task, [1e-3, 2e-3]), Trainer(task, entry, profile))
    assert [t.execution["optimizer"] for t, _, _ in outcomes] == ["merged"] * 2


def test_merged_trials_follow_each_trial_schedule(make_entry, profile):
    task = registry.make_task("teacher-student", "smoke", {"steps": 30, "evals": 5})
    code = TRIAL_CODE["adamw"] + WARMUP
    alone, batch = trials_both_ways(task, make_entry(code=code), profile, [1e-3, 3e-3, 1e-2])
    for (single, _, _), (b, _, _) in zip(alone, batch, strict=True):
        assert b.execution["optimizer"] == "merged"
        assert_same_run(single, b)


@pytest.mark.parametrize("kind", ["adamw", "sgd-momentum"])
def test_mode_connectivity_trials_batch_in_its_procedure(kind, make_entry, profile):
    """mode-connectivity's procedure takes a study's trials side by side (every network of
    every trial in one batch, a merged optimizer); each trial matches the trial run alone."""
    task = registry.make_task("mode-connectivity", "smoke",
                              {"steps": 30, "evals": 4, "spawn_steps": [0, 10], "alphas": 5})
    alone, batch = trials_both_ways(task, make_entry(code=TRIAL_CODE[kind]), profile, [1e-3, 1e-2, 3e-2])
    for (single, metrics, _), (b, b_metrics, _) in zip(alone, batch, strict=True):
        assert b.execution["mode"] == "procedure" and len(b.execution["hparams"]) == 3
        assert_same_run(single, b)
        np.testing.assert_allclose(list(b_metrics.values()), list(metrics.values()), rtol=1e-4,
                                   atol=1e-6)
    first = next(iter(batch[0][0].curves))
    assert batch[0][0].curves[first] != batch[1][0].curves[first]


# Third-party code that steps or differentiates through hooks (found by trying such code): a
# batch would silently skip them, so it must not be the way these seeds train.
STEP_HOOK = """
import torch

def make_optimizer(params, hparams, task):
    opt = torch.optim.Adam(params, lr=0.01)
    calls = [0]
    def halve(optimizer, args, kwargs):  # the entry's own schedule, as a post-step hook
        calls[0] += 1
        if calls[0] % 10 == 0:
            for group in optimizer.param_groups:
                group["lr"] *= 0.5
    opt.register_step_post_hook(halve)
    return opt
"""
PATCHED_STEP = """
import torch

def make_optimizer(params, hparams, task):
    opt = torch.optim.SGD(params, lr=0.05)
    inner, calls = opt.step, [0]
    def step(closure=None):  # a step replaced on the instance
        calls[0] += 1
        if calls[0] % 10 == 0:
            for group in opt.param_groups:
                group["lr"] *= 0.5
        return inner(closure)
    opt.step = step
    return opt
"""
LOMO = """
import torch

class LOMO(torch.optim.Optimizer):  # updates in post-accumulate-grad hooks; step does nothing
    def __init__(self, params, lr):
        params = list(params)
        super().__init__(params, dict(lr=lr))
        for p in params:
            p.register_post_accumulate_grad_hook(self.update)

    @torch.no_grad()
    def update(self, p):
        p.add_(p.grad, alpha=-self.param_groups[0]["lr"])
        p.grad = None

    def step(self, closure=None):
        return None

def make_optimizer(params, hparams, task):
    return LOMO(params, lr=0.05)
"""
GRAD_HOOK = """
import torch

def make_optimizer(params, hparams, task):
    params = list(params)
    calls = [0]
    def scale(grad):  # scales gradients after 10 backward passes, and adds noise from the global RNG
        calls[0] += 1
        return (grad if calls[0] <= 10 * len(params) else 0.5 * grad) + 1e-4 * torch.randn_like(grad)
    for p in params:
        p.register_hook(scale)
    return torch.optim.SGD(params, lr=0.05)
"""
FORWARD_HOOK = """
import torch

class Scaled(torch.optim.SGD):  # reads the model's output through a forward hook
    def __init__(self, params, model):
        super().__init__(params, lr=0.05)
        self.stat = 0.0
        model.register_forward_hook(self.record)

    def record(self, module, args, output):
        self.stat = float(output.detach().pow(2).mean())

    def step(self, closure=None):
        for group in self.param_groups:
            group["lr"] = 0.05 / (1.0 + self.stat)
        return super().step(closure)

def make_optimizer(params, hparams, task, model):
    return Scaled(params, model)
"""

LAZY_LOMO = """
import torch

class LazyLOMO(torch.optim.SGD):  # registers its fused update's hooks inside its first step
    def step(self, closure=None):
        if not self.state.get("hooked"):
            self.state["hooked"] = True
            for group in self.param_groups:
                for p in group["params"]:
                    p.register_post_accumulate_grad_hook(self.update)
            return super().step(closure)
        return None

    @torch.no_grad()
    def update(self, p):
        p.add_(p.grad, alpha=-0.5 * self.param_groups[0]["lr"])
        p.grad = None

def make_optimizer(params, hparams, task):
    return LazyLOMO(params, lr=0.05)
"""


@pytest.mark.parametrize("code, refusal", [
    (STEP_HOOK, None), (PATCHED_STEP, None),
    (LAZY_LOMO, "(registered during the first step)"),
    (LOMO, "has an autograd hook (register_hook or register_post_accumulate_grad_hook)"),
    (GRAD_HOOK, "has an autograd hook"), (FORWARD_HOOK, "module (the model) has forward hooks"),
], ids=["step-hook", "patched-step", "lazy-lomo", "lomo", "grad-hook", "forward-hook"])
def test_hooks_run_as_one_by_one_or_the_batch_is_refused(code, refusal, make_entry, profile):
    """Step hooks and a replaced step keep the seeds' own optimizers (never one fresh instance
    over the stacks, which runs neither): the one-by-one run up to the vmapped gradients'
    rounding. Hooks on the model or its parameters refuse the batch, naming them: the seeds then
    run one by one, bit for bit (the global-RNG draws in a gradient hook included)."""
    task = DeepLinearModes(dict(DeepLinearModes.tiers["smoke"], steps=40, evals=6))
    plans = [runner.Plan(task, seed, {}) for seed in SEEDS]
    trainer = Trainer(task, load_entry(make_entry(code=code, hparams="")), profile)
    notes = []
    outcomes = runner.execute_batch(plans, trainer, notes=notes.append)
    if refusal is None:
        assert notes == [] and outcomes[0][0].execution["optimizer"] == "per-seed"
    else:
        assert len(notes) == 1 and refusal in notes[0] and "Traceback" not in notes[0]
    for plan, (traj, _, error) in zip(plans, outcomes, strict=True):
        fresh = Trainer(task, load_entry(trainer.entry.path), profile)
        reference = runner.execute(plan, fresh)[0]
        assert error is None
        if refusal is None:
            assert_same_run(reference, traj)
        else:
            assert traj.curves == reference.curves


def test_models_that_differ_beyond_their_parameters_are_told_apart_and_others_not():
    """The batch runs one model's forward for all: attributes the forward reads must agree.
    Objects made per model that are equal in what they hold (a lambda over the same value,
    x-transformers' `always(value)`) must not refuse a batch (it refused xt's models at first)."""
    from suite.batched import attribute_difference

    class Always:
        def __init__(self, value):
            self.value = value

        def __call__(self, *args):
            return self.value

    class Net(nn.Module):
        def __init__(self, cap, scale=1.0):
            super().__init__()
            self.read = nn.Linear(3, 1)
            self.cap, self.mix = cap, Always(scale)
            self.act = (lambda c: (lambda x: c * torch.tanh(x / c)))(cap)

    assert attribute_difference([Net(1.0), Net(1.0)]) is None
    assert attribute_difference([Net(float("nan")), Net(float("nan"))]) is None
    said = attribute_difference([Net(1.0), Net(2.0)])
    assert said.startswith("the runs' models differ beyond their parameters: ")
    assert attribute_difference([Net(1.0, scale=1.0), Net(1.0, scale=0.5)]) is not None  # inside Always
