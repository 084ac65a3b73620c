"""A new entry wrapping a third-party optimizer (lion-pytorch): run, validate, verify, score, page."""

from __future__ import annotations

import json
import math
import re
import shutil
import textwrap

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from suite import registry, results, runner, score, verify
from suite.cli import main
from suite.site import build
from suite.validate import validate_submission
from suite.verify import profile_changes, recorded_threads, verify_submission

pytest.importorskip("lion_pytorch", reason="lion-pytorch is in the dev extra: pip install -e '.[dev]'")

LION = '''
"""Lion (Chen et al. 2023), from the lion-pytorch package."""

from lion_pytorch import Lion


def make_optimizer(params, hparams, task):
    return Lion(params, lr=hparams["lr"], betas=(hparams["beta1"], hparams["beta2"]))
'''
MANIFEST = '''
name = "lion"
version = 1
authors = ["ldbench tests"]
description = "Lion (sign momentum) from lion-pytorch"
requirements = ["lion-pytorch>=0.2"]

[hparams.default]
lr = 0.03
beta1 = 0.9
beta2 = 0.99
'''
TASK = "deep-linear-modes"  # its smoke tier runs in well under a second per seed
SEEDS = 5


@pytest.fixture(scope="module")
def submitted(tmp_path_factory):
    """A submissions/lion folder with real smoke-tier results for 5 seeds, and the suite it ran."""
    root = tmp_path_factory.mktemp("e2e") / "submissions"
    folder = root / "lion"
    folder.mkdir(parents=True)
    (folder / "entry.toml").write_text(textwrap.dedent(MANIFEST))
    (folder / "entry.py").write_text(textwrap.dedent(LION))
    runs = runner.run_suite(folder, tasks=[TASK], seeds=SEEDS, tier="smoke",
                            out=folder / "results" / "cpu-2core" / "smoke", progress=False)
    assert (runs.status == "ok").all()
    return folder, {TASK: registry.task_class(TASK)}


def test_it_validates(submitted):
    folder, suite = submitted
    assert validate_submission(folder, tier="smoke", tasks=suite) == []
    # The full suite is the default: then the other tasks are named as missing.
    problems = validate_submission(folder, tier="smoke")
    assert all("has no runs" in p for p in problems) and len(problems) == len(registry.all_tasks()) - 1


def test_verify_reproduces_the_runs_and_catches_a_doctored_value(submitted, tmp_path):
    folder, _ = submitted
    checks = verify_submission(folder, k=2, tier="smoke", pick_seed=0)
    assert len({c.seed for c in checks}) == 2 and all(c.matches() for c in checks)
    # A copy whose final loss was edited by hand no longer verifies.
    copy = tmp_path / "lion"
    shutil.copytree(folder, copy)
    path = copy / "results/cpu-2core/smoke/runs.parquet"
    runs = results.read_table(path)
    runs.loc[runs.metric == "final_loss", "value"] *= 0.5
    results.write_atomic(results.to_table(runs, results.RUN_SCHEMA, results.RUNS_FILE), path)
    result = CliRunner().invoke(main, ["verify", str(copy), "--tier", "smoke", "--runs", "1",
                                       "--pick-seed", "3"])
    assert result.exit_code == 1 and "MISMATCH" in result.output and "final_loss" in result.output
    # A deleted row was shown as "submitted nan" beside an ok status: it says "no row" now
    runs = runs[runs.metric != "final_loss"]
    results.write_atomic(results.to_table(runs, results.RUN_SCHEMA, results.RUNS_FILE), path)
    result = CliRunner().invoke(main, ["verify", str(copy), "--tier", "smoke", "--runs", "1",
                                       "--pick-seed", "3"])
    lost = [line for line in result.output.splitlines() if "final_loss" in line]
    assert result.exit_code == 1 and len(lost) == 1 and "no row" in lost[0] and lost[0].endswith("MISMATCH")
    # Forged curves (every point of one set to 0.5) passed both validate and verify, and the
    # site plots them: each curve of a re-run is compared too, at its furthest point.
    forged = tmp_path / "forged"
    shutil.copytree(folder, forged)
    path = forged / "results/cpu-2core/smoke/curves.parquet"
    curves = results.read_table(path)
    name = sorted(set(curves.metric))[0]
    curves.loc[curves.metric == name, "value"] = 0.5
    results.write_atomic(results.to_table(curves, results.CURVE_SCHEMA, results.CURVES_FILE), path)
    result = CliRunner().invoke(main, ["verify", str(forged), "--tier", "smoke", "--runs", "1",
                                       "--pick-seed", "3"])
    assert result.exit_code == 1 and "metrics and curves differ" in result.output
    assert any(line.startswith(TASK) and f"curve {name} @" in line and line.endswith("MISMATCH")
               for line in result.output.splitlines()), result.output


