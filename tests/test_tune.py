"""`ldbench tune`: search spaces, the design, the choice of the best trial, resuming, `show`."""

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from scipy.stats import qmc

from suite import profiles, registry, results, runner, seeding, tune
from suite.cli import main
from suite.entry import EntryError, entry_hash, load_entry
from suite.loop import Trainer
from tests.conftest import REPO

FAST = ["steps=60", "evals=10"]
SPACE = {"lr": {"log_uniform": [1e-4, 1e-1]}, "momentum": {"uniform": [0.5, 0.9]},
         "nesterov": {"choice": [False, True]}}
SEARCH = """
[hparams.default]
lr = 0.01

[search.default]  # tune's space
lr = { log_uniform = [1e-3, 1e-1] }
"""
SEARCH_SPACE = ("lr",)


def strict_json(path):
    """`path` parsed as strict JSON: NaN and Infinity (Python's extensions) are refused."""
    def refuse(constant):
        raise ValueError(f"{path}: {constant} is not JSON")
    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def test_design_is_the_seeded_halton_sequence_mapped_onto_the_space():
    points = tune.design(SPACE, 8, design_seed=3)
    rng = np.random.default_rng(seeding.derive_seed(3, "tune-design"))
    units = qmc.Halton(d=3, scramble=True, seed=rng).random(8)  # dims: lr, momentum, nesterov
    for point, (u_lr, u_m, u_n) in zip(points, units, strict=True):
        assert math.isclose(math.log(point["lr"]), math.log(1e-4) + u_lr * math.log(1e3))
        assert math.isclose(point["momentum"], 0.5 + 0.4 * u_m)
        assert point["nesterov"] == (u_n >= 0.5)
    assert points == tune.design(SPACE, 8, design_seed=3)
    assert points != tune.design(SPACE, 8, design_seed=4)


def test_space_hash_names_the_space():
    assert tune.space_hash(SPACE) == tune.space_hash(dict(reversed(SPACE.items())))
    assert tune.space_hash(SPACE) != tune.space_hash({**SPACE, "lr": {"log_uniform": [1e-4, 1.0]}})


def test_search_tables_are_validated_in_one_line(make_entry):
    entry = load_entry(make_entry(hparams=SEARCH))
    assert entry.search_for("deep-linear-modes") == {"lr": {"log_uniform": [1e-3, 1e-1]}}
    bad = {
        "lr = { log_uniform = [0.0, 1.0] }": "low > 0",
        "lr = { uniform = [1.0, 0.1] }": "low < high",
        "lr = { gaussian = [0, 1] }": "is not one of log_uniform, uniform, choice",
        "lr = { choice = [] }": "non-empty list",
        "rl = { uniform = [0, 1] }": r"is not a hyperparameter of \[hparams.default\]; add rl there first",
    }
    for line, message in bad.items():
        with pytest.raises(EntryError, match=message) as err:
            load_entry(make_entry("bad", hparams=f"[hparams.default]\nlr = 0.1\n[search.default]\n{line}\n"))
        assert "entry.toml" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(EntryError, match="did you mean 'deep-linear-modes'"):
        load_entry(make_entry("bad", hparams="[hparams.default]\nlr = 0.1\n[search.deep-linear-mode]\n"
                                             "lr = { uniform = [0, 1] }\n"))
    # uniform over an integer drew floats (slice_p = 1.85): every trial failed, and the study kept
    # the defaults without a word
    with pytest.raises(EntryError, match=r"search.default.k searches an integer hyperparameter \(it is 2\) "
                                         r"with uniform, which draws floats; list the integers to try"):
        load_entry(make_entry("bad", hparams="[hparams.default]\nlr = 0.1\nk = 2\n[search.default]\n"
                                             "k = { uniform = [1, 4] }\n"))
    load_entry(make_entry("fine", hparams="[hparams.default]\nlr = 0.1\nk = 2\n[search.default]\n"
                                          "k = { choice = [1, 2, 4] }\n"))


def test_search_tables_leave_the_entry_hash_unchanged(make_entry):
    plain = entry_hash(make_entry("a", hparams="[hparams.default]\nlr = 0.01\n"))
    searched = make_entry("a", hparams=SEARCH.lstrip("\n"))  # the same file plus a search table
    assert entry_hash(searched) == plain
    (searched / "entry.toml").write_text((searched / "entry.toml").read_text().replace("0.01", "0.02"))
    assert entry_hash(searched) != plain


def table(rows):
    return pd.DataFrame(rows, columns=["task", "trial", "reached", "target_mean"])


def test_best_trial_most_seeds_reached_then_mean_within_resolution_then_index():
    task = "deep-linear-modes"  # steps_to_all_modes, lower is better
    rows = [(task, 0, 1, 10.0), (task, 1, 2, 500.0), (task, 2, 2, 300.0), (task, 3, 2, 300.0)]
    assert tune.best_trials(table(rows), "smoke") == {task: 2}
    # No trial reached the target: no evidence for any point, so none is chosen (not trial 0).
    assert tune.best_trials(table([(task, 0, 0, math.inf), (task, 1, 0, math.inf)]), "smoke") == {task: None}


