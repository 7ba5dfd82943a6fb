"""Typed test tables for the evaluation tests, built from real data (UCI Heart Disease, CC BY 4.0;
creators Janosi, Steinbrunn, Pfisterer, Detrano), plus checks that they follow the schema dtype contract.

``tests/data/eval_heart_disease.csv`` is ``heart_disease_uci_4sites.csv`` (920 rows, 4 hospitals) copied
unchanged so the tests never read ``../shared``. '?' is missing; ``chol == 0`` and ``trestbps == 0`` are
"not measured" codes, read as missing. The target is ``disease`` = ``num > 0`` (comparable across sites).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from fedtab.schema import ColumnSpec, TableSchema

DATA = Path(__file__).parent / "data" / "eval_heart_disease.csv"

HEART_SCHEMA = TableSchema(
    name="heart",
    columns=(
        ColumnSpec("age", "numerical", "int", lower=0, upper=100),
        ColumnSpec("sex", "boolean"),
        ColumnSpec("cp", "categorical", categories=("1", "2", "3", "4")),
        ColumnSpec("trestbps", "numerical", "int"),
        ColumnSpec("chol", "numerical", "int"),
        ColumnSpec("fbs", "boolean"),
        ColumnSpec("restecg", "categorical"),
        ColumnSpec("thalach", "numerical", "int"),
        ColumnSpec("exang", "boolean"),
        ColumnSpec("oldpeak", "numerical", "float", precision=1),
        ColumnSpec("slope", "categorical"),
        ColumnSpec("ca", "categorical"),
        ColumnSpec("thal", "categorical"),
        ColumnSpec("disease", "boolean"),
    ),
)


@lru_cache(maxsize=1)
def _heart() -> pd.DataFrame:
    raw = pd.read_csv(DATA, dtype=str, keep_default_na=False)
    raw = raw.replace("?", None)
    out = pd.DataFrame(index=raw.index)
    for c in ("age", "trestbps", "chol", "thalach"):
        v = pd.to_numeric(raw[c]).astype("Int64")
        out[c] = v.mask(v == 0) if c in ("chol", "trestbps") else v
    out["oldpeak"] = pd.to_numeric(raw["oldpeak"]).astype("float64")
    for c in ("sex", "fbs", "exang"):
        out[c] = raw[c].map({"1": True, "0": False}).astype("boolean")
    for c in ("cp", "restecg", "slope", "ca", "thal"):
        out[c] = raw[c].astype("object")
    out["disease"] = (pd.to_numeric(raw["num"]) > 0).astype("boolean")
    out["site"] = raw["site"]
    return out[HEART_SCHEMA.names + ["site"]]


def heart_table() -> pd.DataFrame:
    """All 920 rows as a typed table (schema order, plus the ``site`` column)."""
    return _heart().copy()


def heart_splits(seed: int = 0, fractions=(0.5, 0.25, 0.25)):
    """Shuffle all rows and split into (train, holdout, other): three disjoint samples of one population."""
    df = heart_table().drop(columns="site")
    idx = np.random.default_rng(seed).permutation(len(df))
    a = int(fractions[0] * len(df))
    b = a + int(fractions[1] * len(df))
    parts = (idx[:a], idx[a:b], idx[b:])
    return tuple(df.iloc[np.sort(p)].reset_index(drop=True) for p in parts)


def test_heart_table_follows_dtype_contract():
    df = heart_table()
    assert len(df) == 920
    assert str(df["age"].dtype) == "Int64" and df["oldpeak"].dtype == np.float64
    assert str(df["sex"].dtype) == "boolean"
    assert df["cp"].dtype == object and set(df["cp"].dropna()) == {"1", "2", "3", "4"}
    # Hidden missing codes became missing: all 123 Swiss cholesterol values are 0 in the source.
    assert df.loc[df["site"] == "switzerland", "chol"].isna().all()
    assert df["ca"].isna().sum() == 611
    assert df["disease"].sum() == 509  # num > 0: 920 - (164 + 188 + 8 + 51)


def test_heart_splits_are_disjoint_and_cover_all_rows():
    tr, ho, ot = heart_splits()
    assert len(tr) + len(ho) + len(ot) == 920
    assert len(tr) == 460 and len(ho) == 230


# -- shared, cached evaluations (each costs a few seconds; computed once per test session) ----------
@lru_cache(maxsize=1)
def independent_evaluation():
    """'Synthetic' rows that are real rows never trained on: a different split of the same population."""
    from evaluation import evaluate_site

    train, holdout, other = heart_splits()
    return evaluate_site(train, holdout, other, HEART_SCHEMA, target="disease", seed=0)


@lru_cache(maxsize=1)
def copying_evaluation():
    """A 'synthesizer' that returns a sample of its own training rows."""
    from evaluation import evaluate_site

    train, holdout, _ = heart_splits()
    copies = train.sample(230, random_state=1).reset_index(drop=True)
    return evaluate_site(train, holdout, copies, HEART_SCHEMA, target="disease", seed=0)
