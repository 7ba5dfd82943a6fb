"""Malformed inputs, each checked through the API (error class, message) and the CLI (exit code, no traceback).

Each case builds its files in a temp folder and returns how to trigger it both ways. The exit codes
are the ones documented in the README (and ``fedtab.errors``).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from connectors import read_table
from fedtab.errors import ConfigError, DataValidationError, SchemaError, SourceError
from fedtab.schema import TableSchema
from fedtab.sdv_metadata import schema_from_sdv

DOCUMENTED_EXIT = {ConfigError: 2, SchemaError: 3, DataValidationError: 4, SourceError: 5}


@dataclass
class Case:
    api: Callable[[], object]
    cli: list
    error: type
    says: list  # substrings the message must contain (file, column, value, what was expected)


def _write(tmp: Path, name: str, content) -> Path:
    p = tmp / name
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content, encoding="utf-8")
    return p


def _schema(tmp: Path, columns: list[dict], name="schema.json") -> Path:
    return _write(tmp, name, json.dumps({"columns": columns}))


def source_case(tmp, name, content, says, error=SourceError):
    p = _write(tmp, name, content) if content is not None else tmp / name
    return Case(lambda: read_table(p), ["inspect", p], error, [p.name, *says])


def data_case(tmp, text, columns, says):
    p = _write(tmp, "data.csv", text)
    s = _schema(tmp, columns)
    return Case(lambda: read_table(p, schema=s), ["schema", "check", p, "--schema", s], DataValidationError,
                ["data.csv", *says])


def schema_case(tmp, schema_text, says):
    data = _write(tmp, "data.csv", "a\n1\n")
    s = _write(tmp, "bad_schema.json", schema_text)
    return Case(lambda: TableSchema.load(s), ["schema", "check", data, "--schema", s], SchemaError,
                ["bad_schema.json", *says])


def _sqlite(tmp) -> str:
    db = tmp / "site.db"
    with sqlite3.connect(db) as con:
        con.execute("create table heart (age integer)")
        con.execute("insert into heart values (63)")
    return f"sqlite:///{db}"


INT_A = [{"name": "a", "type": "numerical", "subtype": "int", "nullable": False}]

CASES: dict[str, Callable[[Path], Case]] = {
    "empty_file": lambda t: source_case(t, "d.csv", "", ["empty"]),
    "header_only": lambda t: source_case(t, "d.csv", "a,b\n", ["header but no data rows"]),
    "duplicate_column_names": lambda t: source_case(t, "d.csv", "a,b,a\n1,2,3\n", ["duplicate", "'a'"]),
    "ragged_row_too_long": lambda t: source_case(t, "d.csv", "a,b\n1,2\n3,4,5\n", ["line 3 has 3 fields"]),
    "ragged_row_too_short": lambda t: source_case(t, "d.csv", "a,b,c\n1,2,3\n4,5\n6,7,8\n", ["line 3 has 2 fields"]),
    "non_utf8": lambda t: source_case(t, "d.csv", b"a,b\n1,caf\xe9\n", ["UTF-8", "0xe9", "byte offset 9", "line 2"]),
    "missing_path": lambda t: source_case(t, "nothere.csv", None, ["no such file"]),
    "directory_as_source": lambda t: (t / "dir.csv").mkdir() or Case(
        lambda: read_table(t / "dir.csv"), ["inspect", t / "dir.csv"], SourceError, ["dir.csv", "is a directory"]),
    "unknown_extension": lambda t: source_case(t, "d.xlsx", "a\n1\n", ["unknown file type", ".xlsx"]),
    "unreadable_gzip": lambda t: source_case(t, "d.csv.gz", b"this is not gzip", ["cannot read"]),
    "unreadable_parquet": lambda t: source_case(t, "d.parquet", b"PAR1 nope", ["not a readable Parquet file"]),
    "missing_sql_table": lambda t: (lambda url: Case(
        lambda: read_table(url, table="hearts"), ["inspect", url, "--table", "hearts"], SourceError,
        ["site.db", "no table 'hearts'", "['heart']"]))(_sqlite(t)),
    "sql_without_table": lambda t: (lambda url: Case(
        lambda: read_table(url), ["inspect", url], SourceError, ["needs a table name", "['heart']"]))(_sqlite(t)),
    "bad_sqlalchemy_url": lambda t: Case(
        lambda: read_table("nosuchdb+zz://host/db", table="x"), ["inspect", "nosuchdb+zz://host/db", "-t", "x"],
        SourceError, ["nosuchdb+zz://host/db", "driver"]),
    "missing_sqlite_file": lambda t: Case(
        lambda: read_table(f"sqlite:///{t}/none.db", table="x"), ["inspect", f"sqlite:///{t}/none.db", "-t", "x"],
        SourceError, ["none.db", "no such SQLite database file"]),
    "table_option_on_file": lambda t: (lambda p: Case(
        lambda: read_table(p, table="x"), ["inspect", p, "--table", "x"], ConfigError, ["--table", "d.csv"]))(
        _write(t, "d.csv", "a\n1\n")),
    "text_in_numeric_column": lambda t: data_case(t, "a\n1\nabc\n", INT_A, ["'a'", "text in a numeric", "'abc'"]),
    "inf_in_numeric_column": lambda t: data_case(t, "a\n1\ninf\n", INT_A, ["'a'", "infinite", "'inf'"]),
    "nan_where_not_nullable": lambda t: data_case(t, "a\n1\nNaN\n", INT_A, ["'a'", "non-nullable", "'NaN'"]),
    "missing_where_not_nullable": lambda t: data_case(t, "a\n1\n\n2\n", INT_A, ["'a'", "non-nullable", "data row 2"]),
    "non_integer_in_int_column": lambda t: data_case(t, "a\n1\n2.5\n", INT_A, ["'a'", "non-integer", "'2.5'"]),
    "category_outside_domain": lambda t: data_case(
        t, "cp\n1\n7\n", [{"name": "cp", "type": "categorical", "categories": ["1", "2", "3", "4"]}],
        ["'cp'", "'7'", "declared categories", "['1', '2', '3', '4']"]),
    "value_outside_bounds": lambda t: data_case(
        t, "age\n63\n150\n", [{"name": "age", "type": "numerical", "subtype": "int", "lower": 0, "upper": 120}],
        ["'age'", "'150'", "[0, 120]"]),
    "unparseable_datetime": lambda t: data_case(
        t, "d\n2020-01-31\n2020-13-45\n", [{"name": "d", "type": "datetime", "datetime_format": "%Y-%m-%d"}],
        ["'d'", "not dates", "'2020-13-45'"]),
    "not_a_boolean": lambda t: data_case(t, "f\n1\nmaybe\n", [{"name": "f", "type": "boolean"}], ["'f'", "'maybe'"]),
    "missing_column": lambda t: data_case(
        t, "a\n1\n", INT_A + [{"name": "b", "type": "categorical"}], ["'b'", "missing column"]),
    "extra_column": lambda t: data_case(t, "a,z\n1,2\n", INT_A, ["'z'", "extra column"]),
    "schema_unknown_type": lambda t: schema_case(
        t, json.dumps({"columns": [{"name": "a", "type": "string"}]}), ["unknown type 'string'", "'a'"]),
    "schema_json_syntax_error": lambda t: schema_case(t, '{"columns": [\n  {"name": "a",,}\n]}', ["not valid JSON", "line 2"]),
    "schema_bounds_reversed": lambda t: schema_case(t, json.dumps({"columns": [
        {"name": "a", "type": "numerical", "subtype": "int", "lower": 10, "upper": 1}]}), ["'lower' (10)", "greater"]),
    "schema_file_missing": lambda t: Case(
        lambda: TableSchema.load(t / "gone.json"),
        ["schema", "check", _write(t, "data.csv", "a\n1\n"), "--schema", t / "gone.json"],
        SchemaError, ["gone.json", "not found"]),
    "sdv_metadata_unknown_table": lambda t: (lambda p: Case(
        lambda: schema_from_sdv(json.loads(p.read_text()), table="x"), ["schema", "import-sdv", p, "--table", "x"],
        SchemaError, ["no table 'x'", "['heart']"]))(
        _write(t, "meta.json", json.dumps({"METADATA_SPEC_VERSION": "V1",
                                           "tables": {"heart": {"columns": {"age": {"sdtype": "numerical"}}}}}))),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_api_raises_named_error(name, tmp_path):
    case = CASES[name](tmp_path)
    with pytest.raises(case.error) as info:
        case.api()
    message = str(info.value)
    for text in case.says:
        assert text in message, f"{name}: {text!r} not in {message!r}"
    if case.error is DataValidationError:
        assert all(p.column for p in info.value.problems), "every problem names its column"


@pytest.mark.parametrize("name", sorted(CASES))
def test_cli_exits_with_documented_code(name, tmp_path, cli):
    case = CASES[name](tmp_path)
    result = cli(*case.cli)
    assert result.exit_code == DOCUMENTED_EXIT[case.error] == case.error.exit_code, result.output
    assert "Traceback" not in result.output
    assert result.output.startswith("error: ")
    for text in case.says:
        assert text in result.output, f"{name}: {text!r} not in {result.output!r}"


def test_there_are_at_least_twenty_distinct_malformed_inputs():
    assert len(CASES) >= 20


def test_every_problem_is_reported_at_once(tmp_path):
    data = _write(tmp_path, "many.csv", "age,cp,x\n150,9,1\nabc,2,1\n")
    schema = TableSchema.from_dict({"columns": [
        {"name": "age", "type": "numerical", "subtype": "int", "upper": 120},
        {"name": "cp", "type": "categorical", "categories": ["1", "2"]},
        {"name": "chol", "type": "numerical", "subtype": "int"}]})
    with pytest.raises(DataValidationError) as info:
        read_table(data, schema=schema)
    found = {(p.column, p.message.split(",")[0]) for p in info.value.problems}
    assert found == {
        ("chol", "missing column"), ("x", "extra column not in the schema"),
        ("age", "values outside the declared bounds"), ("age", "text in a numeric column"),
        ("cp", "values outside the declared categories"),
    }
    bounds = next(p for p in info.value.problems if "bounds" in p.message)
    assert (bounds.rows, bounds.examples, bounds.expected) == (1, ("150",), "values in [unbounded, 120]")
