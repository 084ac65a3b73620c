"""The silent ways a seed batch could differ from one-by-one runs: each is followed or refused."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from suite import batched, profiles, registry, results, runner, seeding, verify
from suite.entry import load_entry
from suite.loop import BatchingUnsupported, Lane, Trainer, Trajectory
from suite.tasks.deep_linear_modes import DeepLinear, DeepLinearModes

SEEDS = [0, 1, 2]
SHORT = {"steps": 60, "evals": 8}

# Hand-written optimizers often rebind instead of updating in place.
REBINDING = """
import torch

class Rebinding(torch.optim.Optimizer):
    def __init__(self, params, lr):
        super().__init__(params, dict(lr=lr))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["before"] = p.data  # kept old values must stay untouched
                p.data = p.data - group["lr"] * p.grad

def make_optimizer(params, hparams, task):
    return Rebinding(params, lr=0.05)
"""

# Noise from torch's global RNG (as pytorch-optimizer's Apollo and Kron draw it).
TORCH_NOISE = """
import torch

class Noisy(torch.optim.SGD):
    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                p.grad.add_(torch.randn_like(p), alpha=1e-3)
        return super().step(closure)

def make_optimizer(params, hparams, task):
    return Noisy(params, lr=0.05)
"""

NUMPY_NOISE = """
import numpy as np
import torch

class NumpyNoisy(torch.optim.SGD):
    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                p.grad.add_(torch.from_numpy(np.random.randn(*p.shape)).to(p.dtype), alpha=1e-3)
        return super().step(closure)

def make_optimizer(params, hparams, task):
    return NumpyNoisy(params, lr=0.05)
"""

BROKEN = """
import torch

class Broken(torch.optim.SGD):
    def step(self, closure=None):
        if self.state.get("calls", 0) > 3:
            raise ValueError("a bug in my optimizer")
        self.state["calls"] = self.state.get("calls", 0) + 1
        return super().step(closure)

def make_optimizer(params, hparams, task):
    return Broken(params, lr=0.05)
