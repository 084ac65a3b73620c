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
    (["run", "baselines/adamm"], "is not a directory; pass the path of an entry folder; did you mean "
                                 "baselines/adam?"),
    (["run", "baselines/sgd", "--tasks", "deep-linear-mode"], "did you mean"),
    (["run", "baselines/sgd", "--profile", "cpu-3core"], "cpu-3core"),
    (["show", "tests"], "no runs.parquet found"),
    (["run", "baselines/sgd", "--tasks", "deep-linear-modes", "--hparam", "deep_linear_modes.lr=0.1"],
     "no task 'deep_linear_modes'; task names use hyphens: deep-linear-modes.lr=0.1"),
    (["run", "baselines/sgd", "--set", "mode_connectivity.steps=10"],
     "no task 'mode_connectivity'; task names use hyphens: mode-connectivity.steps=10"),
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


# -- an entry that cannot run here is refused before any run starts, in one line ----------------

MISSPELT = """
import torch

def make_optimiser(params, hparams, task):
    return torch.optim.SGD(params, lr=hparams["lr"])
"""
TWO_ARGS = """
import torch

def make_optimizer(params, lr):
    return torch.optim.SGD(params, lr=lr)
"""
LAZY_IMPORT = """
import ldbench_no_such_package

def make_optimizer(params, hparams, task):
    return None
"""


@pytest.mark.parametrize("code, extra, expected", [
    (MISSPELT, "", ["defines neither make_optimizer nor make_model (it defines 'make_optimiser'"]),
    (TWO_ARGS, "", ["entry.py:4: make_optimizer(params, lr) cannot be called as make_optimizer(params, "
                    "hparams, task); define def make_optimizer(params, hparams, task)"]),
    (LAZY_IMPORT, "", ["No module named 'ldbench_no_such_package'", "list it in entry.toml's requirements"]),
    (LAZY_IMPORT, 'requirements = ["ldbench-no-such-package>=1"]',
     ["requirement 'ldbench-no-such-package>=1' is not installed; pip install 'ldbench-no-such-package>=1'"]),
    (None, 'requirements = ["numpy>=999"]', ["requirement 'numpy>=999' is not met: numpy ", "is installed"]),
    (None, 'requirements = ["numpy>=1; python_version < \'3\'"]', []),  # a marker that does not hold
], ids=["misspelt-factory", "signature", "missing-module", "requirement-missing", "requirement-version",
        "marker"])
@pytest.mark.parametrize("workers", ["0", "2"])
def test_an_entry_that_cannot_run_here_is_refused_before_any_run(make_entry, tmp_path, code, extra, expected,
                                                                  workers, monkeypatch):
    """Checked in the command's process, before a cluster starts: with --workers 2 no worker
    logs a traceback, and nothing is written."""
    from suite import cluster

    def no_cluster(*args, **kwargs):
        raise AssertionError("a cluster started for an entry that cannot run")
    monkeypatch.setattr(cluster, "connect", no_cluster)
    folder = make_entry("probe", **({"code": code} if code else {}), extra=extra)
    out = tmp_path / "out"
    args = ["run", str(folder), "--tasks", "deep-linear-modes,teacher-student", "--seeds", "2",
            "--quiet", "--out", str(out), "--workers", workers]
    if not expected:  # runs as usual (in the process here: the cluster is the check above)
        assert CliRunner().invoke(main, [*args[:-1], "0"]).exit_code == 0
        return
    line = one_error_line(CliRunner().invoke(main, args))
    assert all(part in line for part in expected), line
    assert not out.exists()


KEYED = """
import torch

def make_optimizer(params, hparams, task):
    return torch.optim.SGD(params, lr=hparams["lr"])
"""
CLOSURE = """
import torch

class NeedsClosure(torch.optim.SGD):
    def step(self, closure=None):
        if closure is None:  # as pytorch_optimizer's SAM: the closure is optional in the signature
            raise RuntimeError("SAM requires closure.")
        return super().step(closure)

def make_optimizer(params, hparams, task):
    return NeedsClosure(params, lr=hparams["lr"])
"""
HESSIAN = """
import torch

class NeedsGraph(torch.optim.SGD):
    def step(self, closure=None):
        for group in self.param_groups:  # a Hessian-vector product, as SophiaH takes
            grads = [p.grad for p in group["params"]]
            torch.autograd.grad(grads, group["params"], grads)
        return super().step(closure)

def make_optimizer(params, hparams, task):
    return NeedsGraph(params, lr=hparams["lr"])
"""


