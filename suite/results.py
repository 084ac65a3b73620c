"""The results store: long-format Parquet run and curve tables, one atomic part file per run, compacted.

Layout of a results folder (e.g. ENTRY/results/PROFILE/TIER/):

    runs.parquet, curves.parquet        the compacted tables: what a pull request commits
    parts/<run_id>.curves.parquet       one finished run, written by `append_run` (curves first,
    parts/<run_id>.runs.parquet         then runs: a run counts as stored once its runs part exists)

Appending writes only the new run's parts (O(1) in the runs already stored), each to a temp
file that is fsynced and renamed, so a killed writer leaves no torn file and concurrent writers
never overwrite each other's runs. Reads union the compacted tables with the parts; a part wins
over a compacted row of the same run id. `compact` folds the parts into the compacted tables
under an exclusive lock on the folder (one compaction at a time) and deletes only the parts
it merged, and only if they were not rewritten meanwhile.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = 1
RUNS_FILE, CURVES_FILE = "runs.parquet", "curves.parquet"
PARTS_DIR = "parts"
META_VERSION, META_TABLE = b"ldbench.schema_version", b"ldbench.table"
# Caps on what is decoded from results submitted by others: Parquet compresses repeated rows
# ~100x, so file bytes alone do not bound memory. A standard-tier suite of 5 seeds is 240 run
# rows and 14k curve rows (about 2 MiB decoded).
MAX_ROWS = {RUNS_FILE: 50_000, CURVES_FILE: 500_000}
MAX_DECODED_BYTES = 128 * 2**20
STALE_TMP_S = 24 * 3600  # a temp file this old is stale even if its pid was reused by a live process

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
    # ok | diverged | error | timeout | not-applicable (the task cannot run the entry's model;
    # `error` says why); a rerun skips all but error and timeout
    ("status", pa.string()),
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
    # optimizer | architecture | recipe (Entry.track); null in older files: optimizer
    ("track", pa.string()),
    ("metric", pa.string()),
    ("value", pa.float64()),  # +inf: steps-to-target not reached; NaN: no result (see status)
    # false: this metric does not apply to the entry's model (it lacks what the metric reads,
    # or the whole run is not-applicable); its value is NaN. Null in older files: true
    ("applicable", pa.bool_()),
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
ADDED_COLUMNS = {RUNS_FILE: ("execution", "track", "applicable")}
# Every status a run is recorded with; a rerun skips DONE_STATUSES ("error" and "timeout" runs
# are retried).
STATUSES = ("ok", "diverged", "not-applicable", "error", "timeout")
DONE_STATUSES = ("ok", "diverged", "not-applicable")
_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_TMP = re.compile(r"^\..+\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp$")


class ResultsError(ValueError):
    """Results on disk that cannot be read or written: the message names the file and the fix."""


def expected_name(name: str) -> str:
    """RUNS_FILE or CURVES_FILE for a compacted table's or a part's file name ('' if neither)."""
    return name if name in SCHEMAS else (part_kind(name) or "")


def with_added_columns(table: pa.Table, name: str) -> pa.Table:
    """The table with every column added after its file was written, as nulls."""
    for added in ADDED_COLUMNS.get(name, ()):
        if added not in table.schema.names:
            column = SCHEMAS[name].field(added)
            table = table.append_column(column, pa.nulls(len(table), column.type))
    return table


def to_table(frame: pd.DataFrame, schema: pa.Schema, name: str) -> pa.Table:
    frame = frame.assign(**{c: None for c in ADDED_COLUMNS.get(name, ()) if c not in frame.columns})
    missing = [c for c in schema.names if c not in frame.columns]
    if missing:
        raise ResultsError(f"{name}: missing columns {missing}")
    table = pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)
    meta = {META_VERSION: str(SCHEMA_VERSION).encode(), META_TABLE: name.encode()}
    return table.replace_schema_metadata(meta)


def write_atomic(table: pa.Table, path: Path) -> None:
    """Write to a temp file in the same folder, fsync, then rename over `path`.

    A killed process leaves either the old file or the new one, never a torn one; the temp file
    it may leave carries its pid, so that `clean_stale` can remove it once the process is gone.
    An OSError (full disk, a file where a folder should be) becomes a ResultsError naming `path`.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise ResultsError(f"{path.parent}: cannot create results here ({err.strerror}); choose "
                           "another --out folder") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            pq.write_table(table, handle, write_page_checksum=True)  # reads verify each page
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared and committed
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise ResultsError(f"{path}: cannot write ({err.strerror}); the earlier results are intact: "
                           "free disk space or choose another --out folder, then rerun") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def read_table(path: Path, *, max_rows: int | None = None, max_bytes: int | None = None) -> pd.DataFrame:
    """Read one of our Parquet files, checking its schema version, columns, text and size.

    `max_rows` and `max_bytes` (decoded Arrow bytes) cap what is decoded, for files from others:
    a small file can hold millions of rows. Every failure is a ResultsError naming `path`.
    """
    table = read_arrow(path, max_rows=max_rows, max_bytes=max_bytes)
    try:  # without the file's metadata: its pandas part (an index, dtypes) is only the writer's claim
        return table.replace_schema_metadata(None).to_pandas()
    except (pa.ArrowException, UnicodeDecodeError) as err:
        raise ResultsError(f"{path}: corrupt content ({one_line(err)}); delete it and rerun "
                           "`ldbench run`") from None