"""


@pytest.fixture(scope="module")
def profile():
    prof = profiles.load("cpu-2core")
    prof.apply()
    return prof


def one_by_one(task, entry_dir, profile, seeds=SEEDS):
    return [task.run(s, Trainer(task, load_entry(entry_dir), profile)) for s in seeds]


def batch(task, entry_dir, profile, seeds=SEEDS):
    return batched.train_seeds(task, Trainer(task, load_entry(entry_dir), profile), seeds)


def final(traj, curve="loss"):
    return traj.curves[curve][-1]


class ProjectedLinear(DeepLinearModes):
    """deep-linear-modes whose model holds a fixed random projection drawn per seed."""

    def make_model(self, seed, purpose="init"):
        model = super().make_model(seed)
        gen = torch.Generator().manual_seed(1000 + seed)
        model.proj = torch.eye(self.config["n_in"]) + 0.5 * torch.randn(
            self.config["n_in"], self.config["n_in"], generator=gen)
        return model

    def loss(self, model: DeepLinear, batch):
        return 0.5 * ((batch["x"] @ model.proj) @ model.product().T - batch["y"]).pow(2).sum()


def test_a_plain_tensor_attribute_is_refused_and_runs_one_by_one(make_entry, profile, tmp_path,
                                                                 monkeypatch, capsys):
    task = ProjectedLinear({**DeepLinearModes.tiers["smoke"], **SHORT})
    entry = make_entry()
    with pytest.raises(BatchingUnsupported, match="'proj' is a tensor"):
        batch(task, entry, profile)
    # Through the runner: the seeds run one by one, give the one-by-one numbers, and say why.
    monkeypatch.setattr(registry, "make_task", lambda *a, **k: task)
    runs = runner.run_suite(entry, tasks=["deep-linear-modes"], seeds=3, out=tmp_path, progress=False)
    singles = one_by_one(task, entry, profile)
    got = runs[runs["metric"] == "final_loss"].sort_values("seed")["value"].to_numpy()
    np.testing.assert_array_equal(got, [final(t) for t in singles])
    assert "run one by one" in capsys.readouterr().err
    notes = [json.loads(text) for text in runs["execution"]]
    assert {n["mode"] for n in notes} == {"one-by-one"}
    assert {n["note"] for n in notes} == {
        "BatchingUnsupported: model attribute 'proj' is a tensor that is neither a parameter nor a "
        "buffer (every seed would see seed 0's); register it with register_buffer or make it a parameter"}


def test_a_rebinding_optimizer_gives_the_one_by_one_numbers(make_entry, profile):
    task = registry.make_task("deep-linear-modes", "smoke", SHORT)
    entry = make_entry(code=REBINDING)
    singles, batches = one_by_one(task, entry, profile), batch(task, entry, profile)
    for single, b in zip(singles, batches, strict=True):
        for name, values in single.curves.items():
            np.testing.assert_allclose(b.curves[name], values, rtol=1e-4, atol=1e-6, err_msg=name)
    assert final(singles[0]) < 0.5 * singles[0].curves["loss"][0]  # it did train


def test_a_torch_global_rng_optimizer_is_reproducible_batched_and_one_by_one(make_entry, profile):
    task = registry.make_task("deep-linear-modes", "smoke", SHORT)
    entry = make_entry(code=TORCH_NOISE)
    torch.manual_seed(123)  # whatever the global state was before, the runs do not depend on it
    first = one_by_one(task, entry, profile)
    torch.manual_seed(456)
    again = one_by_one(task, entry, profile, seeds=[2, 1, 0])[::-1]
    batches = batch(task, entry, profile)
    for a, b, c in zip(first, again, batches, strict=True):
        assert a.curves == b.curves  # bit-identical run to run, in any order
        np.testing.assert_allclose(c.curves["loss"], a.curves["loss"], rtol=1e-4, atol=1e-6)
    assert first[0].curves != first[1].curves  # each seed has its own noise
    # The global RNG itself is left as the harness found it.
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    one_by_one(task, entry, profile, seeds=[0])
    assert torch.equal(torch.rand(3), expected)


def test_a_numpy_global_rng_optimizer_is_refused_in_a_batch_and_reproducible_alone(make_entry, profile,
                                                                                 tmp_path):
    task = registry.make_task("deep-linear-modes", "smoke", SHORT)
    entry = make_entry(code=NUMPY_NOISE)
    with pytest.raises(BatchingUnsupported, match="numpy's global RNG"):
        batch(task, entry, profile)
    runs = [runner.run_suite(entry, tasks=["deep-linear-modes"], seeds=2, out=tmp_path / str(k),
                             progress=False) for k in range(2)]
    values = [r.sort_values(["seed", "metric"])["value"].to_numpy() for r in runs]
    np.testing.assert_array_equal(values[0], values[1])
    assert set(runs[0]["execution"].str.slice(0, 22)) == {'{"mode": "one-by-one",'}


def test_one_draw_from_numpys_global_rng_is_seen_wherever_its_block_stands():
    """numpy's key array changes only when a 624-word block is used up: comparing it alone saw
    a draw right after seeding (which starts a block) and missed one in mid-block, so a batch
    that followed another run in the same process went ahead on the global stream."""
    np.random.seed(0)
    np.random.rand()  # mid-block from here on
    for draw in (np.random.rand, np.random.standard_normal, lambda: np.random.randint(9)):
        before = seeding.host_rng_states()
        draw()
        assert not seeding.same_host_rng_states(before, seeding.host_rng_states())
    before = seeding.host_rng_states()
    np.random.standard_normal()  # the second of a Gaussian pair: only the cached value goes
    assert not seeding.same_host_rng_states(before, seeding.host_rng_states())
    assert seeding.same_host_rng_states(seeding.host_rng_states(), seeding.host_rng_states())


# Per-parameter learning rates drawn when the optimizer is built, from numpy's or Python's global
# RNG (as randomized-rate and layer-sampling optimizers do), and a schedule drawing its warmup.
DRAWS_WHEN_BUILT = {
    "numpy in make_optimizer": """
import numpy as np
import torch

def make_optimizer(params, hparams, task):
    return torch.optim.SGD([{"params": [p], "lr": 0.05 * float(np.random.uniform(0.5, 1.5))}
                            for p in params], lr=0.05)
""",
    "random in make_schedule": """
import random
import torch

def make_optimizer(params, hparams, task):
    return torch.optim.SGD(params, lr=0.05)

def make_schedule(optimizer, hparams, task):
    warmup = random.randint(1, 20)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
