"""The scorer: t intervals against scipy, ranks with ties, time-to-target performance profiles."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from suite import interval, registry, results, score
from suite.cli import main
from suite.site.synthetic import synthetic_entry


def scipy_ci(row: np.ndarray) -> tuple[float, float]:
    """scipy's own t interval of the mean (an independent reference for suite.interval)."""
    low, high = stats.t.interval(0.95, len(row) - 1, loc=np.mean(row), scale=stats.sem(row))
    return float(low), float(high)


def test_t_intervals_equal_scipy_on_each_row():
    rng = np.random.default_rng(3)
    values = rng.lognormal(size=(50, 5))
    low, high = interval.t_intervals(mean=values.mean(axis=1), sd=values.std(axis=1, ddof=1),
                                     n=np.full(50, 5))
    for i in (0, 1, 25, 49):
        assert (low[i], high[i]) == pytest.approx(scipy_ci(values[i]), rel=1e-12)


def test_fewer_than_three_seeds_have_no_interval_and_bounds_clip():
    assert np.isnan(interval.t_interval([1.0, 2.0])[1:]).all()
    mean, low, high = interval.t_interval([0.0, 0.0, 1.0], bounds=(0.0, 1.0))  # a 0/1 metric
    assert mean == pytest.approx(1 / 3) and (low, high) == (0.0, 1.0)
    raw = scipy_ci(np.array([0.0, 0.0, 1.0]))
    assert raw[0] < 0 and raw[1] > 1  # what clipping prevents: an interval outside [0, 1]


def test_t_interval_covers_the_mean_95_percent_of_the_time_with_five_seeds():
    """Monte Carlo: Gaussian seeds, 20,000 draws of 5; the bootstrap would cover ≈ 85%."""
    rng = np.random.default_rng(0)
    draws = rng.normal(3.0, 2.0, size=(20000, 5))
    low, high = interval.t_intervals(mean=draws.mean(axis=1), sd=draws.std(axis=1, ddof=1),
                                     n=np.full(len(draws), 5))
    coverage = np.mean((low <= 3.0) & (3.0 <= high))
    assert abs(coverage - 0.95) < 0.006  # 4 standard errors of a binomial proportion


def test_seed_statistics_count_failures_and_average_finite_values():
    # Group 0: three finite seeds, one unreached, one without result; group 1: all failed;
    # group 2: one finite seed (no sd); group 3: three finite seeds again.
    values = [1.0, 2.0, 3.0, math.inf, math.nan, math.inf, math.inf, 7.0, 4.0, 0.5, 9.0]
    group = [0, 0, 0, 0, 0, 1, 1, 2, 3, 3, 3]
    out = score.seed_statistics(group=np.array(group), values=np.array(values), n_groups=4)
    assert list(out["seeds"]) == [5, 2, 1, 3] and list(out["failures"]) == [2, 2, 0, 0]
    assert list(out["unreached"]) == [1, 2, 0, 0] and list(out["n"]) == [3, 0, 1, 3]
    assert out.loc[0, "mean"] == 2.0 and math.isnan(out.loc[1, "mean"]) and out.loc[2, "mean"] == 7.0
    assert out.loc[0, "sd"] == pytest.approx(1.0)
    assert out.loc[3, "sd"] == pytest.approx(np.std([4.0, 0.5, 9.0], ddof=1))
    assert out.loc[[1, 2], "sd"].isna().all()


def test_ranks_tie_where_intervals_overlap_and_failures_rank_last():
    # a and b overlap (tie for first); c is clearly worse; d failed a seed; e failed all.
    ranks = score.ranks_with_ties(
        mean=np.array([1.0, 1.2, 5.0, 0.5, np.nan]), low=np.array([0.8, 1.0, 4.5, 0.4, np.nan]),
        high=np.array([1.3, 1.5, 5.5, 0.6, np.nan]), failed=np.array([0, 0, 0, 0.2, 1.0]),
        direction="min")
    assert list(ranks) == [1, 1, 3, 4, 5]
    # Higher is better: the order flips, ties stay.
    ranks = score.ranks_with_ties(mean=np.array([1.0, 1.2, 5.0]), low=np.array([0.8, 1.0, 4.5]),
                                  high=np.array([1.3, 1.5, 5.5]), failed=np.zeros(3), direction="max")
    assert list(ranks) == [2, 2, 1]


