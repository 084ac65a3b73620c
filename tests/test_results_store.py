"""The results store: O(1) appends as part files, reads that union parts and compacted tables,
compaction, stale temp files, write errors, and two concurrent writers losing nothing."""

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from suite import results
from suite.results import ResultsError


def rows(run_id: str, seed: int, value: float = 1.0, writer: str = "a"):
    """One run's rows: two metrics and three curve points."""
    base = {c: None for c in results.RUN_SCHEMA.names}
    base.update(run_id=run_id, task="t", task_version=1, family="f", entry="e", entry_version="1",
                entry_hash="h", seed=seed, tier="smoke", profile="cpu-2core", overrides="{}",
                status="ok", direction="min", fingerprint="{}", error=writer,
                created_at=pd.Timestamp("2025-01-01", tz="UTC"))
    runs = pd.DataFrame([{**base, "metric": m, "value": value} for m in ("a", "b")])
    curves = pd.DataFrame({"run_id": run_id, "task": "t", "entry": "e", "seed": seed,
                           "step": [0, 1, 2], "metric": "loss", "value": [3.0, 2.0, value]})
    return runs, curves


def test_append_writes_one_part_per_run_and_a_rerun_replaces_it(tmp_path):
    results.append_run(tmp_path, *rows("r0", 0))
    results.append_run(tmp_path, *rows("r1", 1))
    results.append_run(tmp_path, *rows("r0", 0, value=5.0))
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == [
        "r0.curves.parquet", "r0.runs.parquet", "r1.curves.parquet", "r1.runs.parquet"]
    runs, curves = results.read_results(tmp_path)
    assert sorted(runs["run_id"]) == ["r0", "r0", "r1", "r1"] and len(curves) == 6
    assert set(runs.loc[runs["run_id"] == "r0", "value"]) == {5.0}
    assert results.done_run_ids(tmp_path) == {"r0", "r1"}


def test_compact_folds_parts_and_a_later_part_wins(tmp_path):
    results.append_run(tmp_path, *rows("r0", 0))
    results.append_run(tmp_path, *rows("r1", 1))
    assert results.compact(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.parquet", "runs.parquet"]
    results.append_run(tmp_path, *rows("r1", 1, value=7.0))  # a rerun after compaction
    runs, curves = results.read_results(tmp_path)
    assert len(runs) == 4 and set(runs.loc[runs["run_id"] == "r1", "value"]) == {7.0}
    assert len(curves) == 6 and curves.duplicated(["run_id", "step"]).sum() == 0
    assert results.compact(tmp_path) == 1 and results.compact(tmp_path) == 0
    assert len(results.read_results(tmp_path)[0]) == 4


def test_a_run_at_a_later_task_version_replaces_the_stale_one(tmp_path):
    """After a task's version is raised, re-running its seeds into the folder replaces the old
    version's runs (which could never be scored again); other seeds and tasks stay."""
    def versioned(run_id, seed, version, task="t"):
        runs, curves = rows(run_id, seed)
        return runs.assign(task_version=version, task=task), curves.assign(task=task)

    results.append_run(tmp_path, *versioned("v1s0", 0, 1))
    results.append_run(tmp_path, *versioned("v1s1", 1, 1))
    results.append_run(tmp_path, *versioned("u1s0", 0, 1, task="u"))
    results.compact(tmp_path)
    results.append_run(tmp_path, *versioned("v2s0", 0, 2))  # seed 0 re-run at version 2
    for _ in range(2):  # the same before and after compaction
        runs, curves = results.read_results(tmp_path)
        assert sorted(set(runs["run_id"])) == ["u1s0", "v1s1", "v2s0"]
        assert sorted(set(curves["run_id"])) == ["u1s0", "v1s1", "v2s0"]
        results.compact(tmp_path)
    # Another override or tier is another run: nothing replaces it.
    other, other_curves = versioned("v1s0-set", 0, 1)
    results.append_run(tmp_path, other.assign(overrides='{"steps": 5}'), other_curves)
    assert "v1s0-set" in set(results.read_results(tmp_path)[0]["run_id"])


def test_a_curves_part_without_its_runs_part_is_not_a_run(tmp_path):
    """A writer killed between its two files: the run is not done and is redone."""
    results.append_run(tmp_path, *rows("r0", 0))
    (tmp_path / "parts" / "r0.runs.parquet").unlink()
    assert results.done_run_ids(tmp_path) == set()


def test_stale_temp_files_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = tmp_path / f".runs.parquet.{dead}.abc_12.tmp"
    legacy = tmp_path / ".runs.parquet.k2x9q1.tmp"  # written by an older ldbench: no pid
    live = tmp_path / f".runs.parquet.{os.getpid()}.zz.tmp"
    for path in (stale, legacy, live):
        path.write_bytes(b"torn")
    results.append_run(tmp_path, *rows("r0", 0))
    assert not stale.exists() and not legacy.exists() and live.exists()


def test_the_committed_layout_is_read_as_before():
    folder = Path("baselines/sgd/results/cpu-2core/standard")
    runs, curves = results.read_results(folder)
    assert not (folder / "parts").exists()  # committed results are compacted
    assert len(runs) == pq.ParquetFile(folder / results.RUNS_FILE).metadata.num_rows
    assert len(curves) == pq.ParquetFile(folder / results.CURVES_FILE).metadata.num_rows
    assert runs["run_id"].nunique() == len(runs.drop_duplicates("run_id"))


def test_out_below_a_regular_file_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ResultsError, match="is a file, not a folder; choose another --out"):
        results.done_run_ids(tmp_path / "file" / "out")
    with pytest.raises(ResultsError, match="cannot create results here"):
        results.append_run(tmp_path / "file" / "out", *rows("r0", 0))