def test_a_declared_tie_break_decides_between_trials_whose_targets_tie():
    """mode-connectivity's target takes few values (spawn steps), so many trials tie at step 0:
    its declared tie-break, test_error, picks the best-trained among them (within its
    resolution, 1/n_test, trials are still equal and the earlier one wins)."""
    task = "mode-connectivity"
    cls = registry.task_class(task)
    assert cls.tie_break == "test_error"
    one_point = 1 / cls.tiers["standard"]["n_test"]
    rows = [(task, 0, 1, 5.0, 0.001), (task, 1, 1, 0.0, 0.030), (task, 2, 1, 0.0, 0.012),
            (task, 3, 1, 0.0, 0.012 + one_point / 2), (task, 4, 0, math.inf, math.nan)]
    frame = pd.DataFrame(rows, columns=["task", "trial", "reached", "target_mean", "tie_break_mean"])
    assert tune.best_trials(frame, "standard") == {task: 2}
    frame.loc[frame["trial"] == 3, "tie_break_mean"] = 0.012 - 2 * one_point
    assert tune.best_trials(frame, "standard") == {task: 3}
    # A task without a tie-break: the earlier design point, whatever else its runs measured.
    other = "deep-linear-modes"
    assert registry.task_class(other).tie_break is None
    assert tune.best_trials(table([(other, 0, 1, 10.0), (other, 1, 1, 10.0)]), "smoke") == {other: 0}


def test_trial_table_averages_the_tie_break_over_the_seeds_that_reached_the_target():
    task = "mode-connectivity"
    trial = tune.Trial(task, 0, {"lr": 0.1}, ("r0", "r1", "r2"))
    runs = pd.DataFrame([(rid, m, v, "ok") for rid, target, err in
                         (("r0", 0.0, 0.02), ("r1", 5.0, 0.04), ("r2", math.inf, 0.60))
                         for m, v in (("stable_spawn_step", target), ("test_error", err))],
                        columns=["run_id", "metric", "value", "status"])
    row = tune.trial_table([trial], runs).iloc[0]
    assert row["reached"] == 2 and row["target_mean"] == 2.5
    assert row["tie_break"] == "test_error" and row["tie_break_mean"] == pytest.approx(0.03)


def test_a_study_where_no_trial_reaches_the_target_keeps_the_entrys_hyperparameters(make_entry, tmp_path):
    """Three trials of 2 steps cannot reach the target: the evaluation runs the entry's own
    hyperparameters, tuned.json says so, and the tuned view scores those runs."""
    entry = make_entry(hparams=SEARCH)
    out = tune.tune(entry, budget=3, tasks=["deep-linear-modes"], design_seed=1, eval_seeds=1,
                    sets=["deep-linear-modes.steps=2", "deep-linear-modes.evals=2"], out=tmp_path / "s",
                    progress=False)
    written = strict_json(out / tune.TUNED_FILE)
    info = written["provenance"]["tasks"]["deep-linear-modes"]
    assert max(t["reached"] for t in info["trials"]) == 0
    assert all(t["target_mean"] is None and t.get("tie_break") is None for t in info["trials"])
    assert all(set(t["hparams"]) == set(SEARCH_SPACE) for t in info["trials"])  # objects, not text
    assert info["best_trial"] is None and info["chosen"] == tune.KEPT
    assert written["tuned"]["deep-linear-modes"] == load_entry(entry).hparams_for("deep-linear-modes")
    evals = pd.read_parquet(out / tune.EVAL / "runs.parquet")
    assert all(json.loads(o)["hparams"] == written["tuned"]["deep-linear-modes"] for o in evals.overrides)
    table, tuned = tune.show(out)
    assert not (table["best"] == "*").any() and tuned == written["tuned"]


def test_only_the_chosen_points_evaluations_are_a_studys_result():
    runs = pd.DataFrame({"run_id": ["a", "b", "c", "d"], "task": ["t", "t", "u", "u"],
                         "overrides": ['{"hparams": {"lr": 0.1}}', '{"hparams": {"lr": 0.2}}',
                                       "{}", '{"hparams": {"lr": 0.3}}']})
    assert list(tune.chosen_evaluations(runs, {"t": {"lr": 0.2}, "u": {}})["run_id"]) == ["b", "c"]


def trial_alone(entry, task: str, hparams: dict):
    """(trajectory, metrics) of a trial's point on the first tuning seed, run by itself."""
    plans = runner.make_plans([task], [tune.TUNING_SEED_BASE], "smoke", FAST, {task: hparams})
    (traj, metrics, _), = runner.execute_batch(plans, Trainer(plans[0].task, load_entry(entry),
                                                              profiles.load("cpu-2core")))
    return traj, metrics


def study(entry, out, tasks=("deep-linear-modes",), **kwargs):
    return tune.tune(entry, budget=3, tasks=list(tasks), design_seed=1, eval_seeds=2,
                     sets=FAST, out=out, progress=False, **kwargs)