def test_without_an_interval_only_failures_rank():
    """Fewer than 3 finite values give no interval (the cell says so): two such means are not
    clearly apart however they differ (as `ldbench compare` says), and no entry is clearly
    better than one without an interval; fewer failures still rank first."""
    nan = np.full(4, np.nan)
    ranks = score.ranks_with_ties(mean=np.array([0.3032, 0.3057, 5.0, 0.1]), low=nan, high=nan,
                                  failed=np.array([0, 0, 0, 0.5]), direction="min")
    assert list(ranks) == [1, 1, 1, 4]
    mixed = score.ranks_with_ties(mean=np.array([1.0, 9.0]), low=np.array([0.9, np.nan]),
                                  high=np.array([1.1, np.nan]), failed=np.zeros(2), direction="min")
    assert list(mixed) == [1, 1]


def test_values_within_the_resolution_tie():
    # Disjoint intervals closer than the resolution are numerical noise: a tie.
    kwargs = dict(mean=np.array([1.0, 1.1]), low=np.array([0.99, 1.09]), high=np.array([1.01, 1.11]),
                  failed=np.zeros(2), direction="min")
    assert list(score.ranks_with_ties(**kwargs)) == [1, 2]
    assert list(score.ranks_with_ties(**kwargs, resolution=0.1)) == [1, 1]


def test_time_to_target_counts_unreached_seeds_as_failures():
    assert score.time_to_target(np.array([10, 20, 30, np.inf, np.inf])) == 30
    assert score.time_to_target(np.array([10, np.nan, np.inf, np.inf, 5])) == math.inf
    assert score.time_to_target(np.array([])) == math.inf


def test_performance_profile_score_by_hand():
    # Steps to target of entries A, B, C on two tasks; B never reaches task 2's target.
    times = {"A": [100, 200], "B": [200, math.inf], "C": [400, 100]}
    columns = zip(*times.values(), strict=True)  # one column per task
    ratios = np.column_stack([score.performance_ratios(np.array(col)) for col in columns])
    np.testing.assert_allclose(ratios, [[1, 2], [2, math.inf], [4, 1]])
    # Area under rho(tau) on [1, 4], divided by 3: a task at ratio r adds (4 - r) / 3.
    got = {e: score.profile_score(ratios=r) for e, r in zip(times, ratios, strict=True)}
    assert got == pytest.approx({"A": (1 + 2 / 3) / 2, "B": (2 / 3 + 0) / 2, "C": (0 + 1) / 2})


@settings(max_examples=50, deadline=None)
@given(ratios=st.lists(st.one_of(st.floats(1.0, 10.0), st.just(math.inf)), min_size=1, max_size=6))
def test_profile_score_is_the_area_under_the_step_function(ratios):
    tau = np.linspace(1.0, score.TAU_MAX, 30001)
    rho = (np.array(ratios)[:, None] <= tau[None, :]).mean(axis=0)  # fraction solved within tau
    area = np.trapezoid(rho, tau) / (score.TAU_MAX - 1.0)
    assert score.profile_score(ratios=np.array(ratios)) == pytest.approx(area, abs=1e-3)


def test_nobody_solving_a_task_fails_everyone_and_step_zero_counts_as_one():
    assert np.isinf(score.performance_ratios(np.array([math.inf, math.inf]))).all()
    np.testing.assert_allclose(score.performance_ratios(np.array([0.0, 2.0])), [1.0, 2.0])


@pytest.fixture
def two_tasks():
    tasks = registry.all_tasks()
    return {name: tasks[name] for name in ("deep-linear-modes", "shared-representation")}


