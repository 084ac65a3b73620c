"""`ldbench validate`: baselines pass, each documented broken submission fails with one clear line."""

from __future__ import annotations

import json
import os
import shutil
import string
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from suite import registry, results
from suite.cli import main
from suite.site.synthetic import synthetic_entry
from suite.validate import MAX_FILE_BYTES, validate_submission

REPO = Path(__file__).resolve().parents[1]
CASES = REPO / "tests" / "fixtures" / "broken_submissions"
RUNS = Path("results/cpu-2core/standard/runs.parquet")


def valid_submission(root: Path, name: str = "valid-entry") -> Path:
    return synthetic_entry(root, name, rng=np.random.default_rng(0))


def rewrite_runs(folder: Path, change) -> None:
    """Apply `change` to the runs table and write it back as `ldbench run` would."""
    runs = results.read_table(folder / RUNS)
    runs = change(runs)
    results.write_atomic(results.to_table(runs, results.RUN_SCHEMA, results.RUNS_FILE), folder / RUNS)


def first_task() -> str:
    return next(iter(registry.all_tasks()))


def duplicate_run(runs: pd.DataFrame) -> pd.DataFrame:
    extra = runs[(runs.task == first_task()) & (runs.seed == 0)].assign(run_id="0" * 16)
    return pd.concat([runs, extra], ignore_index=True)


def unknown_task(runs: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([runs, runs[runs.task == first_task()].assign(task="no-such-task")])


def write_raw(folder: Path, table: pa.Table) -> None:
    pq.write_table(table, folder / RUNS)


MUTATIONS = {
    "delete_entry_py": lambda f: (f / "entry.py").unlink(),
    "symlink_outside": lambda f: os.symlink("/etc/hostname", f / "notes.txt"),
    "big_file": lambda f: (f / "weights.bin").write_bytes(b"\0" * (MAX_FILE_BYTES + 1)),
    "delete_results": lambda f: shutil.rmtree(f / "results"),
    "truncate_runs": lambda f: (f / RUNS).write_bytes((f / RUNS).read_bytes()[:300]),
    "schema_version": lambda f: write_raw(f, pq.read_table(f / RUNS).replace_schema_metadata(
        {results.META_VERSION: b"99"})),
    "seed_as_text": lambda f: write_raw(f, pq.read_table(f / RUNS).set_column(
        results.RUN_SCHEMA.get_field_index("seed"), "seed",
        pa.array([str(s) for s in pq.read_table(f / RUNS)["seed"].to_pylist()]))),
    "three_seeds": lambda f: rewrite_runs(f, lambda r: r[~((r.task == first_task()) & (r.seed >= 3))]),
    "duplicate_run": lambda f: rewrite_runs(f, duplicate_run),
    "stale_version": lambda f: rewrite_runs(f, lambda r: r.assign(task_version=np.where(
        r.task == first_task(), r.task_version - 1, r.task_version))),
    "edit_entry_py": lambda f: (f / "entry.py").write_text((f / "entry.py").read_text() + "\n# edited\n"),
    "unknown_profile": lambda f: shutil.copytree(f / "results/cpu-2core", f / "results/laptop"),
    "nan_value": lambda f: rewrite_runs(f, lambda r: r.assign(value=np.where(
        r.index == 0, np.nan, r.value))),
    "drop_task": lambda f: rewrite_runs(f, lambda r: r[r.task != first_task()]),
    "overrides": lambda f: rewrite_runs(f, lambda r: r.assign(overrides=np.where(
        r.task == first_task(), '{"steps": 60}', r.overrides))),
    "unknown_task": lambda f: rewrite_runs(f, unknown_task),
}


def case_names() -> list[str]:
    return sorted(p.name for p in CASES.iterdir() if p.is_dir())


def test_every_fixture_is_documented_and_has_a_mutation():
    readme = (CASES / "README.md").read_text()
    for name in case_names():
        case = tomllib.loads((CASES / name / "case.toml").read_text())
        assert f"`{name}`" in readme and case["expect"]
        assert "mutate" not in case or case["mutate"] in MUTATIONS
    assert len(case_names()) >= 20


def test_a_valid_synthetic_submission_passes(tmp_path):
    folder = valid_submission(tmp_path / "submissions")
    assert validate_submission(folder) == []
    result = CliRunner().invoke(main, ["validate", str(folder)])
    assert result.exit_code == 0 and "ok:" in result.output


def test_nan_is_accepted_in_a_finished_run_only_where_the_metric_declares_it(tmp_path):
    folder = valid_submission(tmp_path / "submissions")

    def undefined(metric):
        def change(runs):
            runs = runs.copy()
            runs.loc[runs["metric"] == metric, "value"] = float("nan")
            return runs
        return change

    rewrite_runs(folder, undefined("plateau_gap/stage_0"))  # declared undefined_ok: a plateau never left
    assert validate_submission(folder) == []
    rewrite_runs(folder, undefined("final_excess"))
    assert any("'final_excess' is nan in a run whose status is ok" in p for p in validate_submission(folder))


def test_an_entry_missing_a_newer_task_is_incomplete_not_invalid(tmp_path):
    folder = valid_submission(tmp_path / "submissions")
    task = first_task()
    rewrite_runs(folder, lambda runs: runs[runs["task"] != task])
    curves_path = folder / RUNS.with_name(results.CURVES_FILE)
    curves = results.read_table(curves_path)
    results.write_atomic(results.to_table(curves[curves["task"] != task], results.CURVE_SCHEMA,
                                          results.CURVES_FILE), curves_path)
    notes: list[str] = []
    assert validate_submission(folder, incomplete=notes) == []
    assert len(notes) == 1 and f"task {task!r} has no runs" in notes[0]
    assert f"--tasks {task}" in notes[0]  # the command that fills it
    assert validate_submission(folder) == notes  # strict: a problem
    result = CliRunner().invoke(main, ["validate", str(folder)])
    assert result.exit_code == 0 and "incomplete: 1 tasks without results" in result.output
    assert CliRunner().invoke(main, ["validate", "--complete", str(folder)]).exit_code == 1


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "baselines").iterdir()))
def test_baselines_pass(name):
    folder = REPO / "baselines" / name
    has_results = (folder / "results").is_dir() and any((folder / "results").glob("*/standard"))
    assert validate_submission(folder, check_results=has_results) == []