def read_capped(path: Path) -> pd.DataFrame:
    """`read_table` with the caps for results submitted by others (validate, score, build)."""
    return read_table(path, max_rows=MAX_ROWS.get(path.name), max_bytes=MAX_DECODED_BYTES)


def read_arrow(path: Path, *, max_rows: int | None = None, max_bytes: int | None = None,
               columns: list[str] | None = None, dictionary: tuple[str, ...] = ()) -> pa.Table:
    """`read_table`'s checks, returning the Arrow table (schema metadata kept).

    `columns`: decode only these (the schema is checked whole; the caps count the whole file).
    `dictionary`: string columns to return dictionary-encoded, as Parquet stores them (a few
    distinct names over thousands of rows: no per-row strings to decode, check or compare)."""
    try:
        with open(path, "rb") as handle:  # Parquet needs only the footer's magic; a file has both
            if handle.read(4) != b"PAR1":
                raise OSError("Parquet magic bytes not found at the start")
        # Page checksums (written since they were introduced) catch a byte flipped in the data.
        parquet = pq.ParquetFile(path, page_checksum_verification=True,
                                 read_dictionary=list(dictionary) or None)
        schema = parquet.schema_arrow
    except FileNotFoundError:
        raise ResultsError(f"{path}: does not exist; `ldbench run` writes it") from None
    except PermissionError:  # the results may be fine: deleting them would lose them
        raise ResultsError(f"{path}: cannot be read (permission denied); give your user read "
                           f"permission (chmod u+r) and run the command again") from None
    except (pa.ArrowException, OSError, UnicodeDecodeError) as err:
        raise ResultsError(f"{path}: not a readable Parquet file ({one_line(err)}); delete it and "
                           "rerun `ldbench run`") from None
    stored = [f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) and f.name in dictionary else f
              for f in schema]  # the types as written, which check_schema expects
    check_schema(path, pa.schema(stored, metadata=schema.metadata))
    check_size(path, parquet.metadata, max_rows, max_bytes)
    if columns is not None:
        schema = pa.schema([schema.field(c) for c in columns], metadata=schema.metadata)
    batches, rows, size = [], 0, 0
    try:  # batch by batch, so that a file whose metadata lies about its size stops at the cap
        for batch in parquet.iter_batches(batch_size=65_536, columns=columns, use_threads=False):
            rows, size = rows + batch.num_rows, size + batch.nbytes
            check_size(path, None, max_rows, max_bytes, rows=rows, size=size)
            batches.append(batch)
        if rows != parquet.metadata.num_rows:  # a damaged page may decode to nothing, silently
            raise pa.ArrowInvalid(f"the footer says {parquet.metadata.num_rows} rows, {rows} were read")
        table = pa.Table.from_batches(batches, schema=schema)
        table.validate(full=True)  # invalid UTF-8 in a string column, inconsistent offsets
        return table if columns is not None else with_added_columns(table, expected_name(path.name))
    except (pa.ArrowException, OSError, UnicodeDecodeError) as err:
        raise ResultsError(f"{path}: corrupt content ({one_line(err)}); delete it and rerun "
                           "`ldbench run`") from None