def test_scores_table_and_unreached_targets(tmp_path, two_tasks):
    rng = np.random.default_rng(1)
    for name, speed in (("fast", 1.0), ("slow", 2.0)):
        synthetic_entry(tmp_path / "subs", name, rng=rng, speed=speed, tasks=two_tasks)
    never = synthetic_entry(tmp_path / "subs", "never", rng=rng, tasks=two_tasks)
    runs_path = never / "results/cpu-2core/standard/runs.parquet"
    runs = pd.read_parquet(runs_path)
    targets = runs.metric.isin([c.target for c in two_tasks.values()])
    runs.loc[targets, "value"] = math.inf  # never reaches a target: a failure, not a zero
    results.write_atomic(results.to_table(runs, results.RUN_SCHEMA, results.RUNS_FILE), runs_path)

    inputs = score.collect([tmp_path / "subs"], tasks=two_tasks)
    assert inputs.warnings == [] and set(inputs.entries) == {"fast", "slow", "never"}
    table = score.score(inputs, two_tasks)
    overall = table[table.level == "overall"].set_index("entry")
    assert overall.loc["fast", "rank"] == 1 and overall.loc["never", "rank"] == 3
    assert overall.loc["never", "score"] == 0 and overall.loc["never", "solved"] == 0
    assert overall.loc["fast", "score"] > overall.loc["slow", "score"] > 0
    metric = table[(table.level == "metric") & table.target.fillna(False).astype(bool)]
    assert (metric[metric.entry == "never"]["failures"] == 5).all()
    for entry in ("fast", "slow", "never"):  # the overall score is the profile of its task ratios
        ratios = metric[metric.entry == entry]["ratio"].to_numpy()
        assert overall.loc[entry, "score"] == pytest.approx(score.profile_score(ratios=ratios))
    assert np.isinf(metric[metric.entry == "never"]["time_to_target"]).all()
    # One row per (task, entry, metric), with a family score per family present.
    rows = table[table.level == "metric"]
    assert not rows.duplicated(["profile", "tier", "task", "entry", "metric"]).any()
    assert set(table[table.level == "family"].family) == {c.family for c in two_tasks.values()}
    # Diagnostic metrics are shown, never ranked; every ranked one has a rank.
    diagnostic = rows.metric.isin(["final_loss", "effective_rank"])
    assert (rows[diagnostic].role == "diagnostic").all() and rows[diagnostic]["rank"].isna().all()
    assert (rows[~diagnostic].role == "ranked").all() and rows[~diagnostic]["rank"].notna().all()


def test_a_partial_entry_is_unranked_and_does_not_move_the_complete_entries_scores(tmp_path, two_tasks):
    """A submission of one task, faster there than every complete entry, set that task's best
    time: every ranked entry's ratio and score moved (adam 1.00x -> 4.19x, two ranks swapped).
    And alone in a view it was 'complete' (judged against what the others ran) and ranked 1st."""
    rng = np.random.default_rng(4)
    for name, speed in (("a", 1.0), ("b", 2.0)):
        synthetic_entry(tmp_path / "subs", name, rng=rng, speed=speed, tasks=two_tasks)
    before = score.score(score.collect([tmp_path / "subs"], tasks=two_tasks), two_tasks)
    one = {"deep-linear-modes": two_tasks["deep-linear-modes"]}
    for root in ("subs", "alone"):
        synthetic_entry(tmp_path / root, "partial", rng=np.random.default_rng(5), speed=0.1, tasks=one)
    after = score.score(score.collect([tmp_path / "subs"], tasks=two_tasks), two_tasks)
    theirs = after[after.entry != "partial"].reset_index(drop=True)
    # Its time does not set the ratios, so every score is as before, and so is the overall
    # ranking. Per task, and in its family (which it has whole), it is ranked like any entry.
    scores = ["ratio", "time_to_target", "score", "solved", "tasks", "complete"]
    pd.testing.assert_frame_equal(before[scores], theirs[scores], check_exact=True)
    overall = before.level == "overall"
    pd.testing.assert_frame_equal(before[overall], theirs[overall], check_exact=True)
    target = after.target.fillna(False).astype(bool)
    assert (after.loc[(after.entry == "partial") & target, "ratio"] < 1).all()  # against their best
    for table in (after, score.score(score.collect([tmp_path / "alone"], tasks=two_tasks), two_tasks)):
        partial = table[(table.level == "overall") & (table.entry == "partial")].iloc[0]
        assert not partial["complete"] and pd.isna(partial["rank"]) and partial["tasks"] == 1


