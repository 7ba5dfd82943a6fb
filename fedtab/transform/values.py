"""Typed-table columns <-> plain numpy arrays (the schema's dtype contract, see ``fedtab.schema``).

Numbers travel as float64 with NaN for missing; datetimes as float days since 1970-01-01 (so the
numerical transformer handles them, and declared datetime bounds are read in days); categorical
and boolean values as an object array of ``str`` with ``None`` for missing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fedtab.schema import ColumnSpec

NS_PER_DAY = 86_400 * 10**9
NS_PER_SECOND = 10**9


def numeric_values(series: pd.Series, spec: ColumnSpec) -> np.ndarray:
    """float64 array, NaN where missing (datetimes in days since the epoch)."""
    if spec.type == "datetime":
        s = pd.to_datetime(series, errors="coerce")
        ns = s.to_numpy(dtype="datetime64[ns]").view("int64").astype(np.float64)
        ns[s.isna().to_numpy()] = np.nan
        return ns / NS_PER_DAY
    return pd.to_numeric(series, errors="coerce").astype("float64").to_numpy(copy=True, na_value=np.nan)


def category_values(series: pd.Series, spec: ColumnSpec) -> np.ndarray:
    """object array of str, None where missing (booleans as 'False'/'True')."""
    missing = series.isna().to_numpy()
    if spec.type == "boolean":
        out = np.array(["True" if bool(v) else "False" for v in series.fillna(False)], dtype=object)
    else:
        out = series.astype(object).to_numpy(copy=True)
        out = np.array([str(v) for v in out], dtype=object) if len(out) else out
    out[missing] = None
    return out


def numeric_series(values: np.ndarray, spec: ColumnSpec, index=None) -> pd.Series:
    """Typed column from float64 values (NaN = missing): Int64, float64 or datetime64[ns]."""
    if spec.type == "datetime":
        days_only = spec.datetime_format is not None and not any(t in spec.datetime_format for t in ("%H", "%M", "%S"))
        unit = NS_PER_DAY if days_only else NS_PER_SECOND
        ns = np.round(values * (NS_PER_DAY / unit)) * unit
        mask = np.isnan(ns)
        ints = np.where(mask, 0, ns).astype("int64")
        out = pd.Series(ints.view("datetime64[ns]"), index=index, name=spec.name)
        out[mask] = pd.NaT
        return out
    if spec.is_integer:
        arr = pd.array(np.where(np.isnan(values), 0, np.round(values)).astype("int64"), dtype="Int64")
        arr[np.isnan(values)] = pd.NA
        return pd.Series(arr, index=index, name=spec.name)
    if spec.precision is not None:
        values = np.round(values, spec.precision) + 0.0  # + 0.0: -0.04 rounds to -0.0, written "-0.0"
    return pd.Series(values.astype("float64"), index=index, name=spec.name)


def category_series(values: np.ndarray, spec: ColumnSpec, index=None) -> pd.Series:
    """Typed column from an object array of str/None: object str, or pandas 'boolean'."""
    if spec.type == "boolean":
        arr = pd.array([None if v is None else v == "True" for v in values], dtype="boolean")
        return pd.Series(arr, index=index, name=spec.name)
    return pd.Series(values.astype(object), index=index, name=spec.name, dtype=object)


def as_input_dtype(series: pd.Series, spec: ColumnSpec) -> pd.Series:
    """A typed column (the schema's contract) in the representation its input had (``spec.dtype``): a
    categorical coded 1/2 as the integers 1/2, a 0/1 boolean as 0/1, a column of integers without
    missing values as ``int64``. Where a value cannot take that form (a category 'other' in an integer
    column, a missing value in a ``bool`` or ``int64`` one) the nearest form that holds every value is
    used: the nullable ``Int64``/``boolean``, else the contract's own dtype. No ``dtype``: unchanged."""
    from fedtab.schema import FLOAT_DTYPES, INT_DTYPES, NULLABLE_INT_DTYPES

    dtype = spec.dtype
    if dtype is None or spec.type == "id":
        return series
    missing = series.isna()
    if dtype in INT_DTYPES + NULLABLE_INT_DTYPES + FLOAT_DTYPES:
        if spec.type == "boolean":
            values = series.astype("boolean").astype("Int64")  # True/False -> 1/0, missing kept
        elif spec.type == "categorical":
            values = series.where(~missing, None)
        else:
            values = series
        numbers = pd.to_numeric(values, errors="coerce")
        if bool((numbers.isna() & ~missing).any()):  # a value with no numeric form (e.g. 'other')
            return series
        if dtype in FLOAT_DTYPES:
            return numbers.astype(dtype)
        whole = numbers.dropna()
        if not bool((whole == whole.round()).all()):
            return numbers.astype("float64")
        if dtype in INT_DTYPES and not bool(missing.any()):
            return numbers.astype(dtype)
        nullable = dtype if dtype in NULLABLE_INT_DTYPES else dtype.capitalize().replace("Uint", "UInt")  # uint8 -> UInt8
        return numbers.astype(nullable)
    if dtype in ("bool", "boolean"):
        if spec.type == "boolean":
            flags = series
        elif spec.type == "categorical" and set(series.dropna().astype(str)) <= {"True", "False", "true", "false"}:
            flags = series.map(lambda v: None if v is None or (not isinstance(v, str) and pd.isna(v)) else str(v).lower() == "true")
        else:
            return series
        arr = pd.array(flags.tolist(), dtype="boolean")
        return pd.Series(arr if dtype == "boolean" or bool(missing.any()) else arr.astype(bool),
                         index=series.index, name=series.name)
    if dtype == "string":
        return series.astype("string")
    if dtype == "category" and spec.type in ("categorical", "boolean"):
        cats = list(spec.categories) if spec.categories is not None else sorted(series.dropna().astype(str).unique())
        present = series.dropna().astype(str)
        if not set(present) <= set(cats):
            cats = cats + sorted(set(present) - set(cats))
        return pd.Series(pd.Categorical(series.where(~missing, None).map(lambda v: v if v is None else str(v)),
                                        categories=cats), index=series.index, name=series.name)
    return series  # object, datetime64[ns]: the contract's own form


def as_input_dtypes(frame: pd.DataFrame, schema) -> pd.DataFrame:
    """Every column of a typed table in its input's representation (``as_input_dtype``)."""
    out = {}
    for name in frame.columns:
        spec = schema[name] if name in schema else None
        out[name] = frame[name] if spec is None else as_input_dtype(frame[name], spec)
    return pd.DataFrame(out, index=frame.index)