def test_verify_takes_results_written_with_out_and_says_where_there_are_none(submitted, tmp_path):
    folder, _ = submitted
    code = tmp_path / "lion"  # the entry's files alone; its runs elsewhere, as `run --out` leaves them
    shutil.copytree(folder, code, ignore=shutil.ignore_patterns("results"))
    missing = CliRunner().invoke(main, ["verify", str(code), "--tier", "smoke", "--runs", "1"])
    assert missing.exit_code != 0 and "Traceback" not in missing.output
    assert (f"{code}/results/cpu-2core/smoke: holds no runs.parquet; run `ldbench run {code} --tier smoke "
            "--profile cpu-2core` first, or name the folder that `ldbench run --out` wrote with --results"
            in missing.output)
    found = CliRunner().invoke(main, ["verify", str(code), "--tier", "smoke", "--runs", "1", "--pick-seed",
                                      "2", "--results", str(folder / "results/cpu-2core/smoke")])
    assert found.exit_code == 0 and "ok: " in found.output, found.output
    # Smoke runs named with --tier standard were re-run on the standard config and reported as
    # not reproduced (blaming honest results); the tier is now checked first.
    other = CliRunner().invoke(main, ["verify", str(code), "--tier", "standard", "--runs", "1",
                                      "--results", str(folder / "results/cpu-2core/smoke")])
    assert other.exit_code != 0 and "Traceback" not in other.output
    assert "holds smoke-tier runs, none of the standard tier; pass --tier smoke" in other.output


def test_verify_leaves_timed_out_runs_out_and_checks_bits_with_exact(submitted, tmp_path):
    """A timed-out run re-ran to "ok" and every one of its metrics was reported as a mismatch:
    an honest submission with a --time-limit could never verify."""
    folder, _ = submitted
    copy = tmp_path / "lion"
    shutil.copytree(folder, copy)
    path = copy / "results/cpu-2core/smoke/runs.parquet"
    runs = results.read_table(path)
    late = runs.seed >= 2  # as run_group records a timeout: NaN values, no execution
    runs.loc[late, ["status", "value", "execution"]] = ["timeout", math.nan, None]
    runs.loc[late, "error"] = "exceeded the time limit of 0.3 s per run"
    killed = runs.seed == 4  # as cluster.rows_of records a job whose workers all died
    runs.loc[killed, ["status", "error"]] = ["error", "KilledWorker: the run's worker process died"]
    results.write_atomic(results.to_table(runs, results.RUN_SCHEMA, results.RUNS_FILE), path)
    result = CliRunner().invoke(main, ["verify", str(copy), "--tier", "smoke", "--runs", "5",
                                       "--pick-seed", "0", "--exact"])
    assert result.exit_code == 0, result.output
    assert ("note: 3 of the 5 runs timed out (`--time-limit`) or lost their worker process: "
            "verify leaves them out") in result.output
    assert re.search(r"ok: \d+ metrics and \d+ curves reproduced bit for bit", result.output)
    assert {line.split()[1] for line in result.output.splitlines() if line.startswith(TASK)} == {"0", "1"}
    runs.loc[:, ["status", "value"]] = ["timeout", math.nan]
    results.write_atomic(results.to_table(runs, results.RUN_SCHEMA, results.RUNS_FILE), path)
    every = CliRunner().invoke(main, ["verify", str(copy), "--tier", "smoke"])
    assert every.exit_code != 0 and "Traceback" not in every.output
    assert "every smoke-tier run timed out or lost its worker: nothing to re-run" in every.output
    # --exact allows no resolution: a value moved within final_loss's resolution is a mismatch
    # (it passes the default tolerance).
    runs = results.read_table(folder / "results/cpu-2core/smoke/runs.parquet")
    task = registry.make_task(TASK, "smoke")
    runs.loc[runs.metric == "final_loss", "value"] += task.metrics()["final_loss"].resolution / 2
    results.write_atomic(results.to_table(runs, results.RUN_SCHEMA, results.RUNS_FILE), path)
    args = ["verify", str(copy), "--tier", "smoke", "--runs", "1", "--pick-seed", "3"]
    assert CliRunner().invoke(main, args).exit_code == 0
    exact = CliRunner().invoke(main, [*args, "--exact"])
    assert exact.exit_code == 1 and "differ from the submitted results; rerun" in exact.output


