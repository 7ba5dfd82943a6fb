"""validate_table: the typed-table contract, every problem collected, typed inputs, chunked = whole."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.conftest import BUNDLED, DATA
from fedtab.datasets import heart_schema
from fedtab.errors import DataValidationError
from fedtab.inference import infer_schema
from fedtab.schema import TableSchema
from fedtab.validation import validate_chunks, validate_table

CONTRACT = {"numerical/int": "Int64", "numerical/float": "float64", "categorical": "object",
            "boolean": "boolean", "datetime": "datetime64[ns]"}


def raw(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def test_heart_is_typed_per_the_contract():
    schema = heart_schema()
    typed = validate_table(raw(BUNDLED / "heart_switzerland.csv"), schema, source="switzerland")
    for c in schema.columns:
        key = c.type + (f"/{c.subtype}" if c.subtype else "")
        assert str(typed[c.name].dtype) == CONTRACT[key], c.name
    assert typed["chol"].isna().all()  # chol == 0 is 'not measured' at every Swiss row
    assert all(isinstance(v, str) for v in typed["cp"].dropna())


def test_typing_keeps_the_values():
    df = raw(BUNDLED / "heart_cleveland.csv")
    typed = validate_table(df, heart_schema(), source="cleveland")
    assert typed["age"].astype(str).tolist() == df["age"].tolist()
    assert np.allclose(typed["oldpeak"], df["oldpeak"].astype(float))
    assert typed["sex"].tolist() == (df["sex"] == "1").tolist()
    assert typed["ca"].fillna("?").tolist() == df["ca"].tolist()


def test_problems_name_column_rows_examples_and_expectation():
    df = pd.DataFrame({"age": ["50", "200", "x", "300"], "cp": ["1", "5", "5", "2"]})
    schema = TableSchema.from_dict({"columns": [
        {"name": "age", "type": "numerical", "subtype": "int", "lower": 0, "upper": 120},
        {"name": "cp", "type": "categorical", "categories": ["1", "2", "3", "4"]}]})
    with pytest.raises(DataValidationError) as info:
        validate_table(df, schema, source="site-a.csv")
    problems = {(p.column, p.message.split(",")[0]): p for p in info.value.problems}
    assert len(problems) == 3
    bounds = problems[("age", "values outside the declared bounds")]
    assert (bounds.rows, bounds.examples, bounds.expected) == (2, ("200", "300"), "values in [0, 120]")
    assert "first at data row 2" in bounds.message
    assert problems[("cp", "values outside the declared categories")].rows == 2
    assert str(info.value).startswith("site-a.csv: 3 problem(s) found")


def test_duplicate_column_names_in_a_frame():
    df = pd.DataFrame([["1", "2"]], columns=["a", "a"])
    schema = TableSchema.from_dict({"columns": [{"name": "a", "type": "categorical"}]})
    with pytest.raises(DataValidationError, match="column 'a': duplicate column name"):
        validate_table(df, schema, source="frame")


def test_empty_table_is_a_problem():
    schema = TableSchema.from_dict({"columns": [{"name": "a", "type": "categorical"}]})
    with pytest.raises(DataValidationError, match="table: the table has no rows"):
        validate_table(pd.DataFrame({"a": pd.Series([], dtype=object)}), schema, source="frame")


def test_typed_input_is_checked_too():
    schema = TableSchema.from_dict({"columns": [
        {"name": "n", "type": "numerical", "subtype": "int", "nullable": False},
        {"name": "f", "type": "boolean"}, {"name": "x", "type": "numerical", "subtype": "float", "upper": 1}]})
    good = pd.DataFrame({"n": [1.0, 2.0], "f": [1, 0], "x": [0.5, np.nan]})
    typed = validate_table(good, schema, source="frame")
    assert typed["n"].tolist() == [1, 2] and typed["f"].tolist() == [True, False] and typed["x"].isna()[1]
    bad = pd.DataFrame({"n": [1.5, np.nan], "f": [1, 2], "x": [np.inf, 3.0]})
    with pytest.raises(DataValidationError) as info:
        validate_table(bad, schema, source="frame")
    assert {(p.column, p.message.split(",")[0]) for p in info.value.problems} == {
        ("n", "non-integer values in an integer column"),
        ("n", "missing values (empty"), ("f", "values that are not booleans"),
        ("x", "infinite values"), ("x", "values outside the declared bounds")}


def test_chunked_validation_equals_whole_and_counts_rows_across_chunks():
    df = raw(DATA / "diabetes_1500.csv.gz")
    schema = infer_schema(df)
    chunks = (df.iloc[i:i + 300] for i in range(0, len(df), 300))
    pd.testing.assert_frame_equal(validate_chunks(chunks, schema, source="d"), validate_table(df, schema, source="d"))
    strict = schema.replace_column(schema["race"].__class__(name="race", type="categorical", nullable=False,
                                                            missing_markers=("?",)))
    with pytest.raises(DataValidationError) as info:
        validate_chunks((df.iloc[i:i + 300] for i in range(0, len(df), 300)), strict, source="d")
    [problem] = info.value.problems
    assert problem.rows == (df["race"] == "?").sum()
    assert f"first at data row {int(np.flatnonzero(df['race'] == '?')[0]) + 1}" in problem.message
