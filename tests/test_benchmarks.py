"""benchmarks/: the FLOP count speed.py reports, the shortened configs, and the script end to end."""

import subprocess
import sys

import pytest

from benchmarks.common import REPO, baseline_trainer, configured
from benchmarks.speed import batched_breakdown, batching_ceiling, step_flops
from suite.registry import make_task


def test_step_flops_count_the_forward_and_backward_matmuls_of_a_deep_linear_net():
    """y = X (W₂W₁)ᵀ with X = I (N = n_in examples): the product costs 2·o·h·i, applying it
    2·N·i·o; backward needs both operands' gradients of the product (2 · 2·o·h·i) but only the
    weight side of X Pᵀ (X is data): 6·o·h·i + 4·N·i·o in all."""
    i, h, o = 5, 7, 4
    task = make_task("deep-linear-modes", "smoke",
                     {"n_in": i, "hidden": h, "n_out": o, "singular_values": [2.0, 1.0]})
    assert step_flops(task, baseline_trainer(task)) == 6 * o * h * i + 4 * i * i * o


def test_configured_shortens_the_run_but_keeps_the_tier_sizes():
    task = configured("deep-linear-modes", "standard", 20, 3)
    assert task.config["steps"] == 20 and task.config["evals"] == 3
    assert task.config["n_in"] == make_task("deep-linear-modes", "standard").config["n_in"]
    spawning = configured("mode-connectivity", "standard", 100)
    assert max(spawning.spawn_steps) == 100  # spawn steps past the end move to it


@pytest.mark.parametrize("name", ["deep-linear-modes"])
def test_speed_script_prints_the_ratio_and_the_flop_rates(name):
    out = subprocess.run(
        [sys.executable, "benchmarks/speed.py", "--tier", "smoke", "--steps", "5", "--evals", "2",
         "--seeds", "2", "--repeats", "1", "--tasks", name],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=True).stdout
    assert f"| {name}" in out and "speed-up" in out
    assert "MFLOP per seed-step" in out and "of the matmul rate" in out
    assert "where a batched run's time goes" in out and "ceiling" in out


@pytest.mark.parametrize("name, networks", [("deep-linear-modes", 1), ("mode-connectivity", None)])
def test_the_breakdown_counts_every_networks_batches_and_its_parts_add_up(name, networks):
    task = configured(name, "smoke", 6, 2)
    spent = batched_breakdown(task, baseline_trainer(task), [0, 1])
    parts = spent["drawing"] + spent["evaluating"] + spent["steps"] + spent["rest"]
    assert parts == pytest.approx(spent["total"]) and min(spent.values()) >= 0
    if networks:
        assert spent["batches"] == 2 * 6 * networks
    else:  # a parent, its children and two independent networks per seed
        assert spent["batches"] > 2 * 6 * 3
    assert spent["evaluating"] > 0 and spent["steps"] > 0
    assert batching_ceiling(2 * spent["total"], spent, 0.0) > 2  # the steps are not counted
    fresh = configured(name, "smoke", 6, 2)  # the timers stay on the measured instance
    assert "sample_batch" not in vars(fresh) and "observe" not in vars(fresh)


def test_threads_script_prints_both_paths_on_one_and_two_threads():
    out = subprocess.run(
        [sys.executable, "benchmarks/threads.py", "--tier", "smoke", "--steps", "5", "--evals", "2",
         "--seeds", "2", "--repeats", "1", "--tasks", "deep-linear-modes"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=True).stdout
    assert "| deep-linear-modes" in out and "one by one: 2 / 1" in out
    assert "| bmm (8,16,16)" in out and "2 threads (µs)" in out


def test_the_benchmarked_tasks_read_from_source_are_the_registered_tasks_and_targets():
    from benchmarks.common import checkout_tasks
    from suite import registry

    assert checkout_tasks() == {name: registry.task_class(name).target
                                for name in sorted(registry.all_tasks())}


def test_accuracy_tracks_are_finite_or_nan_and_carry_a_unit():
    """asv's step detection (`asv publish`) never returns on an infinite value."""
    import math

    from benchmarks.bench_suite import TARGETS, Accuracy, value

    assert math.isnan(value({"t/m": math.inf}, "t/m")) and math.isnan(value({}, "t/m"))
    assert value({"t/m": 3.0}, "t/m") == 3.0
    tracks = [getattr(Accuracy, n) for n in dir(Accuracy) if n.startswith("track_")]
    assert len(tracks) >= 10 and all(isinstance(t.unit, str) and t.unit for t in tracks)
    unreached = {f"{task}/{target}": math.inf for task, target in TARGETS.items()}
    for task in TARGETS:
        track = getattr(Accuracy, f"track_steps_to_target_{task.replace('-', '_')}")
        assert math.isnan(track(Accuracy(), unreached))


def test_speed_tracks_are_lower_is_better_ratios_with_units(monkeypatch):
    """asv's tracks of speed.py: one per task and the matmul one, NaN without a value, and
    finite positive ratios from a tiny measurement (no timing is asserted)."""
    import math

    from benchmarks import bench_speed

    tracks = [getattr(bench_speed.SpeedRatios, n) for n in dir(bench_speed.SpeedRatios)
              if n.startswith("track_")]
    assert len(tracks) == len(bench_speed.TASKS) + 1
    assert all(isinstance(t.unit, str) and t.unit for t in tracks)
    assert all(math.isnan(t(bench_speed.SpeedRatios(), {})) for t in tracks)
    for name, value in (("SPEEDUP_STEPS", 3), ("FLOP_STEPS", 3), ("REPEATS", 1), ("SEEDS", [0, 1])):
        monkeypatch.setattr(bench_speed, name, value)
    assert 0 < bench_speed.batching_ratio("deep-linear-modes") < math.inf
    assert 0 < bench_speed.matmul_shortfall(["deep-linear-modes"]) < math.inf


def test_trial_batching_tracks_are_finite_ratios(monkeypatch):
    """asv's tracks of a study's trial batching: one per task, NaN without a value, a finite
    positive ratio from a tiny measurement (no timing is asserted)."""
    import math

    from benchmarks import bench_speed

    tracks = [getattr(bench_speed.TrialRatios, n) for n in dir(bench_speed.TrialRatios)
              if n.startswith("track_")]
    assert len(tracks) == len(bench_speed.TRIAL_TASKS)
    assert all(math.isnan(t(bench_speed.TrialRatios(), {})) for t in tracks)
    for name, value in (("SPEEDUP_STEPS", 3), ("REPEATS", 1), ("TRIALS", 2)):
        monkeypatch.setattr(bench_speed, name, value)
    for task in ("deep-linear-modes", "mode-connectivity"):
        assert 0 < bench_speed.trial_batching_ratio(task) < math.inf
