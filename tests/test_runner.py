"""The runner: Parquet contract, determinism, resuming, atomic writes, divergence, errors."""

import math

import pandas as pd
import pyarrow.parquet as pq
import pytest

from suite import results, runner
from suite.profiles import ProfileError, load
from suite.registry import RegistryError

FAST = ["steps=60", "evals=10"]
RUN_COLUMNS = ["run_id", "task", "task_version", "entry", "entry_version", "entry_hash", "seed",
               "tier", "profile", "overrides", "status", "wall_time_s", "steps", "metric", "value"]


def run(entry, out, **kwargs):
    # Two quick tasks exercise the harness; every task's own smoke run lives in its test file.
    kwargs.setdefault("tasks", ["deep-linear-modes", "shared-representation"])
    kwargs.setdefault("sets", FAST)
    return runner.run_suite(entry, tier="smoke", out=out, progress=False, **kwargs)


def test_results_are_plain_parquet_with_the_contract_columns(make_entry, tmp_path):
    run(make_entry(), tmp_path / "out", seeds=2)
    runs = pd.read_parquet(tmp_path / "out" / "runs.parquet")
    curves = pd.read_parquet(tmp_path / "out" / "curves.parquet")
    assert set(RUN_COLUMNS) <= set(runs.columns)
    assert {"run_id", "step", "metric", "value"} <= set(curves.columns)
    assert set(runs.task) == {"deep-linear-modes", "shared-representation"}
    assert runs.seed.nunique() == 2 and (runs.status == "ok").all()
    assert (runs.overrides.str.contains('"steps": 60')).all()
    meta = pq.read_schema(tmp_path / "out" / "runs.parquet").metadata
    assert meta[b"ldbench.schema_version"] == str(results.SCHEMA_VERSION).encode()
    assert set(curves.run_id) == set(runs.run_id)


def test_an_entry_copied_with_another_entrys_results_is_refused_before_any_run(make_entry, tmp_path):
    """`cp -r baselines/adam submissions/mine` (the submission guide's first step) kept Adam's
    runs in mine/results/: `run` appended to them, and validate refused the folder afterwards."""
    import shutil
    template = make_entry("template")
    run(template, None, seeds=1, tasks=["deep-linear-modes"])
    mine = tmp_path / "mine"
    shutil.copytree(template, mine)
    toml = mine / "entry.toml"
    toml.write_text(toml.read_text().replace('name = "template"', 'name = "mine"'))
    with pytest.raises(results.ResultsError, match=r"smoke: holds runs of entry 'template', not of "
                       r"'mine' \(copied with the folder it was made from, or .*\); delete .*mine/results"):
        run(mine, None, seeds=1, tasks=["deep-linear-modes"])
    run(mine, tmp_path / "elsewhere", seeds=1, tasks=["deep-linear-modes"])  # --out: any folder