def read_json(path: Path, fix: str) -> Any:
    """A JSON file ldbench wrote (a study's record), parsed; ResultsError naming the file, why
    and `fix` when it cannot be read or parsed (a merge conflict, a hand edit, a truncation)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:
        why = "nested too deeply" if isinstance(err, RecursionError) else err
        raise ResultsError(f"{path}: unreadable ({why}); {fix}") from None


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:200]


def check_schema(path: Path, schema: pa.Schema) -> None:
    meta = schema.metadata or {}
    raw = meta.get(META_VERSION, b"?")
    version = " ".join(raw.decode("utf-8", "backslashreplace").split())  # printable, for the message
    if raw != str(SCHEMA_VERSION).encode():
        raise ResultsError(
            f"{path}: results schema version {version[:40]}, but this ldbench reads version "
            f"{SCHEMA_VERSION}; rerun with a matching ldbench or regenerate the results"
        )
    twice = sorted({n for n in schema.names if schema.names.count(n) > 1})
    if twice:  # a table keyed by name would take one of them, silently
        raise ResultsError(f"{path}: columns {twice} appear more than once; regenerate it with `ldbench run`")
    expected = SCHEMAS.get(path.name) or SCHEMAS.get(part_kind(path.name) or "")
    if expected is not None:
        found = {f.name: f.type for f in schema}
        optional = ADDED_COLUMNS.get(expected_name(path.name), ())  # older files lack these
        bad = [f.name for f in expected
               if found.get(f.name) != f.type and not (f.name in optional and f.name not in found)]
        if bad:
            raise ResultsError(f"{path}: columns {bad} are missing or have the wrong type; "
                               "regenerate it with `ldbench run`")


def check_size(path: Path, meta: pq.FileMetaData | None, max_rows: int | None, max_bytes: int | None,
               *, rows: int = 0, size: int = 0) -> None:
    """Raise when the rows (or decoded bytes) claimed by `meta`, or counted so far, pass a cap."""
    if meta is not None:
        rows = meta.num_rows
        size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    fix = "a results table of the suite is far smaller; regenerate it with `ldbench run`"
    if max_rows is not None and rows > max_rows:
        raise ResultsError(f"{path}: holds {rows:,} rows or more, over the cap of {max_rows:,}; {fix}")
    if max_bytes is not None and size > max_bytes:
        raise ResultsError(f"{path}: decodes to {size / 2**20:.0f} MiB or more, over the cap of "
                           f"{max_bytes // 2**20} MiB; {fix}")


# ---- parts: one run per file ------------------------------------------------------------------

def plain_file(path: Path) -> bool:
    """A regular file that is not a symlink: what is read from results others submit (a symlink
    may point at /dev/zero, a FIFO blocks a read, a folder named like a table is not one)."""
    return not path.is_symlink() and path.is_file()


def part_name(run_id: str, table: str) -> str:
    """`<run_id>.runs.parquet`; ids that are not plain file names are hashed."""
    key = run_id if _SAFE_ID.match(run_id) else hashlib.sha256(run_id.encode()).hexdigest()[:32]
    return f"{key}.{table}"


def part_kind(name: str) -> str | None:
    """RUNS_FILE or CURVES_FILE for a part file's name, else None."""
    for table in (RUNS_FILE, CURVES_FILE):
        if name.endswith("." + table) and not name.startswith("."):
            return table
    return None


