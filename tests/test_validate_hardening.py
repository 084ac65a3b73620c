"""The cases of issue 9, one test each: pyc files, row and decoded-size caps, text that is not
UTF-8, metadata, every tier folder, status/value consistency, duplicate curve rows, temp files,
pinned requirements; and one corrupt submission never stops score and build for the others."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from suite import registry, results, score
from suite.cli import main
from suite.site.synthetic import synthetic_entry
from suite.validate import requirement_problems, validate_submission

TASK = "deep-linear-modes"
TASKS = {TASK: registry.task_class(TASK)}
WHERE = Path("results/cpu-2core/standard")


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    return synthetic_entry(tmp_path_factory.mktemp("hard"), "entry", rng=np.random.default_rng(0),
                           tasks=TASKS, seeds=2, evals=6)


@pytest.fixture
def sub(template, tmp_path) -> Path:
    folder = tmp_path / "submissions" / "entry"
    shutil.copytree(template, folder)
    return folder


def problems(folder: Path) -> list[str]:
    found = validate_submission(folder, tasks=TASKS, min_seeds=2)
    assert all("\n" not in p and "; " in p for p in found), found
    return found


def rewrite(folder: Path, which: str, change) -> None:
    path = folder / WHERE / f"{which}.parquet"
    table = pq.read_table(path)
    pq.write_table(change(table).replace_schema_metadata(table.schema.metadata), path)


def test_the_template_is_valid(sub):
    assert problems(sub) == []


def test_a_planted_pyc_is_refused_though_the_entry_hash_ignores_it(sub):
    """An unchecked-hash pyc would run instead of entry.py while the hash stays the same."""
    cache = sub / "__pycache__"
    cache.mkdir()
    (cache / "entry.cpython-311.pyc").write_bytes(b"\xa7\r\r\n\x03\x00\x00\x00" + b"\0" * 16)
    found = problems(sub)
    assert len(found) == 1 and "__pycache__: is compiled bytecode" in found[0] and "delete it" in found[0]


@pytest.mark.parametrize("name", ["weights.npz", "native.so", ".hidden.py", "x.pyc"])
def test_files_that_are_not_source_or_results_are_refused(sub, name):
    (sub / name).write_bytes(b"\0\1")
    assert any(name in p for p in problems(sub))


def test_a_file_name_that_is_not_utf8_is_refused(sub):
    with open(os.path.join(os.fsencode(sub), b"bad\xffname.py"), "wb") as handle:
        handle.write(b"pass\n")
    found = problems(sub)
    assert any("file name that is not valid UTF-8" in p and "bad\\udcffname.py" in p for p in found), found


def test_source_that_is_not_utf8_is_refused(sub):
    (sub / "helper.py").write_bytes(b"# caf\xe9\n")
    assert any("helper.py: is not UTF-8 text" in p for p in problems(sub))


def test_run_rows_over_the_cap_are_refused_before_decoding(sub):
    """~1 MB of Parquet that holds 50,000+ rows: refused from the file's metadata."""
    cap = results.MAX_ROWS[results.RUNS_FILE]
    rewrite(sub, "runs", lambda t: pa.concat_tables([t] * (cap // len(t) + 1)))
    assert (sub / WHERE / "runs.parquet").stat().st_size < 2**20 * 4
    assert any("rows or more, over the cap of 50,000" in p for p in problems(sub))


def test_curve_rows_over_the_cap_are_refused(sub):
    cap = results.MAX_ROWS[results.CURVES_FILE]
    rewrite(sub, "curves", lambda t: pa.concat_tables([t] * (cap // len(t) + 1)))
    assert any("curves.parquet: holds" in p and "over the cap of 500,000" in p for p in problems(sub))


def test_decoded_size_is_capped_even_when_the_metadata_lies(sub, monkeypatch):
    """The byte cap is checked on the decoded batches too, not only on the footer's claim."""
    monkeypatch.setattr(results, "MAX_DECODED_BYTES", 1_000)
    monkeypatch.setattr(results, "check_size", checking_only_batches(results.check_size))
    found = problems(sub)
    assert any("decodes to" in p and "over the cap" in p for p in found), found


def checking_only_batches(check):
    def batches_only(path, meta, *args, **kwargs):
        return None if meta is not None else check(path, meta, *args, **kwargs)
    return batches_only


def test_invalid_utf8_in_a_string_column_is_a_clear_error(sub):
    def junk(table: pa.Table) -> pa.Table:
        raw = pa.array([b"\xff\xfe"] * len(table), pa.binary())
        bad = pa.StringArray.from_buffers(len(raw), raw.buffers()[1], raw.buffers()[2])
        return table.set_column(table.column_names.index("task"), "task", bad)
    rewrite(sub, "runs", junk)
    assert any("runs.parquet: corrupt content" in p and "UTF8" in p for p in problems(sub))


def test_schema_version_that_is_not_utf8_is_a_clear_error(sub):
    path = sub / WHERE / "runs.parquet"
    table = pq.read_table(path)
    pq.write_table(table.replace_schema_metadata({results.META_VERSION: b"\xff\xfe"}), path)
    assert any("results schema version \\xff\\xfe" in p for p in problems(sub))


def test_pandas_metadata_naming_run_id_as_the_index_is_ignored(sub):
    """The file's pandas metadata is the writer's claim; the data is what counts (and is valid)."""
    path = sub / WHERE / "runs.parquet"
    table = pq.read_table(path)
    meta = {**table.schema.metadata, b"pandas": b'{"index_columns": ["run_id"], "columns": []}'}
    pq.write_table(table.replace_schema_metadata(meta), path)
    assert problems(sub) == []
    assert len(score.collect([sub.parent], tasks=TASKS).runs) == len(table)


def test_garbage_in_another_tier_folder_is_checked(sub):
    smoke = sub / "results" / "cpu-2core" / "smoke"
    smoke.mkdir()
    (smoke / "runs.parquet").write_bytes(b"garbage")
    assert any("smoke/runs.parquet: not a readable Parquet file" in p for p in problems(sub))


def test_a_diverged_run_with_finite_values_is_refused(sub):
    def diverge(table: pa.Table) -> pa.Table:
        table = table.set_column(table.column_names.index("status"), "status",
                                 pa.array(["diverged"] * len(table)))
        return table.set_column(table.column_names.index("diverged_step"), "diverged_step",
                                pa.array([7] * len(table), pa.int64()))
    rewrite(sub, "runs", diverge)
    assert any("metric rows of diverged runs hold values" in p for p in problems(sub))


def test_score_takes_no_value_from_a_run_that_diverged(sub):
    test_a_diverged_run_with_finite_values_is_refused(sub)
    runs = score.collect([sub.parent], tasks=TASKS).runs
    assert len(runs) and runs["value"].isna().all() and set(runs["status"]) == {"diverged"}


def test_duplicated_curve_rows_are_refused(sub):
    rewrite(sub, "curves", lambda t: pa.concat_tables([t, t.slice(0, 1)]))
    assert any("a curve has two rows for one run and step" in p for p in problems(sub))


@pytest.mark.parametrize("step", [-1, 10**15, 2**62])
def test_curve_steps_outside_the_tiers_steps_are_refused(sub, step):
    """Evaluations happen at steps 0..steps; a step far outside once overflowed the site's keys."""
    column = lambda t: t.column_names.index("step")  # noqa: E731
    rewrite(sub, "curves", lambda t: t.set_column(column(t), "step", pa.array(
        [step] + t["step"].to_pylist()[1:], pa.int64())))
    found = [p for p in problems(sub) if "curves have steps outside [0, " in p]
    assert len(found) == 1 and f"e.g. {step}" in found[0] and "regenerate with `ldbench run`" in found[0]


def test_a_curve_name_holding_dollars_is_valid_text(sub):
    odd = "path/$\\frac{$/error@0.5"
    rewrite(sub, "curves", lambda t: t.set_column(t.column_names.index("metric"), "metric", pa.array(
        [odd if m == "loss" else m for m in t["metric"].to_pylist()])))
    assert problems(sub) == []


def test_a_temp_file_of_a_killed_run_is_named_and_cleaned_by_a_rerun(sub):
    stale = sub / WHERE / ".runs.parquet.999999999.abc.tmp"
    stale.write_bytes(b"torn")
    assert any("temp file left by a killed `ldbench run`" in p for p in problems(sub))
    results.compact(sub / WHERE)  # what `ldbench run` does at its end, even with nothing to run
    assert not stale.exists() and problems(sub) == []


def test_parts_not_yet_compacted_are_named_with_the_fix(sub):
    runs, curves = results.read_folder(sub / WHERE)
    rid = runs["run_id"].iloc[0]
    results.append_run(sub / WHERE, runs[runs["run_id"] == rid], curves[curves["run_id"] == rid])
    assert any("parts: holds runs not yet compacted" in p for p in problems(sub))
    assert results.compact(sub / WHERE) == 1 and problems(sub) == []


def test_what_an_interrupted_run_leaves_in_parts_is_named_with_a_fix_that_works(sub):
    """Killed between a run's curves file and its runs file, or while writing the first one: no
    run is lost, and the fix is to delete what is left (an empty parts/ goes at the next run)."""
    runs, curves = results.read_folder(sub / WHERE)
    parts = sub / WHERE / results.PARTS_DIR
    parts.mkdir()
    assert any("parts: is an empty folder left by an interrupted run; delete" in p for p in problems(sub))
    results.compact(sub / WHERE)  # what every `ldbench run` does at its end
    assert not parts.exists() and problems(sub) == []
    rid = runs["run_id"].iloc[0]
    results.append_run(sub / WHERE, runs[runs["run_id"] == rid], curves[curves["run_id"] == rid])
    (parts / results.part_name(rid, results.RUNS_FILE)).unlink()  # killed before the runs file
    found = [p for p in problems(sub) if "parts:" in p]
    assert len(found) == 1 and "holds only curves of runs that never finished" in found[0]
    assert found[0].endswith(f"delete {parts}")


@pytest.mark.parametrize("text", ["torch", "torch>=2", "Torch == 2.0", "torch[cuda]", "ldbench>=0"])
def test_requirements_naming_pinned_packages_are_refused(text):
    found = requirement_problems(Path("entry.toml"), [text])
    assert len(found) == 1 and "names a package that CI pins" in found[0]
    assert requirement_problems(Path("entry.toml"), ["torchvision>=0.1", "lion-pytorch>=0.2"]) == []


def test_one_corrupt_submission_fails_alone_in_score_and_build(template, tmp_path):
    root = tmp_path / "submissions"
    for name in ("good", "bad"):
        synthetic_entry(root, name, rng=np.random.default_rng(1), tasks=TASKS, seeds=2, evals=6)
    for which in ("runs", "curves"):  # invalid UTF-8 in a string column of each table
        path = root / "bad" / WHERE / f"{which}.parquet"
        path.write_bytes(path.read_bytes().replace(b"bad", b"b\xffd"))
    inputs = score.collect([root], tasks=TASKS)
    assert sorted(set(inputs.runs["entry"])) == ["good"]
    assert any("bad/results/cpu-2core/standard/runs.parquet: corrupt content" in w for w in inputs.warnings)
    out = tmp_path / "lb"
    result = CliRunner().invoke(main, ["score", "--root", str(root), "--out", str(out)])
    assert result.exit_code == 0 and "warning:" in result.output and "good" in result.output


def test_ci_installs_the_pinned_cpu_torch_and_constrains_requirements():
    repo = Path(__file__).resolve().parents[1]
    workflow = (repo / ".github" / "workflows" / "submission.yml").read_text()
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in workflow
    install = next(line for line in workflow.splitlines() if "requirements.txt\" -c" in line)
    assert "constraints.txt" in install
    pyproject = (repo / "pyproject.toml").read_text()
    assert '"pyarrow>=15"' in pyproject and int(pa.__version__.split(".")[0]) >= 15


def test_unreadable_results_are_named_with_the_permission_fix_not_a_traceback(template, tmp_path,
                                                                              monkeypatch):
    """chmod 000 on a table crashed score and build (reading its bytes for the digest), and on
    a tier folder crashed validate, each with a PermissionError traceback."""
    root = tmp_path / "submissions"
    for name in ("good", "locked"):
        synthetic_entry(root, name, rng=np.random.default_rng(1), tasks=TASKS, seeds=2, evals=6)
    locked = root / "locked" / WHERE
    real_read_bytes, real_open, real_iterdir = Path.read_bytes, open, Path.iterdir

    def denied(path) -> bool:
        return locked in Path(path).parents or Path(path) == locked

    def read_bytes(self):
        if denied(self):
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_bytes(self)

    def opener(path, *args, **kwargs):
        if denied(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    def iterdir(self):
        if denied(self):
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    monkeypatch.setattr(results, "open", opener, raising=False)
    inputs = score.collect([root], tasks=TASKS)
    assert sorted(set(inputs.runs["entry"])) == ["good"]
    assert any(f"{locked / 'runs.parquet'}: cannot be read (permission denied); give your user read "
               "permission" in w for w in inputs.warnings), inputs.warnings
    monkeypatch.setattr(Path, "iterdir", iterdir)
    found = validate_submission(root / "locked", tasks=TASKS, min_seeds=2)
    assert any(p.startswith(f"{locked}: cannot be read (Permission denied)") and "chmod u+rx" in p
               for p in found), found