""",
}


@pytest.mark.parametrize("case", sorted(DRAWS_WHEN_BUILT))
@pytest.mark.parametrize("task", ["deep-linear-modes", "mode-connectivity"])
def test_a_global_rng_draw_when_the_optimizer_is_built_refuses_the_batch(make_entry, tmp_path, case,
                                                                        task):
    """The steps' checks did not see draws made while building the optimizer or schedule: the
    batch went ahead on the unseeded global stream, and two identical runs gave other numbers."""
    entry = make_entry(code=DRAWS_WHEN_BUILT[case])
    sets = ["steps=40"] + ["spawn_steps=[0, 10]"] * (task == "mode-connectivity")
    runs = [runner.run_suite(entry, tasks=[task], seeds=2, out=tmp_path / str(k), sets=sets,
                             progress=False) for k in range(2)]
    values = [r.sort_values(["seed", "metric"])["value"].to_numpy() for r in runs]
    np.testing.assert_array_equal(values[0], values[1])
    executions = [json.loads(e) for e in runs[0].drop_duplicates("run_id")["execution"]]
    assert all(e["note"].startswith("BatchingUnsupported: the entry's code draws from Python's or "
                                    "numpy's global RNG") for e in executions), executions


def test_an_error_in_entry_code_names_the_entry_line_without_batching_noise(make_entry, tmp_path,
                                                                           capsys):
    entry = make_entry(code=BROKEN)
    runs = runner.run_suite(entry, tasks=["deep-linear-modes"], seeds=2, out=tmp_path, progress=False)
    errors = runs.drop_duplicates("run_id")["error"].tolist()
    assert len(errors) == 2
    for error in errors:
        assert error.startswith("the entry's optimizer.step failed at ")
        assert f"{entry / 'entry.py'}:7 (step): ValueError: a bug in my optimizer" in error
        assert "Traceback" not in error and "\n" not in error
    assert "batch" not in capsys.readouterr().err


def test_batches_record_their_execution_and_single_seeds_theirs(make_entry, tmp_path):
    runs = runner.run_suite(make_entry(), tasks=["deep-linear-modes", "mode-connectivity"], seeds=2,
                            out=tmp_path, progress=False,
                            sets=["steps=40", "mode-connectivity.spawn_steps=[0, 10, 40]"])
    modes = runs.drop_duplicates("run_id").set_index(["task", "seed"])["execution"]
    assert modes["deep-linear-modes", 0] == '{"mode": "batched", "optimizer": "stacked", "seeds": [0, 1]}'
    assert modes["mode-connectivity", 1] == (
        '{"mode": "procedure", "networks": "side by side", "seeds": [0, 1]}')


def test_buffers_and_shape_changes_are_refused(profile):
    class WithBuffer(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(2))
            self.register_buffer("b", torch.zeros(2))

    with pytest.raises(BatchingUnsupported, match="buffers"):
        batched.stack_parameters([WithBuffer(), WithBuffer()])
    frozen = nn.Linear(2, 2)
    frozen.bias.requires_grad_(False)  # in one seed's model only: still refused
    with pytest.raises(BatchingUnsupported, match="parameter 'bias' is frozen"):
        batched.stack_parameters([nn.Linear(2, 2), frozen])
    assert batched.tensor_attributes(WithBuffer()) == []


def test_verify_reruns_each_run_as_it_was_executed_to_the_last_bit(make_entry, tmp_path):
    """Batched results of a global-RNG optimizer reproduce exactly: verify re-runs the batch."""
    entry = make_entry(code=TORCH_NOISE)
    out = entry / "results" / "cpu-2core" / "smoke"
    runner.run_suite(entry, tasks=["deep-linear-modes"], seeds=3, out=out, progress=False)
    checks = verify.verify_submission(entry, k=3, tier="smoke", pick_seed=0)
    task = registry.make_task("deep-linear-modes", "smoke")
    assert len(checks) == 3 * (len(task.metrics()) + len(task.curves()))  # every curve checked too
    assert all(c.matches(rtol=0.0, atol=0.0) for c in checks), [c for c in checks if not c.matches()]


# Draws from numpy's global RNG only where an environment variable says so: batched when the
# runs were made, refused (one by one) when they are verified.
NOISY_LATER = """
import os
import numpy as np
import torch

class MaybeNoisy(torch.optim.SGD):
    @torch.no_grad()
    def step(self, closure=None):
        if os.environ.get("LDBENCH_TEST_NOISY"):
            np.random.rand()
        return super().step(closure)

