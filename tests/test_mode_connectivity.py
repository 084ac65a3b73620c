"""mode-connectivity: the spawning procedure's invariants, metric wiring and smoke runs.

The barrier, weight matching and LLFC functions themselves are checked against independent
references in tests/test_metrics_connectivity.py, including the invariance of the matched
barrier to relabelling one endpoint's hidden units
(test_barrier_after_matching_ignores_the_labelling_of_b_*); here only their use by the task.
"""

import math
import re

import numpy as np
import pytest
import torch

from suite import profiles, runner
from suite.entry import load_entry
from suite.loop import Trainer
from suite.metrics.connectivity import barrier
from suite.registry import make_task
from suite.results import read_results
from suite.task import ConfigError
from suite.tasks.mode_connectivity import ModeConnectivity, path_name, stable_spawn_step

MOMENTUM = """
import torch

def make_optimizer(params, hparams, task):
    return torch.optim.SGD(params, lr=hparams["lr"], momentum=0.9)
"""
PATH = re.compile(r"^path/(?P<pair>[^/]+)/(?P<kind>loss|error)@(?P<alpha>[0-9.]+)$")


def trainer_for(task, entry_dir):
    return Trainer(task, load_entry(entry_dir), profiles.load("cpu-2core"))


def flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def assert_same_state(opt_a, opt_b):
    state_a, state_b = opt_a.state_dict(), opt_b.state_dict()
    assert state_a["param_groups"] == state_b["param_groups"]
    assert state_a["state"].keys() == state_b["state"].keys()
    for key, slots in state_a["state"].items():
        for name, value in slots.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(state_b["state"][key][name]))


def test_children_start_from_the_parent_and_diverge_with_their_data(make_entry):
    task = make_task("mode-connectivity", "smoke")
    trainer = trainer_for(task, make_entry("mom", code=MOMENTUM,
                                           hparams="[hparams.default]\nlr = 0.05\n"))
    data = trainer.to_device(task.make_data(0))
    parent = trainer.to_device(task.make_model(0))
    parent_opt, _ = trainer.make_optimizer(parent, seed=0)
    trainer.train(parent, parent_opt, data, seed=0, steps=40)
    assert parent_opt.state  # momentum buffers exist: the copy below is not trivial
    child_a, opt_a, _ = task.spawn(parent, parent_opt, None)
    child_b, opt_b, _ = task.spawn(parent, parent_opt, None)
    for child, opt in ((child_a, opt_a), (child_b, opt_b)):
        assert torch.equal(flat(child), flat(parent))
        assert_same_state(opt, parent_opt)
    # Training child A must leave child B's parameters and momentum (and the parent's) alone:
    # the copies share no tensors.
    parent_before = flat(parent).clone()
    trainer.train(child_a, opt_a, data, seed=0, steps=100, start=40, purpose="spawn_40_a")
    assert torch.equal(flat(child_b), parent_before) and torch.equal(flat(parent), parent_before)
    assert_same_state(opt_b, parent_opt)
    trainer.train(child_b, opt_b, data, seed=0, steps=100, start=40, purpose="spawn_40_b")
    assert not torch.allclose(flat(child_a), flat(child_b))
    # The same data order from the same state is the same child: only the data order differs.
    child_c, opt_c, _ = task.spawn(parent, parent_opt, None)
    trainer.train(child_c, opt_c, data, seed=0, steps=100, start=40, purpose="spawn_40_a")
    assert torch.equal(flat(child_c), flat(child_a))


def run_task(task, entry_dir, seed=0):
    traj = task.run(seed, trainer_for(task, entry_dir))
    steps, curves = traj.arrays()
    return traj, curves, task.summarize(steps, curves, traj.data)


