"""CLI errors: bad input is one `error:` line with exit code 2; ldbench's own bugs keep their traceback."""

from __future__ import annotations

import errno

import pytest
from click.testing import CliRunner

from suite import registry, results
from suite.cli import main

RUN = ["run", "baselines/sgd", "--tasks", "deep-linear-modes", "--quiet"]


def one_error_line(result) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


def test_out_below_a_regular_file_fails_before_any_run(tmp_path):
    (tmp_path / "file").write_text("x")
    line = one_error_line(CliRunner().invoke(main, [*RUN, "--out", str(tmp_path / "file" / "out")]))
    assert "is a file, not a folder; choose another --out folder" in line


def test_a_full_disk_is_one_line_and_keeps_earlier_results(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(results.pq, "write_table", full)
    line = one_error_line(CliRunner().invoke(main, [*RUN, "--out", str(tmp_path / "out")]))
    assert "No space left on device" in line and "free disk space" in line
    assert not list((tmp_path / "out").rglob("*.tmp"))


@pytest.mark.parametrize("args, expected", [
    (["run", "baselines/nope"], "is not a directory"),
    (["run", "baselines/sgd", "--tasks", "deep-linear-mode"], "did you mean"),
    (["run", "baselines/sgd", "--profile", "cpu-3core"], "cpu-3core"),
    (["show", "tests"], "no runs.parquet found"),
])
def test_input_errors_are_one_line(args, expected):
    assert expected in one_error_line(CliRunner().invoke(main, args))


def test_a_bug_of_ldbench_keeps_its_traceback(monkeypatch):
    def broken():
        raise KeyError("a bug")
    monkeypatch.setattr(registry, "all_tasks", broken)
    result = CliRunner().invoke(main, ["tasks"])
    assert result.exit_code == 1 and isinstance(result.exception, KeyError)
    assert "error:" not in result.output  # not dressed up as the user's mistake