def test_same_entry_seed_profile_give_identical_numbers(make_entry, tmp_path):
    entry = make_entry()
    first = run(entry, tmp_path / "a", seeds=2).sort_values(["run_id", "metric"])
    second = run(entry, tmp_path / "b", seeds=2).sort_values(["run_id", "metric"])
    assert list(first.run_id) == list(second.run_id)
    pd.testing.assert_series_equal(first.value.reset_index(drop=True),
                                   second.value.reset_index(drop=True))
    curves_a = pd.read_parquet(tmp_path / "a" / "curves.parquet").sort_values(
        ["run_id", "metric", "step"]).reset_index(drop=True)
    curves_b = pd.read_parquet(tmp_path / "b" / "curves.parquet").sort_values(
        ["run_id", "metric", "step"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(curves_a, curves_b)


def test_seeds_differ(make_entry, tmp_path):
    runs = run(make_entry(), tmp_path / "out", seeds=2, tasks=["deep-linear-modes"])
    loss = runs[runs.metric == "final_loss"].set_index("seed").value
    assert loss[0] != loss[1]


def test_rerun_skips_finished_runs(make_entry, tmp_path, monkeypatch):
    entry = make_entry()
    run(entry, tmp_path / "out", tasks=["deep-linear-modes"])
    calls = []
    monkeypatch.setattr(runner, "execute", lambda *a: calls.append(a))
    again = run(entry, tmp_path / "out", tasks=["deep-linear-modes"])
    assert calls == [] and len(again) > 0
    # A new seed is run; the old one is kept.
    monkeypatch.undo()
    more = run(entry, tmp_path / "out", tasks=["deep-linear-modes"], seeds=2)
    assert sorted(more.seed.unique()) == [0, 1]


def test_a_killed_write_leaves_the_previous_file_intact(make_entry, tmp_path, monkeypatch):
    entry, out = make_entry(), tmp_path / "out"
    run(entry, out, tasks=["deep-linear-modes"])
    before = (out / "runs.parquet").read_bytes()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as if the process were interrupted mid-write

    monkeypatch.setattr(results.pq, "write_table", killed)
    with pytest.raises(KeyboardInterrupt):
        run(entry, out, tasks=["deep-linear-modes"], seeds=2)
    monkeypatch.undo()
    assert (out / "runs.parquet").read_bytes() == before
    assert not list(out.glob("*.tmp"))
    resumed = run(entry, out, tasks=["deep-linear-modes"], seeds=2)
    assert sorted(resumed.seed.unique()) == [0, 1]


def test_an_interrupted_run_says_what_it_kept_and_resumes(make_entry, tmp_path, monkeypatch, capsys):
    """Ctrl-C ended with click's "Aborted!" alone: nothing said the finished runs were kept."""
    entry, out = make_entry(), tmp_path / "out"
    real = runner.run_group

    def interrupted_second(group, *args, **kwargs):
        if group[0][0].task.name == "shared-representation":
            raise KeyboardInterrupt  # Ctrl-C during the second task
        return real(group, *args, **kwargs)

    monkeypatch.setattr(runner, "run_group", interrupted_second)
    with pytest.raises(KeyboardInterrupt):
        run(entry, out, tasks=["deep-linear-modes", "shared-representation"], seeds=2)
    said = capsys.readouterr().err
    assert (f"interrupted: 2 of the 4 runs have finished and are kept in {out}; the same command "
            "resumes") in said
    monkeypatch.undo()
    resumed = run(entry, out, tasks=["deep-linear-modes", "shared-representation"], seeds=2)
    assert resumed.drop_duplicates("run_id").groupby("task").size().to_dict() == {
        "deep-linear-modes": 2, "shared-representation": 2}


def test_divergence_is_recorded_and_the_suite_goes_on(make_entry, tmp_path):
    entry = make_entry(hparams="[hparams.default]\nlr = 0.01\n"
                               "[hparams.deep-linear-modes]\nlr = 50.0\n")
    runs = run(entry, tmp_path / "out")
    dlm = runs[runs.task == "deep-linear-modes"]
    assert (dlm.status == "diverged").all()
    assert dlm.diverged_step.iloc[0] >= 1 and dlm.steps.iloc[0] < 60
    assert dlm.value.isna().all()
    other = runs[runs.task == "shared-representation"]
    assert (other.status == "ok").all()


def test_an_exception_in_the_optimizer_is_an_error_row(make_entry, tmp_path):
    code = """
import torch

class Broken(torch.optim.SGD):
    def step(self, closure=None):
        raise RuntimeError("kaboom")

def make_optimizer(params, hparams, task):
    return Broken(params, lr=0.1)
"""
    runs = run(make_entry(code=code), tmp_path / "out", tasks=["deep-linear-modes"])
    assert (runs.status == "error").all()
    assert "kaboom" in runs.error.iloc[0]
    # Errors are retried on the next invocation, not skipped.
    assert results.done_run_ids(tmp_path / "out") == set()


def test_optimizer_eval_mode_is_used_around_evaluation(make_entry, tmp_path):
    """eval() before every evaluation, train() after it, never a step in eval mode."""
    code = """
from pathlib import Path

import torch

LOG = Path(__file__).with_name("modes.log")

class ScheduleFreeLike(torch.optim.SGD):
    mode = "train"
    def train(self):
        self.mode = "train"
        with LOG.open("a") as f:
            f.write("train\\n")
    def eval(self):
        self.mode = "eval"
        with LOG.open("a") as f:
            f.write("eval\\n")
    def step(self, closure=None):
        assert self.mode == "train", "stepped in eval mode"
        return super().step(closure)

def make_optimizer(params, hparams, task):
    return ScheduleFreeLike(params, lr=0.01)
"""
    folder = make_entry(code=code)
    runs = run(folder, tmp_path / "out", tasks=["deep-linear-modes"])
    assert (runs.status == "ok").all()
    log = (folder / "modes.log").read_text().split()
    evaluations = pd.read_parquet(tmp_path / "out" / "curves.parquet")["step"].nunique()
    assert log.count("eval") == evaluations > 1
    # Each evaluation is wrapped: eval then train, so training resumes in train mode.
    evals = [i for i, mode in enumerate(log) if mode == "eval"]
    assert all(log[i + 1:i + 2] == ["train"] for i in evals)


def test_overrides_reach_the_task_and_typos_fail(make_entry, tmp_path):
    runs = run(make_entry(), tmp_path / "out", tasks=["deep-linear-modes"],
               sets=FAST + ["deep-linear-modes.singular_values=[2.0, 1.0]"])
    assert "stage_time/mode_2" not in set(runs.metric)
    with pytest.raises(RegistryError, match="did you mean 'steps'"):
        run(make_entry(), tmp_path / "o2", sets=["stpes=3"])
    with pytest.raises(RegistryError, match="did you mean 'deep-linear-modes'"):
        run(make_entry(), tmp_path / "o3", tasks=["deep-linear-mode"])


def test_profile_that_the_machine_cannot_honour_is_refused(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ProfileError, match="needs a CUDA GPU.*--profile cpu-2core"):
        load("cuda-1gpu").check()
    with pytest.raises(ProfileError, match="did you mean 'cpu-2core'"):
        load("cpu-2cores")


def test_unreached_targets_are_infinite_not_zero(make_entry, tmp_path):
    runs = run(make_entry(hparams="[hparams.default]\nlr = 1e-6\n"), tmp_path / "out",
               tasks=["deep-linear-modes"])
    value = runs.set_index("metric").value
    assert value["steps_to_all_modes"] == math.inf
    assert value["modes_in_order"] == 0.0
