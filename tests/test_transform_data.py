"""Shared helpers of the transform tests: typed real tables and a binned total-variation distance.

Data (CC BY 4.0, UCI): ``tests/data/transform_heart_4sites.csv`` is UCI Heart Disease, all four
hospitals (Janosi, Steinbrunn, Pfisterer, Detrano), copied whole from /work/shared/data;
``tests/data/transform_adult_6000.csv`` is 6,000 rows of UCI Adult (Becker & Kohavi) drawn without
replacement with numpy seed 0, lines kept byte for byte. The typed tables follow the dtype contract
of ``fedtab.schema``; they are built here because schema inference belongs to another module.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fedtab.schema import ColumnSpec, TableSchema

DATA = Path(__file__).parent / "data"

HEART_SCHEMA = TableSchema(columns=(
    ColumnSpec("age", "numerical", "int"),
    ColumnSpec("sex", "boolean"),
    ColumnSpec("cp", "categorical"),
    ColumnSpec("trestbps", "numerical", "int", missing_markers=("?",)),
    ColumnSpec("chol", "numerical", "int", missing_markers=("?",)),
    ColumnSpec("fbs", "boolean", missing_markers=("?",)),
    ColumnSpec("restecg", "categorical", missing_markers=("?",)),
    ColumnSpec("thalach", "numerical", "int", missing_markers=("?",)),
    ColumnSpec("exang", "boolean", missing_markers=("?",)),
    ColumnSpec("oldpeak", "numerical", "float", precision=1, missing_markers=("?",)),
    ColumnSpec("slope", "categorical", missing_markers=("?",)),
    ColumnSpec("ca", "categorical", missing_markers=("?",)),
    ColumnSpec("thal", "categorical", missing_markers=("?",)),
    ColumnSpec("num", "categorical"),
    ColumnSpec("site", "categorical"),
), name="heart")

_ADULT_INT = ("age", "fnlwgt", "education-num", "capital-gain", "capital-loss", "hours-per-week")
_ADULT_COLS = ("age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
               "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week", "native-country",
               "income")
ADULT_SCHEMA = TableSchema(columns=tuple(
    ColumnSpec(c, "numerical", "int") if c in _ADULT_INT
    else ColumnSpec(c, "categorical", missing_markers=(" ?",)) for c in _ADULT_COLS
), name="adult")


def typed_table(raw: pd.DataFrame, schema: TableSchema) -> pd.DataFrame:
    """Raw strings -> typed table (dtype contract of fedtab.schema)."""
    out = {}
    for spec in schema.columns:
        s = raw[spec.name].astype(str)
        s = s.where(~s.isin(spec.missing_markers), None)
        if spec.type == "numerical":
            num = pd.to_numeric(s)
            out[spec.name] = num.round().astype("Int64") if spec.is_integer else num.astype("float64")
        elif spec.type == "boolean":
            out[spec.name] = pd.array([None if v is None else v == "1" for v in s], dtype="boolean")
        else:
            out[spec.name] = s.astype(object)
    return pd.DataFrame(out)


def heart_table() -> pd.DataFrame:
    raw = pd.read_csv(DATA / "transform_heart_4sites.csv", dtype=str, keep_default_na=False)
    return typed_table(raw, HEART_SCHEMA)


def adult_table(path: Path | None = None) -> pd.DataFrame:
    raw = pd.read_csv(path or DATA / "transform_adult_6000.csv", dtype=str, keep_default_na=False)
    return typed_table(raw, ADULT_SCHEMA)


def split_heart(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The four real hospitals (the ``site`` column)."""
    return {s: g.reset_index(drop=True) for s, g in df.groupby("site", sort=True)}


def split_adult(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Four sites by age quartile (rank-based, ties broken by row order): a deliberately non-IID split."""
    quartile = pd.qcut(df["age"].astype(float).rank(method="first"), 4, labels=False)
    return {f"site{q}": g.reset_index(drop=True) for q, g in df.groupby(quartile, sort=True)}


def binned_tvd(a: pd.Series, b: pd.Series, *, bins: int = 50) -> float:
    """Total-variation distance between two numeric columns' histograms (missing = its own cell).

    Cells: every distinct value of ``a`` when there are at most ``bins`` of them, else ``bins`` equal
    cells over [min, max] of ``a`` (values of ``b`` outside are clipped into the end cells).
    """
    fa = pd.to_numeric(a).astype("float64").to_numpy(na_value=np.nan)
    fb = pd.to_numeric(b).astype("float64").to_numpy(na_value=np.nan)
    present = fa[~np.isnan(fa)]
    distinct = np.unique(present)
    if len(distinct) <= bins:
        edges = np.concatenate([[-np.inf], (distinct[:-1] + distinct[1:]) / 2, [np.inf]])
    else:
        edges = np.linspace(present.min(), present.max(), bins + 1)
        edges[0], edges[-1] = -np.inf, np.inf

    def dist(x):
        h = np.histogram(x[~np.isnan(x)], edges)[0].astype(float)
        h = np.append(h, np.isnan(x).sum())
        return h / h.sum()

    return float(0.5 * np.abs(dist(fa) - dist(fb)).sum())
