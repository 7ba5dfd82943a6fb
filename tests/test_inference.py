"""Schema inference on the shipped slices of real tables, and the rules on small frames."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest

from tests.conftest import BUNDLED, DATA
from fedtab.datasets import HEART_SITES
from fedtab.errors import SchemaError
from fedtab.inference import TableProfile, infer_schema
from fedtab.validation import validate_table


def raw(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def types(schema) -> dict:
    return {c.name: c.type + (f"/{c.subtype}" if c.subtype else "") for c in schema.columns}


def test_adult_has_six_numerical_and_nine_categorical_columns():
    df = raw(DATA / "adult_1500.csv")
    schema = infer_schema(df)
    numerical = {c.name for c in schema.of_type("numerical")}
    assert numerical == {"age", "fnlwgt", "education-num", "capital-gain", "capital-loss", "hours-per-week"}
    assert len(schema.of_type("categorical")) == 9 and len(schema) == 15
    typed = validate_table(df, schema, source="adult")
    assert typed["workclass"].isna().sum() == (df["workclass"] == " ?").sum() > 0  # ' ?' matches marker '?'
    assert typed["workclass"].dropna().str.startswith(" ").all()  # UCI's leading spaces are kept


def heart_all_sites() -> pd.DataFrame:
    return pd.concat([raw(BUNDLED / f"heart_{s}.csv").assign(site=s) for s in HEART_SITES], ignore_index=True)


def test_heart_disease_types_and_question_mark_missing():
    df = heart_all_sites()
    schema = infer_schema(df)
    t = types(schema)
    assert {c: t[c] for c in ("age", "trestbps", "chol", "thalach")} == dict.fromkeys(
        ("age", "trestbps", "chol", "thalach"), "numerical/int")
    assert t["oldpeak"] == "numerical/float" and schema["oldpeak"].precision == 1
    assert all(t[c] == "categorical" for c in ("cp", "restecg", "slope", "ca", "thal", "num", "site"))
    assert all(t[c] == "boolean" for c in ("sex", "fbs", "exang"))
    typed = validate_table(df, schema, source="heart")
    assert typed["ca"].isna().sum() == 611 and typed["thal"].isna().sum() == 486  # DATA.md's '?' counts


def test_bank_marketing_with_unknown_marker():
    df = raw(DATA / "bank_marketing_1500.csv")
    with_marker = infer_schema(df, missing_markers=("unknown",))
    typed = validate_table(df, with_marker, source="bank")
    assert typed["job"].isna().sum() == (df["job"] == "unknown").sum() > 0
    assert "unknown" not in set(typed["poutcome"].dropna())
    assert with_marker["balance"].type == "numerical" and with_marker["default"].type == "categorical"  # yes/no
    plain = validate_table(df, infer_schema(df, missing_markers=()), source="bank")
    assert plain["poutcome"].isna().sum() == 0 and "unknown" in set(plain["poutcome"])


def test_diabetes_identifiers_and_codes():
    df = raw(DATA / "diabetes_1500.csv.gz")
    schema = infer_schema(df)
    assert schema["encounter_id"].type == "id" and df["encounter_id"].is_unique
    assert schema["patient_nbr"].type == "id" and not df["patient_nbr"].is_unique  # repeats, still an id
    assert all(schema[c].type == "categorical" for c in ("admission_type_id", "admission_source_id", "diag_1"))
    typed = validate_table(df, schema, source="diabetes")
    assert "None" in set(typed["max_glu_serum"])  # a real level, not missing
    assert typed["race"].isna().sum() == (df["race"] == "?").sum()


def test_no_bounds_or_domains_are_inferred():
    schema = infer_schema(raw(DATA / "diabetes_1500.csv.gz"))
    assert all(c.lower is None and c.upper is None and c.categories is None for c in schema.columns)
    assert all(c.nullable for c in schema.columns)


def test_declared_settings_win():
    df = raw(BUNDLED / "heart_cleveland.csv")
    schema = infer_schema(df, declared={"num": {"type": "numerical"}, "age": {"lower": 0, "upper": 120},
                                        "sex": {"type": "categorical", "categories": ["0", "1"]}}, name="h")
    assert (schema["num"].type, schema["num"].subtype) == ("numerical", "int")
    assert (schema["age"].type, schema["age"].lower, schema["age"].upper) == ("numerical", 0.0, 120.0)
    assert schema["sex"].categories == ("0", "1") and schema.name == "h"
    from fedtab.datasets import heart_schema

    # Every declared field wins; the input's dtype (not declared here) is recorded from the frame (text).
    inferred = infer_schema(df, declared=heart_schema()).columns
    assert {c.dtype for c in inferred} == {"object"}
    assert tuple(replace(c, dtype=None) for c in inferred) == heart_schema().columns


def test_declared_unknown_column_is_an_error():
    with pytest.raises(SchemaError, match="'nope'"):
        infer_schema(pd.DataFrame({"a": ["1"]}), declared={"nope": {"type": "id"}})


@pytest.mark.parametrize("values, expected", [
    (["0", "1", "1", "0"], "boolean"),
    (["True", "false", "TRUE", ""], "boolean"),
    (["yes", "no", "yes", "no"], "categorical"),
    (["1", "2", "3", "4", "5"], "categorical"),
    (["1", "2", "3", "4", "5", "6"], "numerical/int"),
    (["1.5", "2", "-3.25", "1e3"], "numerical/float"),
    (["2020-01-31", "1999-12-01", "?"], "datetime"),
    ([f"user{i}" for i in range(30)], "id"),
    (["a", "b", "a", "c"], "categorical"),
    (["?", "", " ? "], "categorical"),
])
def test_type_rules(values, expected):
    schema = infer_schema(pd.DataFrame({"col": values}))
    assert types(schema)["col"] == expected


def test_precision_is_capped_and_datetime_format_recorded():
    s = infer_schema(pd.DataFrame({"x": ["0.1234567891", "2.5"], "d": ["2020-01-31 10:00:00", "2021-02-01 00:00:00"]}))
    assert s["x"].precision == 6 and s["d"].datetime_format == "%Y-%m-%d %H:%M:%S"


def test_id_named_integers_unique_per_row_are_ids_and_typed_input_works():
    df = pd.DataFrame({"id": pd.array(range(10, 40), dtype="Int64"),
                       "score": [float(i) for i in range(30)], "flag": [True, False] * 15})
    assert types(infer_schema(df)) == {"id": "id", "score": "numerical/int", "flag": "boolean"}


def test_chunked_profile_gives_the_same_schema_as_one_frame():
    df = raw(DATA / "diabetes_1500.csv.gz")
    profile = TableProfile(missing_markers=("?",))
    for start in range(0, len(df), 400):
        profile.update(df.iloc[start:start + 400])
    assert profile.schema() == infer_schema(df) and profile.rows == 1500
