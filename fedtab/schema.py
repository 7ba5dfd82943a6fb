"""Table schema: what each column is, as declared by a data steward or inferred from a table.

A schema is a small frozen value. It is saved as JSON (``TableSchema.save`` / ``TableSchema.load``);
a hand-written file is validated and every problem is reported at once.

In-memory dtype contract of a *typed* table (what connectors return when given a schema, what
validation returns, what transformers read and what samplers write):

============  =========================  ====================================================
type          pandas dtype               missing value
============  =========================  ====================================================
numerical     ``Int64`` (subtype int),   ``pd.NA`` / ``NaN``
              ``float64`` (subtype float)
categorical   ``object`` holding ``str`` ``None`` / ``NaN`` (test with ``pd.isna``)
boolean       ``boolean``                ``pd.NA``
datetime      ``datetime64[ns]``         ``NaT``
id            ``object`` str or ``Int64``  never copied into synthetic data
============  =========================  ====================================================

A column's ``dtype`` (optional) records how the input held it, as a pandas dtype name (``DTYPES``):
``int64`` for a column of integers, ``Int64`` for integers with missing values, ``float64``,
``bool``/``boolean``, ``object`` for text, ``string``, ``category``, ``datetime64[ns]``. Typed tables use
the contract above inside fedtab; ``sample`` hands the rows back in the recorded dtype
(``fedtab.transform.values.as_input_dtype``): a categorical column coded 1/2 comes back as the
integers 1/2, a 0/1 boolean as 0/1. ``fedtab schema infer`` and ``infer_schema`` record it; a
hand-written schema may declare it; without it the contract's dtypes are returned.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

from fedtab.errors import SchemaError

COLUMN_TYPES = ("numerical", "categorical", "boolean", "datetime", "id")
NUMERICAL_SUBTYPES = ("int", "float")
SCHEMA_FORMAT = "fedtab.schema/1"

_FIELDS = (
    "name", "type", "subtype", "nullable", "lower", "upper", "categories",
    "missing_markers", "precision", "datetime_format", "dtype",
)
# The input representations a column's ``dtype`` may record (pandas dtype names).
INT_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
NULLABLE_INT_DTYPES = ("Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64")
FLOAT_DTYPES = ("float32", "float64", "Float32", "Float64")
DTYPES = INT_DTYPES + NULLABLE_INT_DTYPES + FLOAT_DTYPES + ("bool", "boolean", "object", "string", "category",
                                                           "datetime64[ns]")


@dataclass(frozen=True)
class ColumnSpec:
    """One column of a table.

    ``lower``/``upper`` are *declared* bounds (public knowledge, free under DP). ``categories`` is a
    declared domain (free under DP); without it the domain is learned from the sites (a privacy spend).
    ``missing_markers`` are raw strings that mean "missing" (``'?'``, ``'unknown'``).
    ``precision`` is the number of decimals kept for float columns.
    """

    name: str
    type: str
    subtype: str | None = None
    nullable: bool = True
    lower: float | None = None
    upper: float | None = None
    categories: tuple[str, ...] | None = None
    missing_markers: tuple[str, ...] = ()
    precision: int | None = None
    datetime_format: str | None = None
    dtype: str | None = None  # the input's representation (``DTYPES``); ``sample`` returns it

    @property
    def is_integer(self) -> bool:
        return self.type == "numerical" and self.subtype == "int"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["categories"] = list(self.categories) if self.categories is not None else None
        d["missing_markers"] = list(self.missing_markers)
        # Keep files short: drop fields left at their default.
        defaults = ColumnSpec(name=self.name, type=self.type)
        return {k: v for k, v in d.items() if k in ("name", "type") or v != _default(defaults, k)}


def _default(spec: ColumnSpec, key: str):
    v = getattr(spec, key)
    return list(v) if isinstance(v, tuple) else v


@dataclass(frozen=True)
class TableSchema:
    """An ordered set of column specs."""

    columns: tuple[ColumnSpec, ...]
    name: str | None = None
    metadata: dict = field(default_factory=dict, compare=False)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def __getitem__(self, name: str) -> ColumnSpec:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return any(c.name == name for c in self.columns)

    def __len__(self) -> int:
        return len(self.columns)

    def of_type(self, *types: str) -> list[ColumnSpec]:
        return [c for c in self.columns if c.type in types]

    def replace_column(self, spec: ColumnSpec) -> "TableSchema":
        return replace(self, columns=tuple(spec if c.name == spec.name else c for c in self.columns))

    def without(self, name: str | None) -> "TableSchema":
        """The schema less the column ``name`` (unchanged when None or absent)."""
        if name is None or name not in self:
            return self
        return replace(self, columns=tuple(c for c in self.columns if c.name != name))

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"format": SCHEMA_FORMAT}
        if self.name:
            d["name"] = self.name
        d["columns"] = [c.to_dict() for c in self.columns]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "schema") -> "TableSchema":
        """Build a schema from its dict form, reporting every problem at once."""
        problems = _check_schema_dict(data)
        if problems:
            raise SchemaError(
                f"{source}: invalid schema, {len(problems)} problem(s):\n"
                + "\n".join(f"  - {p}" for p in problems)
                + "\nFix the file, or regenerate it with 'fedtab schema infer'."
            )
        cols = []
        for c in data["columns"]:
            kw = {k: c[k] for k in _FIELDS if k in c}
            if kw.get("categories") is not None:
                kw["categories"] = tuple(str(v) for v in kw["categories"])
            if "missing_markers" in kw:
                kw["missing_markers"] = tuple(str(v) for v in kw["missing_markers"])
            for b in ("lower", "upper"):
                if kw.get(b) is not None:
                    kw[b] = float(kw[b])
            cols.append(ColumnSpec(**kw))
        return cls(columns=tuple(cols), name=data.get("name"))

    @classmethod
    def from_json(cls, text: str, *, source: str = "schema") -> "TableSchema":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SchemaError(f"{source}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}).") from None
        return cls.from_dict(data, source=source)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the schema as JSON atomically (temp file, then rename)."""
        return atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TableSchema":
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SchemaError(f"{p}: schema file not found. Create one with 'fedtab schema infer SOURCE -o {p}'.") from None
        except UnicodeDecodeError:
            raise SchemaError(f"{p}: schema file is not UTF-8 text.") from None
        except OSError as e:
            raise SchemaError(f"{p}: cannot read schema file ({e.strerror}).") from None
        return cls.from_json(text, source=str(p))