def test_a_full_disk_is_a_clear_error_and_keeps_earlier_results(tmp_path, monkeypatch):
    results.append_run(tmp_path, *rows("r0", 0))

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(results.pq, "write_table", full)
    with pytest.raises(ResultsError, match="No space left on device.*free disk space"):
        results.append_run(tmp_path, *rows("r1", 1))
    monkeypatch.undo()
    assert results.done_run_ids(tmp_path) == {"r0"}
    assert not list(tmp_path.rglob("*.tmp"))


def write_seeds(folder: str, seeds: list[int], writer: str) -> None:
    """One `ldbench run`-like writer: append each seed's run, compact at the end."""
    for seed in seeds:
        results.append_run(results.Path(folder), *rows(f"run{seed}", seed, writer=writer))
    results.compact(folder)


def write_and_compact(folder: str, ids: list[int], tmpdir: str) -> None:
    """A writer compacting after every append, with its own temp folder (another user, another
    container on the same disk): the compaction lock must still be the same one."""
    os.environ["TMPDIR"] = tmpdir
    for i in ids:
        results.append_run(results.Path(folder), *rows(f"run{i}", i))
        results.compact(folder)


def test_writers_with_different_temp_folders_lose_no_run(tmp_path):
    """Four writers, half of each one's runs shared with the next, compacting all the time."""
    folder = tmp_path / "results"
    ctx = multiprocessing.get_context("spawn")
    procs = []
    for w in range(4):
        (tmp_path / f"tmp{w}").mkdir()
        ids, tmpdir = list(range(w * 15, w * 15 + 30)), str(tmp_path / f"tmp{w}")
        procs.append(ctx.Process(target=write_and_compact, args=(str(folder), ids, tmpdir)))
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    runs, curves = results.read_results(folder)
    assert sorted(runs["run_id"].unique()) == sorted(f"run{i}" for i in range(75))
    assert (runs.groupby("run_id").size() == 2).all() and curves["run_id"].nunique() == 75