@pytest.mark.parametrize("code, hparams, expected", [
    (KEYED, "[hparams.default]\nlearning_rate = 0.01\n",
     "the task's hparams have no 'lr' (set it in entry.toml's [hparams.default] or [hparams.TASK]); "
     "it has ['learning_rate']"),
    (KEYED, "[hparams.default]\nlrr = 0.01\n", "did you mean 'lrr'?"),
    (KEYED.replace("import torch", "import torch\n\ndef unused():\n    import ldbench_no_such_package")
     .replace("    return torch", "    import ldbench_no_such_package\n    return torch"),
     "[hparams.default]\nlr = 0.01\n", "ModuleNotFoundError: No module named 'ldbench_no_such_package'; "
     "pip install the package it comes from, and list it in entry.toml's requirements"),
    (CLOSURE, "[hparams.default]\nlr = 0.01\n", "add `closure = true` at the top level of entry.toml"),
    (HESSIAN, "[hparams.default]\nlr = 0.01\n", "add `create_graph = true` at the top level of entry.toml"),
], ids=["hparam-missing", "hparam-misspelt", "import-inside", "closure", "create-graph"])
def test_common_mistakes_in_entry_code_name_their_fix(make_entry, tmp_path, code, hparams, expected):
    """Runs that fail record the error, naming the line and the likely fix."""
    folder = make_entry("probe", code=code, hparams=hparams)
    result = CliRunner().invoke(main, ["run", str(folder), "--tasks", "deep-linear-modes", "--quiet",
                                       "--out", str(tmp_path / "out")])
    runs, _ = results.read_results(tmp_path / "out")
    assert set(runs["status"]) == {"error"}, result.output
    assert all(expected in e for e in runs["error"]), runs["error"].iloc[0]
    first = runs["error"].iloc[0]
    assert f"{folder}/entry.py:" in first or "entry's optimizer.step failed at" in first


def test_run_notes_an_entry_named_unlike_its_folder(tmp_path):
    """validate refuses it; run says so first, and runs."""
    from conftest import write_entry

    folder = write_entry(tmp_path / "my-folder", name="other-name")
    result = CliRunner().invoke(main, ["run", str(folder), "--tasks", "deep-linear-modes", "--quiet",
                                       "--set", "steps=20", "--set", "evals=2",
                                       "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "names the entry 'other-name' but its folder is 'my-folder'" in result.output


@pytest.mark.parametrize("delay", [0.5, 1.5])
def test_ctrl_c_while_the_command_loads_ends_in_one_word(tmp_path, delay):
    """Within the first seconds torch is loading: a KeyboardInterrupt there printed a traceback,
    or aborted the interpreter from inside torch's C++ extension loading."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO

    proc = subprocess.Popen([sys.executable, "-m", "suite", "run", "baselines/sgd", "--tier", "smoke",
                             "--out", str(tmp_path / "out")], cwd=REPO, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1 and out.strip().splitlines()[-1] == "Aborted!", out
    assert "Traceback" not in out and "terminate called" not in out


def test_a_failure_every_seed_shares_is_said_once_naming_the_seeds():
    """A check that refuses the model refuses it on every seed, measuring other numbers each
    time: one line per task and failure; a different failure keeps its own line."""
    import pandas as pd

    from suite.report import failure_lines

    moved = "entry.py: row 0 of its output reads later tokens (it moved by {})"
    errors = pd.DataFrame({"task": ["b", "a", "a", "a", "a"], "seed": [0, 2, 0, 1, 3],
                           "error": [moved.format(0.5), moved.format(0.25), moved.format(0.132),
                                     moved.format(1e-3), "entry.py: out of memory"]})
    assert failure_lines(errors) == [
        f"run a seeds 0, 1, 2 failed: {moved.format(0.132)} (the numbers are seed 0's)",
        "run a seed 3 failed: entry.py: out of memory",
        f"run b seed 0 failed: {moved.format(0.5)}"]
    same = errors.assign(error="entry.py: bad")
    assert failure_lines(same) == ["run a seeds 0, 1, 2, 3 failed: entry.py: bad",
                                   "run b seed 0 failed: entry.py: bad"]


def test_a_quoted_number_in_entry_toml_is_refused_before_any_run(make_entry, tmp_path):
    """TOML quotes make text: `lr = "1e-2"` would fail inside the optimizer minutes later."""
    folder = make_entry("quoted", hparams='[hparams.default]\nlr = "1e-2"\n')
    result = CliRunner().invoke(main, ["validate", "--manifest-only", str(folder)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert ("entry.toml: hparams.default.lr = '1e-2' is a string; write the number without quotes: lr = 1e-2"
            in result.output)