def test_a_folder_whose_manifest_names_another_entry_is_skipped(tmp_path, two_tasks):
    """submissions/Prodigy naming itself "prodigy" was scored, and the real submissions/prodigy
    skipped as "name already taken" (upper case sorts first)."""
    import shutil

    rng = np.random.default_rng(6)
    real = synthetic_entry(tmp_path / "subs", "prodigy", rng=rng, tasks=two_tasks)
    shutil.copytree(real, tmp_path / "subs" / "Prodigy")
    inputs = score.collect([tmp_path / "subs"], tasks=two_tasks)
    assert list(inputs.entries) == ["prodigy"] and inputs.entries["prodigy"].path == real
    assert any(w.startswith(f"skipped {tmp_path / 'subs' / 'Prodigy'}: entry.toml names it 'prodigy'")
               for w in inputs.warnings), inputs.warnings


def test_the_same_runs_in_another_row_order_give_the_same_scores_bit_for_bit(tmp_path, two_tasks):
    """Dask appends runs as they finish, so a re-run writes the same rows in another order; a
    mean over seeds summed in file order moved by an ulp (seen on re-run baselines)."""
    rng = np.random.default_rng(3)
    for name in ("a", "b"):
        synthetic_entry(tmp_path / "subs", name, rng=rng, speed=float(rng.uniform(1, 2)), tasks=two_tasks)
    runs_path = tmp_path / "subs" / "a" / "results/cpu-2core/standard/runs.parquet"
    runs = pd.read_parquet(runs_path)
    # Values whose sum depends on its order: 0.1 + 0.2 + 0.3 != 0.3 + 0.2 + 0.1 in float64.
    final = runs.metric == "final_loss"
    runs.loc[final, "value"] = np.resize([0.1, 0.2, 0.3, 1e-16, 3.0], int(final.sum()))
    results.write_atomic(results.to_table(runs, results.RUN_SCHEMA, results.RUNS_FILE), runs_path)
    before = score.score(score.collect([tmp_path / "subs"], tasks=two_tasks), two_tasks)
    shuffled = runs.iloc[::-1].reset_index(drop=True)  # last seed first
    results.write_atomic(results.to_table(shuffled, results.RUN_SCHEMA, results.RUNS_FILE), runs_path)
    after = score.score(score.collect([tmp_path / "subs"], tasks=two_tasks), two_tasks)
    pd.testing.assert_frame_equal(before, after, check_exact=True)


def test_entries_are_compared_only_within_one_profile(tmp_path, two_tasks):
    rng = np.random.default_rng(2)
    synthetic_entry(tmp_path / "subs", "cpu-fast", rng=rng, speed=1.0, tasks=two_tasks)
    synthetic_entry(tmp_path / "subs", "gpu-slow", rng=rng, speed=3.0, tasks=two_tasks,
                    profile="cuda-1gpu")
    table = score.score(score.collect([tmp_path / "subs"], tasks=two_tasks), two_tasks)
    overall = table[table.level == "overall"]
    assert set(zip(overall.profile, overall.entry, overall["rank"], strict=True)) == {
        ("cpu-2core", "cpu-fast", 1), ("cuda-1gpu", "gpu-slow", 1)}
    assert (overall.score == 1.0).all()