def test_run_records_aligned_curves_and_spawning_at_the_end_has_no_barrier(make_entry):
    entry = make_entry("sgd", hparams="[hparams.default]\nlr = 0.3\n")
    task = make_task("mode-connectivity", "smoke", {"steps": 150, "spawn_steps": [0, 150]})
    rng_state = torch.get_rng_state()
    traj, curves, metrics = run_task(task, entry)
    assert torch.equal(torch.get_rng_state(), rng_state)  # only explicit generators
    steps, final = task.config["steps"], len(traj.steps) - 1
    assert traj.status == "ok" and traj.steps[-1] == steps
    assert all(len(v) == len(traj.steps) for v in curves.values())
    # Every optimizer step of every network is counted: parent to 150, two children from 0,
    # none from 150, and the two independent networks.
    assert traj.steps_done == 150 + 2 * 150 + 0 + 2 * 150
    assert task.optimizer_steps() == traj.steps_done  # the progress bar's total
    alphas = np.linspace(0, 1, task.config["alphas"])
    for pair in ("spawn_0", "spawn_150", "independent", "matched"):
        for kind in ("loss", "error"):
            for a in alphas:
                values = curves[path_name(pair, kind, a)]
                assert np.isnan(values[:final]).all() and np.isfinite(values[final])
    # Children spawned at the last step are the parent itself: a flat path, no barrier.
    flat_path = [curves[path_name("spawn_150", "loss", a)][-1] for a in alphas]
    assert np.ptp(flat_path) <= 1e-6
    assert metrics["loss_barrier/spawn_150"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["error_barrier/spawn_150"] == pytest.approx(0.0, abs=1e-9)
    assert metrics["stable_spawn_step"] <= 150
    # The reference curves are independent network A's: its final test error is the path's
    # α = 0 end, and test_error averages the two ends.
    assert curves["test_error"][-1] == pytest.approx(curves[path_name("independent", "error", 0.0)][-1])
    ends = [curves[path_name("independent", "error", a)][-1] for a in (0.0, 1.0)]
    assert metrics["test_error"] == pytest.approx(np.mean(ends))
    # Matching only relabels B: its endpoint computes the same function.
    for kind in ("loss", "error"):
        assert curves[path_name("matched", kind, 1.0)][-1] == pytest.approx(
            curves[path_name("independent", kind, 1.0)][-1], abs=1e-5)
    assert set(metrics) == set(task.metrics())
    assert all(math.isfinite(v) for v in metrics.values())


# A schedule-free optimizer in miniature: training moves the weights `y`, evaluation reads
# another point, here y / 2 (exact in float), swapped in by eval() and out by train().
HALVED_AT_EVAL = """
import torch

class HalvedAtEval(torch.optim.SGD):
    def eval(self):
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    p.mul_(0.5)

    def train(self):
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    p.mul_(2.0)

def make_optimizer(params, hparams, task):
    return HalvedAtEval(params, lr=hparams["lr"])
"""


def test_the_final_paths_measure_the_weights_evaluation_sees(make_entry):
    """An optimizer with eval weights (schedule-free): the path's ends, matching and LLFC take
    them, as network A's curves do; they took the train-mode weights before (the α = 0 end's
    loss then differed from network A's last test loss)."""
    task = make_task("mode-connectivity", "smoke", {"steps": 30, "evals": 3, "spawn_steps": [0, 10]})
    traj, curves, metrics = run_task(task, make_entry("halved", code=HALVED_AT_EVAL))
    assert traj.status == "ok"
    for kind in ("loss", "error"):
        assert curves[path_name("independent", kind, 0.0)][-1] == pytest.approx(curves[f"test_{kind}"][-1],
                                                                                abs=1e-6)
    assert curves["test_loss"][-1] != pytest.approx(curves["test_loss"][-2], abs=1e-3)  # trains


def test_summarize_wires_the_metrics_from_hand_built_curves():
    task = make_task("mode-connectivity", "smoke", {"spawn_steps": [0, 25, 300]})
    alphas = np.linspace(0, 1, task.config["alphas"])
    steps = np.array([0, 10, 300])
    heights = {"spawn_0": 0.3, "spawn_25": 0.01, "spawn_300": 0.0, "independent": 0.5,
               "matched": 0.1}
    curves = {}
    for pair, h in heights.items():
        for kind, scale in (("loss", 2.0), ("error", 1.0)):
            # A line between the ends plus a bump of height scale·h at α = 1/2.
            values = 0.2 + 0.1 * alphas + scale * h * np.sin(np.pi * alphas)
            for a, v in zip(alphas, values, strict=True):
                curves[path_name(pair, kind, a)] = np.array([np.nan, np.nan, v])
    for l in task.llfc_layers:
        curves[f"llfc/layer_{l}"] = np.array([np.nan, np.nan, 0.01 * l])
        curves[f"llfc_baseline/layer_{l}"] = np.array([np.nan, np.nan, 0.5 * l])
    metrics = task.summarize(steps, curves, None)
    assert set(metrics) == set(task.metrics())
    for pair, h in heights.items():
        assert metrics[f"loss_barrier/{pair}"] == pytest.approx(2 * h, abs=1e-12)
        assert metrics[f"error_barrier/{pair}"] == pytest.approx(h, abs=1e-12)
    for l in task.llfc_layers:
        assert metrics[f"llfc/layer_{l}"] == 0.01 * l
        assert metrics[f"llfc_baseline/layer_{l}"] == 0.5 * l
    assert metrics["test_error"] == pytest.approx((0.2 + 0.3) / 2)
    # 0.3 and 0.01 vs the 0.02 threshold: stable from spawn step 25 on.
    assert metrics["stable_spawn_step"] == 25.0
    assert task.metrics()["stable_spawn_step"].steps_to_target
    # The same barriers, but spawn step 25's child at α = 1 ends above trained_error = 0.5:
    # it did not learn, so the first stable spawn step with trained children is 300.
    assert task.config["trained_error"] == 0.5
    curves[path_name("spawn_25", "error", 1.0)] = np.array([np.nan, np.nan, 0.51])
    untrained = task.summarize(steps, curves, None)
    assert untrained["stable_spawn_step"] == 300.0
    # Every measurement between two networks that did not both learn is undefined (version 3),
    # the pair's own only; at exactly trained_error a network counts as trained.
    assert np.isnan(untrained["loss_barrier/spawn_25"]) and np.isnan(untrained["error_barrier/spawn_25"])
    assert {k: v for k, v in untrained.items() if "spawn_25" not in k} == {
        k: v for k, v in metrics.items() if "spawn_25" not in k and k != "stable_spawn_step"} | {
        "stable_spawn_step": 300.0}
    assert all(np.isnan(v) for k, v in untrained.items() if "spawn_25" in k)
    curves[path_name("spawn_25", "error", 1.0)] = np.array([np.nan, np.nan, 0.5])
    assert math.isfinite(task.summarize(steps, curves, None)["error_barrier/spawn_25"])
    # Matched network B untrained: the matched barriers and the LLFC distances are undefined,
    # the independent pair's barriers too (the same two networks), test_error is still reported.
    for pair, end in (("matched", np.nan), ("independent", 0.9)):
        curves[path_name(pair, "error", 1.0)] = np.array([np.nan, np.nan, end])
    lost = task.summarize(steps, curves, None)
    gone = [k for k in lost if "matched" in k or "independent" in k or k.startswith("llfc")]
    assert len(gone) == 4 + 2 * len(task.llfc_layers) and all(np.isnan(lost[k]) for k in gone)
    assert lost["test_error"] == pytest.approx((0.2 + 0.9) / 2)
    assert lost["stable_spawn_step"] == 25.0


def test_stable_spawn_step_is_the_first_stable_spawn_of_trained_children_or_inf():
    k, trained = [0, 5, 50], [0.01, 0.01, 0.01]

    def first(barriers, errors=trained):
        return stable_spawn_step(spawn_steps=k, error_barriers=barriers, child_errors=errors,
                                 threshold=0.02, trained_error=0.1)

    assert first([0.0, 0.3, 0.0]) == 0.0
    assert first([0.1, 0.03, 0.019]) == 50.0
    assert first([0.1, 0.02, 0.5]) == math.inf  # "below" is strict
    assert first([np.nan, np.nan, np.nan]) == math.inf  # no result is never stable
    # Children that did not learn are trivially connected: they never count (the version-1
    # defect: L-BFGS children at 0.16-0.75 test error reached the target at step 0).
    assert first([0.0, 0.0, 0.0], [0.6, 0.1, 0.01]) == 5.0  # "at most" is inclusive
    assert first([0.0, 0.0, 0.0], [0.6, 0.11, 0.3]) == math.inf
    assert first([0.0, 0.0, 0.0], [np.nan, 0.5, 0.01]) == 50.0


def test_data_and_models_come_from_their_own_streams():
    task = make_task("mode-connectivity", "smoke")
    cfg = task.config
    state = torch.get_rng_state()
    data, again = task.make_data(3), task.make_data(3)
    models = {p: task.make_model(3, p) for p in ("init", "init_a", "init_b")}
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(data[k], again[k]) for k in data)
    assert data["x_train"].shape == (cfg["n_train"], cfg["dim"])
    assert data["y_test"].shape == (cfg["n_test"],)
    # Every class owns clusters (labels balanced over clusters) and appears in the data.
    assert set(data["y_train"].tolist()) == set(range(cfg["classes"]))
    assert not torch.equal(flat(models["init_a"]), flat(models["init_b"]))
    assert torch.equal(flat(task.make_model(3)), flat(models["init"]))
    # He-normal weights: variance 2/fan_in; zero biases.
    first = models["init"][0]
    assert first.weight.var().item() == pytest.approx(2 / cfg["dim"], rel=0.3)
    assert torch.count_nonzero(first.bias) == 0


