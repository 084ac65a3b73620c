"""The command line, end to end through click's test runner."""

import pytest
from click.testing import CliRunner

from suite.cli import main


def test_tasks_lists_versions_families_and_directions():
    result = CliRunner().invoke(main, ["tasks"])
    assert result.exit_code == 0, result.output
    for word in ("deep-linear-modes", "stage-timing", "shared-representation",
                 "representation-recovery", "stage_time/mode_0 ↓"):
        assert word in result.output
    assert "reference optimizer" in result.output  # each interface's, as README says
    from suite.cli import optimizer_text
    from suite.registry import task_class
    assert optimizer_text(task_class("mode-connectivity").interface.optimizer) == "SGD lr 0.07, momentum 0.9"


def test_run_then_show(make_entry, tmp_path):
    out = tmp_path / "out"
    args = ["run", str(make_entry()), "--tasks", "deep-linear-modes", "--seeds", "2", "--quiet",
            "--set", "steps=50", "--set", "evals=5", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "mean [95% Student-t interval]" in result.output and "final_loss" in result.output
    assert "n < 3: no interval" in result.output  # 2 seeds: no meaningless interval
    shown = CliRunner().invoke(main, ["show", str(out)])
    assert shown.exit_code == 0 and "final_loss" in shown.output


def test_nonsense_config_fails_in_one_line_before_any_run(make_entry, tmp_path, monkeypatch):
    from suite import runner

    monkeypatch.setattr(runner, "execute", lambda *a: pytest.fail("a run started"))
    for bad, key in (("steps=0", "steps=0"), ("deep-linear-modes.hidden=0", "hidden=0"),
                     ("singular_values=[1.0, 2.0]", "singular_values=[1.0, 2.0]")):
        result = CliRunner().invoke(main, ["run", str(make_entry()), "--tasks", "deep-linear-modes",
                                           "--set", bad, "--out", str(tmp_path / "out")])
        assert result.exit_code == 2, result.output
        assert result.output.count("\n") == 1 and f"config {key} must be" in result.output
        assert "Traceback" not in result.output


def test_show_keeps_runs_of_changed_entry_files_apart_and_marks_them_stale(make_entry, tmp_path):
    from suite import runner

    entry = make_entry()
    out = tmp_path / "out"
    common = dict(tasks=["deep-linear-modes"], seeds=3, out=out, progress=False,
                  sets=["steps=30", "evals=3"])
    runner.run_suite(entry, **common)
    toml = entry / "entry.toml"
    toml.write_text(toml.read_text().replace("lr = 0.01", "lr = 0.02"))
    runner.run_suite(entry, **common)
    moved = entry / "results" / "cpu-2core" / "smoke"  # where `show` finds the entry folder
    moved.parent.mkdir(parents=True)
    out.rename(moved)
    shown = CliRunner().invoke(main, ["show", str(moved)])
    assert shown.exit_code == 0, shown.output
    blocks = shown.output.split("\n\n")
    assert len(blocks) == 2 and "STALE" not in blocks[0] and "STALE" in blocks[1]
    assert all("3 ok" in block for block in blocks)  # 3 seeds each, never 6 pooled


def test_user_errors_are_one_line_and_exit_2(tmp_path):
    result = CliRunner().invoke(main, ["run", str(tmp_path)])
    assert result.exit_code == 2
    assert "error:" in result.output and "entry.toml: is missing" in result.output
    assert "Traceback" not in result.output


def test_hparam_overrides_change_the_run_are_recorded_and_never_pooled(make_entry, tmp_path):
    """`--hparam` reaches make_optimizer, enters the run id (a rerun with another value is a new
    run, not skipped) and the recorded hparams/overrides; `show` keeps the two apart."""
    import json

    from suite import runner

    entry, out = make_entry(), tmp_path / "out"
    common = dict(tasks=["deep-linear-modes"], seeds=1, out=out, progress=False,
                  sets=["steps=30", "evals=3"])
    base = runner.run_suite(entry, **common)
    tuned = runner.run_suite(entry, hparams=["deep-linear-modes.lr=0.05"], **common)
    assert set(base["run_id"]).isdisjoint(tuned["run_id"])
    row = tuned.iloc[0]
    assert json.loads(row["hparams"]) == {"lr": 0.05}
    assert json.loads(row["overrides"])["hparams"] == {"lr": 0.05}
    loss = lambda runs: float(runs.set_index("metric").loc["final_loss", "value"])  # noqa: E731
    assert loss(tuned) != loss(base)
    again = runner.run_suite(entry, hparams=["lr=0.05"], **common)  # same run: skipped
    assert list(again["run_id"]) == list(tuned["run_id"])
    assert list(again["created_at"]) == list(tuned["created_at"])
    shown = CliRunner().invoke(main, ["show", str(out)])
    assert shown.output.count("entry probe · tier smoke") == 2
    assert '"lr": 0.05' in shown.output


def test_hparam_typos_fail_with_did_you_mean(make_entry, tmp_path):
    args = ["run", str(make_entry()), "--tasks", "deep-linear-modes", "--hparam", "lrr=0.1",
            "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "did you mean 'lr'" in result.output
    assert "[hparams.default]" in result.output
    result = CliRunner().invoke(main, args[:-4] + ["--hparam", "lr=fast", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--hparam lr=fast: cannot read 'fast'" in result.output
