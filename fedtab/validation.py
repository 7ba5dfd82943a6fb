"""Validate a table against its schema and return it typed (see the dtype contract in ``fedtab.schema``).

Validation happens once, at the boundary (connector read, API entry, CLI command). It collects
*every* problem (missing/extra/duplicate columns, text in numeric columns, values outside declared
bounds or categories, missing values where not nullable, ...) and raises one ``DataValidationError``
listing them all, each with the column, how many rows, example values and what was expected.

Raw string columns (CSV read with ``keep_default_na=False``) are coerced: a cell is missing when it is
empty, blank, or equal to one of the column's ``missing_markers`` once stripped. Typed columns
(Parquet, SQL) are checked and converted to the contract dtypes. Categorical text is kept exactly as
written (Adult's leading spaces survive). Bounds of datetime columns are not checked.

``validate_chunks`` does the same over an iterator of chunks so a large table is typed chunk by chunk
and never held twice as raw text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import pandas as pd

from fedtab.errors import DataValidationError, Problem
from fedtab.inference import as_text, missing_mask, plain
from fedtab.schema import ColumnSpec, TableSchema

MAX_EXAMPLES = 5
_TRUE = {"true", "1", "1.0", "yes", "y", "t"}
_FALSE = {"false", "0", "0.0", "no", "n", "f"}


@dataclass
class _Finding:
    rows: int = 0
    first_row: int = 0
    examples: list = field(default_factory=list)


class _ProblemLog:
    """Problems keyed by (column, message, expected), merged over chunks."""

    def __init__(self) -> None:
        self._found: dict[tuple, _Finding] = {}

    def add(self, column, message, *, mask=None, values=None, expected="", offset=0) -> None:
        key = (column, message, expected)
        if mask is None:
            self._found.setdefault(key, _Finding())
            return
        hits = np.flatnonzero(np.asarray(mask, dtype=bool))
        if len(hits) == 0:
            return
        f = self._found.setdefault(key, _Finding())
        if f.rows == 0:
            f.first_row = offset + int(hits[0]) + 1
        f.rows += len(hits)
        if values is not None:
            for v in pd.Series(np.asarray(values, dtype=object)[hits[:50]]).tolist():
                if len(f.examples) >= MAX_EXAMPLES:
                    break
                if v not in f.examples:
                    f.examples.append(v)

    def problems(self) -> list[Problem]:
        out = []
        for (column, message, expected), f in self._found.items():
            if f.rows:
                message = f"{message}, first at data row {f.first_row}"
            out.append(Problem(column, message, rows=f.rows, examples=tuple(f.examples), expected=expected))
        return out

    def __bool__(self) -> bool:
        return bool(self._found)


def validate_table(df: pd.DataFrame, schema: TableSchema, *, source: str) -> pd.DataFrame:
    """Return ``df`` typed per ``schema`` (columns in schema order), or raise one DataValidationError."""
    return validate_chunks([df], schema, source=source, columns=[str(c) for c in df.columns])


def validate_chunks(
    chunks: Iterable[pd.DataFrame], schema: TableSchema, *, source: str, columns: list[str] | None = None
) -> pd.DataFrame:
    """Type a table given as chunks (same columns in each). ``columns`` names the header when known."""
    log = _ProblemLog()
    typed: list[pd.DataFrame] = []
    rows = 0
    header_checked = False
    if columns is not None:
        _check_header(columns, schema, log)
        header_checked = True
    for chunk in chunks:
        if not header_checked:
            _check_header([str(c) for c in chunk.columns], schema, log)
            header_checked = True
        typed.append(_coerce_chunk(chunk, schema, log, offset=rows))
        rows += len(chunk)
    if rows == 0:
        log.add(None, "the table has no rows", expected="at least one data row")
    if log:
        raise DataValidationError(source, log.problems())
    return typed[0] if len(typed) == 1 else _concat_by_column(typed)


def _concat_by_column(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """Join typed chunks one column at a time, freeing each chunk's column as it goes.

    ``pd.concat`` of the whole frames holds the chunks and the result at once (twice the table);
    this way the peak is the table plus one column.
    """
    columns = {}
    for name in list(parts[0].columns):
        columns[name] = pd.concat([p[name] for p in parts], ignore_index=True)
        for p in parts:
            del p[name]
    return pd.DataFrame(columns, copy=False)


def _check_header(columns: list[str], schema: TableSchema, log: _ProblemLog) -> None:
    seen, dups = set(), []
    for c in columns:
        if c in seen and c not in dups:
            dups.append(c)
        seen.add(c)
    for c in dups:
        log.add(c, "duplicate column name", expected="each column name once")
    for c in schema.names:
        if c not in seen:
            log.add(c, "missing column", expected=f"the columns {schema.names}")
    for c in columns:
        if c not in schema:
            log.add(c, "extra column not in the schema", expected=f"only the columns {schema.names}")


def _coerce_chunk(chunk: pd.DataFrame, schema: TableSchema, log: _ProblemLog, *, offset: int) -> pd.DataFrame:
    dup = chunk.columns.duplicated(keep=False)
    out = {}
    for spec in schema.columns:
        if spec.name not in chunk.columns or dup[list(chunk.columns).index(spec.name)]:
            continue
        values = chunk[spec.name].reset_index(drop=True)
        out[spec.name] = _coerce_column(values, spec, log, offset)
    return pd.DataFrame(out, columns=[c for c in schema.names if c in out])


def _coerce_column(values: pd.Series, spec: ColumnSpec, log: _ProblemLog, offset: int) -> pd.Series:
    values = plain(values)
    missing = missing_mask(values, spec.missing_markers).to_numpy()
    coerce = {
        "numerical": _numerical, "categorical": _categorical, "boolean": _boolean,
        "datetime": _datetime, "id": _identifier,
    }[spec.type]
    typed, missing = coerce(values, missing, spec, log, offset)
    if not spec.nullable and missing.any():
        log.add(spec.name, "missing values (empty, NaN or a missing marker) in a non-nullable column",
                mask=missing, values=values, expected="a value in every row", offset=offset)
    return typed


def _numerical(values, missing, spec, log, offset):
    raw = values.to_numpy(dtype=object)
    if values.dtype == object:
        text = values.where(~missing, None)
        num = pd.to_numeric(text, errors="coerce", dtype_backend="numpy_nullable")
        nan_text = text.astype(str).str.strip().str.lower().isin(["nan", "-nan"]).to_numpy()
        bad = num.isna().to_numpy() & ~missing & ~nan_text
        log.add(spec.name, "text in a numeric column", mask=bad, values=raw,
                expected="numbers", offset=offset)
        result_na = missing | nan_text | bad
        missing = missing | nan_text
    elif pd.api.types.is_bool_dtype(values.dtype):
        num = values.astype("Int64")
    else:  # typed input (Parquet, SQL, a user's frame): nullable dtypes keep big integers exact
        num = values.astype("Int64" if values.dtype.kind in "iu" else "Float64")
        missing = missing | num.isna().to_numpy()
    if values.dtype != object:
        result_na = missing
    arr = num.astype("Float64").to_numpy(dtype=float, na_value=np.nan)
    finite = np.isfinite(arr)
    inf = np.isinf(arr)
    log.add(spec.name, "infinite values", mask=inf, values=raw, expected="finite numbers", offset=offset)
    if spec.lower is not None or spec.upper is not None:
        lo = -np.inf if spec.lower is None else spec.lower
        hi = np.inf if spec.upper is None else spec.upper
        out = finite & ((arr < lo) | (arr > hi))
        log.add(spec.name, "values outside the declared bounds", mask=out, values=raw,
                expected=f"values in [{_fmt(spec.lower)}, {_fmt(spec.upper)}]", offset=offset)
    if spec.subtype == "int":
        frac = finite & (arr != np.round(arr))
        log.add(spec.name, "non-integer values in an integer column", mask=frac, values=raw,
                expected="whole numbers", offset=offset)
        if num.dtype != "Int64":
            num = pd.Series(np.where(finite & ~frac, arr, np.nan)).round().astype("Int64")
        result = num.astype("Int64").copy()
        result[result_na | inf] = pd.NA
        return result, missing
    arr = np.where(result_na | inf, np.nan, arr)
    return pd.Series(arr, dtype="float64"), missing


def _fmt(bound):
    return "unbounded" if bound is None else f"{bound:g}"


def _categorical(values, missing, spec, log, offset):
    text = values if values.dtype == object else as_text(values)
    text = text.where(~missing, None)
    codes, uniques = pd.factorize(text, use_na_sentinel=True)
    labels = np.array([str(u) for u in uniques] + [None], dtype=object)
    result = pd.Series(labels.take(np.where(codes < 0, len(uniques), codes)), dtype=object)
    if spec.categories is not None:
        allowed = set(spec.categories)
        outside = ~missing & ~result.isin(allowed).to_numpy()
        shown = list(spec.categories[:12]) + (["..."] if len(spec.categories) > 12 else [])
        log.add(spec.name, "values outside the declared categories", mask=outside, values=result,
                expected=f"one of {shown}", offset=offset)
    return result, missing


def _boolean(values, missing, spec, log, offset):
    if pd.api.types.is_bool_dtype(values.dtype):
        result = values.astype("boolean")
        return result, missing | result.isna().to_numpy()
    text = as_text(values).str.strip().str.lower()
    is_true, is_false = text.isin(_TRUE).to_numpy(), text.isin(_FALSE).to_numpy()
    bad = ~missing & ~is_true & ~is_false
    log.add(spec.name, "values that are not booleans", mask=bad, values=values,
            expected="true/false, 1/0 or yes/no", offset=offset)
    result = pd.array(np.where(is_true, True, False), dtype="boolean")
    result[missing | bad] = pd.NA
    return pd.Series(result), missing


def _datetime(values, missing, spec, log, offset):
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        result = values
        if getattr(values.dt, "tz", None) is not None:
            result = values.dt.tz_convert("UTC").dt.tz_localize(None)
        result = result.astype("datetime64[ns]")
        return result, missing | result.isna().to_numpy()
    text = values.where(~missing, None).astype(object)
    text = text.where(text.isna(), text.astype(str).str.strip())
    parsed = pd.to_datetime(text, format=spec.datetime_format or "ISO8601", errors="coerce")
    retry = parsed.isna().to_numpy() & ~missing
    if retry.any() and spec.datetime_format:
        parsed[retry] = pd.to_datetime(text[retry], format="ISO8601", errors="coerce")
    bad = parsed.isna().to_numpy() & ~missing
    log.add(spec.name, "values that are not dates", mask=bad, values=values,
            expected=f"dates formatted {spec.datetime_format or 'ISO 8601 (YYYY-MM-DD)'}", offset=offset)
    return parsed.astype("datetime64[ns]"), missing


def _identifier(values, missing, spec, log, offset):
    if values.dtype.kind in "iu" or str(values.dtype) == "Int64":
        return values.astype("Int64"), missing
    if values.dtype == object:
        text = values.where(~missing, None)
        present = text[~missing].astype(str).str.strip()
        if len(present) and present.str.fullmatch(r"[+-]?\d{1,18}").all():
            return pd.to_numeric(text, dtype_backend="numpy_nullable").astype("Int64"), missing
        return text.map(lambda v: None if v is None else str(v)).astype(object), missing
    return as_text(values).where(~missing, None).astype(object), missing