def test_verify_draws_its_runs_among_those_with_values_and_checks_not_applicable_claims(submitted, tmp_path):
    """Not-applicable runs were drawn like any other: for a sequence model (5 of 8 tasks not
    applicable) most re-runs checked nothing, and their NaNs counted as reproduced. They are now
    left out of the draw, and the claim is checked by building the model: here it is forged (an
    optimizer entry trains every task's reference model)."""
    folder, _ = submitted
    copy = tmp_path / "lion"
    shutil.copytree(folder, copy)
    path = copy / "results/cpu-2core/smoke/runs.parquet"
    runs = results.read_table(path)
    runs.loc[runs.seed != 3, ["status", "value"]] = ["not-applicable", math.nan]
    results.write_atomic(results.to_table(runs, results.RUN_SCHEMA, results.RUNS_FILE), path)
    result = CliRunner().invoke(main, ["verify", str(copy), "--tier", "smoke", "--runs", "1",
                                       "--pick-seed", "0"])
    assert result.exit_code == 1, result.output
    assert (f"note: 1 tasks are recorded as not applicable to the entry's model ({TASK}): verify "
            "checks that claim without training") in result.output
    seeds = {line.split()[1] for line in result.output.splitlines() if line.startswith(TASK)}
    assert "3" in seeds and "(task not applicable)" in result.output and "applies" in result.output


