"""Reading results: wrong schema versions, wrong columns and torn files are clear errors."""

import pandas as pd
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


def curves_file(path, **columns):
    """A curves.parquet with the schema's columns, any of them replaced by `columns`."""
    from suite.results import CURVE_SCHEMA, CURVES_FILE, META_TABLE, META_VERSION, SCHEMA_VERSION
    data = {"run_id": ["r0", "r1", "r2"], "task": ["a", "b", None], "entry": ["e"] * 3,
            "seed": [0, 1, 2], "step": [0, 10, 20], "metric": ["loss", "loss", "acc"],
            "value": [1.0, float("nan"), 0.5]}
    data.update(columns)
    types = {name: pa.array(values).type if name in columns else CURVE_SCHEMA.field(name).type
             for name, values in data.items()}
    schema = pa.schema(list(types.items()))
    table = pa.table(data, schema=schema).replace_schema_metadata(
        {META_VERSION: str(SCHEMA_VERSION).encode(), META_TABLE: CURVES_FILE.encode()})
    pq.write_table(table, path / CURVES_FILE, write_page_checksum=True)
    return path / CURVES_FILE


def test_reading_some_columns_dictionary_encoded_gives_the_same_values(tmp_path):
    from suite.results import read_arrow
    path = curves_file(tmp_path)
    whole = read_arrow(path)
    part = read_arrow(path, columns=["task", "step", "metric", "value"], dictionary=("task", "metric"))
    assert part.schema.names == ["task", "step", "metric", "value"]
    assert pa.types.is_dictionary(part.schema.field("task").type)
    for name in part.schema.names:
        pd.testing.assert_series_equal(part.column(name).cast(whole.schema.field(name).type).to_pandas(),
                                       whole.column(name).to_pandas(), check_names=False)


def test_reading_some_columns_still_checks_the_whole_schema(tmp_path):
    """A column left unread with the wrong type, or a read one, is refused as in a whole read."""
    from suite.results import read_arrow
    for bad in ({"entry": [1, 2, 3]}, {"task": [1, 2, 3]}):
        path = curves_file(tmp_path, **bad)
        with pytest.raises(ResultsError, match=f"columns \\['{next(iter(bad))}'\\]"):
            read_arrow(path, columns=["task", "step", "metric", "value"], dictionary=("task", "metric"))


def test_a_column_given_twice_is_refused_in_one_line(tmp_path):
    """A table keyed by name would take one of the two; validate, score and build read through here."""
    from suite.results import read_arrow
    path = curves_file(tmp_path)
    table = pq.read_table(path)
    twice = table.append_column(pa.field("value", pa.float64()), table["value"]).replace_schema_metadata(
        table.schema.metadata)
    pq.write_table(twice, path)
    for columns in (None, ["task", "step", "metric", "value"]):
        with pytest.raises(ResultsError, match=r"columns \['value'\] appear more than once"):
            read_arrow(path, columns=columns)
