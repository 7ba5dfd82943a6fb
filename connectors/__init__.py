"""Read and write tables: CSV (.csv, .csv.gz), Parquet, and SQL tables through SQLAlchemy URLs.

``read_table`` always returns a *typed* table (the dtype contract in ``fedtab.schema``): with a schema
it validates against it (every problem reported at once); without one it first infers a schema in a
streaming pass, then types the table in a second pass. Either way a large table is read chunk by
chunk, so it is never held in memory as raw text and typed table at once.

``write_table`` is atomic: files through a temp file and a rename, SQL through one transaction.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Iterator

import pandas as pd

from fedtab.errors import ConfigError
from fedtab.inference import ColumnProfile, TableProfile
from fedtab.schema import TableSchema
from fedtab.validation import validate_chunks

from connectors.files import open_file, write_file
from connectors.sql import is_url, open_sql, redact, write_sql

__all__ = ["read_table", "write_table", "scan_table", "TableScan", "source_label"]

Source = str | os.PathLike
IF_EXISTS = ("fail", "replace")


@dataclass(frozen=True)
class TableScan:
    """What one streaming pass over a table found: row count, inferred schema, per-column evidence.

    ``profiles`` (distinct values, counts) describe private rows: show them to the site's own
    operator only, never send them anywhere.
    """

    source: str
    rows: int
    schema: TableSchema
    profiles: dict[str, ColumnProfile]


def source_label(source: Source, table: str | None = None) -> str:
    """How errors name a source: the path, or the URL (password hidden) and table."""
    if is_url(source):
        return redact(str(source)) + (f" table {table!r}" if table else "")
    return str(source)


def _open(source: Source, table: str | None) -> tuple[list[str], Iterator[pd.DataFrame]]:
    if is_url(source):
        return open_sql(str(source), table)
    if table is not None:
        raise ConfigError(f"--table/table={table!r} applies to database URLs only, not to the file {source}.")
    return open_file(Path(source))


def scan_table(
    source: Source, *, table: str | None = None, missing_markers: Iterable[str] = ("?",),
    declared: TableSchema | dict | None = None,
) -> TableScan:
    """Infer a schema in one streaming pass (see ``fedtab.inference`` for the rules)."""
    _, chunks = _open(source, table)
    profile = TableProfile(missing_markers=missing_markers)
    text = not is_url(source) and Path(source).name.lower().endswith((".csv", ".csv.gz"))  # raw strings
    for chunk in chunks:
        profile.update(chunk, text=text)
    name = table or _stem(source)
    schema = profile.schema(declared=declared, name=name)
    return TableScan(source_label(source, table), profile.rows, schema, profile.columns)


def read_table(
    source: Source, *, table: str | None = None, schema: TableSchema | Source | None = None,
    missing_markers: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Read a table and return it typed.

    ``source`` is a file path (.csv, .csv.gz, .parquet) or a SQLAlchemy URL (``sqlite:///x.db``,
    ``postgresql+psycopg:///db``) with ``table``. ``schema`` is a ``TableSchema`` or the path of a
    schema JSON file; without it the schema is inferred (missing markers default to ``'?'``). With a
    schema, ``missing_markers`` are added to every column's own markers.
    Raises SourceError (cannot read), SchemaError (bad schema file), DataValidationError (rows do not
    match the schema, every problem listed).
    """
    inferred = schema is None
    if inferred:
        schema = scan_table(source, table=table, missing_markers=missing_markers or ("?",)).schema
    else:
        if not isinstance(schema, TableSchema):
            schema = TableSchema.load(schema)
        if missing_markers:
            schema = _add_markers(schema, missing_markers)
    columns, chunks = _open(source, table)
    frame = validate_chunks(chunks, schema, source=source_label(source, table), columns=columns)
    if inferred:  # what the source's own form says (dtypes of a CSV's text), for a site that infers
        frame.attrs["fedtab_schema"] = schema.to_dict()
    return frame


def write_table(df: pd.DataFrame, dest: Source, *, table: str | None = None, if_exists: str = "fail") -> None:
    """Write a typed table to a file or a SQL table, atomically. ``if_exists``: "fail" or "replace"."""
    if if_exists not in IF_EXISTS:
        raise ConfigError(f"if_exists must be one of {list(IF_EXISTS)}, got {if_exists!r}.")
    if is_url(dest):
        if not table:
            raise ConfigError(f"writing to {source_label(dest)} needs a table name (table=...).")
        write_sql(df, str(dest), table, if_exists=if_exists)
        return
    if table is not None:
        raise ConfigError(f"table={table!r} applies to database URLs only, not to the file {dest}.")
    write_file(df, Path(dest), if_exists=if_exists)


def _add_markers(schema: TableSchema, markers: Iterable[str]) -> TableSchema:
    extra = tuple(str(m) for m in markers)
    cols = [replace(c, missing_markers=tuple(dict.fromkeys(c.missing_markers + extra))) for c in schema.columns]
    return replace(schema, columns=tuple(cols))


def _stem(source: Source) -> str:
    name = Path(str(source)).name
    for ext in (".csv.gz", ".csv", ".parquet", ".pq"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name