def test_verify_reruns_runs_on_the_threads_they_recorded_with_a_note(submitted, tmp_path, monkeypatch):
    """Runs recorded with two threads (cpu-2core before it pinned one) are re-run on two, as
    they were made, and verify says so."""
    folder, _ = submitted
    assert profile_changes(folder, tier="smoke", profile="cpu-2core") == []
    copy = tmp_path / "lion"
    shutil.copytree(folder, copy)
    path = copy / "results/cpu-2core/smoke/runs.parquet"
    runs = results.read_table(path)
    fingerprint = json.loads(runs["fingerprint"].iloc[0])
    fingerprint["profile"] = json.dumps({**json.loads(fingerprint["profile"]), "threads": 2}, sort_keys=True)
    runs["fingerprint"] = json.dumps(fingerprint, sort_keys=True)
    results.write_atomic(results.to_table(runs, results.RUN_SCHEMA, results.RUNS_FILE), path)
    assert profile_changes(copy, tier="smoke", profile="cpu-2core") == [
        "the submitted runs were made with threads = 2; cpu-2core now pins 1: they are re-run on "
        "the threads they recorded"]
    seen = []
    real = verify.runner.execute_batch
    monkeypatch.setattr(verify.runner, "execute_batch",
                        lambda *a, **k: seen.append(torch.get_num_threads()) or real(*a, **k))
    result = CliRunner().invoke(main, ["verify", str(copy), "--tier", "smoke", "--runs", "1",
                                       "--pick-seed", "3"])
    assert result.exit_code == 0, result.output
    assert "note: the submitted runs were made with threads = 2" in result.output
    # Values compared, and metrics that have none on either side (NaN), counted apart.
    said = re.search(r"ok: (\d+) metrics and (\d+) curves reproduced \((\d+) values, (\d+) without a "
                     r"value on both sides\)", result.output)
    assert said and int(said[1]) + int(said[2]) == int(said[3]) + int(said[4]) and int(said[3]) > 0
    assert int(said[2]) == len(registry.task_class(TASK)(registry.task_class(TASK).tiers["smoke"]).curves())
    assert seen == [2]
    assert recorded_threads(runs["fingerprint"].iloc[0]) == 2 and recorded_threads("{}") is None
    assert profile_changes(tmp_path / "nowhere", tier="smoke", profile="cpu-2core") == []


def test_it_scores_and_appears_on_the_page(submitted, tmp_path):
    folder, suite = submitted
    inputs = score.collect([folder.parent], tier="smoke", tasks=suite)
    assert inputs.warnings == [] and list(inputs.entries) == ["lion"]
    table = score.score(inputs, suite)
    overall = table[table.level == "overall"]
    assert list(overall.entry) == ["lion"] and overall.score.iloc[0] == 1.0  # alone: the fastest
    target = table[(table.level == "metric") & (table.metric == suite[TASK].target)]
    assert target.seeds.iloc[0] == SEEDS and target.failures.iloc[0] == 0
    score.write_scores(table, tmp_path / score.SCORES_FILE, inputs.digest)
    scores, _ = score.read_scores(tmp_path / score.SCORES_FILE)
    build.build(inputs, scores, tmp_path, tasks=suite)
    html = (tmp_path / "index.html").read_text()
    assert 'href="entries/lion.html">lion</a>' in html and "cpu-2core · smoke" in html
    assert "-modes.svg" in html and "-stage-times.svg" in html  # real mode curves were plotted
    page = (tmp_path / "entries" / "lion.html").read_text()
    assert "lion-pytorch&gt;=0.2" in page and "Lion (sign momentum)" in page
    readme = (tmp_path / "README.md").read_text()
    assert "| lion" in readme and not pd.isna(target["mean"].iloc[0])


def test_verify_matches_within_the_metric_resolution_or_the_tolerance():
    """|a − b| <= max(resolution, atol + rtol·|a|); NaN only matches NaN, inf only itself."""
    from suite.verify import Check, same_value

    assert same_value(1e-9, 3e-9, rtol=1e-3, atol=1e-8)  # atol covers it
    assert not same_value(1e-6, 3e-6, rtol=1e-3, atol=1e-8)
    assert same_value(1e-6, 3e-6, rtol=1e-3, atol=1e-8, resolution=1.5e-5)  # a final loss floor
    assert not same_value(100.0, 102.0, rtol=1e-3, atol=1e-8, resolution=1.0)
    assert same_value(100.0, 100.9, rtol=1e-3, atol=1e-8, resolution=1.0)
    assert same_value(math.nan, math.nan, rtol=0, atol=0) and not same_value(1.0, math.nan, rtol=1, atol=1)
    assert not same_value(math.inf, 1e300, rtol=1, atol=1, resolution=math.inf)
    check = Check("deep-linear-modes", 0, "final_loss", 1e-9, 1e-7, "ok", "ok", resolution=1.5e-5)
    assert check.matches() and not Check(*[*check.__dict__.values()][:-1], resolution=0.0).matches()