def complete_parts(folder: Path) -> list[tuple[Path, Path]]:
    """(runs part, curves part) of every run whose runs part exists, sorted by name."""
    parts = folder / PARTS_DIR
    if not parts.is_dir():
        return []
    found = []
    for path in sorted(parts.glob("*." + RUNS_FILE)):
        if part_kind(path.name) != RUNS_FILE:
            continue
        if not plain_file(path) and (path.exists() or path.is_symlink()):
            raise ResultsError(f"{path}: not a plain file (a folder, symlink or special file named "
                               "like a run's part); delete it and rerun `ldbench run`")
        found.append((path, path.with_name(path.name[:-len(RUNS_FILE)] + CURVES_FILE)))
    return found


def append_run(folder: Path, run_rows: pd.DataFrame, curve_rows: pd.DataFrame) -> None:
    """Store runs in `folder`, replacing stored rows of the same run ids: one part per run id.

    Curves are written first and the run rows last: a run counts as done only once its run
    rows exist, so a process killed in between is simply redone (and overwrites the curves).
    A run that did not finish (error, timeout) never replaces one stored finished: a second
    writer that started before the first finished would otherwise lose its results.
    """
    folder = Path(folder)
    clean_stale(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ResultsError(f"{folder}: cannot create results here ({err.strerror}); choose "
                           "another --out folder") from None
    for rid, rows in run_rows.groupby("run_id", sort=False):
        curves = curve_rows[curve_rows["run_id"] == rid]
        # Under the folder's lock, as compaction: another writer cannot finish this run between
        # the check and the write, and no compaction sees a run half written.
        with locked(folder):
            if not rows["status"].isin(DONE_STATUSES).all() and stored_finished(folder, str(rid)):
                continue  # a second writer's timeout or error never replaces a finished run
            for name, table in ((CURVES_FILE, curves), (RUNS_FILE, rows)):
                path = folder / PARTS_DIR / part_name(str(rid), name)
                write_atomic(to_table(table.reset_index(drop=True), SCHEMAS[name], name), path)


def stored_finished(folder: Path, rid: str) -> bool:
    """Whether `folder` stores run `rid` finished (a status in DONE_STATUSES)."""
    part = folder / PARTS_DIR / part_name(rid, RUNS_FILE)
    where = part if part.is_file() else folder / RUNS_FILE
    if not where.is_file():
        return False
    rows = read_table(where)
    return bool((rows["status"].isin(DONE_STATUSES) & (rows["run_id"] == rid)).any())


def read_folder(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, curves) of one results folder: compacted tables and parts, a part winning."""
    runs, curves = [], []
    parts = complete_parts(folder)
    for runs_part, curves_part in parts:
        had_curves = curves_part.is_file()
        try:
            pair = (check_rows(runs_part, read_table(runs_part)),
                    read_table(curves_part) if had_curves else None)
        except ResultsError:
            if runs_part.is_file() and curves_part.is_file() == had_curves:
                raise
            continue  # merged by a concurrent compaction: the compacted tables, read below, hold it
        runs.append(pair[0])
        if pair[1] is not None:
            curves.append(pair[1])
    fresh = set().union(*(set(r["run_id"]) for r in runs))
    unfinished = set().union(*(set(r.loc[~r["status"].isin(DONE_STATUSES), "run_id"]) for r in runs))
    kept = set()  # runs stored finished whose part did not finish (written by an older ldbench)
    for name, out in ((RUNS_FILE, runs), (CURVES_FILE, curves)):
        path = folder / name
        if (path.exists() or path.is_symlink()) and not plain_file(path):
            raise ResultsError(f"{path}: not a plain file (a symlink, folder or special file); "
                               "delete it and rerun `ldbench run`")
        if path.is_file():  # a run's curves come from its part when it has one, as its rows do
            table = read_table(path) if name == CURVES_FILE else check_rows(path, read_table(path))
            if name == RUNS_FILE and unfinished:
                kept = set(table.loc[table["run_id"].isin(unfinished)
                                     & table["status"].isin(DONE_STATUSES), "run_id"])
            if kept:
                out[:] = [r[~r["run_id"].isin(kept)] for r in out]
            out.insert(0, table[~table["run_id"].isin(fresh - kept)])
    return without_superseded(concat(runs, RUN_SCHEMA), concat(curves, CURVE_SCHEMA))


def check_rows(path: Path, runs: pd.DataFrame) -> pd.DataFrame:
    """`runs` as read from `path`, refused where it contradicts itself (a hand-edited file): a
    run's metric given twice would count as another seed in every mean, and a run with two
    statuses is both done and not."""
    twice = runs[runs.duplicated(["run_id", "metric"])]
    statuses = runs.groupby("run_id")["status"].nunique()
    if len(twice) or (statuses > 1).any():
        what = (f"run {twice['run_id'].iloc[0]} gives metric {twice['metric'].iloc[0]!r} twice" if len(twice)
                else f"run {statuses[statuses > 1].index[0]} has two statuses")
        raise ResultsError(f"{path}: {what} (`ldbench validate` names every such row); keep one row "
                           "per run and metric, or delete the table and rerun `ldbench run`")
    return runs


# A run is the same run at another task version when these agree (its id also hashes the version).
RUN_KEY = ["entry", "task", "seed", "tier", "profile", "overrides"]


def without_superseded(runs: pd.DataFrame, curves: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Drop runs that a run of a later version of their task replaces (same `RUN_KEY`).

    After a task's version is raised, `ldbench run ENTRY --tasks TASK` into the same folder
    re-runs its seeds at the new version; the old rows could never be scored again, and keeping
    them would leave the folder failing validation. `compact` writes the folder without them.
    """
    if runs.empty or not runs[["task", "task_version"]].drop_duplicates()["task"].duplicated().any():
        return runs, curves  # one version per task: nothing to replace (the common case, cheap)
    latest = runs.groupby(RUN_KEY, dropna=False)["task_version"].transform("max")
    old = set(runs.loc[runs["task_version"] < latest, "run_id"])
    keep_runs, keep_curves = ~runs["run_id"].isin(old), ~curves["run_id"].isin(old)
    return runs[keep_runs].reset_index(drop=True), curves[keep_curves].reset_index(drop=True)


def concat(frames: list[pd.DataFrame], schema: pa.Schema) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=schema.names)
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].reset_index(drop=True)