def _check_schema_dict(data: Any) -> list[str]:
    if not isinstance(data, dict):
        return [f"the top level must be a JSON object with a 'columns' list, got {type(data).__name__}"]
    problems: list[str] = []
    fmt = data.get("format", SCHEMA_FORMAT)
    if fmt != SCHEMA_FORMAT:
        problems.append(f"'format' is {fmt!r}; expected {SCHEMA_FORMAT!r} (an SDV metadata file? use 'fedtab schema import-sdv')")
    cols = data.get("columns")
    if not isinstance(cols, list) or not cols:
        return problems + ["'columns' must be a non-empty list of column objects"]
    seen: set[str] = set()
    for i, c in enumerate(cols):
        if not isinstance(c, dict):
            problems.append(f"columns[{i}] must be an object, got {type(c).__name__}")
            continue
        name = c.get("name")
        where = f"column {name!r}" if isinstance(name, str) else f"columns[{i}]"
        if not isinstance(name, str) or not name:
            problems.append(f"{where}: 'name' must be a non-empty string")
        elif name in seen:
            problems.append(f"{where}: duplicate column name")
        else:
            seen.add(name)
        unknown = sorted(set(c) - set(_FIELDS))
        if unknown:
            problems.append(f"{where}: unknown field(s) {unknown}; allowed: {list(_FIELDS)}")
        t = c.get("type")
        if t not in COLUMN_TYPES:
            problems.append(f"{where}: unknown type {t!r}; expected one of {list(COLUMN_TYPES)}")
        st = c.get("subtype")
        if t == "numerical" and st not in NUMERICAL_SUBTYPES:
            problems.append(f"{where}: numerical columns need 'subtype' 'int' or 'float', got {st!r}")
        if t != "numerical" and st is not None:
            problems.append(f"{where}: 'subtype' applies to numerical columns only, got {st!r}")
        if "nullable" in c and not isinstance(c["nullable"], bool):
            problems.append(f"{where}: 'nullable' must be true or false, got {c['nullable']!r}")
        for b in ("lower", "upper"):
            v = c.get(b)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
                problems.append(f"{where}: '{b}' must be a finite number, got {v!r}")
        lo, hi = c.get("lower"), c.get("upper")
        if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and lo > hi:
            problems.append(f"{where}: 'lower' ({lo}) is greater than 'upper' ({hi})")
        if (lo is not None or hi is not None) and t not in ("numerical", "datetime"):
            problems.append(f"{where}: bounds apply to numerical and datetime columns only")
        cats = c.get("categories")
        if cats is not None:
            if not isinstance(cats, list) or not cats:
                problems.append(f"{where}: 'categories' must be a non-empty list")
            elif len({str(v) for v in cats}) != len(cats):
                problems.append(f"{where}: 'categories' has duplicates")
            if t not in ("categorical", "boolean"):
                problems.append(f"{where}: 'categories' applies to categorical columns only")
        mm = c.get("missing_markers", [])
        if not isinstance(mm, list) or not all(isinstance(v, str) for v in mm):
            problems.append(f"{where}: 'missing_markers' must be a list of strings, got {mm!r}")
        p = c.get("precision")
        if p is not None and (isinstance(p, bool) or not isinstance(p, int) or p < 0):
            problems.append(f"{where}: 'precision' must be a whole number >= 0, got {p!r}")
        dt = c.get("dtype")
        if dt is not None and dt not in DTYPES:
            problems.append(f"{where}: 'dtype' {dt!r} is not one fedtab returns; expected one of {list(DTYPES)} "
                            "(or leave it out)")
    return problems


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write text to ``path`` through a temp file in the same folder and a rename: never half-written."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def schema_of(columns: Iterable[ColumnSpec], name: str | None = None) -> TableSchema:
    return TableSchema(columns=tuple(columns), name=name)
