"""`ldbench compare`: intervals against scipy, the separation rule, and the command end to end."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from scipy import stats

from suite import compare, results, score, tune
from suite.cli import main
from suite.task import Metric
from tests.conftest import REPO

STEPS = Metric("min", "steps to a target", steps_to_target=True, resolution=0.5)
FRACTION = Metric("max", "a fraction", bounds=(0.0, 1.0))


def test_interval_is_scipy_t_interval_clipped_to_bounds():
    values = np.array([0.2, 0.5, 0.9, 0.4])
    low, high = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    mean, lo, hi = compare.interval(values, None)
    assert math.isclose(mean, values.mean()) and math.isclose(lo, low) and math.isclose(hi, high)
    wide = np.array([0.05, 0.95, 0.9, 0.1])  # its t-interval spills over both ends of [0, 1]
    _, lo, hi = compare.interval(wide, FRACTION)
    assert (lo, hi) == (0.0, 1.0)


def test_better_only_where_intervals_separate():
    fast, slow = np.array([10.0, 11.0, 12.0]), np.array([30.0, 31.0, 29.0])
    assert compare.better(fast, slow, STEPS, "min") and not compare.better(slow, fast, STEPS, "min")
    overlapping = np.array([9.0, 14.0, 30.0])
    assert not compare.better(fast, overlapping, STEPS, "min")
    # a difference below the metric's resolution is numerical noise, not a win
    assert not compare.better(np.array([1.0, 1.0]), np.array([1.3, 1.3]), STEPS, "min")
    # a missing result claims nothing; all seeds reaching a target beat none reaching it
    assert not compare.better(fast, np.array([30.0, np.nan, 31.0]), STEPS, "min")
    never = np.full(3, np.inf)
    assert compare.better(fast, never, STEPS, "min") and not compare.better(never, fast, STEPS, "min")
    assert not compare.better(fast, np.array([30.0, np.inf, 31.0]), STEPS, "min")
    # a single seed has no interval, and one seed reaching against one not is no claim either
    assert not compare.better(np.array([1.0]), np.array([100.0]), STEPS, "min")
    assert not compare.better(fast, np.array([np.inf]), STEPS, "min")
    assert not compare.better(np.array([30.0]), never, STEPS, "min")


@pytest.mark.parametrize("direction", ["min", "max"])
def test_better_is_the_leaderboards_rule_for_intervals_closer_than_the_resolution(direction):
    """Disjoint intervals whose means are more than the resolution apart, but whose gap is less:
    compare said "better" while the leaderboard gave both rank 1 (found by an audit)."""
    a, b = np.array([1.000, 1.001, 1.002]), np.array([1.010, 1.011, 1.012])
    if direction == "max":
        a, b = -a, -b
    spec = Metric(direction, "a loss", resolution=0.008)
    (_, la, ha), (_, lb, hb) = compare.interval(a, spec), compare.interval(b, spec)
    assert (ha < lb if direction == "min" else la > hb) and abs(a.mean() - b.mean()) > 0.008
    ranks = score.ranks_with_ties(mean=np.array([a.mean(), b.mean()]), low=np.array([la, lb]),
                                  high=np.array([ha, hb]), failed=np.zeros(2), direction=direction,
                                  resolution=0.008)
    assert list(ranks) == [1, 1]
    assert not compare.better(a, b, spec, direction) and not compare.better(b, a, spec, direction)
    wide = Metric(direction, "a loss", resolution=0.001)  # a gap above the resolution: both say so
    assert compare.better(a, b, wide, direction) and list(score.ranks_with_ties(
        mean=np.array([a.mean(), b.mean()]), low=np.array([la, lb]), high=np.array([ha, hb]),
        failed=np.zeros(2), direction=direction, resolution=0.001)) == [1, 2]


def test_verdict_names_the_entry_that_beats_all_or_the_partial_claims():
    a, b, c = np.array([1.0, 1.1, 1.2]), np.array([5.0, 5.1, 5.2]), np.array([1.0, 3.0, 6.0])
    assert compare.verdict({"a": a, "b": b}, STEPS, "min") == "a"
    assert compare.verdict({"a": a, "b": b, "c": c}, STEPS, "min") == "a > b"
    assert compare.verdict({"a": a, "c": c}, STEPS, "min") == ""


def run_entry(make_entry, tmp_path, name, lr):
    out = tmp_path / f"out-{name}"
    args = ["run", str(make_entry(name, hparams=f"[hparams.default]\nlr = {lr}\n")), "--quiet",
            "--tasks", "deep-linear-modes", "--seeds", "2", "--set", "steps=60", "--set", "evals=5",
            "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return out


def test_compare_command_on_plain_results_folders(make_entry, tmp_path):
    slow, fast = run_entry(make_entry, tmp_path, "slow", 0.001), run_entry(make_entry, tmp_path, "fast", 0.05)
    plot = tmp_path / "cmp.svg"
    result = CliRunner().invoke(main, ["compare", str(slow), str(fast), "--format", "markdown",
                                       "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    assert "| deep-linear-modes" in result.output and "| slow" in result.output.replace("  ", " ")
    assert plot.read_text().startswith("<?xml") and "loss" in plot.read_text()
    runs = pd.read_parquet(fast / "runs.parquet")
    mean = runs.loc[runs.metric == "stage_time/mode_0", "value"].mean()  # ranked: it is shown
    assert compare.report.format_number(mean) in result.output
    assert "final_loss" not in result.output  # diagnostic: never compared
    assert "span tracks" not in result.output


def test_a_folder_given_twice_is_compared_once_with_a_note(make_entry, tmp_path):
    slow = run_entry(make_entry, tmp_path, "slow", 0.001)
    result = CliRunner().invoke(main, ["compare", str(slow), str(slow / "."),
                                      "--format", "github"])
    assert result.exit_code == 0, result.output
    header = result.stdout.splitlines()[0]
    assert header.count("slow") == 1  # one column, labelled as the first spelling
    assert "1 of the paths name a folder given before" in result.stderr


def test_columns_spanning_tracks_get_a_note_and_one_track_none():
    empty = pd.DataFrame()
    optimizer = compare.Column("adam", pd.DataFrame({"track": ["optimizer", None]}), empty)
    older = compare.Column("sgd", pd.DataFrame({"task": ["t"]}), empty)  # files without the column
    model = compare.Column("gpt", pd.DataFrame({"track": ["architecture"]}), empty)
    assert compare.tracks_note([optimizer, older]) is None
    assert compare.tracks_note([optimizer, model]) == (
        "note: the columns span tracks (adam: optimizer; gpt: architecture); the leaderboard ranks "
        "each track by itself, so a difference here compares a model against an optimizer")
    # a recipe (model and optimizer) is ranked on the architecture track: no note against a model
    recipe = compare.Column("gpt-sf", pd.DataFrame({"track": ["recipe"]}), empty)
    assert compare.tracks_note([model, recipe]) is None
    assert compare.tracks_note([optimizer, recipe]) is not None


def test_compare_refuses_mixed_tiers_in_one_line(make_entry, tmp_path):
    slow = run_entry(make_entry, tmp_path, "slow", 0.001)
    runs = pd.read_parquet(slow / "runs.parquet")
    result = CliRunner().invoke(main, ["compare", str(slow), str(tmp_path / "slow")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert len(runs) and "error:" in result.output


def test_rows_follow_the_registry_and_each_tasks_metrics_whatever_the_files_order():
    """The runs files hold tasks in the order their runs finished (on Dask workers, any)."""
    from suite import registry

    cols = compare.columns([REPO / "baselines" / "sgd", REPO / "baselines" / "adam"], tier="standard",
                           profile="cpu-2core")
    shuffled = [compare.Column(c.label, c.runs.sample(frac=1.0, random_state=0), c.curves) for c in cols]
    rows = compare.table(shuffled)
    order = list(registry.all_tasks())
    assert [t for t in order if t in set(rows["task"])] == list(dict.fromkeys(rows["task"]))
    for task, part in rows.groupby("task", sort=False):
        declared = list(registry.make_task(task, "standard").metrics())
        assert list(part["metric"]) == [m for m in declared if m in set(part["metric"])]
    assert rows.reset_index(drop=True).equals(compare.table(cols).reset_index(drop=True))


def test_runs_of_an_entrys_older_files_are_a_column_of_their_own(make_entry):
    """After an entry's files change, its results folder holds the old runs beside the new ones,
    on the same seeds: compare shows them apart (the current files first), never pooled (that
    counted each seed twice and narrowed every interval)."""
    entry = make_entry("probe", hparams="[hparams.default]\nlr = 0.001\n")
    run = ["run", str(entry), "--quiet", "--tasks", "deep-linear-modes", "--tier", "smoke",
           "--seeds", "3", "--workers", "0"]
    assert CliRunner().invoke(main, run).exit_code == 0
    (entry / "entry.toml").write_text((entry / "entry.toml").read_text().replace("0.001", "0.05"))
    assert CliRunner().invoke(main, run).exit_code == 0
    folder = entry / "results/cpu-2core/smoke"
    now, older = compare.columns([entry], tier="smoke", profile="cpu-2core")
    assert now.label == "probe" and older.label.startswith("probe (older files ")
    for col in (now, older):
        assert len(col.runs.drop_duplicates("run_id")) == col.runs["seed"].nunique() == 3
        assert col.runs["entry_hash"].nunique() == 1 and set(col.curves["run_id"]) == set(col.runs["run_id"])
    plain = compare.columns([folder], tier="smoke", profile="cpu-2core")  # no entry.toml: by hash alone
    assert [c.label[:len("probe (files ")] for c in plain] == ["probe (files "] * 2
    shown = CliRunner().invoke(main, ["compare", str(entry), "--tier", "smoke"])
    assert shown.exit_code == 0 and "probe: 3 seeds, probe (older files " in shown.output
    runs = results.read_table(folder / results.RUNS_FILE)  # a file validate refuses: no hash
    runs.loc[runs["entry_hash"] != now.runs["entry_hash"].iloc[0], "entry_hash"] = None
    results.write_atomic(results.to_table(runs, results.RUN_SCHEMA, results.RUNS_FILE),
                         folder / results.RUNS_FILE)
    unknown = compare.columns([entry], tier="smoke", profile="cpu-2core")  # its runs still shown apart
    assert [c.runs["seed"].nunique() for c in unknown] == [3, 3] and "(older files " in unknown[1].label


def test_a_study_holding_older_task_versions_compares_without_a_traceback():
    """The committed smoke study holds mode-connectivity runs of versions 1, 2 and 4: building
    its metric declarations from version 1's recorded config raised KeyError 'trained_error'."""
    result = CliRunner().invoke(main, ["compare", str(REPO / "studies/adam/cpu-2core/smoke/budget-16")])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output[-2000:]
    assert "mode-connectivity" in result.output


