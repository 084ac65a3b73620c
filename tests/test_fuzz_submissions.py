"""Fuzzing validate and score with generated broken submissions: 0 tracebacks, 0 wrong acceptances.

Each example copies a valid one-task submission and applies one generated mutation of the
manifest, the entry files, the Parquet schema, metadata, values and encoding, sizes or names.
A mutation marked broken must be refused by `validate_submission` (with one-line problems);
every mutation must leave validate and `score.collect` + `score.score` free of exceptions.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from suite import registry, results, score
from suite.site.synthetic import synthetic_entry
from suite.validate import MAX_FILE_BYTES, validate_submission

TASK = "deep-linear-modes"
TASKS = {TASK: registry.task_class(TASK)}
SEEDS = 2
WHERE = Path("results/cpu-2core/standard")
EXAMPLES = 380
SCORE_EVERY = 20  # scoring costs ~5 validations: every valid example and 1 in 20 broken ones are scored
Mutation = tuple[str, bool, Callable[[Path], None]]  # (label, must be refused, apply to a folder)


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    folder = synthetic_entry(tmp_path_factory.mktemp("fuzz"), "fuzzed", rng=np.random.default_rng(0),
                             tasks=TASKS, seeds=SEEDS, evals=6)
    assert validate_submission(folder, tasks=TASKS, min_seeds=SEEDS) == []
    return folder


# -- helpers: tables at the Arrow level, so that a mutation can break what pandas would fix ----

def table_path(folder: Path, which: str) -> Path:
    return folder / WHERE / f"{which}.parquet"


def edit_table(which: str, change: Callable[[pa.Table], pa.Table], *, keep_meta: bool = True):
    def apply(folder: Path) -> None:
        path = table_path(folder, which)
        table = pq.read_table(path)
        meta = table.schema.metadata
        table = change(table)
        pq.write_table(table.replace_schema_metadata(meta) if keep_meta else table, path)
    return apply


def set_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    return table.set_column(table.column_names.index(name), name, values)


def with_cell(table: pa.Table, name: str, row: int, value) -> pa.Table:
    values = table[name].to_pylist()
    values[row % len(values)] = value
    return set_column(table, name, pa.array(values, table.schema.field(name).type))


def invalid_utf8(table: pa.Table, name: str, row: int, junk: bytes) -> pa.Table:
    """Put bytes that are not UTF-8 into a string column; Arrow checks nothing on the way."""
    values = [v.encode() if v is not None else b"" for v in table[name].to_pylist()]
    values[row % len(values)] = b"ok" + junk
    raw = pa.array(values, pa.binary())
    return set_column(table, name, pa.StringArray.from_buffers(len(raw), raw.buffers()[1], raw.buffers()[2]))


def runs_rows(folder: Path) -> pa.Table:
    return pq.read_table(table_path(folder, "runs"))


def metric_rows(table: pa.Table, *, target: bool) -> list[int]:
    """Rows of metrics that are (not) steps-to-target metrics."""
    cls = TASKS[TASK]
    specs = cls(cls.tiers["standard"]).metrics()
    return [i for i, m in enumerate(table["metric"].to_pylist()) if specs[m].steps_to_target == target]


# -- strategies, one family per part of a submission -----------------------------------------

ROW = st.integers(0, 10**6)
JUNK = st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80abc"])
STRING_COLUMNS = [f.name for f in results.RUN_SCHEMA if f.type == pa.string()
                  and f.name not in ("error",)]
NOT_NULL = ["run_id", "task", "task_version", "family", "entry", "entry_version", "entry_hash", "seed",
            "tier", "profile", "overrides", "status", "metric", "direction", "fingerprint"]


def text_edit(name: str, change: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        path = folder / name
        old = path.read_bytes()
        new = change(old)
        path.write_bytes(new if new != old else old + b"\n# changed\n")
    return apply


@st.composite
def manifest_mutations(draw) -> Mutation:
    kind = draw(st.sampled_from(["append", "replace", "utf8", "truncate", "delete"]))
    if kind == "append":
        text = draw(st.sampled_from([
            'requirements = ["torch>=2"]', 'requirements = ["Torch == 2.0"]', 'requirements = ["ldbench"]',
            'requirements = ["--index-url http://evil"]', 'requirements = ["x @ https://a/b.whl"]',
            'name = "other"', "version = 2", "homepage = 3", "[hparams.nope]\nlr = 1", "[hparams.default]",
            'description = "' + "x" * 5000 + '"', "authors = []"]))
        return f"manifest:{kind}", True, text_edit("entry.toml", lambda b: b + b"\n" + text.encode() + b"\n")
    if kind == "replace":
        blob = draw(st.binary(max_size=120) | st.text(max_size=120).map(str.encode))
        return f"manifest:{kind}", True, text_edit("entry.toml", lambda b: blob)
    if kind == "utf8":
        junk, at = draw(JUNK), draw(ROW)
        return f"manifest:{kind}", True, text_edit(
            "entry.toml", lambda b: b[:at % len(b)] + junk + b[at % len(b):])
    if kind == "truncate":
        at = draw(ROW)
        return f"manifest:{kind}", True, text_edit("entry.toml", lambda b: b[:at % len(b)])
    return f"manifest:{kind}", True, lambda f: (f / "entry.toml").unlink()


FILE_NAMES = st.sampled_from([
    "__pycache__/entry.cpython-311.pyc", "entry.pyc", "helpers/__pycache__/x.cpython-311.pyc",
    ".hidden.py", ".git/config", "weights.bin", "native.so", "data.npz", "notes.md", "extra.py",
    "sub/deep/module.py", "LICENSE", "results/notes.md", "results/cpu-2core/standard/extra.parquet",
    "results/cpu-2core/notes.txt", "results/laptop/standard/runs.parquet",
    "results/cpu-2core/standard/.runs.parquet.123.abc.tmp", "results/cpu-2core/standard/parts/x.runs.parquet",
    "results/cpu-2core/smoke/runs.parquet", "results/cpu-2core/huge/runs.parquet",
])


def add_file(rel: str | bytes, data: bytes) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        path = os.path.join(os.fsencode(folder), rel if isinstance(rel, bytes) else os.fsencode(rel))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(data)
    return apply


@st.composite
def file_mutations(draw) -> Mutation:
    kind = draw(st.sampled_from(["add", "odd_name", "edit_py", "delete_py", "symlink", "big", "not_utf8"]))
    if kind == "add":
        return f"files:{kind}", True, add_file(draw(FILE_NAMES), draw(st.binary(max_size=64)))
    if kind == "odd_name":
        name = b"x" + draw(JUNK) + draw(st.sampled_from([b".py", b".md", b""]))
        return f"files:{kind}", True, add_file(name, b"pass\n")
    if kind == "edit_py":
        blob = draw(st.binary(max_size=40))
        return f"files:{kind}", True, text_edit("entry.py", lambda b: b + blob)
    if kind == "not_utf8":
        junk = draw(JUNK)
        return f"files:{kind}", True, add_file("helper.py", b"# " + junk + b"\n")
    if kind == "delete_py":
        return f"files:{kind}", True, lambda f: (f / "entry.py").unlink()
    if kind == "symlink":
        target = draw(st.sampled_from(["/etc/hostname", "entry.py", "results", "/nonexistent"]))
        return f"files:{kind}", True, lambda f: os.symlink(target, f / "linked.py")

    def big(folder: Path) -> None:  # sparse: no real disk use
        with open(folder / "weights.py", "wb") as handle:
            handle.truncate(MAX_FILE_BYTES + 1)
    return f"files:{kind}", True, big


TYPES = [pa.int32(), pa.int64(), pa.float32(), pa.float64(), pa.string(), pa.binary(), pa.bool_(),
         pa.timestamp("ms")]


@st.composite
def schema_mutations(draw) -> Mutation:
    which = draw(st.sampled_from(["runs", "curves"]))
    schema = results.SCHEMAS[f"{which}.parquet"]
    column = draw(st.sampled_from(schema.names))
    kind = draw(st.sampled_from(["drop", "retype", "rename", "extra"]))
    if kind == "drop":
        change = lambda t: t.drop_columns([column])  # noqa: E731
    elif kind == "retype":
        new = draw(st.sampled_from([t for t in TYPES if t != schema.field(column).type]))
        change = lambda t: set_column(t, column, pa.nulls(len(t), new))  # noqa: E731
    elif kind == "rename":
        new_name = draw(st.sampled_from(["Run_ID", "value ", "x", column.upper()]))
        change = lambda t: t.rename_columns([new_name if c == column else c for c in t.column_names])  # noqa: E731
    else:
        change = lambda t: t.append_column("extra", pa.array([1] * len(t)))  # noqa: E731
    # A file written before a column was added lacks it and is valid (read with nulls there).
    optional = kind == "drop" and column in results.ADDED_COLUMNS.get(f"{which}.parquet", ())
    return f"schema:{kind}", not optional, edit_table(which, change)


@st.composite
def metadata_mutations(draw) -> Mutation:
    which = draw(st.sampled_from(["runs", "curves"]))
    kind = draw(st.sampled_from(["version", "none", "pandas_index", "pandas_junk", "table_name"]))
    if kind == "version":
        version = draw(st.binary(max_size=12).filter(lambda b: b != b"1"))
        meta = {results.META_VERSION: version, results.META_TABLE: b"runs.parquet"}
        return f"metadata:{kind}", True, edit_table(which, lambda t: t.replace_schema_metadata(meta),
                                                    keep_meta=False)
    if kind == "none":
        return f"metadata:{kind}", True, edit_table(which, lambda t: t.replace_schema_metadata(None),
                                                    keep_meta=False)
    # The rest are claims that readers must ignore: still valid data, never a crash.
    extra = {"pandas_index": b'{"index_columns": ["run_id"], "columns": [], "column_indexes": []}',
             "pandas_junk": draw(st.binary(max_size=40)), "table_name": draw(st.binary(max_size=20))}[kind]
    key = results.META_TABLE if kind == "table_name" else b"pandas"

    def change(table: pa.Table) -> pa.Table:
        return table.replace_schema_metadata({**table.schema.metadata, key: extra})
    return f"metadata:{kind}", False, edit_table(which, change, keep_meta=False)


def divergent_finite(folder: Path) -> None:
    """Mark one run diverged (with a step) but keep its finite values."""
    table = runs_rows(folder)
    rid = table["run_id"][0].as_py()
    mine = [r == rid for r in table["run_id"].to_pylist()]
    status = ["diverged" if m else s for m, s in zip(mine, table["status"].to_pylist(), strict=True)]
    step = [5 if m else None for m in mine]
    table = set_column(table, "status", pa.array(status))
    table = set_column(table, "diverged_step", pa.array(step, pa.int64()))
    pq.write_table(table, table_path(folder, "runs"))


@st.composite
def value_mutations(draw) -> Mutation:
    kind = draw(st.sampled_from([
        "utf8_runs", "utf8_curves", "nan_ok", "inf_ok", "diverged_finite", "status", "seed", "dup_run_row",
        "dup_curve_row", "orphan_curve", "no_curves", "task_version", "entry_hash", "overrides",
        "direction", "error_on_ok", "step_on_ok", "drop_metric", "nulls", "fingerprint", "tier",
        "profile", "entry"]))
    row = draw(ROW)
    cells = {
        "seed": ("seed", draw(st.integers(-10**6, -1))), "status": ("status", draw(st.sampled_from(
            ["OK", "", "done", "ok ", "diverged\n"]))),
        "task_version": ("task_version", draw(st.sampled_from([0, -1, TASKS[TASK].version + 1]))),
        "entry_hash": ("entry_hash", draw(st.text(max_size=64))),
        "overrides": ("overrides", draw(st.sampled_from(['{"steps": 1}', "", "null", "[]"]))),
        "direction": ("direction", draw(st.sampled_from(["max", "MIN", ""]))),
        "error_on_ok": ("error", draw(st.text(max_size=20))),
        "step_on_ok": ("diverged_step", draw(st.integers(-5, 10**6))),
        "fingerprint": ("fingerprint", draw(st.sampled_from(["", "[]", "nope", "1", '"x"']))),
        "tier": ("tier", "smoke"), "profile": ("profile", "cuda-1gpu"), "entry": ("entry", "someone-else"),
    }
    if kind in cells:
        column, value = cells[kind]
        ok_row = row  # every row of the template is an ok run with a result
        return f"values:{kind}", True, edit_table("runs", lambda t: with_cell(t, column, ok_row, value))
    if kind in ("utf8_runs", "utf8_curves"):
        which = "runs" if kind == "utf8_runs" else "curves"
        names = STRING_COLUMNS if which == "runs" else ["run_id", "task", "entry", "metric"]
        column, junk = draw(st.sampled_from(names)), draw(JUNK)
        return f"values:{kind}", True, edit_table(which, lambda t: invalid_utf8(t, column, row, junk))
    if kind in ("nan_ok", "inf_ok"):
        value = draw(st.sampled_from([float("nan"), float("inf"), -float("inf")] if kind == "nan_ok"
                                     else [-float("inf")]))
        target = kind == "inf_ok"

        def bad_value(t: pa.Table) -> pa.Table:
            rows = metric_rows(t, target=target)
            return with_cell(t, "value", rows[row % len(rows)], value)
        return f"values:{kind}", True, edit_table("runs", bad_value)
    if kind == "diverged_finite":
        return f"values:{kind}", True, divergent_finite
    if kind == "dup_run_row":
        return f"values:{kind}", True, edit_table(
            "runs", lambda t: pa.concat_tables([t, t.slice(row % len(t), 1)]))
    if kind == "dup_curve_row":
        return f"values:{kind}", True, edit_table(
            "curves", lambda t: pa.concat_tables([t.slice(row % len(t), 1), t]))
    if kind == "orphan_curve":
        return f"values:{kind}", True, edit_table("curves", lambda t: with_cell(t, "run_id", row, "f" * 16))
    if kind == "no_curves":
        def drop_run(t: pa.Table) -> pa.Table:
            rid = t["run_id"][row % len(t)].as_py()
            return t.filter(pa.array([r != rid for r in t["run_id"].to_pylist()]))
        return f"values:{kind}", True, edit_table("curves", drop_run)
    if kind == "drop_metric":
        return f"values:{kind}", True, edit_table("runs", lambda t: t.filter(
            pa.array([i != row % len(t) for i in range(len(t))])))
    column = draw(st.sampled_from(NOT_NULL))
    return f"values:{kind}", True, edit_table("runs", lambda t: set_column(
        t, column, pa.nulls(len(t), t.schema.field(column).type)))


@st.composite
def size_mutations(draw) -> Mutation:
    kind = draw(st.sampled_from(["rows", "truncate", "garbage", "empty"]))
    which = draw(st.sampled_from(["runs", "curves"]))
    if kind == "rows":  # more rows than the cap, in a file far below the byte cap (the curves
        def many(t: pa.Table) -> pa.Table:  # table's larger cap has its own test: it takes seconds)
            return pa.concat_tables([t] * (results.MAX_ROWS[results.RUNS_FILE] // len(t) + 1))
        return f"sizes:{kind}", True, edit_table("runs", many)
    at = draw(ROW)

    def damage(folder: Path) -> None:
        path = table_path(folder, which)
        data = path.read_bytes()
        path.write_bytes({"truncate": data[:at % len(data)], "garbage": b"PAR1" + data[::-1][:at % 999],
                          "empty": b""}[kind])
    return f"sizes:{kind}", True, damage


@st.composite
def name_mutations(draw) -> Mutation:
    kind = draw(st.sampled_from(["dollar", "control", "empty", "long", "folder"]))
    if kind == "folder":
        return f"names:{kind}", True, lambda f: f.rename(f.with_name("renamed"))
    name = {"dollar": draw(st.sampled_from(["path/$\\frac{$/error@0.5", "$x$", "mode/$\\", "a$b"])),
            "control": "loss\n" + draw(st.text(max_size=5)), "empty": "",
            "long": "x" * draw(st.integers(201, 5000))}[kind]
    row = draw(ROW)
    # A `$` is plain text (the site draws no mathtext): valid, and it must not crash anything.
    return f"names:{kind}", kind != "dollar", edit_table(
        "curves", lambda t: with_cell(t, "metric", row, name))


MUTATIONS = st.one_of(manifest_mutations(), file_mutations(), schema_mutations(), metadata_mutations(),
                      value_mutations(), size_mutations(), name_mutations())


def check(template: Path, mutation: Mutation, *, with_score: bool) -> bool:
    """Apply `mutation` to a copy of the template; return whether validate refused it."""
    label, broken, apply = mutation
    with tempfile.TemporaryDirectory(prefix="hardening-fuzz-") as tmp:
        root = Path(tmp) / "submissions"
        folder = root / "fuzzed"
        shutil.copytree(template, folder, symlinks=True)
        apply(folder)
        folder = next(root.iterdir())  # a mutation may rename it
        problems = validate_submission(folder, tasks=TASKS, min_seeds=SEEDS)
        assert all(isinstance(p, str) and "\n" not in p and p.startswith(str(root))
                   for p in problems), problems
        assert problems or not broken, f"{label}: wrongly accepted"
        if with_score:  # one submission's damage never raises in the scorer either
            score.score(score.collect([root], tasks=TASKS))
        return bool(problems)


def test_fuzzed_submissions_never_raise_and_are_never_wrongly_accepted(template):
    seen: Counter[str] = Counter()
    refused = Counter()

    @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(mutation=MUTATIONS, draw=st.integers(0, SCORE_EVERY - 1))
    def run(mutation: Mutation, draw: int) -> None:
        seen[mutation[0].split(":")[0]] += 1
        refused[mutation[1]] += check(template, mutation, with_score=draw == 0 or not mutation[1])

    run()
    assert refused[True] >= 300, (refused, seen)  # broken folders, every one refused
    assert set(seen) == {"manifest", "files", "schema", "metadata", "values", "sizes", "names"}, seen