def results_folders(folder: Path) -> list[Path]:
    """Folders under `folder` (itself included) holding a compacted runs table or parts."""
    if not folder.is_dir():
        return []
    found = {p.parent for p in folder.rglob(RUNS_FILE)}
    found |= {p.parent for p in folder.rglob(PARTS_DIR) if complete_parts(p.parent)}
    return sorted(found)


def read_results(folder: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, curves) of every results folder under `folder` (searched recursively)."""
    folder = Path(folder)
    folders = results_folders(folder)
    if not folders:
        raise ResultsError(f"{folder}: no {RUNS_FILE} found; run `ldbench run ENTRY --out {folder}`")
    tables = [read_folder(f) for f in folders]
    return concat([t[0] for t in tables], RUN_SCHEMA), concat([t[1] for t in tables], CURVE_SCHEMA)


def done_run_ids(folder: Path) -> set[str]:
    """Run ids stored in `folder` that a rerun skips. Fails early when `folder` cannot be written."""
    folder = Path(folder)
    check_writable(folder)
    if not folder.is_dir():
        return set()
    runs, _ = read_folder(folder)
    if (folder / RUNS_FILE).is_file() and not (folder / CURVES_FILE).exists():
        # curves.parquet deleted (it was unreadable, and the message said so): the compacted
        # runs have no curves, so they are redone, and the rerun writes both tables again
        # (the same numbers: runs are deterministic). Runs still in parts keep their curves.
        compacted = set(read_table(folder / RUNS_FILE)["run_id"])
        fresh = {rid for pair in complete_parts(folder) for rid in read_table(pair[0])["run_id"]}
        runs = runs[~runs["run_id"].isin(compacted - fresh)]
    return set(runs.loc[runs["status"].isin(DONE_STATUSES), "run_id"]) if len(runs) else set()


def check_writable(folder: Path) -> None:
    """Raise before any work when `folder` (or the nearest existing folder above it) is unusable."""
    probe = folder.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ResultsError(f"{folder}: cannot hold results because {probe} is a file, not a "
                           "folder; choose another --out folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ResultsError(f"{folder}: cannot write to {probe} (permission denied); choose "
                           "another --out folder")


# ---- compaction and cleaning ------------------------------------------------------------------

@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on the results folder itself (flock on the directory): every process
    that can see the folder takes the same lock, whatever its user, temp folder or the path it
    reaches the folder by, and the committed layout holds nothing but the two tables. (A lock
    file under $TMPDIR, as before, let writers with other temp folders compact at the same
    time and lose runs.) Where a file system cannot lock a directory (NFS emulates flock with
    write locks), a lock file in this machine's temp folder is the fallback."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            with machine_lock(folder):
                yield
            return
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def machine_lock(folder: Path) -> Iterator[None]:
    """A lock file for `folder` in this machine's temp folder (one compaction at a time among
    the processes that share that temp folder)."""
    key = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:24]
    lock_dir = Path(tempfile.gettempdir()) / "ldbench-locks"
    if not lock_dir.is_dir():
        lock_dir.mkdir(exist_ok=True)
        with contextlib.suppress(OSError):  # shared like /tmp itself: other users lock here too
            lock_dir.chmod(0o1777)
    with open(lock_dir / f"{key}.lock", "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield


def compact(folder: str | Path) -> int:
    """Fold `folder`'s parts into runs.parquet and curves.parquet; return how many runs were merged.

    Costs O(all rows) once, instead of once per append. Safe against concurrent `append_run`:
    a part rewritten after it was read is kept (it wins over the compacted row on the next read).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    with locked(folder):
        clean_stale(folder)
        parts = complete_parts(folder)
        for orphan in orphan_curves(folder, parts):  # a kill between a compaction's two unlinks
            orphan.unlink(missing_ok=True)  # or a writer's two writes: the run is stored or redone
        if not parts:
            with contextlib.suppress(OSError):  # an empty parts/ an interrupted run left behind
                (folder / PARTS_DIR).rmdir()
            return 0
        seen = {p: signature(p) for pair in parts for p in pair}
        runs, curves = read_folder(folder)
        # Curves first: until runs.parquet is replaced, the parts still hold these runs.
        write_atomic(to_table(curves, CURVE_SCHEMA, CURVES_FILE), folder / CURVES_FILE)
        write_atomic(to_table(runs, RUN_SCHEMA, RUNS_FILE), folder / RUNS_FILE)
        for runs_part, curves_part in parts:  # a pair rewritten meanwhile stays, to win next time
            if all(seen[p] == signature(p) for p in (runs_part, curves_part)):
                runs_part.unlink(missing_ok=True)  # first: a runs part never lacks its curves
                curves_part.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # only when empty; writers recreate it
            (folder / PARTS_DIR).rmdir()
    return len(parts)


def orphan_curves(folder: Path, parts: list[tuple[Path, Path]]) -> list[Path]:
    """Curves parts without their runs part. Writers hold the folder's lock while they write
    a run's two parts, so under the lock these are leftovers, never a write in progress."""
    have = {curves for _, curves in parts}
    return [p for p in sorted((folder / PARTS_DIR).glob("*." + CURVES_FILE))
            if part_kind(p.name) == CURVES_FILE and p not in have and plain_file(p)]


def signature(path: Path) -> tuple[int, int, int] | None:
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return info.st_ino, info.st_mtime_ns, info.st_size


def clean_stale(folder: Path) -> list[Path]:
    """Remove temp files left by processes that died mid-write; return them.

    Temp files name their writer's pid; one whose process is gone (or that is older than a day)
    is stale. Temp files of older ldbench versions carry no pid and are removed too.
    """
    removed = []
    for where in (folder, folder / PARTS_DIR):
        if not where.is_dir():
            continue
        for path in where.glob(".*.tmp"):
            match = _TMP.match(path.name)
            try:
                old = time.time() - path.stat().st_mtime > STALE_TMP_S
            except FileNotFoundError:
                continue
            if match is None or old or not pid_alive(int(match["pid"])):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return pid > 0
    return True