def test_an_entry_without_results_at_the_tier_is_named_and_not_counted(tmp_path, two_tasks):
    """A newcomer's entry with smoke-tier results only is not on the standard leaderboard:
    score says so, and counts only the entries it scored."""
    from suite.cli import main
    synthetic_entry(tmp_path / "subs", "done", rng=np.random.default_rng(0), tasks=two_tasks)
    fresh = synthetic_entry(tmp_path / "subs", "fresh", rng=np.random.default_rng(1), tasks=two_tasks)
    (fresh / "results/cpu-2core/standard").rename(fresh / "results/cpu-2core/smoke")
    result = CliRunner().invoke(main, ["score", "--root", str(tmp_path / "subs"),
                                       "--out", str(tmp_path / "lb")])
    assert result.exit_code == 0, result.output
    assert (f"warning: skipped {fresh}: no standard-tier results, so it is not on this leaderboard; "
            f"`ldbench run {fresh} --tier standard --seeds 5` makes them") in result.output
    assert "(1 entries, " in result.output


def test_stale_and_overridden_rows_are_left_out_with_a_warning(tmp_path, two_tasks):
    folder = synthetic_entry(tmp_path / "subs", "probe", rng=np.random.default_rng(0), tasks=two_tasks)
    path = folder / "results/cpu-2core/standard/runs.parquet"
    runs = pd.read_parquet(path)
    runs.loc[runs.task == "deep-linear-modes", "task_version"] -= 1
    results.write_atomic(results.to_table(runs, results.RUN_SCHEMA, results.RUNS_FILE), path)
    inputs = score.collect([tmp_path / "subs"], tasks=two_tasks)
    assert set(inputs.runs.task) == {"shared-representation"}
    assert len(inputs.warnings) == 1 and "stale task version" in inputs.warnings[0]


def test_runs_of_older_entry_files_are_left_out_with_a_warning(tmp_path, two_tasks):
    """After the entry's code changes, its earlier runs measure code it no longer has: scored
    with the new ones they would mix two entries under one name."""
    folder = synthetic_entry(tmp_path / "subs", "probe", rng=np.random.default_rng(0), tasks=two_tasks)
    assert len(score.collect([tmp_path / "subs"], tasks=two_tasks).runs)
    (folder / "entry.py").write_text((folder / "entry.py").read_text() + "\n# changed\n")
    inputs = score.collect([tmp_path / "subs"], tasks=two_tasks)
    assert inputs.runs.empty and len(inputs.warnings) == 1
    assert "runs made with older files of the entry" in inputs.warnings[0]
    assert "rerun `ldbench run`" in inputs.warnings[0]


@pytest.mark.parametrize("kind", ["symlink-to-dev-zero", "fifo", "folder"])
def test_a_table_that_is_not_a_plain_file_is_skipped_with_a_warning(tmp_path, two_tasks, kind):
    """A pull request can commit a symlink (to /dev/zero: reading never ends); a FIFO blocks a
    read. score skips them by name, and show refuses them in one line, instead of hanging."""
    import os
    import signal

    folder = synthetic_entry(tmp_path / "subs", "probe", rng=np.random.default_rng(0), tasks=two_tasks)
    table = folder / "results/cpu-2core/standard/runs.parquet"
    table.unlink()
    {"symlink-to-dev-zero": lambda: table.symlink_to("/dev/zero"), "fifo": lambda: os.mkfifo(table),
     "folder": table.mkdir}[kind]()
    signal.alarm(60)  # a regression hangs: fail instead
    try:
        inputs = score.collect([tmp_path / "subs"], tasks=two_tasks)
        digest = score.inputs_digest([folder], "standard", two_tasks)
        with pytest.raises(results.ResultsError, match="not a plain file"):
            results.read_results(table.parent)
    finally:
        signal.alarm(0)
    assert inputs.runs.empty and digest
    assert any(f"skipped {table}: not a plain file" in w for w in inputs.warnings), inputs.warnings


