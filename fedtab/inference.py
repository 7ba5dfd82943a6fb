"""Schema inference: guess a ``TableSchema`` from a raw (string) or typed table.

Inference runs inside one site, on that site's rows. It records only what a data steward would
write by hand: a type per column, the declared missing markers, the number of decimals of float
columns. It never records observed minima/maxima as bounds or observed category lists as domains:
those are private data (under DP they must be declared or learned at a privacy cost). Nullability is
not inferred either (``nullable`` stays True): a site without missing values says nothing about the
other sites.

Rules, applied to the non-missing values of each column (``declared`` settings always win):

* a cell is missing when it is empty, or its text with surrounding blanks stripped equals one of the
  missing markers (so Adult's ``' ?'`` matches the marker ``'?'``);
* all integers: ``id`` when the column is named like an identifier (``id``, ``*_id``, ``*_nbr``,
  ``*_key``, ``customerId``) and at least half of its values are distinct (``patient_nbr`` repeats across one
  patient's encounters yet still identifies a person, so it must never be copied); ``boolean`` when
  the values are exactly {0, 1}; ``categorical`` when named like an identifier but with few distinct
  values (codes such as ``admission_source_id``) or when there are at most 5 distinct values;
  otherwise ``numerical``/``int``;
* real numbers: ``numerical``/``float`` with ``precision`` = most decimals seen (at most 6);
* only ``true``/``false`` (any case): ``boolean``. ``yes``/``no`` stays categorical so a synthetic
  table keeps the original labels (declare ``boolean`` to change that);
* every value parses with one of ``DATETIME_FORMATS``: ``datetime`` with that format;
* other text: ``id`` when every value is distinct (at least 20 rows) or when named like an
  identifier and at least half distinct; otherwise ``categorical``.

``TableProfile`` accumulates the evidence chunk by chunk, so a large table is inferred without
holding it in memory; ``infer_schema`` is the one-frame shortcut.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from fedtab.errors import SchemaError
from fedtab.schema import DTYPES, ColumnSpec, TableSchema

DATETIME_FORMATS = (
    "%Y-%m-%d", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S.%f",
    "%Y/%m/%d", "%d/%m/%Y", "%m/%d/%Y",
)
MAX_CATEGORICAL_INTS = 5
MAX_PRECISION = 6
MIN_ROWS_FOR_UNIQUE_ID = 20

_INT = r"[+-]?\d+"
_REAL = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?:inf|infinity|nan)"
_ID_SUFFIX = re.compile(r"(?i)(^|[_ .-])(id|nbr|key|uuid)$")
_CAMEL_ID = re.compile(r"[a-z](Id|ID|Nbr)$")
_DATE_HINT = r"\d{1,4}[-/]\d{1,2}[-/]\d{1,4}.*"


def looks_like_id_name(name: str) -> bool:
    """``id``, ``encounter_id``, ``patient_nbr``, ``customerId``... (``num`` alone is not an id)."""
    return bool(_ID_SUFFIX.search(str(name)) or _CAMEL_ID.search(str(name)))


def plain(values: pd.Series) -> pd.Series:
    """String and category dtypes as plain ``object`` columns, so raw text is handled one way."""
    if isinstance(values.dtype, (pd.StringDtype, pd.CategoricalDtype)):
        return values.astype(object).where(values.notna(), None)
    return values


def _stripped(values: pd.Series) -> pd.Series:
    """``values.astype(str).str.strip()``, computed once per distinct value (a categorical column of
    26,000 rows holds a few dozen), then spread back over the rows."""
    codes, uniques = pd.factorize(values, use_na_sentinel=False)
    text = pd.Series(uniques, dtype=object).astype(str).str.strip().to_numpy(dtype=object)
    return pd.Series(text[codes], index=values.index, dtype=object)


def missing_mask(values: pd.Series, markers: Iterable[str]) -> pd.Series:
    """True where a cell is missing: NA, empty/blank text, or text equal to a marker once stripped."""
    mask = values.isna()
    if values.dtype == object:
        text = _stripped(values.where(~mask, ""))
        mask = mask | (text == "") | text.isin(list(markers))
    return mask


def as_text(values: pd.Series) -> pd.Series:
    """Non-missing values as stripped text; integral floats lose their '.0' (SQL gives float ints)."""
    if values.dtype == object:
        return _stripped(values)
    if pd.api.types.is_bool_dtype(values.dtype):
        return values.map({True: "true", False: "false"}).astype(str)
    if pd.api.types.is_float_dtype(values.dtype):
        arr = values.to_numpy(dtype=float)
        integral = np.isfinite(arr) & (arr == np.round(arr)) & (np.abs(arr) < 2**53)
        text = np.where(integral, np.where(integral, arr, 0).astype(np.int64).astype(str), arr.astype(str))
        return pd.Series(text, index=values.index, dtype=object)
    return values.astype(str)


@dataclass
class ColumnProfile:
    """Evidence about one column, merged over chunks. ``distinct`` stays inside the site."""

    name: str
    rows: int = 0
    missing: int = 0
    distinct: set = field(default_factory=set)
    all_int: bool = True
    all_real: bool = True
    all_boolword: bool = True
    decimals: int = 0
    date_formats: tuple[str, ...] | None = None
    forms: set = field(default_factory=set)  # how the input held the values (see ``input_form``)

    def update(self, values: pd.Series, markers: Iterable[str], *, text: bool = False, form: str | None = None) -> None:
        self.forms.add(form if form in DTYPES + ("pyint", "pybool", "pyfloat") else input_form(values, text=text))
        values = plain(values)
        miss = missing_mask(values, markers)
        self.rows += len(values)
        self.missing += int(miss.sum())
        text = as_text(values[~miss])
        if text.empty:
            return
        # Every test below is an all()/max() over values: run it on the distinct values only (Adult's
        # categorical columns: a few dozen instead of 26,000; schema inference took 10% of a fit).
        text = pd.Series(text.unique(), dtype=object)
        self.distinct.update(text.tolist())
        if self.all_int:
            self.all_int = bool(text.str.fullmatch(_INT).all())
        if self.all_real and not self.all_int:
            self.all_real = bool(text.str.fullmatch(_REAL, case=False).all())
        if self.all_real:
            dec = text.str.extract(r"\.(\d+)", expand=False).str.len().max()
            self.decimals = max(self.decimals, 0 if pd.isna(dec) else int(dec))
        if self.all_boolword:
            self.all_boolword = bool(text.str.lower().isin(["true", "false"]).all())
        if not self.all_real and self.date_formats != ():
            candidates = DATETIME_FORMATS if self.date_formats is None else self.date_formats
            if not text.str.fullmatch(_DATE_HINT).all():
                self.date_formats = ()
            else:
                self.date_formats = tuple(
                    f for f in candidates if pd.to_datetime(text, format=f, errors="coerce").notna().all()
                )

    @property
    def present(self) -> int:
        return self.rows - self.missing

    def input_dtype(self) -> str | None:
        """The pandas dtype the input held the column in (``ColumnSpec.dtype``): a typed input's own; for
        text (a CSV file) or Python objects, the form of its values (integers: ``int64``, ``Int64`` with
        missing values; reals: ``float64``; true/false: ``bool``/``boolean``; else ``object``)."""
        forms = self.forms - {None}
        if len(forms) != 1:
            return None  # chunks that disagree, or a dtype fedtab does not return
        form = next(iter(forms))
        if form in ("text", "pyint", "pybool", "pyfloat"):
            if self.present == 0:
                return "object"
            if (form in ("text", "pyint")) and self.all_int:
                return "Int64" if self.missing else "int64"
            if form in ("text", "pyfloat") and self.all_real:
                return "float64"
            if (form == "text" and self.all_boolword) or form == "pybool":
                return "boolean" if self.missing else "bool"
            if form == "text" and self.date_formats:
                return "datetime64[ns]"
            return "object"
        return form

    def infer_type(self) -> dict[str, Any]:
        """The inferred column as a schema dict (type, subtype, precision, datetime_format)."""
        n, k, id_name = self.present, len(self.distinct), looks_like_id_name(self.name)
        many_distinct = n > 0 and k >= 0.5 * n and k > MAX_CATEGORICAL_INTS
        if n == 0:
            return {"type": "categorical"}
        if self.all_int:
            if id_name and many_distinct:
                return {"type": "id"}
            if {int(v) for v in self.distinct} == {0, 1}:
                return {"type": "boolean"}
            if id_name or k <= MAX_CATEGORICAL_INTS:
                return {"type": "categorical"}
            return {"type": "numerical", "subtype": "int"}
        if self.all_real:
            return {"type": "numerical", "subtype": "float", "precision": min(self.decimals, MAX_PRECISION)}
        if self.all_boolword:
            return {"type": "boolean"}
        if self.date_formats:
            return {"type": "datetime", "datetime_format": self.date_formats[0]}
        if (k == n and n >= MIN_ROWS_FOR_UNIQUE_ID) or (id_name and many_distinct):
            return {"type": "id"}
        return {"type": "categorical"}


def input_form(values: pd.Series, *, text: bool) -> str | None:
    """How one chunk holds a column: a pandas dtype name from ``schema.DTYPES``; "text" for a file's
    raw strings; "pyint"/"pybool"/"pyfloat" for an object column of Python ints/bools/floats; None for
    a dtype fedtab does not return."""
    dtype = values.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        return "category"
    if isinstance(dtype, pd.StringDtype):
        return "text" if text else "string"
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "datetime64[ns]"
    if dtype != object:
        return str(dtype) if str(dtype) in DTYPES else None
    if text:
        return "text"
    kinds = {type(v) for v in values.dropna().unique()} if len(values) else set()
    if kinds and all(issubclass(k, (bool, np.bool_)) for k in kinds):
        return "pybool"
    if kinds and all(issubclass(k, (int, np.integer)) and not issubclass(k, (bool, np.bool_)) for k in kinds):
        return "pyint"
    if kinds and all(issubclass(k, (float, np.floating)) for k in kinds):
        return "pyfloat"
    return "object"


class TableProfile:
    """Per-column evidence over one or more chunks of a table; ``schema()`` turns it into a schema."""

    def __init__(self, *, missing_markers: Iterable[str] = ("?",)):
        self.missing_markers = tuple(str(m) for m in missing_markers)
        self.columns: dict[str, ColumnProfile] = {}
        self.rows = 0

    def update(self, df: pd.DataFrame, *, text: bool = False) -> "TableProfile":
        """Add a chunk; ``text``: its values are a file's raw strings (a CSV), read for their form."""
        self.rows += len(df)
        forms = df.attrs.get("fedtab_forms", {})  # a file's own record of its dtypes (Parquet)
        for name in df.columns:
            prof = self.columns.setdefault(str(name), ColumnProfile(str(name)))
            prof.update(df[name], self.missing_markers, text=text, form=forms.get(name))
        return self

    def schema(self, *, declared: TableSchema | Mapping | None = None, name: str | None = None) -> TableSchema:
        overrides = _declared_overrides(declared)
        unknown = sorted(set(overrides) - set(self.columns))
        if unknown:
            raise SchemaError(
                f"declared column(s) {unknown} are not in the table; its columns are {list(self.columns)}."
            )
        cols = []
        for col, prof in self.columns.items():
            spec = {"name": col, **prof.infer_type()}
            dtype = prof.input_dtype()
            if dtype is not None and spec["type"] != "id":
                spec["dtype"] = dtype
            if self.missing_markers:
                spec["missing_markers"] = list(self.missing_markers)
            if col in overrides:
                spec = _merge(spec, overrides[col], prof)
            cols.append(spec)
        return TableSchema.from_dict({"columns": cols, **({"name": name} if name else {})}, source="inferred schema")


