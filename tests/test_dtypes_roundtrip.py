"""Sampled tables keep the input's representation (issue 21, part 1): the schema records each column's
dtype as the input held it (``ColumnSpec.dtype``) and ``sample`` returns it, from DataFrames, CSV,
Parquet and SQL (SQLite here; PostgreSQL in test_connectors_roundtrip's server tests)."""

from __future__ import annotations

import sqlite3

import numpy as np
import pandas as pd
import pytest

import connectors
import fedtab
from fedtab.inference import infer_schema
from fedtab.schema import ColumnSpec, TableSchema
from fedtab.transform.values import as_input_dtype

NON_DP = fedtab.SitePolicy(allow_non_dp=True)


def _table(n: int = 240, seed: int = 0) -> pd.DataFrame:
    """Every kind of column a user hands in."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "sex": rng.integers(1, 3, n),                                         # integer-coded category
        "outcome": rng.integers(0, 2, n),                                     # 0/1 target
        "age": rng.integers(20, 80, n),                                       # integers
        "weight": rng.normal(70, 10, n).round(1),                             # reals
        "city": rng.choice(["north", "south", "east"], n),                    # text
        "smoker": rng.random(n) > 0.7,                                        # True/False
        "visits": pd.array(np.where(rng.random(n) < 0.15, None, rng.integers(0, 9, n)), dtype="Int64"),  # nullable
        "grade": pd.Categorical(rng.choice(["a", "b", "c"], n)),              # pandas category
        "when": pd.to_datetime("2020-01-01") + pd.to_timedelta(rng.integers(0, 700, n), unit="D"),
    })


def _sites(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    half = len(df) // 2
    return {"north": df.iloc[:half].reset_index(drop=True), "south": df.iloc[half:].reset_index(drop=True)}


def _fit_sample(sites, **kw) -> pd.DataFrame:
    synth = fedtab.FederatedSynthesizer(site_policy=NON_DP, seed=0, **kw).fit(sites)
    return synth.sample(60, seed=1)


def test_dataframes_come_back_in_their_own_dtypes():
    df = _table()
    out = _fit_sample(_sites(df))
    assert out.dtypes.astype(str).to_dict() == df.dtypes.astype(str).to_dict()
    assert set(out["sex"]) <= {1, 2} and set(out["outcome"]) <= {0, 1}
    assert set(out["city"]) <= {"north", "south", "east"} and all(isinstance(v, str) for v in out["city"])
    assert out["visits"].dtype == "Int64" and list(out["grade"].cat.categories) == ["a", "b", "c"]


def test_under_dp_the_declared_schema_carries_the_dtypes():
    """Sites never infer for the coordinator under DP: the dtypes come from the declared schema (what
    `fedtab schema infer` / `infer_schema` write), here with public bounds added."""
    df = _table()
    inferred = infer_schema(df)
    cols = [c if c.type != "numerical" else ColumnSpec(**{**c.__dict__, "lower": 0.0, "upper": 200.0})
            for c in inferred.columns]
    cols = [c if c.type != "datetime" else ColumnSpec(**{**c.__dict__, "lower": 18262.0, "upper": 19000.0})
            for c in cols]
    cols = [ColumnSpec(**{**c.__dict__, "categories": tuple(sorted(df[c.name].astype(str).unique()))})
            if c.type == "categorical" else c for c in cols]
    schema = TableSchema(columns=tuple(cols))
    out = fedtab.FederatedSynthesizer(epsilon=2.0, schema=schema, seed=0).fit(_sites(df)).sample(60, seed=1)
    assert out["sex"].dtype == "int64" and out["outcome"].dtype == "int64" and out["smoker"].dtype == "bool"
    assert out["city"].dtype == object and out["grade"].dtype == "category" and out["age"].dtype == "int64"


def test_csv_sources_keep_the_form_of_their_text(tmp_path):
    """A CSV holds text: 1/2 codes come back as integers (written as 1/2), a 0/1 column as 0/1 (not
    True/False), true/false as booleans, a column of integers with gaps as Int64."""
    df = _table().drop(columns=["grade"])
    paths = {}
    for name, frame in _sites(df).items():
        paths[name] = tmp_path / f"{name}.csv"
        frame.to_csv(paths[name], index=False)
    scan = connectors.scan_table(paths["north"])
    dtypes = {c.name: c.dtype for c in scan.schema.columns}
    assert dtypes == {"sex": "int64", "outcome": "int64", "age": "int64", "weight": "float64", "city": "object",
                      "smoker": "bool", "visits": "Int64", "when": "datetime64[ns]"}
    out = _fit_sample({k: str(v) for k, v in paths.items()})
    assert out["sex"].dtype == "int64" and out["outcome"].dtype == "int64" and out["smoker"].dtype == "bool"
    assert out["visits"].dtype == "Int64" and out["weight"].dtype == "float64" and out["city"].dtype == object
    written = tmp_path / "out.csv"
    connectors.write_table(out, written)
    text = pd.read_csv(written, dtype=str, keep_default_na=False)
    assert set(text["outcome"]) <= {"0", "1"} and set(text["sex"]) <= {"1", "2"}


def test_parquet_sources_keep_their_dtypes(tmp_path):
    df = _table()
    paths = {}
    for name, frame in _sites(df).items():
        paths[name] = tmp_path / f"{name}.parquet"
        frame.to_parquet(paths[name])
    out = _fit_sample({k: str(v) for k, v in paths.items()})
    assert out.dtypes.astype(str).to_dict() == pd.read_parquet(paths["north"]).dtypes.astype(str).to_dict()


def test_sql_sources_keep_the_dtypes_pandas_reads(tmp_path):
    df = _table().drop(columns=["grade", "when"])
    sites = {}
    for name, frame in _sites(df).items():
        db = tmp_path / f"{name}.db"
        with sqlite3.connect(db) as con:
            frame.to_sql("patients", con, index=False)
        sites[name] = {"source": f"sqlite:///{db}", "table": "patients"}
    out = _fit_sample(sites)
    with sqlite3.connect(tmp_path / "north.db") as con:
        back = pd.read_sql("select * from patients", con)
    for col in ("sex", "outcome", "age", "weight", "city"):
        assert str(out[col].dtype) == str(back[col].dtype), col


@pytest.mark.parametrize("dtype, spec, values, expected", [
    ("int64", ColumnSpec("x", "categorical"), ["1", None], "Int64"),            # a gap: the nullable form
    ("int64", ColumnSpec("x", "categorical"), ["1", "other"], "object"),        # no integer form: as text
    ("bool", ColumnSpec("x", "boolean"), [True, None], "boolean"),
    ("uint8", ColumnSpec("x", "numerical", "int"), [1, None], "UInt8"),
    ("float64", ColumnSpec("x", "numerical", "int"), [1, 2], "float64"),
])
def test_a_value_without_the_input_form_gets_the_nearest_form_that_holds_it(dtype, spec, values, expected):
    series = pd.Series(pd.array(values, dtype="boolean")) if spec.type == "boolean" else (
        pd.Series(pd.array(values, dtype="Int64")) if spec.type == "numerical" else pd.Series(values, dtype=object))
    spec = ColumnSpec(**{**spec.__dict__, "dtype": dtype})
    assert str(as_input_dtype(series, spec).dtype) == expected


def test_a_schema_with_an_unknown_dtype_is_refused_with_the_fix():
    with pytest.raises(fedtab.errors.SchemaError, match="'dtype' 'complex128' is not one fedtab returns"):
        TableSchema.from_dict({"columns": [{"name": "x", "type": "categorical", "dtype": "complex128"}]})
