"""The command line, end to end through click's test runner."""

from click.testing import CliRunner

from suite.cli import main


def test_tasks_lists_versions_families_and_directions():
    result = CliRunner().invoke(main, ["tasks"])
    assert result.exit_code == 0, result.output
    for word in ("deep-linear-modes", "stage-timing", "shared-representation",
                 "representation-recovery", "stage_time/mode_0 ↓"):
        assert word in result.output


def test_run_then_show(make_entry, tmp_path):
    out = tmp_path / "out"
    args = ["run", str(make_entry()), "--tasks", "deep-linear-modes", "--seeds", "2", "--quiet",
            "--set", "steps=50", "--set", "evals=5", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "mean ± 95% CI" in result.output and "final_loss" in result.output
    shown = CliRunner().invoke(main, ["show", str(out)])
    assert shown.exit_code == 0 and "final_loss" in shown.output


def test_user_errors_are_one_line_and_exit_2(tmp_path):
    result = CliRunner().invoke(main, ["run", str(tmp_path)])
    assert result.exit_code == 2
    assert "error:" in result.output and "entry.toml: is missing" in result.output
    assert "Traceback" not in result.output
