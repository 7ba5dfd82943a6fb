"""Schema JSON files, SDV metadata interop, and the bundled heart schema and sites."""

from __future__ import annotations

import json
import warnings

import pandas as pd
import pytest

from tests.conftest import BUNDLED
from fedtab.datasets import HEART_SITES, heart_schema, load_heart_sites
from fedtab.errors import SchemaError
from fedtab.schema import TableSchema
from fedtab.sdv_metadata import schema_from_sdv, schema_to_sdv


def test_schema_save_load_round_trip(tmp_path):
    schema = heart_schema()
    path = schema.save(tmp_path / "s.json")
    assert TableSchema.load(path) == schema and TableSchema.load(path).name == "heart_disease_uci"


def test_schema_file_reports_every_problem_at_once(tmp_path):
    bad = {"columns": [{"name": "a", "type": "string"}, {"name": "b", "type": "numerical"},
                       {"name": "c", "type": "numerical", "subtype": "int", "lower": 5, "upper": 1}]}
    with pytest.raises(SchemaError) as info:
        TableSchema.from_dict(bad, source="s.json")
    text = str(info.value)
    assert "3 problem(s)" in text and "'string'" in text and "subtype" in text and "'lower' (5)" in text


def test_heart_schema_is_hand_checked():
    s = heart_schema()
    assert s.names == ["age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalach", "exang",
                       "oldpeak", "slope", "ca", "thal", "num"]
    assert (s["age"].lower, s["age"].upper) == (0, 120)
    assert all(c.lower is not None and c.upper is not None for c in s.of_type("numerical"))
    assert s["thal"].categories == ("3", "6", "7") and s["cp"].categories == ("1", "2", "3", "4")
    assert "0" in s["chol"].missing_markers and all("?" in c.missing_markers for c in s.columns)


def test_load_heart_sites_gives_four_typed_tables():
    sites = load_heart_sites()
    assert {k: len(v) for k, v in sites.items()} == {"cleveland": 303, "hungary": 294, "switzerland": 123,
                                                     "va_long_beach": 200}
    assert all("site" not in df.columns and str(df["age"].dtype) == "Int64" for df in sites.values())
    assert sites["switzerland"]["chol"].isna().all() and sites["va_long_beach"]["chol"].isna().sum() == 56
    positive = {k: float((v["num"] != "0").mean()) for k, v in sites.items()}
    assert positive["switzerland"] > 0.9 > positive["cleveland"]  # the real non-IID split


def test_bundled_sites_are_the_shared_table_split_by_site():
    pieces = [pd.read_csv(BUNDLED / f"heart_{s}.csv", dtype=str, keep_default_na=False) for s in HEART_SITES]
    assert sum(map(len, pieces)) == 920 and all(list(p.columns) == heart_schema().names for p in pieces)


def test_sdv_single_and_multi_table_import():
    single = {"METADATA_SPEC_VERSION": "SINGLE_TABLE_V1", "primary_key": "id", "columns": {
        "id": {"sdtype": "id"}, "age": {"sdtype": "numerical", "computer_representation": "Int64"},
        "bmi": {"sdtype": "numerical", "decimal_places": 2}, "smoker": {"sdtype": "boolean"},
        "seen": {"sdtype": "datetime", "datetime_format": "%Y-%m-%d"}, "grade": {"sdtype": "ordinal"},
        "mail": {"sdtype": "email", "pii": True}}}
    s = schema_from_sdv(single)
    got = {c.name: (c.type, c.subtype, c.precision, c.datetime_format) for c in s.columns}
    assert got == {"id": ("id", None, None, None), "age": ("numerical", "int", None, None),
                   "bmi": ("numerical", "float", 2, None), "smoker": ("boolean", None, None, None),
                   "seen": ("datetime", None, None, "%Y-%m-%d"), "grade": ("categorical", None, None, None),
                   "mail": ("id", None, None, None)}
    multi = {"METADATA_SPEC_VERSION": "V1", "tables": {"a": {"columns": {"x": {"sdtype": "categorical"}}},
                                                       "b": {"columns": {"y": {"sdtype": "numerical"}}}}}
    assert schema_from_sdv(multi, table="b").names == ["y"] and schema_from_sdv(multi, table="b").name == "b"
    with pytest.raises(SchemaError, match=r"2 tables \['a', 'b'\]"):
        schema_from_sdv(multi)


def test_sdv_export_is_accepted_by_sdv_and_imports_back():
    from sdv.metadata import Metadata

    exported = schema_to_sdv(heart_schema())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Metadata.load_from_dict(exported).validate()
    back = schema_from_sdv(json.loads(json.dumps(exported)))
    assert [(c.name, c.type, c.subtype) for c in back.columns] == \
        [(c.name, c.type, c.subtype) for c in heart_schema().columns]


def test_sdv_detected_ranges_are_not_imported_as_declared_bounds():
    meta = {"columns": {"age": {"sdtype": "numerical", "range_min": 29, "range_max": 77, "decimal_places": 0},
                        "cp": {"sdtype": "ordinal", "range_values": [1, 2, 3, 4]}}}
    s = schema_from_sdv(meta)
    assert (s["age"].subtype, s["age"].lower, s["age"].upper, s["cp"].categories) == ("int", None, None, None)
