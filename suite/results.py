"""The results format: long-format Parquet run and curve tables, written atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = 1
RUNS_FILE, CURVES_FILE = "runs.parquet", "curves.parquet"
META_VERSION, META_TABLE = b"ldbench.schema_version", b"ldbench.table"

# One row per (run, final metric). Run-level columns repeat on each metric row so that a single
# `pd.read_parquet` (or DuckDB query) answers any question without joins.
RUN_SCHEMA = pa.schema([
    ("run_id", pa.string()),
    ("task", pa.string()),
    ("task_version", pa.int32()),
    ("family", pa.string()),
    ("entry", pa.string()),
    ("entry_version", pa.string()),
    ("entry_hash", pa.string()),
    ("seed", pa.int64()),
    ("tier", pa.string()),
    ("profile", pa.string()),
    ("overrides", pa.string()),  # JSON object of the config keys the user changed
    ("config", pa.string()),  # JSON object of the full task config that ran
    ("hparams", pa.string()),  # JSON object of the entry's hyperparameters for this task
    ("status", pa.string()),  # ok | diverged | error
    ("diverged_step", pa.int64()),  # null unless status == diverged
    ("error", pa.string()),  # null unless status == error
    # Seconds of the run; seeds trained as one batch (suite.batched) share one computation,
    # so each is charged the batch's wall time divided by its number of seeds.
    ("wall_time_s", pa.float64()),
    ("steps", pa.int64()),  # optimizer steps taken
    # JSON object: how the run was executed ({"mode": "batched", "seeds": [...], "optimizer":
    # "stacked" | "per-seed"}, {"mode": "one-by-one"} or {"mode": "procedure"}); null in files
    # written before it was recorded. `ldbench verify` re-runs a run the same way.
    ("execution", pa.string()),
    ("metric", pa.string()),
    ("value", pa.float64()),  # +inf: steps-to-target not reached; NaN: no result (see status)
    ("direction", pa.string()),  # min | max
    ("suite_version", pa.string()),
    ("git_commit", pa.string()),
    ("fingerprint", pa.string()),  # JSON object: CPU, device, torch version, ...
    ("created_at", pa.timestamp("us", tz="UTC")),
])

# One row per (run, evaluation step, curve).
CURVE_SCHEMA = pa.schema([
    ("run_id", pa.string()),
    ("task", pa.string()),
    ("entry", pa.string()),
    ("seed", pa.int64()),
    ("step", pa.int64()),
    ("metric", pa.string()),
    ("value", pa.float64()),
])

SCHEMAS = {RUNS_FILE: RUN_SCHEMA, CURVES_FILE: CURVE_SCHEMA}
# Columns added after schema version 1 was first written: older files lack them.
ADDED_COLUMNS = {RUNS_FILE: ("execution",)}
DONE_STATUSES = ("ok", "diverged")  # a rerun skips these; "error" runs are retried


class ResultsError(ValueError):
    """Results on disk that cannot be read: the message names the file and the fix."""


def to_table(frame: pd.DataFrame, schema: pa.Schema, name: str) -> pa.Table:
    missing = [c for c in schema.names if c not in frame.columns]
    if missing:
        raise ResultsError(f"{name}: missing columns {missing}")
    table = pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)
    meta = {META_VERSION: str(SCHEMA_VERSION).encode(), META_TABLE: name.encode()}
    return table.replace_schema_metadata(meta)


def write_atomic(table: pa.Table, path: Path) -> None:
    """Write to a temp file in the same folder, fsync, then rename over `path`.

    A killed process leaves either the old file or the new one, never a torn one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            pq.write_table(table, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared and committed
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_table(path: Path) -> pd.DataFrame:
    """Read one of our Parquet files, checking its schema version and columns."""
    name = path.name
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise ResultsError(
            f"{path}: not a readable Parquet file ({err}); delete it and rerun `ldbench run`"
        ) from None
    meta = table.schema.metadata or {}
    version = meta.get(META_VERSION, b"?").decode()
    if version != str(SCHEMA_VERSION):
        raise ResultsError(
            f"{path}: results schema version {version}, but this ldbench reads version "
            f"{SCHEMA_VERSION}; rerun with a matching ldbench or regenerate the results"
        )
    expected = SCHEMAS.get(name)
    if expected is not None:
        for added in ADDED_COLUMNS.get(name, ()):  # files older than the column read as null
            if added not in table.schema.names:
                column = expected.field(added)
                table = table.append_column(column, pa.nulls(len(table), column.type))
        found = {f.name: f.type for f in table.schema}
        bad = [f.name for f in expected if found.get(f.name) != f.type]
        if bad:
            raise ResultsError(f"{path}: columns {bad} are missing or have the wrong type")
    return table.to_pandas()


def read_results(folder: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, curves) of every results folder under `folder` (searched recursively)."""
    folder = Path(folder)
    run_files = sorted(folder.rglob(RUNS_FILE)) if folder.is_dir() else []
    if not run_files:
        raise ResultsError(f"{folder}: no {RUNS_FILE} found; run `ldbench run ENTRY --out {folder}`")
    runs = pd.concat([read_table(p) for p in run_files], ignore_index=True)
    curve_files = [p.with_name(CURVES_FILE) for p in run_files if p.with_name(CURVES_FILE).exists()]
    curves = (pd.concat([read_table(p) for p in curve_files], ignore_index=True)
              if curve_files else pd.DataFrame(columns=CURVE_SCHEMA.names))
    return runs, curves


def done_run_ids(folder: Path) -> set[str]:
    path = folder / RUNS_FILE
    if not path.exists():
        return set()
    runs = read_table(path)
    return set(runs.loc[runs["status"].isin(DONE_STATUSES), "run_id"])


def append_run(folder: Path, run_rows: pd.DataFrame, curve_rows: pd.DataFrame) -> None:
    """Add one run's rows to `folder`'s tables, replacing earlier rows of the same run id.

    Curves are written first and the run table last: a run counts as done only once its run
    rows exist, so a process killed in between is simply redone.
    """
    run_ids = set(run_rows["run_id"])
    for name, rows in ((CURVES_FILE, curve_rows), (RUNS_FILE, run_rows)):
        path = folder / name
        old = read_table(path) if path.exists() else None
        if old is not None:
            old = old[~old["run_id"].isin(run_ids)]
            rows = pd.concat([old, rows], ignore_index=True) if len(old) else rows
        write_atomic(to_table(rows, SCHEMAS[name], name), path)