def make_optimizer(params, hparams, task):
    return MaybeNoisy(params, lr=0.05)
"""


def test_verify_refuses_a_batch_it_cannot_rerun_together_rather_than_blame_the_numbers(
        make_entry, monkeypatch):
    """Seeds that ran one by one differ from their batch by float32 rounding: comparing them
    would report an honest submission's numbers as mismatched (as it did on Dask workers)."""
    entry = make_entry(code=NOISY_LATER)
    out = entry / "results" / "cpu-2core" / "smoke"
    runner.run_suite(entry, tasks=["deep-linear-modes"], seeds=2, out=out, progress=False)
    monkeypatch.setenv("LDBENCH_TEST_NOISY", "1")
    with pytest.raises(results.ResultsError, match=(r"deep-linear-modes, seeds 0, 1: the runs were "
                                                    r"trained together, but here the re-run could "
                                                    r"not be \(BatchingUnsupported: .*numpy")):
        verify.verify_submission(entry, k=2, tier="smoke", pick_seed=0)


def test_mode_connectivity_side_by_side_equals_its_networks_one_by_one(make_entry, profile):
    """Every network of every seed trained as one batch gives the seed-by-seed numbers, up to
    float32 rounding (which an error barrier, a count of test points, can turn into a few
    points of n_test)."""
    task = registry.make_task("mode-connectivity", "smoke", {"steps": 20, "evals": 4, "alphas": 5,
                                                             "spawn_steps": [0, 5, 20]})
    entry = load_entry(make_entry(code="import torch\n\ndef make_optimizer(params, hparams, task):\n"
                                       "    return torch.optim.Adam(params, lr=1e-2)\n"))
    plans = [runner.Plan(task, seed, {}) for seed in SEEDS]
    together = runner.execute_batch(plans, Trainer(task, entry, profile))
    alone = [runner.execute(plan, runner.alone(Trainer(task, entry, profile))) for plan in plans]
    for (t_traj, t_metrics, _), (a_traj, a_metrics, _) in zip(together, alone, strict=True):
        assert t_traj.execution["seeds"] == SEEDS and a_traj.execution["networks"] == "one by one"
        for name in ("train_loss", "test_loss"):
            np.testing.assert_allclose(t_traj.curves[name], a_traj.curves[name], rtol=1e-4, atol=1e-6)
        for name, value in a_metrics.items():
            tol = 3 / task.config["n_test"] if name.startswith("error_barrier") else 1e-3
            assert abs(t_metrics[name] - value) <= tol + 1e-3 * abs(value), name


def test_a_batch_hands_its_optimizer_state_back_for_the_next_phase(make_entry, profile):
    """Phases of a procedure (a parent's segments, then its children) continue from the state
    the stacked optimizer reached: the seeds' own optimizers get it back after each batch."""
    task = registry.make_task("mode-connectivity", "smoke", {"steps": 30, "evals": 5,
                                                             "spawn_steps": [0, 10, 30]})
    entry = load_entry(make_entry(code="import torch\n\ndef make_optimizer(params, hparams, task):\n"
                                       "    return torch.optim.Adam(params, lr=1e-2)\n"))

    def parents(trainer):
        nets = []
        for seed in SEEDS:
            model = task.make_model(seed)
            optimizer, _ = trainer.make_optimizer(model, seed=seed)
            nets.append((seed, model, optimizer))
        data = {seed: task.make_data(seed) for seed in SEEDS}
        for start, end in ((0, 10), (10, 20)):  # two phases, each a fresh batch
            lanes = [Lane(seed, model, opt, data[seed], seeding.generator(seed, f"p{start}"),
                          Trajectory()) for seed, model, opt in nets]
            batched.train_lanes(trainer, lanes, start=start, end=end)
        return nets

    together = parents(Trainer(task, entry, profile))
    alone = parents(runner.alone(Trainer(task, entry, profile)))
    for (_, m1, o1), (_, m2, o2) in zip(together, alone, strict=True):
        for p1, p2 in zip(m1.parameters(), m2.parameters(), strict=True):
            torch.testing.assert_close(p1, p2, rtol=1e-4, atol=1e-6)
            for key, value in o2.state[p2].items():
                torch.testing.assert_close(o1.state[p1][key], value, rtol=1e-4, atol=1e-7)