def infer_schema(
    df: pd.DataFrame,
    *,
    missing_markers: Iterable[str] = ("?",),
    declared: TableSchema | Mapping | None = None,
    name: str | None = None,
) -> TableSchema:
    """Infer a schema from one table (raw strings or typed). See the module docstring for the rules.

    ``declared`` is a ``TableSchema`` or a mapping ``{column: ColumnSpec | dict of fields}``; its
    settings win over anything inferred (e.g. ``{"patient_nbr": {"type": "id"}}``).
    """
    if df.columns.duplicated().any():
        dups = sorted({str(c) for c in df.columns[df.columns.duplicated()]})
        raise SchemaError(f"cannot infer a schema: duplicate column name(s) {dups}; rename them first.")
    return TableProfile(missing_markers=missing_markers).update(df).schema(declared=declared, name=name)


def _declared_overrides(declared: TableSchema | Mapping | None) -> dict[str, dict]:
    if declared is None:
        return {}
    if isinstance(declared, TableSchema):
        return {c.name: c.to_dict() for c in declared.columns}
    if not isinstance(declared, Mapping):
        raise SchemaError(f"'declared' must be a TableSchema or a dict of column settings, got {type(declared).__name__}.")
    out = {}
    for col, spec in declared.items():
        if isinstance(spec, ColumnSpec):
            out[str(col)] = spec.to_dict()
        elif isinstance(spec, Mapping):
            out[str(col)] = dict(spec)
        else:
            raise SchemaError(f"declared column {col!r}: expected a ColumnSpec or a dict of fields, got {spec!r}.")
    return out


def _merge(inferred: dict, declared: dict, prof: ColumnProfile) -> dict:
    """Declared fields win; a declared type change drops the inferred type-specific fields."""
    declared = {k: v for k, v in declared.items() if k != "name"}
    base = dict(inferred)
    if "type" in declared and declared["type"] != inferred["type"]:
        base = {k: inferred[k] for k in ("name", "missing_markers", "nullable") if k in inferred}
        if declared["type"] == "numerical" and "subtype" not in declared:
            base["subtype"] = "int" if prof.all_int else "float"
    base.update(declared)
    return base
