"""Convert between fedtab schemas and SDV metadata JSON (plain dicts; SDV itself is not imported).

Single-table form::

    {"METADATA_SPEC_VERSION": "SINGLE_TABLE_V1", "primary_key": "id",
     "columns": {"age": {"sdtype": "numerical", "computer_representation": "Int64"}, ...}}

Multi-table form (what SDV 2.0's ``Metadata.to_dict()`` writes)::

    {"METADATA_SPEC_VERSION": "V1", "tables": {"heart": {"columns": {...}}}, "relationships": []}

sdtypes map one to one (numerical, categorical, boolean, datetime, id); ``ordinal`` becomes categorical;
``computer_representation`` Int*/UInt* or ``decimal_places`` 0 give an int column, other
``decimal_places`` the float precision. SDV's PII sdtypes (email, phone_number, address, ...) become
``id``: fedtab never copies identifying values into synthetic data. SDV's detected ``range_min``/
``range_max``/``range_values``/``range_is_nullable`` are *observed* values of the private table, so they
are not imported as declared bounds, domains or nullability (declare public ones in the fedtab schema).
"""

from __future__ import annotations

from typing import Any

from fedtab.errors import SchemaError
from fedtab.schema import ColumnSpec, TableSchema

SDTYPES = ("numerical", "categorical", "boolean", "datetime", "id")
_INT_REPRESENTATIONS = {"Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64"}


def schema_from_sdv(metadata: dict, table: str | None = None) -> TableSchema:
    """Build a ``TableSchema`` from an SDV metadata dict (single- or multi-table ``V1``)."""
    name, table_meta = _pick_table(metadata, table)
    columns = table_meta.get("columns")
    if not isinstance(columns, dict) or not columns:
        raise SchemaError(f"SDV metadata table {name!r}: 'columns' must be a non-empty object of column: {{sdtype}}.")
    specs, problems = [], []
    for col, meta in columns.items():
        if not isinstance(meta, dict) or not isinstance(meta.get("sdtype"), str):
            problems.append(f"column {col!r}: expected an object with a string 'sdtype', got {meta!r}")
            continue
        specs.append(_column_from_sdv(str(col), meta))
    if problems:
        raise SchemaError("SDV metadata: " + "; ".join(problems) + ".")
    return TableSchema(columns=tuple(specs), name=name)


def schema_to_sdv(schema: TableSchema) -> dict:
    """SDV 2.0 metadata dict (multi-table ``V1`` form with one table) for ``schema``."""
    columns: dict[str, Any] = {}
    for c in schema.columns:
        meta: dict[str, Any] = {"sdtype": c.type}
        if c.type == "numerical":
            meta["computer_representation"] = "Int64" if c.is_integer else "Float"
        elif c.type == "datetime" and c.datetime_format:
            meta["datetime_format"] = c.datetime_format
        columns[c.name] = meta
    table: dict[str, Any] = {"columns": columns}
    ids = [c.name for c in schema.columns if c.type == "id"]
    if ids:
        table["primary_key"] = ids[0]
    return {"METADATA_SPEC_VERSION": "V1", "tables": {schema.name or "table": table}, "relationships": []}


def _pick_table(metadata: Any, table: str | None) -> tuple[str | None, dict]:
    if not isinstance(metadata, dict):
        raise SchemaError(f"SDV metadata must be a JSON object, got {type(metadata).__name__}.")
    if "tables" not in metadata:
        if "columns" not in metadata:
            raise SchemaError("SDV metadata has neither 'tables' (multi-table V1) nor 'columns' (single table).")
        return table, metadata
    tables = metadata["tables"]
    if not isinstance(tables, dict) or not tables:
        raise SchemaError("SDV metadata: 'tables' must be a non-empty object of table name: {columns}.")
    if table is None:
        if len(tables) > 1:
            raise SchemaError(f"SDV metadata has {len(tables)} tables {sorted(tables)}; choose one with --table.")
        table = next(iter(tables))
    if table not in tables:
        raise SchemaError(f"SDV metadata has no table {table!r}; its tables are {sorted(tables)}.")
    if not isinstance(tables[table], dict):
        raise SchemaError(f"SDV metadata table {table!r} must be an object with 'columns'.")
    return table, tables[table]


def _column_from_sdv(name: str, meta: dict) -> ColumnSpec:
    sdtype = meta["sdtype"]
    if sdtype == "numerical":
        rep, places = meta.get("computer_representation"), meta.get("decimal_places")
        is_int = rep in _INT_REPRESENTATIONS or (rep is None and places == 0)
        if is_int:
            return ColumnSpec(name=name, type="numerical", subtype="int")
        precision = places if isinstance(places, int) and not isinstance(places, bool) and places >= 0 else None
        return ColumnSpec(name=name, type="numerical", subtype="float", precision=precision)
    if sdtype == "datetime":
        return ColumnSpec(name=name, type="datetime", datetime_format=meta.get("datetime_format"))
    if sdtype in ("categorical", "boolean", "id"):
        return ColumnSpec(name=name, type=sdtype)
    if sdtype == "ordinal":
        return ColumnSpec(name=name, type="categorical")
    return ColumnSpec(name=name, type="id")  # PII sdtypes: never copied