@pytest.mark.parametrize("name", case_names())
def test_broken_submission_is_reported(name, tmp_path):
    case = tomllib.loads((CASES / name / "case.toml").read_text())
    folder = valid_submission(tmp_path / "submissions", name)
    for path in (CASES / name).iterdir():
        if path.name != "case.toml":
            shutil.copy(path, folder / path.name)
    if "mutate" in case:
        MUTATIONS[case["mutate"]](folder)
    result = CliRunner().invoke(main, ["validate", str(folder)])  # output: stdout and stderr
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert any(case["expect"] in line for line in errors), (case["expect"], result.output)
    for line in errors[:-1]:  # one line per problem: "error: PATH: what; fix"
        assert ": " in line and "; " in line, line


def test_missing_curve_values_are_allowed(tmp_path):
    # Tasks record some curves only at some steps (path curves at the final step): NaN elsewhere.
    folder = valid_submission(tmp_path / "submissions")
    path = folder / RUNS.with_name("curves.parquet")
    curves = results.read_table(path)
    curves.loc[::3, "value"] = np.nan
    results.write_atomic(results.to_table(curves, results.CURVE_SCHEMA, results.CURVES_FILE), path)
    assert validate_submission(folder) == []


def test_every_problem_is_one_line_naming_a_file(tmp_path):
    folder = valid_submission(tmp_path / "submissions")
    MUTATIONS["three_seeds"](folder)
    MUTATIONS["overrides"](folder)
    problems = validate_submission(folder)
    assert len(problems) >= 2
    for problem in problems:
        assert "\n" not in problem and problem.startswith(str(folder))


def test_runs_with_overrides_beside_plain_ones_are_one_problem_whose_fix_keeps_every_task(tmp_path):
    """An --hparam run into the tier's folder: validate said the task had duplicate runs and that
    the fix was "delete the folder and run ... --tasks TASK", which throws the other tasks away."""
    folder = valid_submission(tmp_path / "submissions")
    rewrite_runs(folder, lambda r: pd.concat([r, r[r.task == first_task()].assign(
        overrides='{"hparams": {"lr": 0.5}}', run_id=lambda d: d.run_id.str[::-1])], ignore_index=True))
    problems = [p for p in validate_submission(folder) if "have no curves" not in p]  # (copied rows)
    assert len(problems) == 1, problems
    assert "used --set or --hparam overrides" in problems[0] and "duplicate" not in problems[0]
    assert f"delete {folder / RUNS.parent} and run `ldbench run" in problems[0]
    assert "(every task;" in problems[0] and "--tasks" not in problems[0]