def test_config_errors_name_the_problem():
    with pytest.raises(ConfigError, match=r"spawn_steps=\[0, 301\] must be .* in \[0, steps=300\]"):
        make_task("mode-connectivity", "smoke", {"spawn_steps": [0, 301]})
    with pytest.raises(ConfigError, match="alphas=2 must be an integer >= 3"):
        make_task("mode-connectivity", "smoke", {"alphas": 2})
    with pytest.raises(ConfigError, match=r"classes=4 must be an integer in \[2, 2\]"):
        make_task("mode-connectivity", "smoke", {"clusters": 2})


def test_smoke_suite_run_and_divergence(make_entry, tmp_path):
    entry = make_entry("sgd", hparams="[hparams.default]\nlr = 0.3\n")
    runs = runner.run_suite(entry, tasks=["mode-connectivity"], tier="smoke",
                            out=tmp_path / "ok", progress=False)
    assert (runs["status"] == "ok").all()
    values = runs.set_index("metric")["value"]
    assert np.isfinite(values.drop("stable_spawn_step")).all()
    assert values["error_barrier/independent"] > values["error_barrier/matched"]
    _, curves = read_results(tmp_path / "ok")
    paths = curves[curves["metric"].str.match(PATH.pattern)].dropna(subset=["value"])
    assert set(paths["step"]) == {300}
    assert {PATH.match(m)["pair"] for m in paths["metric"]} == {
        "spawn_0", "spawn_25", "spawn_100", "independent", "matched"}
    # The barrier recomputed from the stored path curve is the stored metric.
    matched = paths[paths["metric"].str.startswith("path/matched/error@")]
    alphas = matched["metric"].str.extract(PATH)["alpha"].astype(float).to_numpy()
    assert barrier(values=matched["value"].to_numpy(), alphas=alphas) == pytest.approx(
        values["error_barrier/matched"])

    wild = make_entry("wild", hparams="[hparams.default]\nlr = 1e8\n")
    runs = runner.run_suite(wild, tasks=["mode-connectivity"], tier="smoke",
                            out=tmp_path / "wild", progress=False)
    assert (runs["status"] == "diverged").all() and runs["value"].isna().all()
    assert runs["diverged_step"].notna().all()


def test_every_tiers_children_have_steps_to_take():
    """A spawn step at the end gives two copies of the parent that never train: their barriers
    are 0 by construction, and their spawn step would count as "stable" for any run. Spawning
    at the end stays a valid config (a sanity check above); no tier does it."""
    for tier, cfg in ModeConnectivity.tiers.items():
        assert max(cfg["spawn_steps"]) < cfg["steps"], tier
