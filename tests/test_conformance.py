"""Task conformance (benchopt's `benchopt test`, sklearn's `check_estimator`): every registered
task, both tiers, is checked against the Task contract; a new task file needs no test of its own."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from suite import batched, profiles, registry, runner, seeding
from suite.entry import load_entry
from suite.loop import Trainer, one_thread
from suite.task import PLOT_KINDS, ConfigError, Plot

REPO = Path(__file__).resolve().parents[1]

TASKS = list(registry.all_tasks())
CASES = [(name, tier) for name in TASKS for tier in registry.TIERS]
SEEDS = [0, 1]


@pytest.fixture(scope="module")
def trainer_for():
    prof = profiles.load("cpu-2core")
    prof.apply()
    entry = load_entry(REPO / "baselines" / "sgd")
    return lambda task: Trainer(task, entry, prof)


def short_task(name: str):
    """The smoke tier shortened by the task's quick_config: a few steps exercise the contract."""
    return registry.make_task(name, "smoke", registry.task_class(name).quick_config)


@pytest.fixture(scope="module")
def trained(trainer_for):
    """name -> (task, trajectory, metrics) of seed 0, trained one by one on the short smoke tier."""
    cache = {}

    def get(name):
        if name not in cache:
            task = short_task(name)
            traj = task.run(0, trainer_for(task))
            assert traj.status == "ok", f"{name}: the short smoke run ended {traj.status}"
            steps, curves = traj.arrays()
            cache[name] = task, traj, task.summarize(steps, curves, traj.data)
        return cache[name]
    return get


# -- declarations -----------------------------------------------------------------------------

@pytest.mark.parametrize("name,tier", CASES)
def test_every_metric_declares_role_resolution_and_bounds(name, tier):
    for metric, spec in registry.make_task(name, tier).metrics().items():
        assert spec.role in ("ranked", "diagnostic"), f"{name}: {metric} declares no role"
        assert spec.resolution is not None and math.isfinite(spec.resolution), \
            f"{name}: {metric} declares no finite resolution"
        low, high = spec.bounds
        assert low < high, f"{name}: {metric} has empty bounds {spec.bounds}"


@pytest.mark.parametrize("name,tier", CASES)
def test_target_is_a_ranked_steps_to_target_metric(name, tier):
    task = registry.make_task(name, tier)
    spec = task.metrics().get(task.target)
    assert spec is not None, f"{name}: target {task.target!r} is not among its metrics"
    assert spec.steps_to_target and spec.role == "ranked"
    if task.tie_break is not None:  # the tuner's second criterion: ranked, and not the target
        tie = task.metrics().get(task.tie_break)
        assert tie is not None and tie.role == "ranked" and task.tie_break != task.target, name


@pytest.mark.parametrize("name,tier", CASES)
def test_plots_read_only_declared_curves_and_metrics(name, tier):
    task = registry.make_task(name, tier)
    curves, metrics = task.curves(), task.metrics()
    assert curves, f"{name}: declares no curves"
    plots = task.plots()
    assert plots, f"{name}: declares no plot (the default Task.plots draws every curve)"
    assert len({p.key for p in plots}) == len(plots), f"{name}: two plots share a key"
    for plot in plots:
        assert isinstance(plot, Plot) and plot.kind in PLOT_KINDS
        assert plot.names() <= set(curves), f"{name}: plot {plot.key} reads undeclared curves"
        named = set(plot.markers) | set(plot.metrics) | set(plot.span or ())
        assert named <= set(metrics), f"{name}: plot {plot.key} reads undeclared metrics"
        if plot.kind == "path":
            assert all(len(c) == len(plot.x) for _, c in plot.paths)


# -- configuration ----------------------------------------------------------------------------

@pytest.mark.parametrize("name,tier", CASES)
def test_check_config_rejects_nonsense_before_any_run(name, tier):
    """steps=0 and each of the task's declared nonsense values: one line naming the key."""
    cls = registry.task_class(name)
    examples = [{"steps": 0}, {"evals": 0}, *cls.invalid_configs]
    assert len(examples) > 2, f"{name}: declares no invalid_configs for this test to try"
    for bad in examples:
        with pytest.raises(ConfigError) as err:
            registry.make_task(name, tier, bad)
        message = str(err.value)
        key = next(iter(bad))
        assert f"{key}=" in message and "\n" not in message, message