def test_a_study_compares_as_its_chosen_points_evaluation_runs():
    """A study folder pooled its tuning-seed trial runs with the evaluation seeds (the chosen
    point's column said 3 seeds, one of them a tuning seed) and made a column of every trial."""
    study = REPO / "studies/adam/cpu-2core/smoke/budget-16"
    cols = compare.columns([study], tier="smoke", profile="cpu-2core")
    spec = json.loads((study / "study.json").read_text())
    seeds = {int(s) for c in cols for s in c.runs["seed"]}
    assert seeds <= set(spec["eval_seeds"]) and cols
    tuned = json.loads((study / "tuned.json").read_text())["tuned"]
    chosen = tune.chosen_results(study)[0]
    for task, overrides in chosen[["task", "overrides"]].drop_duplicates().itertuples(index=False):
        assert json.loads(overrides or "{}").get("hparams", {}) == tuned[task]
    # one column, the study's result: each task at its own chosen point (it was a column per
    # distinct point, each with one task filled)
    assert [c.label for c in cols] == ["adam (tuned, budget-16)"]
    assert set(cols[0].runs["run_id"]) == set(chosen.loc[chosen["tier"] == "smoke", "run_id"])
    assert set(cols[0].runs["task"]) == set(tuned)


def test_an_entry_without_results_names_the_command_that_makes_them(make_entry):
    entry = make_entry("empty")
    result = CliRunner().invoke(main, ["compare", str(entry), "--tier", "smoke"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    expected = f"{entry}: no results on profile cpu-2core; run `ldbench run {entry} --tier smoke` first"
    assert expected in result.output