@pytest.mark.parametrize("damage, reason", [
    ("duplicate-row", "a run's metric appears twice"),
    ("duplicate-seed", "two runs of one seed of a task"),
    ("status", "a run status that is not one of"),
])
def test_a_table_that_contradicts_itself_is_left_out_whole(tmp_path, two_tasks, damage, reason):
    """A duplicated run (values halved) would move the mean and still count as one seed."""
    rng = np.random.default_rng(0)
    folder = synthetic_entry(tmp_path / "subs", "probe", rng=rng, tasks=two_tasks)
    synthetic_entry(tmp_path / "subs", "other", rng=rng, tasks=two_tasks)
    path = folder / "results/cpu-2core/standard/runs.parquet"
    runs = pd.read_parquet(path)
    first = runs[runs["run_id"] == runs["run_id"].iloc[0]].assign(value=lambda r: r["value"] / 2)
    if damage == "duplicate-seed":
        first = first.assign(run_id="f" * 16)
    if damage == "status":
        runs.loc[runs["run_id"] == runs["run_id"].iloc[0], "status"] = "okay"
        first = first.iloc[:0]
    results.write_atomic(results.to_table(pd.concat([runs, first]), results.RUN_SCHEMA, results.RUNS_FILE),
                         path)
    inputs = score.collect([tmp_path / "subs"], tasks=two_tasks)
    assert set(inputs.runs["entry"]) == {"other"}
    assert inputs.warnings == [f"skipped {path}: {reason}" + inputs.warnings[0].split(reason)[1]]
    assert inputs.warnings[0].endswith("`ldbench validate` names each problem")


def test_score_command_writes_parquet_with_the_inputs_digest(tmp_path, two_tasks, monkeypatch):
    monkeypatch.setattr(registry, "all_tasks", lambda: two_tasks)
    for name, speed in (("alpha", 1.0), ("beta", 1.5)):
        synthetic_entry(tmp_path / "subs", name, rng=np.random.default_rng(0), speed=speed, tasks=two_tasks)
    out = tmp_path / "lb"
    result = CliRunner().invoke(main, ["score", "--root", str(tmp_path / "subs"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    table, digest = score.read_scores(out / score.SCORES_FILE)
    assert digest == score.inputs_digest(score.entry_folders([tmp_path / "subs"]), "standard", two_tasks)
    assert {"alpha", "beta"} <= set(table.entry) and "alpha" in result.output
    # Deterministic: scoring the same inputs again gives the same table.
    CliRunner().invoke(main, ["score", "--root", str(tmp_path / "subs"), "--out", str(tmp_path / "lb2")])
    again, _ = score.read_scores(tmp_path / "lb2" / score.SCORES_FILE)
    pd.testing.assert_frame_equal(table, again)
    # Nothing to score (a budget no study has, a tier no entry ran) wrote an empty leaderboard
    # and said only "0 entries"
    for args, said in ((["--tuned", "7"], "has a study at budget 7 (standard tier); `ldbench tune ENTRY "
                                          "--budget 7 --tier standard --seeds 5` makes one"),
                       (["--tier", "smoke"], "has smoke-tier results; `ldbench run ENTRY --tier smoke")):
        empty = CliRunner().invoke(main, ["score", "--root", str(tmp_path / "subs"), "--out",
                                          str(tmp_path / "lb3"), *args])
        assert empty.exit_code == 0 and f"warning: no entry under {tmp_path / 'subs'} {said}" in empty.output


def test_same_scores_allows_an_ulp_and_nothing_more():
    """`leaderboard check` re-scores and compares with this: another scipy may move a t quantile
    by an ulp, which must not fail CI; a real change of a number or a label must."""
    table = pd.DataFrame({"entry": ["a", "b", "c"], "mean": [0.5, np.inf, np.nan],
                          "rank": pd.array([1, 2, pd.NA], dtype="Int64")})
    assert score.same_scores(table, table.copy())
    nudged = table.assign(mean=table["mean"] * (1 + 1e-13))
    assert score.same_scores(table, nudged)
    assert not score.same_scores(table, table.assign(mean=[0.5 + 1e-6, np.inf, np.nan]))
    assert not score.same_scores(table, table.assign(mean=[0.5, 1.0, np.nan]))  # inf vs finite
    assert not score.same_scores(table, table.assign(entry=["a", "b", "d"]))
    assert not score.same_scores(table, table.assign(rank=pd.array([1, 1, pd.NA], dtype="Int64")))
    assert not score.same_scores(table, table.iloc[:2])