def test_an_optimizer_entry_cannot_record_a_task_as_not_applicable(tmp_path):
    """Not applicable leaves a task out of the scores: only an architecture entry's model can be
    (an optimizer entry trains each task's reference model), so a claimed one is refused."""
    folder = valid_submission(tmp_path / "submissions")
    rewrite_runs(folder, lambda r: r.assign(
        status=np.where(r.task == first_task(), "not-applicable", r.status),
        error=np.where(r.task == first_task(), "the model has no product()", r.error),
        value=np.where(r.task == first_task(), np.nan, r.value),
        applicable=np.where(r.task == first_task(), False, r.applicable)))
    problems = validate_submission(folder)
    assert any("an optimizer-track run is recorded as not applicable" in p for p in problems), problems


# -- hypothesis: malformed input never raises ------------------------------------------------

TOML_VALUES = st.one_of(
    st.text(alphabet=string.printable, max_size=20).map(json.dumps),
    st.integers(-10**20, 10**20).map(str), st.floats(allow_nan=True).map(
        lambda x: "nan" if x != x else ("inf" if x == float("inf") else ("-inf" if x == -float("inf")
                                                                          else repr(x)))),
    st.booleans().map(lambda b: str(b).lower()),
    st.lists(st.text(max_size=8).map(json.dumps), max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"),
    st.just("{ lr = 0.1 }"), st.just("[[1], 2]"), st.just("1979-05-27T07:32:00Z"),
)
KEYS = st.sampled_from(["name", "version", "authors", "description", "requirements", "hparams",
                        "homepage", "paper", "x", "hparams.default", "hparams.nope"])
MANIFESTS = st.one_of(
    st.lists(st.tuples(KEYS, TOML_VALUES), max_size=8).map(
        lambda kv: "\n".join(f"{k} = {v}" for k, v in kv)),
    st.text(max_size=200),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=MANIFESTS)
def test_malformed_manifests_never_raise(tmp_path, text):
    folder = tmp_path / "fuzzed"
    folder.mkdir(exist_ok=True)
    (folder / "entry.py").write_text("")
    (folder / "entry.toml").write_text(text, encoding="utf-8", errors="surrogateescape")
    problems = validate_submission(folder)
    assert isinstance(problems, list) and all(isinstance(p, str) and "\n" not in p for p in problems)


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    return valid_submission(tmp_path_factory.mktemp("template"), "fuzzed")


CELLS = st.one_of(st.none(), st.integers(-5, 2**40), st.floats(allow_nan=True), st.text(max_size=12),
                  st.booleans())
OPS = st.one_of(
    st.tuples(st.just("drop"), st.sampled_from(results.RUN_SCHEMA.names)),
    st.tuples(st.just("nulls"), st.sampled_from(results.RUN_SCHEMA.names)),
    st.tuples(st.just("text"), st.sampled_from(results.RUN_SCHEMA.names)),
    st.tuples(st.just("set"), st.sampled_from(results.RUN_SCHEMA.names), CELLS),
    st.tuples(st.just("rows"), st.integers(0, 400)),
    st.tuples(st.just("truncate"), st.integers(0, 4000)),
    st.tuples(st.just("garbage"), st.binary(max_size=64)),
)


def apply(table: pa.Table, path: Path, op: tuple) -> pa.Table | None:
    kind = op[0]
    if kind == "truncate":
        path.write_bytes(path.read_bytes()[:op[1]])
        return None
    if kind == "garbage":
        path.write_bytes(op[1])
        return None
    if kind == "rows":
        return table.slice(0, op[1])
    if op[1] not in table.column_names:
        return table
    i = table.column_names.index(op[1])
    if kind == "drop":
        return table.remove_column(i)
    if kind == "nulls":
        return table.set_column(i, op[1], pa.nulls(len(table), table.schema.field(i).type))
    if kind == "text":
        return table.set_column(i, op[1], pa.array([str(v) for v in table[op[1]].to_pylist()]))
    try:
        column = pa.array([op[2]] * len(table))
    except (pa.ArrowException, OverflowError):
        return table
    return table.set_column(i, op[1], column)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(OPS, min_size=1, max_size=3), which=st.sampled_from(["runs", "curves"]))
def test_malformed_results_never_raise(template, tmp_path, ops, which):
    folder = tmp_path / "fuzzed"
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(template, folder)
    path = folder / RUNS.with_name(f"{which}.parquet")
    table = pq.read_table(path)
    for op in ops:
        table = apply(table, path, op) if table is not None else None
    if table is not None:
        pq.write_table(table.replace_schema_metadata(pq.read_schema(folder / RUNS).metadata), path)
    problems = validate_submission(folder)
    assert all(isinstance(p, str) and "\n" not in p for p in problems)