def test_trials_ending_in_errors_are_said_with_the_first_error(make_entry, tmp_path, capsys):
    """The table counted "1 error" per trial and the study kept the defaults without a word; the
    reason was only in the trials' runs file."""
    code = ("import torch\n\ndef make_optimizer(params, hparams, task):\n"
            "    if hparams['lr'] > 0.005:\n"
            "        raise ValueError(f\"lr {hparams['lr']:.3g} is too large\")\n"
            "    return torch.optim.SGD(params, lr=hparams['lr'])\n")
    study(make_entry(hparams=SEARCH.replace("lr = 0.01", "lr = 0.001"), code=code), tmp_path / "study")
    said = [line for line in capsys.readouterr().out.splitlines()
            if line.startswith("note: deep-linear-modes")]
    assert len(said) == 1 and "trial runs ended in an error" in said[0], said
    assert "the first: the entry's make_optimizer failed at" in said[0] and "is too large" in said[0]


def test_killed_study_resumes_without_redoing_finished_trials(make_entry, tmp_path, monkeypatch):
    entry, out = make_entry(hparams=SEARCH), tmp_path / "study"
    tasks = ("deep-linear-modes", "teacher-student")
    real, calls = runner.run_group, []

    def killed_after_one(group, *args, **kwargs):
        if len(calls) == 1:
            raise KeyboardInterrupt  # the process dies here
        calls.append([rid for _, rid in group])
        return real(group, *args, **kwargs)

    monkeypatch.setattr(runner, "run_group", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        study(entry, out, tasks)
    first = list(calls)
    shown = CliRunner().invoke(main, ["show", str(out)])  # trials not run yet said so, not inf
    unrun = [line for line in shown.output.splitlines() if line.startswith("teacher-student")]
    assert shown.exit_code == 0 and unrun and all("not run yet" in line for line in unrun), shown.output
    calls.clear()
    def counted(group, *args, **kwargs):
        calls.append([rid for _, rid in group])
        return real(group, *args, **kwargs)

    monkeypatch.setattr(runner, "run_group", counted)
    study(entry, out, tasks)
    # Each task's 3 trials (1 tuning seed each) train as one batch, then each task's evaluation
    # (2 seeds): the first task's trials finished before the kill and are not redone.
    assert [len(g) for g in first] == [3] and [len(g) for g in calls] == [3, 2, 2]
    assert not set(sum(first, [])) & set(sum(calls, []))
    written = json.loads((out / tune.TUNED_FILE).read_text())
    for task in tasks:
        trials = written["provenance"]["tasks"][task]["trials"]
        assert [t["trial"] for t in trials] == [0, 1, 2] and all(t["done"] == 1 for t in trials)
    assert written["provenance"]["tuning_seeds"] == [tune.TUNING_SEED_BASE]
    assert written["provenance"]["eval_seeds"] == [0, 1]
    calls.clear()
    study(entry, out, tasks)
    assert calls == []  # everything done: nothing reruns


def test_trials_batched_match_each_trial_run_by_itself(make_entry, tmp_path):
    """A task's trials train side by side, each with its own hyperparameters (a merged
    optimizer); each matches the same point run alone with `--hparam`, `--seed-batch 1`."""
    entry = make_entry(hparams=SEARCH)
    out = study(entry, tmp_path / "study", tasks=("teacher-student",))
    trials = pd.read_parquet(out / tune.TRIALS / "runs.parquet")
    executions = {json.loads(e)["optimizer"] for e in trials.execution}
    assert executions == {"merged"}, executions
    recorded = json.loads(trials.execution.iloc[0])
    assert recorded["mode"] == "batched" and len(recorded["hparams"]) == 3
    for run_id, part in trials.groupby("run_id"):
        traj, metrics = trial_alone(entry, "teacher-student", json.loads(part.hparams.iloc[0]))
        assert traj.execution["mode"] == "one-by-one"
        got = part.set_index("metric")["value"]
        for name, value in metrics.items():
            assert math.isclose(got[name], value, rel_tol=1e-4, abs_tol=1e-6) or (
                math.isnan(got[name]) and math.isnan(value)), (run_id, name, got[name], value)


def test_tuned_point_is_the_best_trial_and_its_evaluation_runs_on_the_evaluation_seeds(make_entry, tmp_path):
    # Design seed 0 puts the largest rate (0.07) second: in 200 steps only it reaches the target.
    out = tune.tune(make_entry(hparams=SEARCH), budget=3, tasks=["deep-linear-modes"], design_seed=0,
                    eval_seeds=2, sets=["steps=200", "evals=10"], out=tmp_path / "study", progress=False)
    written = json.loads((out / tune.TUNED_FILE).read_text())
    trials = pd.DataFrame(written["provenance"]["tasks"]["deep-linear-modes"]["trials"])
    best = written["provenance"]["tasks"]["deep-linear-modes"]["best_trial"]
    assert trials.reached.max() > 0 and best != 0
    reached = trials[trials.reached == trials.reached.max()]
    assert best == int(reached.sort_values(["target_mean", "trial"]).trial.iloc[0])
    assert written["tuned"]["deep-linear-modes"] == trials.hparams[best]
    evals = pd.read_parquet(out / tune.EVAL / "runs.parquet")
    assert sorted(evals.seed.unique()) == [0, 1]
    assert (evals.overrides.str.contains(json.dumps(written["tuned"]["deep-linear-modes"])[1:-1])).all()
    svg = out / "trials.svg"
    shown = CliRunner().invoke(main, ["show", str(out), "--plot", str(svg)])
    assert shown.exit_code == 0, shown.output
    assert "trial" in shown.output and "*" in shown.output and "evaluation seeds" in shown.output
    assert svg.read_text().startswith("<?xml") and ">lr<" in svg.read_text()


def test_tuning_one_task_again_keeps_the_studys_other_choices(make_entry, tmp_path):
    """`ldbench tune --tasks B` on a study that tuned A writes tuned.json with both (it held
    only B's choice before, and the tuned view lost A until A was tuned again)."""
    entry, out = make_entry(hparams=SEARCH), tmp_path / "study"
    study(entry, out, tasks=("deep-linear-modes", "teacher-student"))
    both = json.loads((out / tune.TUNED_FILE).read_text())
    study(entry, out, tasks=("teacher-student",))  # every run done: chosen again, the same
    again = json.loads((out / tune.TUNED_FILE).read_text())
    assert again == both and list(again["tuned"]) == ["deep-linear-modes", "teacher-student"]
    # A file written before tuned.json was strict JSON: the kept task's trials are rewritten strict.
    older = json.loads(json.dumps(both))
    for t in older["provenance"]["tasks"]["deep-linear-modes"]["trials"]:
        t.update(hparams=json.dumps(t["hparams"]),
                 target_mean=math.inf if t["target_mean"] is None else t["target_mean"])
    (out / tune.TUNED_FILE).write_text(json.dumps(older))
    assert "Infinity" in (out / tune.TUNED_FILE).read_text() or not any(
        t["target_mean"] is None for t in both["provenance"]["tasks"]["deep-linear-modes"]["trials"])
    study(entry, out, tasks=("teacher-student",))
    assert strict_json(out / tune.TUNED_FILE) == both
    (out / tune.TUNED_FILE).write_text(json.dumps({"tuned": {}, "provenance": {"tasks": {}}}))
    study(entry, out, tasks=("teacher-student",))
    only = json.loads((out / tune.TUNED_FILE).read_text())  # nothing else chosen before
    assert only["tuned"] == {"teacher-student": both["tuned"]["teacher-student"]}
    assert only["provenance"]["tasks"] == {"teacher-student": both["provenance"]["tasks"]["teacher-student"]}
    assert tune.show(out)[1] == only["tuned"]


def test_a_changed_study_is_refused_in_one_line(make_entry, tmp_path):
    entry, out = make_entry(hparams=SEARCH), tmp_path / "study"
    study(entry, out)
    result = CliRunner().invoke(main, ["tune", str(entry), "--budget", "5", "--tasks", "deep-linear-modes",
                                       "--design-seed", "1", "--set", "steps=60", "--set", "evals=10",
                                       "--out", str(out), "--quiet"])
    assert result.exit_code == 2 and "a different study (budget" in result.output
    assert "Traceback" not in result.output


def test_the_tuned_view_scores_the_studies_chosen_points_only(tmp_path):
    """Committed smoke-tier studies (16 trials): every row is a run of the hyperparameters the
    study chose, the entry pages show those, and a study whose choice changed drops its rows."""
    import shutil

    from suite import score

    studies = REPO / "studies"
    inputs = score.collect([REPO / "baselines"], tier="smoke", budget=16, studies=studies)
    assert sorted(inputs.entries) == ["adam", "adamw", "momentum", "sgd"] and not inputs.warnings
    assert "16 trials per task" in inputs.view
    # The entries without a study are named, not silently missing.
    assert ("no study at this budget: adamw-cosine, lbfgs, mlp (no search space), transformer-1l"
            in inputs.view)
    for path in studies.glob("*/*/*/budget-*/tuned.json"):  # any JSON reader takes them
        strict_json(path)
    for name, entry in inputs.entries.items():
        tuned = json.loads((studies / name / "cpu-2core/smoke/budget-16/tuned.json").read_text())["tuned"]
        for task, values in tuned.items():
            assert entry.hparams_for(task) == {**entry.hparams_for(task), **values}
    counts = inputs.runs.groupby(["entry", "task"])["seed"].nunique()
    assert (counts == 5).all() and len(counts) == 4 * 8  # 5 evaluation seeds, every task
    table = score.score(inputs)
    assert table.loc[table["level"] == "overall", "complete"].all()
    # the same study with another choice recorded for one task: its rows no longer count
    copy = tmp_path / "studies"
    shutil.copytree(studies / "sgd", copy / "sgd")
    tuned_file = copy / "sgd/cpu-2core/smoke/budget-16/tuned.json"
    data = json.loads(tuned_file.read_text())
    data["tuned"]["deep-linear-modes"] = {"lr": 123.0}
    tuned_file.write_text(json.dumps(data))
    changed = score.collect([REPO / "baselines"], tier="smoke", budget=16, studies=copy)
    assert "deep-linear-modes" not in set(changed.runs["task"]) and len(changed.runs)
    # an interrupted study (tuned.json truncated) leaves its entry out with a warning; it
    # stopped the whole view before, scoring nobody
    shutil.copytree(studies / "adam", copy / "adam")
    broken = copy / "adam/cpu-2core/smoke/budget-16/tuned.json"
    broken.write_text(broken.read_text()[:40])
    partial = score.collect([REPO / "baselines"], tier="smoke", budget=16, studies=copy)
    assert sorted(partial.entries) == ["sgd"] and set(partial.runs["entry"]) == {"sgd"}
    assert any(w.startswith(f"skipped: {broken}: unreadable") for w in partial.warnings), partial.warnings


@pytest.mark.parametrize(("value", "sizes"), [("auto", [3, 2]), ("2", [2, 1, 2]), ("1", [1, 1, 1, 2])])
def test_trial_batch_sets_how_many_trials_train_together(value, sizes, make_entry, tmp_path, monkeypatch):
    real, sizes_seen = runner.run_group, []

    def counted(group, *args, **kwargs):
        sizes_seen.append(len(group))
        return real(group, *args, **kwargs)

    monkeypatch.setattr(runner, "run_group", counted)
    out = study(make_entry(hparams=SEARCH), tmp_path / "study", trial_batch=value)
    assert sizes_seen == sizes  # the trials' batches, then the evaluation's 2 seeds
    modes = {json.loads(e)["mode"] for e in pd.read_parquet(out / tune.TRIALS / "runs.parquet").execution}
    assert modes == ({"one-by-one"} if value == "1" else {"batched", "one-by-one"} if value == "2"
                     else {"batched"})


def test_a_bad_trial_batch_is_one_line(make_entry):
    result = CliRunner().invoke(main, ["tune", str(make_entry(hparams=SEARCH)), "--budget", "2",
                                       "--trial-batch", "0"])
    assert result.exit_code != 0
    assert "--trial-batch '0': expected 'auto' or a positive integer" in result.output
    assert "Traceback" not in result.output


# An architecture entry whose searched hyperparameter is the model's width.
WIDTH = """
from torch import nn
from suite.init import from_generator

class Net(nn.Module):
    def __init__(self, p, width):
        super().__init__()
        self.embed = nn.Embedding(p, 8)
        self.mlp = nn.Sequential(nn.Linear(16, width), nn.ReLU(), nn.Linear(width, p))

    def forward(self, pairs):
        return self.mlp(self.embed(pairs).flatten(1))

def make_model(task, hparams, generator):
    if task.name != "modular-addition":
        return None
    return from_generator(lambda: Net(task.config["p"], hparams["width"]), generator)
"""


def test_trials_of_other_model_shapes_run_one_by_one_with_a_note(make_entry, tmp_path, capsys):
    entry = make_entry(code=WIDTH, hparams="[hparams.default]\nwidth = 16\n[search.default]\n"
                                           "width = { choice = [8, 32] }\n")
    # trial_batch=2: the reference profile trains modular-addition's trials one by one anyway.
    out = tune.tune(entry, budget=2, tasks=["modular-addition"], design_seed=0, eval_seeds=1,
                    sets=FAST, out=tmp_path / "study", progress=False, trial_batch=2)
    trials = pd.read_parquet(out / tune.TRIALS / "runs.parquet").drop_duplicates("run_id")
    assert sorted(json.loads(h)["width"] for h in trials.hparams) == [8, 32]
    assert (trials.status == "ok").all()
    for execution in trials.execution.map(json.loads):
        assert execution["mode"] == "one-by-one" and "differs in shape" in execution["note"]
    assert "run one by one, not batched" in capsys.readouterr().out


def test_the_tuned_view_entry_pages_chart_each_hyperparameter(tmp_path):
    """The tuned view's entry page shows its study: per task a chart of the target against each
    searched hyperparameter (one dot per trial, the chosen one black) and the trials' table."""
    import re

    from suite import score
    from suite.site import build

    studies = REPO / "studies"
    inputs = score.collect([REPO / "baselines"], tier="smoke", budget=16, studies=studies)
    build.build(inputs, score.score(inputs), tmp_path)
    page = (tmp_path / "entries" / "adam.html").read_text()
    section = page[page.index("<h2>Tuning study</h2>"):]
    written = json.loads((studies / "adam/cpu-2core/smoke/budget-16/tuned.json").read_text())
    kept = {task for task, info in written["provenance"]["tasks"].items() if info["best_trial"] is None}
    assert kept == {"modular-addition", "teacher-student"}  # no trial reached their targets
    for task, info in written["provenance"]["tasks"].items():
        part = section[section.index(f"<h3>{task} · target"):]
        part = part[:part.index("</details>")]
        charts = re.findall(r"<svg.*?</svg>", part, re.S)
        assert len(charts) == len(info["space"]) == 3  # lr, beta1, beta2
        for chart in charts:
            dots = re.findall(r'<circle [^>]*fill="(#\w+)"', chart)
            assert len(dots) == 16 and dots.count("#000000") == (task not in kept)
        chosen = re.search(r'<tr class="best"><td class="num">(\d+) \(chosen\)', part)
        if task in kept:
            assert chosen is None and "the entry&#39;s own hyperparameters were kept" in part
            assert written["tuned"][task] == load_entry(REPO / "baselines" / "adam").hparams_for(task)
        else:
            assert chosen and int(chosen.group(1)) == info["best_trial"]
    # Only a task that declares a tie break has its column (a 'tie-break: nan' column was shown).
    assert re.findall(r"tie-break: ([\w/]+)", section) == ["test_error"]
    assert section.count("<h3>mode-connectivity · target") == 1
    # A tuned.json written before it was strict JSON (hyperparameters as text, Infinity, NaN)
    # gives the same section.
    info = written["provenance"]["tasks"]["modular-addition"]
    older = {**info, "trials": [{**t, "hparams": json.dumps(t["hparams"]),
                                 "target_mean": math.inf if t["target_mean"] is None else t["target_mean"],
                                 "tie_break": math.nan, "tie_break_mean": math.nan} for t in info["trials"]]}
    assert "Infinity" in json.dumps(older)
    assert str(build.study_task("modular-addition", older)) == str(build.study_task("modular-addition", info))
    # A tuned.json without its trials: the section is absent, the build goes on.
    broken = tmp_path / "tuned.json"
    broken.write_text(json.dumps({"tuned": written["tuned"]}))
    assert build.study_section(broken) == [] and build.study_section(None) == []


def test_a_study_takes_sets_for_one_of_its_tasks_and_keys_only_some_tasks_have(make_entry, tmp_path):
    """`--set mode-connectivity.spawn_steps=...` and `--set alphas=5` (only mode-connectivity has
    it) are checked against all the study's tasks, and each task's trials take their own."""
    sets = FAST + ["mode-connectivity.spawn_steps=[0, 20]", "alphas=5"]
    out = tune.tune(make_entry(hparams=SEARCH), budget=2, tasks=["deep-linear-modes", "mode-connectivity"],
                    eval_seeds=1, sets=sets, out=tmp_path / "study", progress=False)
    runs = pd.read_parquet(out / tune.TRIALS / "runs.parquet").drop_duplicates("run_id")
    overrides = {t: {k: v for k, v in json.loads(o).items() if k != "hparams"}
                 for t, o in zip(runs.task, runs.overrides, strict=True)}
    assert overrides["mode-connectivity"] == {"steps": 60, "evals": 10, "spawn_steps": [0, 20], "alphas": 5}
    assert overrides["deep-linear-modes"] == {"steps": 60, "evals": 10}
    bad = CliRunner().invoke(main, ["tune", str(make_entry(hparams=SEARCH)), "--budget", "2", "--tasks",
                                    "deep-linear-modes", "--set", "alphas=5", "--out", str(tmp_path / "bad")])
    assert bad.exit_code != 0 and "--set 'alphas=5'" in bad.output and "Traceback" not in bad.output


@pytest.mark.parametrize("tuned, problem", [
    ('{"tuned": {"a": {"lr": NaN}}}', "'tuned' gives a.lr = nan, which no run can have recorded"),
    ('{"tuned": {"a": {"lr": 1e400}}}', "'tuned' gives a.lr = inf, which no run can have recorded"),
    ('{"tuned": {"a": {"lr": 1' + "0" * 400 + '}}}', "'tuned' gives a.lr = 1000"),
    ('{"tuned": {"a": {"betas": {"x": [0.9, NaN]}}}}', "'tuned' gives a.betas = {'x': [0.9, nan]}, which no"),
    ('{"tuned": ' + "[" * 100_000 + "]" * 100_000 + "}", "unreadable (nested too deeply)"),
], ids=["nan", "overflow", "huge-int", "object", "nested"])
def test_a_tuned_json_whose_choices_no_run_could_have_is_refused_in_one_line(tmp_path, tuned, problem):
    """Its task would otherwise silently have no rows in the tuned view (no run equals NaN)."""
    from suite import results, score
    path = tmp_path / "tuned.json"
    path.write_text(tuned)
    with pytest.raises(results.ResultsError, match="rerun `ldbench tune`") as err:
        score.read_tuned(path)
    assert str(err.value).startswith(f"{path}: ") and problem in str(err.value) and "\n" not in str(err.value)
    path.write_text('{"tuned": {"a": {"lr": 0.1, "nesterov": true, "kind": "x", "steps": 3, '
                    '"betas": [0.9, 0.99]}}}')
    assert score.read_tuned(path) == {"a": {"lr": 0.1, "nesterov": True, "kind": "x", "steps": 3,
                                            "betas": [0.9, 0.99]}}  # an entry's own list, kept


def test_a_study_section_with_numbers_beyond_float_is_absent_not_a_crash(tmp_path):
    from suite.site import build
    trial = {"trial": 0, "hparams": {"lr": 0.1}, "target": "t", "target_mean": 10**400, "reached": 1,
             "seeds": 1, "statuses": "1 ok", "task": "a"}
    for info in ({"best_trial": 1e400, "trials": [trial], "space": {"lr": {"uniform": [0, 1]}}},
                 {"best_trial": 0, "trials": [trial], "space": {"lr": {"uniform": [0, 1]}}}):
        path = tmp_path / "tuned.json"
        path.write_text(json.dumps({"tuned": {}, "provenance": {"tasks": {"a": info}}}))
        assert build.study_section(path) == []
    path.write_text('{"provenance": {"tasks": ' + "[" * 100_000 + "]" * 100_000 + "}}")
    assert build.study_section(path) == []


def test_trials_at_one_point_share_their_runs(make_entry, tmp_path):
    """A choice-only space with fewer points than the budget: two trials had one run id, one
    runs file held every metric twice, and the study stopped (and stopped again on resuming)."""
    entry = make_entry(hparams="[hparams.default]\nlr = 0.01\n[search.default]\n"
                               "lr = { choice = [0.01, 0.02] }\n")
    out = study(entry, tmp_path / "study")  # budget 3 over two points
    runs = results.read_results(out / tune.TRIALS)[0]
    assert not runs.duplicated(["run_id", "metric"]).any()
    tuned = json.loads((out / "tuned.json").read_text())
    trials = tuned["provenance"]["tasks"]["deep-linear-modes"]["trials"]
    points = [t["hparams"]["lr"] for t in trials]
    assert len(points) == 3 and sorted(set(points)) == [0.01, 0.02]
    assert runs["run_id"].nunique() == 2


@pytest.mark.parametrize(("default", "choice", "got", "kind"), [
    ("0.01", '[0.1, "0.01"]', "'0.01'", "a number"), ("3", "[1.5, 2]", "1.5", "an integer"),
    ("true", "[0, 1]", "0", "a boolean"), ("0.01", "[0.1, true]", "True", "a number"),
    ('"fast"', '["slow", 2]', "2", "a string")])
def test_choice_values_must_be_of_the_hyperparameters_type(make_entry, default, choice, got, kind):
    """Choices of another type were accepted and every trial then failed inside the entry's
    code ("unsupported operand type(s) for *: 'float' and 'str'")."""
    manifest = f"[hparams.default]\nlr = 0.1\nk = {default}\n[search.default]\nk = {{ choice = {choice} }}\n"
    with pytest.raises(EntryError, match=rf"search.default.k: choice values must be of the "
                                         rf"hyperparameter's type .*got {re.escape(got)}; write each as "
                                         rf"{kind}, without quotes"):
        load_entry(make_entry("bad", hparams=manifest))
    fine = manifest.replace(choice, "[0.5, 1]" if default == "0.01" else f"[{default}]")
    load_entry(make_entry("fine", hparams=fine))


def test_an_interrupted_study_says_what_it_kept(make_entry, tmp_path, monkeypatch, capsys):
    """Ctrl-C printed only click's "Aborted!", where `ldbench run` says what was kept."""
    real = tune.execute

    def until_evaluation(entry, todo, *, out, **kwargs):
        if out.name == tune.EVAL:
            raise KeyboardInterrupt
        return real(entry, todo, out=out, **kwargs)

    monkeypatch.setattr(tune, "execute", until_evaluation)
    with pytest.raises(KeyboardInterrupt):
        study(make_entry(hparams=SEARCH), tmp_path / "study")
    assert (f"interrupted: 3 trial runs and 0 evaluation runs have finished and are kept in "
            f"{tmp_path / 'study'}; the same command resumes from there") in capsys.readouterr().err


def test_a_damaged_trials_table_is_named_not_taken_for_an_empty_study(make_entry, tmp_path):
    """A damaged trials table read as "nothing stored yet": a resume redid every trial and
    `show` said every trial was "not run yet"."""
    out = study(make_entry(hparams=SEARCH), tmp_path / "study")
    table = out / tune.TRIALS / results.RUNS_FILE
    table.write_bytes(table.read_bytes()[:-40])  # truncated: its footer is gone
    with pytest.raises(results.ResultsError, match="trials/runs.parquet: not a readable Parquet file"):
        study(make_entry(hparams=SEARCH), out)
    with pytest.raises(results.ResultsError, match="trials/runs.parquet: not a readable Parquet file"):
        tune.show(out)


@pytest.mark.parametrize("name, damage, problem", [
    ("study.json", lambda text: text[:300], r"study.json: unreadable \(Unterminated string"),
    ("study.json", lambda text: '{"entry": "adam", "tasks": []}', r"study.json: not a study's record "
     r"\(entry_hash missing or of another type\)"),
    ("tuned.json", lambda text: text[:100], r"tuned.json: unreadable \(Expecting"),
    ("tuned.json", lambda text: json.dumps({**json.loads(text), "provenance": {}}),
     r"tuned.json: its provenance is unreadable \(KeyError: 'tasks'\)"),
    ("tuned.json", lambda text: text.replace('"best_trial": 1,', '"best_trial": "1",', 1),
     r"best_trial is '1', not a trial index"),
])
def test_a_damaged_study_record_is_named_in_one_line(tmp_path, name, damage, problem):
    """`show STUDY` read study.json and tuned.json unchecked: a merge conflict or a hand edit in a
    committed study gave a JSONDecodeError or KeyError traceback."""
    import shutil
    folder = tmp_path / "study"
    shutil.copytree(REPO / "studies" / "adam" / "cpu-2core" / "smoke" / "budget-16", folder)
    path = folder / name
    path.write_text(damage(path.read_text(encoding="utf-8")), encoding="utf-8")
    result = CliRunner().invoke(main, ["show", str(folder)])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert re.search(problem, result.output), result.output
    assert "Traceback" not in result.output


def test_resuming_a_study_with_a_damaged_study_json_is_refused_in_one_line(make_entry, tmp_path):
    out = study(make_entry(hparams=SEARCH), tmp_path / "study")
    (out / tune.STUDY_FILE).write_text("<<<<<<< HEAD\n{}", encoding="utf-8")
    with pytest.raises(results.ResultsError, match="study.json: unreadable .*git checkout"):
        study(make_entry(hparams=SEARCH), out)


CAPPED = """
import torch
from torch import nn
from suite.init import from_generator

class Capped(nn.Module):
    def __init__(self, d, cap):
        super().__init__()
        self.read = nn.Linear(2 * (d + 1), 1)
        self.cap = cap  # a plain attribute the forward reads: not a parameter, not a buffer

    def forward(self, tokens):
        h = torch.cat([tokens[:, :-1].mean(1), tokens[:, -1]], dim=1)
        return self.cap * torch.tanh(self.read(h)[:, 0] / self.cap)

def make_model(task, hparams, generator):
    if task.name != "in-context-regression":
        return None
    model = from_generator(lambda: Capped(task.config["dim"], hparams["cap"]), generator)
    with torch.no_grad():  # output 0 at first: every cap gives the same first loss and gradient
        model.read.weight.zero_()
        model.read.bias.zero_()
    return model

def make_optimizer(params, hparams, task):
    return torch.optim.Adam(params, lr=0.01)
"""


def test_trials_whose_models_differ_beyond_their_parameters_are_not_batched(make_entry, tmp_path):
    """Trials searching a plain attribute (a logit cap) were batched, and the batch ran the first
    trial's forward for all of them: the second trial trained with the first one's cap (its
    excess loss 0.876 against 0.834 alone), silently (found by a user). Each now trains alone."""
    entry = make_entry("capped", code=CAPPED, hparams="[hparams.default]\ncap = 1.0\n\n[search.default]\n"
                       "cap = { choice = [0.3, 30.0] }\n")
    out = tune.tune(entry, budget=2, tasks=["in-context-regression"], design_seed=0, eval_seeds=1,
                    sets=FAST, out=tmp_path / "study", progress=False)
    trials = pd.read_parquet(out / tune.TRIALS / "runs.parquet")
    for _, part in trials.groupby("run_id"):
        cap = json.loads(part.hparams.iloc[0])["cap"]
        _, metrics = trial_alone(entry, "in-context-regression", {"cap": cap})
        got = part.set_index("metric")["value"]
        assert got["excess_loss"] == metrics["excess_loss"], (cap, got["excess_loss"], metrics["excess_loss"])
    notes = {json.loads(e).get("note", "") for e in trials.execution}
    assert any("the runs' models differ beyond their parameters: cap is" in n for n in notes), notes


def test_the_committed_tuned_views_markdown_says_it_is_one():
    """leaderboard/tuned-budget-16/README.md read like the main leaderboard: no word of tuning."""
    text = (REPO / "leaderboard" / "tuned-budget-16" / "README.md").read_text(encoding="utf-8")
    assert text.startswith("# ldbench leaderboard · tuned view\n")
    assert "**Tuned view.** Each entry at the hyperparameters its ldbench tune study chose with 16" in text
    main = (REPO / "leaderboard" / "README.md").read_text(encoding="utf-8")
    assert "tuned view" not in main.splitlines()[0]


def test_tune_says_when_the_profile_trains_a_tasks_trials_one_by_one(make_entry, tmp_path, capsys):
    """`run` said so and `tune` did not (found by a user); the option it names is tune's own."""
    study(make_entry(hparams=SEARCH), tmp_path / "study", tasks=("modular-addition",))
    assert ("note: profile cpu-2core trains the trials of modular-addition one by one, not batched "
            "(measured faster there; --trial-batch N batches them anyway)") in capsys.readouterr().err