def test_two_processes_writing_one_folder_lose_no_run(tmp_path):
    """Overlapping seeds (4..11 written by both): every run present exactly once afterwards."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=write_seeds, args=(str(tmp_path), seeds, name))
             for seeds, name in ((list(range(0, 12)), "a"), (list(range(4, 16))[::-1], "b"))]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    results.compact(tmp_path)
    runs, curves = results.read_results(tmp_path)
    per_run = runs.groupby("run_id").size()
    assert sorted(per_run.index) == sorted(f"run{s}" for s in range(16))
    assert (per_run == 2).all() and (runs.groupby("run_id")["error"].nunique() == 1).all()
    assert (curves.groupby("run_id").size() == 3).all() and curves["run_id"].nunique() == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.parquet", "runs.parquet"]


def test_compaction_locks_a_temp_file_where_the_folder_cannot_be_locked(tmp_path, monkeypatch):
    """NFS emulates flock with write locks, which a directory cannot take."""
    real, locked = results.fcntl.flock, []

    def flock(fd, op):
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(9, "Bad file descriptor")
        locked.append(fd)
        return real(fd, op)
    monkeypatch.setattr(results.fcntl, "flock", flock)
    results.append_run(tmp_path, *rows("run0", 0))
    assert results.compact(tmp_path) == 1 and locked
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.parquet", "runs.parquet"]


def test_runs_whose_curves_file_was_deleted_are_redone(tmp_path):
    """An unreadable curves.parquet says: delete it and rerun. The rerun must then redo the
    compacted runs (their curves are gone), not skip them and leave a folder validate refuses."""
    for seed in (0, 1):
        results.append_run(tmp_path, *rows(f"run{seed}", seed))
    results.compact(tmp_path)
    assert results.done_run_ids(tmp_path) == {"run0", "run1"}
    (tmp_path / results.CURVES_FILE).unlink()
    results.append_run(tmp_path, *rows("run2", 2))  # a run stored since, in its parts, keeps its curves
    assert results.done_run_ids(tmp_path) == {"run2"}


def silently_changed(path: Path, data: bytes, start: int, end: int) -> int:
    """An offset in [start, end) where one flipped bit still decodes, to other numbers, when
    page checksums are not verified (snappy passes most literal bytes through)."""
    clean = pq.read_table(path)
    for at in range(start, end):
        bad = bytearray(data)
        bad[at] ^= 0x10
        path.write_bytes(bytes(bad))
        try:
            if not pq.ParquetFile(path, page_checksum_verification=False).read().equals(clean):
                return at
        except Exception:  # noqa: BLE001 - this flip is caught anyway; try the next byte
            continue
    raise AssertionError("no silent flip found")


@pytest.mark.parametrize("where", ["value-data", "header-magic"])
def test_a_flipped_byte_is_caught_not_read_as_another_number(tmp_path, where):
    """Page checksums (written with every table) catch a byte flipped inside the data that
    would otherwise read as another number; the first four bytes are checked too (Parquet
    itself reads only the footer's)."""
    runs, curves = rows("run0", 0)
    curves = pd.concat([curves.assign(step=range(k * 3, k * 3 + 3), value=k * 0.37) for k in range(200)])
    path = tmp_path / results.CURVES_FILE
    results.write_atomic(results.to_table(curves, results.CURVE_SCHEMA, results.CURVES_FILE), path)
    column = pq.ParquetFile(path).metadata.row_group(0).column(results.CURVE_SCHEMA.names.index("value"))
    data = path.read_bytes()
    begin = column.data_page_offset
    at = 0 if where == "header-magic" else silently_changed(path, data, begin + 20,
                                                              begin + column.total_compressed_size)
    bad = bytearray(data)
    bad[at] ^= 0x10
    path.write_bytes(bytes(bad))
    with pytest.raises(ResultsError, match="curves.parquet: (not a readable Parquet file|corrupt content)"):
        results.read_table(path)


def short_read_flip(path: Path, data: bytes) -> int | None:
    """A byte whose flipped bit makes pyarrow decode fewer rows than the footer says, with no
    error (a damaged page of a string column's dictionary decodes to nothing)."""
    total = pq.ParquetFile(path).metadata.num_rows
    for at in range(4, len(data) - 8):
        for bit in (0x01, 0x10, 0x80):
            bad = bytearray(data)
            bad[at] ^= bit
            path.write_bytes(bytes(bad))
            try:
                read = sum(b.num_rows for b in pq.ParquetFile(path, page_checksum_verification=True)
                           .iter_batches(use_threads=False))
            except Exception:  # noqa: BLE001 - caught as corrupt anyway: try the next flip
                continue
            if read != total:
                return at
    return None


def test_a_flip_that_decodes_to_fewer_rows_is_corrupt_not_a_shorter_table(tmp_path):
    """One flipped bit made a runs table read as 0 rows without an error: `show` said "no
    runs", `score` dropped the entry, and a rerun would have redone (and replaced) every run."""
    runs, _ = rows("r0", 0)
    runs = pd.concat([runs.assign(run_id=f"r{k}", seed=k) for k in range(13)], ignore_index=True)
    path = tmp_path / results.RUNS_FILE
    results.write_atomic(results.to_table(runs, results.RUN_SCHEMA, results.RUNS_FILE), path)
    at = short_read_flip(path, path.read_bytes())
    assert at is not None, "no flip decodes to fewer rows on this pyarrow"
    with pytest.raises(ResultsError, match=r"runs.parquet: corrupt content \(the footer says 26 rows, "):
        results.read_table(path)


def test_a_timeout_from_a_second_writer_never_replaces_a_finished_run(tmp_path):
    """Two `ldbench run`s into one folder: the second, started before the first finished, timed
    out on the same runs and its parts replaced the finished ones (their rows and curves lost)."""
    def timed_out(run_id, seed):
        runs, curves = rows(run_id, seed, writer="b")
        return runs.assign(status="timeout", value=float("nan")), curves.iloc[:0]

    results.append_run(tmp_path, *rows("r0", 0))  # finished, in its part
    results.append_run(tmp_path, *rows("r1", 1))
    results.compact(tmp_path)
    results.append_run(tmp_path, *rows("r2", 2))  # finished after compaction: a part
    for rid, seed in (("r0", 0), ("r2", 2), ("r3", 3)):
        results.append_run(tmp_path, *timed_out(rid, seed))
    stored, curves = results.read_results(tmp_path)
    status = stored.drop_duplicates("run_id").set_index("run_id")["status"].to_dict()
    assert status == {"r0": "ok", "r1": "ok", "r2": "ok", "r3": "timeout"}
    assert sorted(set(curves["run_id"])) == ["r0", "r1", "r2"] and len(curves) == 9
    # A part an older ldbench wrote over a compacted finished run: the finished one is read.
    results.compact(tmp_path)
    results.write_atomic(results.to_table(timed_out("r1", 1)[0], results.RUN_SCHEMA, results.RUNS_FILE),
                         tmp_path / "parts" / "r1.runs.parquet")
    results.write_atomic(results.to_table(timed_out("r1", 1)[1], results.CURVE_SCHEMA,
                                          results.CURVES_FILE), tmp_path / "parts" / "r1.curves.parquet")
    stored, curves = results.read_results(tmp_path)
    assert set(stored.loc[stored["run_id"] == "r1", "status"]) == {"ok"}
    assert len(curves[curves["run_id"] == "r1"]) == 3


def test_a_folder_named_like_a_part_and_a_stray_curves_part(tmp_path):
    """A folder named like a part crashed `run` with a traceback (compaction unlinked it); a
    kill between compaction's two unlinks left a curves part that no later run removed."""
    results.append_run(tmp_path, *rows("r0", 0))
    results.append_run(tmp_path, *rows("r1", 1))
    (tmp_path / "parts" / "r1.runs.parquet").unlink()  # as compaction killed between its unlinks
    results.compact(tmp_path)
    assert not (tmp_path / "parts").exists()
    assert sorted(results.read_results(tmp_path)[0]["run_id"].unique()) == ["r0"]
    (tmp_path / "parts" / "deadbeef.runs.parquet").mkdir(parents=True)
    for call in (results.read_results, results.compact):
        with pytest.raises(ResultsError, match=r"parts/deadbeef.runs.parquet: not a plain file .*; "
                                               "delete it and rerun"):
            call(tmp_path)


def test_an_unreadable_table_says_to_restore_permission_not_to_delete_it(tmp_path, monkeypatch):
    results.append_run(tmp_path, *rows("r0", 0))
    results.compact(tmp_path)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(results, "open", denied, raising=False)  # read_arrow's open
    with pytest.raises(ResultsError, match=r"runs.parquet: cannot be read \(permission denied\); give "
                                           r"your user read permission \(chmod u\+r\)"):
        results.read_results(tmp_path)


def test_a_column_name_that_is_not_utf8_is_a_one_line_error(tmp_path):
    """A flipped bit in a column name in the footer raised UnicodeDecodeError with a traceback
    from `show`, `validate`, `score` and `run`."""
    runs, _ = rows("r0", 0)
    path = tmp_path / results.RUNS_FILE
    results.write_atomic(results.to_table(runs, results.RUN_SCHEMA, results.RUNS_FILE), path)
    data = bytearray(path.read_bytes())
    at = data.find(b"family")
    while at >= 0:  # the footer's schema, its path in the column chunk, the pandas metadata
        data[at] = 0xFF
        at = data.find(b"family", at + 1)
    path.write_bytes(bytes(data))
    with pytest.raises(ResultsError, match="runs.parquet: not a readable Parquet file"):
        results.read_table(path)


def test_a_table_that_contradicts_itself_is_refused_not_averaged(tmp_path):
    """`show` averaged a duplicated metric row as a third seed (an interval from two seeds),
    and a run id with an ok and an error row made `run` fail without naming the file."""
    runs, curves = rows("r0", 0)
    path = tmp_path / results.RUNS_FILE
    results.write_atomic(results.to_table(pd.concat([runs, runs.iloc[:1]]), results.RUN_SCHEMA,
                                          results.RUNS_FILE), path)
    results.write_atomic(results.to_table(curves, results.CURVE_SCHEMA, results.CURVES_FILE),
                         tmp_path / results.CURVES_FILE)
    with pytest.raises(ResultsError, match=r"runs.parquet: run r0 gives metric 'a' twice .*; keep one row"):
        results.read_results(tmp_path)
    runs.loc[1, "status"] = "error"
    results.write_atomic(results.to_table(runs, results.RUN_SCHEMA, results.RUNS_FILE), path)
    with pytest.raises(ResultsError, match=r"runs.parquet: run r0 has two statuses"):
        results.read_results(tmp_path)