@pytest.mark.parametrize("name,tier", CASES)
def test_the_tiers_pass_their_own_check(name, tier):
    registry.make_task(name, tier).check_config()


# -- data, model, batches ---------------------------------------------------------------------

@pytest.mark.parametrize("name,tier", CASES)
def test_global_rng_is_untouched_by_data_model_and_batches(name, tier):
    task = registry.make_task(name, tier)
    torch.manual_seed(1234)
    before = torch.random.get_rng_state()
    data = task.make_data(0)
    model = task.make_model(0)
    gen = seeding.generator(0, "batches")
    for step in (1, 2):
        task.sample_batch(data, step, gen)
    assert isinstance(model, torch.nn.Module)
    assert torch.equal(torch.random.get_rng_state(), before), \
        f"{name}: make_data/make_model/sample_batch drew from torch's global RNG"


@pytest.mark.parametrize("name,tier", CASES)
def test_batches_are_the_same_on_one_thread_as_on_two(name, tier, trainer_for):
    """Batches are drawn on one thread (loop.one_thread: it is faster), which must not change
    them: every element bit for bit against two threads (cuda-1gpu's; cpu-2core has one, where
    one_thread changes nothing), over several steps."""
    task = registry.make_task(name, tier)
    trainer_for(task)  # applies cpu-2core: its dtype and determinism
    data = task.make_data(0)

    def draw() -> list:
        gen = seeding.generator(0, "batches")
        return [task.sample_batch(data, step, gen) for step in (1, 2, 3)]

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        several = draw()
        with one_thread():
            assert torch.get_num_threads() == 1
            one = draw()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(torch.utils._pytree.tree_leaves(several), torch.utils._pytree.tree_leaves(one),
                    strict=True):
        assert not isinstance(a, torch.Tensor) or torch.equal(a, b), f"{name}: a batch differs"


@pytest.mark.parametrize("name,tier", CASES)
def test_observe_records_only_declared_curves(name, tier):
    task = registry.make_task(name, tier)
    data, model = task.make_data(0), task.make_model(0)
    with torch.no_grad():
        values = task.observe(model, data)
    assert set(values) <= set(task.curves()), \
        f"{name}: observe records undeclared curves {sorted(set(values) - set(task.curves()))}"
    assert all(isinstance(v, float) for v in values.values())


# -- a short training run ---------------------------------------------------------------------

@pytest.mark.parametrize("name", TASKS)
def test_summarize_gives_exactly_the_declared_metrics(name, trained):
    task, traj, metrics = trained(name)
    assert set(metrics) == set(task.metrics())
    assert set(traj.curves) <= set(task.curves()), \
        f"{name}: the run records undeclared curves {sorted(set(traj.curves) - set(task.curves()))}"
    for metric, value in metrics.items():
        low, high = task.metrics()[metric].bounds
        assert math.isnan(value) or math.isinf(value) or low <= value <= high, \
            f"{name}: {metric} = {value} lies outside its bounds {(low, high)}"


@pytest.mark.parametrize("name", TASKS)
def test_batched_equals_one_by_one_for_every_seed(name, trainer_for):
    task = short_task(name)
    if not batched.seed_batchable(task):
        pytest.skip(f"{name} has its own procedure without run_seeds: always run seed by seed")
    trainer = trainer_for(task)
    if batched.batchable(task):
        single = [task.run(seed, trainer) for seed in SEEDS]
        batch = batched.train_seeds(task, trainer, SEEDS)
    else:  # a procedure: every network of every seed side by side vs each network by itself
        single = [task.run(seed, runner.alone(trainer)) for seed in SEEDS]
        batch = task.run_seeds(SEEDS, trainer)
    for seed, one, many in zip(SEEDS, single, batch, strict=True):
        assert (many.status, many.steps) == (one.status, one.steps), f"{name} seed {seed}"
        assert many.curves.keys() == one.curves.keys()
        for curve, values in one.curves.items():
            # float32 tolerance: the batched kernels round differently, never more than this
            np.testing.assert_allclose(many.curves[curve], values, rtol=1e-4, atol=1e-6,
                                       err_msg=f"{name} seed {seed} curve {curve}")
