"""Reading results: wrong schema versions, wrong columns and torn files are clear errors."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from suite.results import ResultsError, read_results, read_table


def test_truncated_parquet_is_a_clear_error(tmp_path):
    (tmp_path / "runs.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ResultsError, match="not a readable Parquet file.*rerun"):
        read_results(tmp_path)


def test_wrong_schema_version_is_named(tmp_path):
    table = pa.table({"run_id": ["x"]}).replace_schema_metadata({b"ldbench.schema_version": b"99"})
    pq.write_table(table, tmp_path / "runs.parquet")
    with pytest.raises(ResultsError, match="schema version 99"):
        read_table(tmp_path / "runs.parquet")


def test_wrong_column_types_are_named(tmp_path):
    table = pa.table({"run_id": [1]}).replace_schema_metadata({b"ldbench.schema_version": b"1"})
    pq.write_table(table, tmp_path / "runs.parquet")
    with pytest.raises(ResultsError, match="columns .*run_id"):
        read_table(tmp_path / "runs.parquet")


def test_empty_folder_says_how_to_make_results(tmp_path):
    with pytest.raises(ResultsError, match="ldbench run"):
        read_results(tmp_path)
