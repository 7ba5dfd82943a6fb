"""read -> write -> read gives an identical typed DataFrame (dtypes included), for every backend; writes are atomic."""

from __future__ import annotations

import sqlite3

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from tests.conftest import BUNDLED, DATA
from connectors import read_table, scan_table, write_table
from fedtab.datasets import heart_schema
from fedtab.errors import SourceError
from fedtab.schema import TableSchema
from fedtab.validation import validate_table

MIXED_SCHEMA = TableSchema.from_dict({"columns": [
    {"name": "patient_id", "type": "id"},
    {"name": "code", "type": "id"},
    {"name": "n", "type": "numerical", "subtype": "int"},
    {"name": "big", "type": "numerical", "subtype": "int"},
    {"name": "x", "type": "numerical", "subtype": "float", "precision": 6},
    {"name": "flag", "type": "boolean"},
    {"name": "when", "type": "datetime", "datetime_format": "%Y-%m-%d %H:%M:%S"},
    {"name": "label", "type": "categorical", "missing_markers": ["?"]},
]})


def mixed_frame() -> pd.DataFrame:
    """Every contract dtype, a missing value in each column, Adult-style leading spaces, awkward floats."""
    raw = pd.DataFrame({
        "patient_id": ["7", "8", "9", ""],
        "code": ["A-1", "B-2", "", "C-3"],
        "n": ["1", "", "-3", "4"],
        "big": ["9007199254740993", "2", "", "-1"],
        "x": ["0.1", "1e-06", "", "-123456.654321"],
        "flag": ["true", "false", "", "1"],
        "when": ["2020-01-31 12:00:00", "", "1999-12-31 23:59:59", "2021-06-01 00:00:00"],
        "label": [" State-gov", "?", "None", "é, \"quoted\""],
    })
    return validate_table(raw, MIXED_SCHEMA, source="mixed")


def _dest(kind, tmp_path, request):
    if kind == "postgresql":
        return request.getfixturevalue("pg_url"), request.getfixturevalue("pg_table")
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'site.db'}", "t"
    return tmp_path / f"table.{kind}", None


KINDS = ["csv", "csv.gz", "parquet", "sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.mark.parametrize("kind", KINDS)
def test_mixed_round_trip_is_identical(kind, tmp_path, request):
    df = mixed_frame()
    dest, table = _dest(kind, tmp_path, request)
    write_table(df, dest, table=table)
    back = read_table(dest, table=table, schema=MIXED_SCHEMA)
    pd.testing.assert_frame_equal(back, df, check_exact=True)
    assert back["label"].tolist()[0] == " State-gov" and back["big"].iloc[0] == 9007199254740993


@pytest.mark.parametrize("kind", KINDS)
def test_bundled_heart_read_write_read(kind, tmp_path, request):
    schema = heart_schema()
    first = read_table(BUNDLED / "heart_va_long_beach.csv", schema=schema)
    dest, table = _dest(kind, tmp_path, request)
    write_table(first, dest, table=table)
    again = read_table(dest, table=table, schema=schema)
    pd.testing.assert_frame_equal(again, first, check_exact=True)
    assert first["chol"].isna().sum() == 56  # 49 zeros ('not measured') + 7 '?'


def test_diabetes_slice_round_trip_through_parquet_with_inferred_schema(tmp_path):
    schema = scan_table(DATA / "diabetes_1500.csv.gz").schema
    first = read_table(DATA / "diabetes_1500.csv.gz", schema=schema)
    write_table(first, tmp_path / "d.parquet")
    pd.testing.assert_frame_equal(read_table(tmp_path / "d.parquet", schema=schema), first)


def test_chunked_read_equals_whole_read(tmp_path, monkeypatch):
    import connectors.files

    whole = read_table(DATA / "adult_1500.csv")
    monkeypatch.setattr(connectors.files, "BLOCK_SIZE", 20_000)  # ~9 blocks
    pd.testing.assert_frame_equal(read_table(DATA / "adult_1500.csv"), whole)


def test_file_write_refuses_to_overwrite_unless_replace(tmp_path):
    dest = tmp_path / "t.csv"
    dest.write_text("keep me\n")
    with pytest.raises(SourceError, match="already exists"):
        write_table(mixed_frame(), dest)
    assert dest.read_text() == "keep me\n"
    write_table(mixed_frame(), dest, if_exists="replace")
    assert dest.read_text().startswith("patient_id,code")


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_failed_file_write_leaves_nothing(tmp_path, monkeypatch, suffix):
    def broken(self, path, *a, **k):
        open(path, "w").write("partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv" if suffix == "csv" else "to_parquet", broken)
    with pytest.raises(SourceError, match="nothing was written"):
        write_table(mixed_frame(), tmp_path / f"out.{suffix}")
    assert list(tmp_path.iterdir()) == []


def _sql_state(url, table):
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        names = sa.inspect(conn).get_table_names()
        rows = conn.execute(sa.text(f'select count(*) from "{table}"')).scalar_one() if table in names else None
    engine.dispose()
    return names, rows


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_failed_sql_write_rolls_back_and_keeps_old_table(kind, tmp_path, request, monkeypatch):
    url, table = _dest(kind, tmp_path, request)
    write_table(mixed_frame(), url, table=table)
    original_to_sql = pd.DataFrame.to_sql

    def fails_after_insert(self, name, con, **kw):
        original_to_sql(self, name, con, **kw)  # the temp table is complete...
        raise sa.exc.OperationalError("INSERT", {}, Exception("disk full"))  # ...then the write fails

    monkeypatch.setattr(pd.DataFrame, "to_sql", fails_after_insert)
    bigger = pd.concat([mixed_frame()] * 3, ignore_index=True)
    with pytest.raises(SourceError, match="rolled back"):
        write_table(bigger, url, table=table, if_exists="replace")
    names, rows = _sql_state(url, table)
    assert rows == 4 and not [n for n in names if n.startswith("_fedtab_tmp")]


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_sql_replace_swaps_table_and_fail_refuses(kind, tmp_path, request):
    url, table = _dest(kind, tmp_path, request)
    write_table(mixed_frame(), url, table=table)
    with pytest.raises(SourceError, match="already exists"):
        write_table(mixed_frame().head(1), url, table=table)
    write_table(mixed_frame().head(2), url, table=table, if_exists="replace")
    names, rows = _sql_state(url, table)
    assert rows == 2 and not [n for n in names if n.startswith("_fedtab_tmp")]


def test_sql_read_without_schema_infers_types_like_csv(tmp_path):
    db = tmp_path / "h.db"
    raw = pd.read_csv(BUNDLED / "heart_cleveland.csv", dtype=str, keep_default_na=False)
    csv_typed = read_table(BUNDLED / "heart_cleveland.csv")
    numeric = raw.replace("?", None).astype({"age": int, "oldpeak": float, "chol": int, "ca": float})
    with sqlite3.connect(db) as con:
        numeric.to_sql("heart", con, index=False)
    from_sql = read_table(f"sqlite:///{db}", table="heart")
    assert dict(from_sql.dtypes) == dict(csv_typed.dtypes)
    assert from_sql["ca"].dropna().isin(["0", "1", "2", "3"]).all()  # 0.0 from SQL reads as code '0'
    assert np.allclose(from_sql["oldpeak"], csv_typed["oldpeak"])
